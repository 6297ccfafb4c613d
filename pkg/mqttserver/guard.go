package mqttserver

import (
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// guard keeps flaws of mochi (v2.7.9) from losing or stalling QoS 1
// messages queued for a session. All of them bite in memory alone, store or
// not.
//
// Takeover: when a client reconnects to its session, mochi copies the
// session's in-flight messages from the old client object to the new one
// and only then registers the new one; a message routed in between lands in
// the old object, which is discarded. (A worker that reconnected ten times
// while keys were published at full speed lost 72 of 182,000.) Such a
// message arrives at OnQosPublish on a client that is taken over. The guard
// holds it until the new connection has its CONNACK and resent messages
// (OnSessionEstablished), then queues it there under a new packet id.
//
// Packet id clash: client and server number their packets independently,
// yet mochi looks a client's packet ids up among the server's messages in
// flight to it. A client's PUBLISH deletes the unacknowledged message with
// the same id, which is then never resent; a SUBSCRIBE or UNSUBSCRIBE is
// refused ("packet identifier in use"), and a client that reconnects to a
// backlog of queued messages sees its subscription refused again and again.
// OnPacketRead takes the server's message out of the way, OnPacketProcessed
// puts it back.
//
// Send quota: after every packet from a client with messages in flight,
// mochi looks for a message held back by the client's receive maximum
// (Inflight.NextImmediate), taking the in-flight map's read lock twice,
// nested. A message routed to that client in between (a write lock
// waiting) deadlocks the client's connection, the publisher's and mochi's
// event loop for good; tests hit it within minutes. Held-back messages are
// broken besides: one is deleted from the session as soon as it is sent, so
// its PUBACK finds nothing and returns no quota, and after twice the receive
// maximum delivery stops. OnSessionEstablished sets the client's send quota
// to zero, which mochi takes as "no limit": it then neither holds messages
// back nor looks for held-back ones. The price: the server no longer keeps
// to a client's receive maximum, just as mochi never does when it resends a
// session's messages on a reconnect.
type guard struct {
	mochi.HookBase
	srv   *mochi.Server
	store *store // nil without a store

	mu       sync.Mutex
	current  map[string]*mochi.Client // client id → its last established connection
	stranded map[string][]stranded    // client id → messages waiting for its next connection
	hidden   map[clash]packets.Packet // server messages moved out of the way of a client packet id
}

type stranded struct {
	pk  packets.Packet
	key []byte // the store's record of it, deleted once it is queued again
}

type clash struct {
	cl *mochi.Client
	id uint16
}

func newGuard(srv *mochi.Server, st *store) *guard {
	return &guard{
		srv:      srv,
		store:    st,
		current:  map[string]*mochi.Client{},
		stranded: map[string][]stranded{},
		hidden:   map[clash]packets.Packet{},
	}
}

func (h *guard) ID() string { return "wgkex-guard" }

func (h *guard) Provides(b byte) bool {
	switch b {
	case mochi.OnQosPublish, mochi.OnSessionEstablished, mochi.OnDisconnect, mochi.OnClientExpired,
		mochi.OnPacketRead, mochi.OnPacketProcessed:
		return true
	}
	return false
}

func (h *guard) OnQosPublish(cl *mochi.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type == packets.Publish && cl.IsTakenOver() {
		h.strand(cl, pk)
	}
}

// strand records pk, routed to the taken-over cl, and queues it on the
// connection that took cl's session over: at once if that one is
// established, else when it is.
func (h *guard) strand(cl *mochi.Client, pk packets.Packet) {
	m := stranded{pk: pk}
	if h.store != nil {
		m.key = h.store.strand(cl.ID, pk)
	}
	h.mu.Lock()
	target := h.current[cl.ID]
	if target == nil || target == cl {
		h.stranded[cl.ID] = append(h.stranded[cl.ID], m)
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	h.requeue(target, m)
}

func (h *guard) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	// Before the first packet is read (see the top of this file). A message
	// routed while the quota changes may have been held back: send it.
	cl.State.Inflight.ResetSendQuota(0)
	for _, pk := range cl.State.Inflight.GetAll(true) {
		pk.Expiry = 0
		cl.State.Inflight.Set(pk)
		_ = cl.WritePacket(pk)
	}
	h.mu.Lock()
	h.current[cl.ID] = cl
	waiting := h.stranded[cl.ID]
	delete(h.stranded, cl.ID)
	h.mu.Unlock()
	for _, m := range waiting {
		h.requeue(cl, m)
	}
}

// requeue puts a stranded message into cl's session. One the session no
// longer subscribes to (the client started clean) is dropped, as the old
// session would have been.
func (h *guard) requeue(cl *mochi.Client, m stranded) {
	if h.store != nil {
		defer h.store.forget(m.key) // after the new record is queued
	}
	if _, ok := h.srv.Topics.Subscribers(m.pk.TopicName).Subscriptions[cl.ID]; !ok {
		return
	}
	h.send(cl, m.pk)
}

// send queues pk in cl's session under a new packet id and sends it.
func (h *guard) send(cl *mochi.Client, pk packets.Packet) {
	id, err := cl.NextPacketID()
	if err != nil {
		h.Log.Warn("message dropped: packet ids exhausted", "client", cl.ID, "topic", pk.TopicName)
		return
	}
	pk.PacketID = uint16(id)
	pk.FixedHeader.Dup = false
	pk.Expiry = 0
	if !h.put(cl, pk) {
		return
	}
	if !cl.Closed() {
		_ = cl.WritePacket(pk) // if this fails, the message waits in the session for the next connection
	}
}

// put sets pk into cl's session and the store; false when cl has been
// taken over meanwhile and pk went on to the next connection instead.
// (The check comes after the set: a takeover that copied the session
// before the set has marked cl already.)
func (h *guard) put(cl *mochi.Client, pk packets.Packet) bool {
	cl.State.Inflight.Set(pk)
	if cl.IsTakenOver() {
		h.strand(cl, pk)
		return false
	}
	if h.store != nil {
		h.store.OnQosPublish(cl, pk, 0, 0)
	}
	return true
}

// putBack returns a message moved out of the way to cl's session, under
// its packet id, or under a new one (sent again) if a new message has taken
// that id meanwhile.
func (h *guard) putBack(cl *mochi.Client, pk packets.Packet) {
	if _, taken := cl.State.Inflight.Get(pk.PacketID); taken {
		h.send(cl, pk)
		return
	}
	h.put(cl, pk)
}

// clientNumbered reports whether pk carries a packet id of the client's.
func clientNumbered(pk packets.Packet) bool {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		return pk.FixedHeader.Qos > 0
	case packets.Subscribe, packets.Unsubscribe:
		return true
	}
	return false
}

