package worker

import (
	"sync"
	"time"
)

// ownMessages tracks the retained messages this worker publishes about
// itself (status, data), to notice another client overwriting them.
//
// The MQTT server delivers the messages of a topic to a subscriber in the
// order it took them in, so a message that arrives before the echo of the
// worker's latest publish was taken in before it, and the publish has
// replaced it already: the will or the goodbye of an earlier run queued in
// the persistent session, a retained copy sent with the subscription, an
// overwrite the latest announcement answered. Only a different message
// after the echo is an overwrite.
type ownMessages struct {
	mu           sync.Mutex
	topics       map[string]*ownMessage
	lastAnnounce time.Time
}

type ownMessage struct {
	payload []byte
	echoed  bool // the server sent the publish back to us
}

func newOwnMessages() *ownMessages { return &ownMessages{topics: map[string]*ownMessage{}} }

// publishing records payload as about to be published on topic.
func (o *ownMessages) publishing(topic string, payload []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.topics[topic] = &ownMessage{payload: payload}
}

// forget stops watching topic (a domain that is not announced).
func (o *ownMessages) forget(topic string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.topics, topic)
}

// received reports whether a message received on topic overwrote the
// worker's own.
func (o *ownMessages) received(topic string, payload []byte) (overwritten bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	m := o.topics[topic]
	switch {
	case m == nil:
		return false // not published yet: the announcement will
	case string(m.payload) == string(payload):
		m.echoed = true
		return false
	default:
		return m.echoed
	}
}

// announced records that the worker announces now.
func (o *ownMessages) announced() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lastAnnounce = time.Now()
}

// last is when the worker last announced.
func (o *ownMessages) last() time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.lastAnnounce
}