func (h *guard) OnPacketRead(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if !clientNumbered(pk) {
		return pk, nil
	}
	if out, ok := cl.State.Inflight.Get(pk.PacketID); ok && out.FixedHeader.Type == packets.Publish {
		h.mu.Lock()
		h.hidden[clash{cl, pk.PacketID}] = out
		h.mu.Unlock()
		cl.State.Inflight.Delete(pk.PacketID) // a PUBACK for it cannot come before this packet is processed
	}
	return pk, nil
}

func (h *guard) OnPacketProcessed(cl *mochi.Client, pk packets.Packet, _ error) {
	if !clientNumbered(pk) {
		return
	}
	k := clash{cl, pk.PacketID}
	h.mu.Lock()
	out, ok := h.hidden[k]
	delete(h.hidden, k)
	h.mu.Unlock()
	if ok {
		h.putBack(cl, out)
	}
}

func (h *guard) OnDisconnect(cl *mochi.Client, _ error, expire bool) {
	h.mu.Lock()
	var hidden []packets.Packet // a packet that ended the connection was not processed
	for k, pk := range h.hidden {
		if k.cl == cl {
			hidden = append(hidden, pk)
			delete(h.hidden, k)
		}
	}
	if expire && h.current[cl.ID] == cl {
		delete(h.current, cl.ID)
		delete(h.stranded, cl.ID)
	}
	h.mu.Unlock()
	for _, pk := range hidden {
		h.putBack(cl, pk)
	}
}

func (h *guard) OnClientExpired(cl *mochi.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.current, cl.ID)
	delete(h.stranded, cl.ID)
}
