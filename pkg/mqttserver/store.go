package mqttserver

// The store keeps in a bbolt file what the server must not forget across a
// restart, stopped or killed: persistent sessions (client and
// subscriptions), the QoS 1 messages queued or in flight to them, and
// retained messages.
//
// mochi's own bbolt hook is not used: it stores in-flight messages without
// their packet id, so after a restart every message queued for a session
// comes back with id 0. The in-flight map is keyed by id, so all but one of
// them vanish, and resending the last one fails to encode ("protocol
// violation: missing packet id"), which ends every reconnect of that
// session for good. It also writes each change in a transaction of its own.
//
// Writes go through one queue; a writer goroutine commits whatever has
// gathered while the previous commit ran in one transaction (synced), in
// queue order, so the file always holds a prefix of the changes.
//
// PUBACK: mochi acknowledges a QoS 1 publish before it routes the message,
// and a hook cannot delay that. So OnPublish takes QoS 1 publishes over: it
// routes the message itself (through an inline client carrying the
// publisher's id), which queues its copies for the persistent sessions that
// subscribe, and rejects the packet, so that mochi neither routes nor
// acknowledges it. The PUBACK follows, from the acknowledger goroutine, once
// the transaction holding those copies (and the retained message) is
// committed. A message that reaches no persistent session waits for no
// commit of its own.
//
// So what a client was told is on disk: a persistent session before its
// CONNACK, a subscription before its SUBACK, a QoS 1 message in every
// persistent session it goes to before its PUBACK. Acknowledgements from
// subscribers, QoS 0 retained messages and sessions ending are written
// without waiting: a crash may bring back a message already delivered
// (QoS 1 allows that) or a session already gone.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var (
	bucketSessions = []byte("sessions")      // client id → storage.Client
	bucketSubs     = []byte("subscriptions") // client key + filter → storage.Subscription
	bucketInflight = []byte("inflight")      // client key + packet id → storage.Message
	bucketRetained = []byte("retained")      // topic → storage.Message
)

var errStoreClosed = errors.New("store closed")

// maxOrigins bounds the inline clients kept to route messages in their
// publishers' names (64 kB each, mostly an unused send buffer); the cache
// starts over when it is full.
const maxOrigins = 256

// op is one write. value nil deletes key; dropSession deletes the session of
// client key with its subscriptions and in-flight messages. An op without
// bucket and not dropSession writes nothing: it marks a point in the queue.
type op struct {
	bucket      []byte
	key         []byte
	value       []byte
	dropSession bool
	ack         *pendingAck // a PUBACK to send once this point is committed
	done        chan error  // gets the commit's result
}

// pendingAck is a routed QoS 1 publish waiting for the commit of its copies.
type pendingAck struct {
	from     *mochi.Client
	packetID uint16
	err      error // why the publish is refused: routing or the commit failed
}

type store struct {
	mochi.HookBase
	srv *mochi.Server
	db  *bbolt.DB

	mu     sync.Mutex
	queue  []op
	closed bool
	wake   chan struct{}

	committed chan []pendingAck
	quit      chan struct{}
	writer    sync.WaitGroup
	acker     sync.WaitGroup
	strandSeq atomic.Uint64 // numbers stranded records

	originsMu sync.Mutex
	origins   map[string]*mochi.Client

	stopOnce sync.Once
	stopErr  error
}

func newStore(srv *mochi.Server) *store {
	return &store{
		srv:       srv,
		wake:      make(chan struct{}, 1),
		committed: make(chan []pendingAck, 64),
		quit:      make(chan struct{}),
		origins:   map[string]*mochi.Client{},
	}
}

func (h *store) ID() string { return "wgkex-store" }

func (h *store) Provides(b byte) bool {
	switch b {
	case mochi.OnSessionEstablish, mochi.OnDisconnect, mochi.OnSubscribed, mochi.OnUnsubscribed,
		mochi.OnPublish, mochi.OnRetainMessage, mochi.OnQosPublish, mochi.OnQosComplete, mochi.OnQosDropped,
		mochi.OnClientExpired, mochi.OnRetainedExpired,
		mochi.StoredClients, mochi.StoredSubscriptions, mochi.StoredInflightMessages, mochi.StoredRetainedMessages:
		return true
	}
	return false
}

// Init opens the file (config is its path) and starts the writer and the
// acknowledger.
func (h *store) Init(config any) error {
	path, ok := config.(string)
	if !ok || path == "" {
		return mochi.ErrInvalidConfigType
	}
	// The map freelist and no freelist sync make commits cheaper; bbolt
	// rebuilds the freelist when it opens the file.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			err = errors.New("locked by another process")
		}
		return fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketSessions, bucketSubs, bucketInflight, bucketRetained} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return settleStranded(tx.Bucket(bucketInflight))
	})
	if err != nil {
		db.Close()
		return fmt.Errorf("open store %s: %w", path, err)
	}
	h.db = db
	h.writer.Add(1)
	go h.write()
	h.acker.Add(1)
	go h.acknowledge()
	return nil
}

// Stop ends the acknowledger (publishers that get no PUBACK send again),
// commits what is queued and closes the file.
func (h *store) Stop() error {
	h.stopOnce.Do(func() {
		close(h.quit)
		h.acker.Wait()
		h.mu.Lock()
		h.closed = true
		h.mu.Unlock()
		h.signal()
		h.writer.Wait()
		h.stopErr = h.db.Close()
	})
	return h.stopErr
}

func (h *store) signal() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// enqueue adds ops for the writer; false once the store is closed.
func (h *store) enqueue(ops ...op) bool {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return false
	}
	h.queue = append(h.queue, ops...)
	h.mu.Unlock()
	h.signal()
	return true
}

// wait enqueues ops and returns once they are committed.
func (h *store) wait(ops ...op) error {
	done := make(chan error, 1)
	ops[len(ops)-1].done = done
	if !h.enqueue(ops...) {
		return errStoreClosed
	}
	return <-done
}

// write commits the queue, one transaction for whatever has gathered while
// the previous commit ran, until Stop.
func (h *store) write() {
	defer h.writer.Done()
	for range h.wake {
		h.mu.Lock()
		ops, closed := h.queue, h.closed
		h.queue = nil
		h.mu.Unlock()
		if len(ops) > 0 {
			h.commit(ops)
		}
		if closed {
			return
		}
	}
}

func (h *store) commit(ops []op) {
	var err error
	if writes(ops) {
		err = h.db.Update(func(tx *bbolt.Tx) error {
			for i := range ops {
				if err := apply(tx, &ops[i]); err != nil {
					return err
				}
			}
			return nil
		})
	} // else only marks: what came before them is committed already
	if err != nil {
		err = fmt.Errorf("store commit: %w", err)
		h.Log.Error("store: commit failed; publishes waiting for it are refused, other changes live in memory only", "error", err, "writes", len(ops))
	}
	var acks []pendingAck
	for i := range ops {
		if ops[i].done != nil {
			ops[i].done <- err
		}
		if a := ops[i].ack; a != nil {
			if a.err == nil {
				a.err = err
			}
			acks = append(acks, *a)
		}
	}
	if len(acks) > 0 {
		select {
		case h.committed <- acks:
		case <-h.quit:
		}
	}
}

func writes(ops []op) bool {
	for i := range ops {
		if ops[i].bucket != nil || ops[i].dropSession {
			return true
		}
	}
	return false
}

func apply(tx *bbolt.Tx, o *op) error {
	switch {
	case o.dropSession:
		return dropSession(tx, o.key)
	case o.bucket == nil:
		return nil
	case o.value == nil:
		return tx.Bucket(o.bucket).Delete(o.key)
	default:
		return tx.Bucket(o.bucket).Put(o.key, o.value)
	}
}

func dropSession(tx *bbolt.Tx, id []byte) error {
	if err := tx.Bucket(bucketSessions).Delete(id); err != nil {
		return err
	}
	prefix := clientKey(string(id))
	for _, name := range [][]byte{bucketSubs, bucketInflight} {
		b := tx.Bucket(name)
		var keys [][]byte // deleting while iterating a bbolt cursor skips keys
		c := b.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			keys = append(keys, append([]byte(nil), k...))
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
	}
	return nil
}

// acknowledge sends the PUBACKs of committed publishes, in commit order, so
// every publisher gets them in the order it sent. It is a goroutine of its
// own so that a client slow to read blocks no commit.
func (h *store) acknowledge() {
	defer h.acker.Done()
	for {
		select {
		case <-h.quit:
			return
		case acks := <-h.committed:
			for _, a := range acks {
				h.sendAck(a)
			}
		}
	}
}

// sendAck acknowledges a publish, or refuses it when its commit failed:
// MQTT 5 has a negative PUBACK, MQTT 3 only a dropped connection, after
// which the client sends the message again. A publisher gone by now sends
// it again when it comes back: QoS 1 allows the duplicate.
func (h *store) sendAck(a pendingAck) {
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: a.packetID, ReasonCode: packets.CodeSuccess.Code}
	switch {
	case a.err == nil:
		_ = a.from.WritePacket(ack)
	case a.from.Properties.ProtocolVersion == 5:
		ack.ReasonCode = packets.ErrUnspecifiedError.Code
		ack.Properties.ReasonString = "message could not be stored"
		_ = a.from.WritePacket(ack)
	default:
		a.from.Stop(a.err)
	}
	a.from.State.Inflight.IncreaseReceiveQuota()
}

// origin is an inline client with the publisher's id: routing through it
// keeps the message's origin (no-local subscriptions) without a connection.
func (h *store) origin(id string) *mochi.Client {
	h.originsMu.Lock()
	defer h.originsMu.Unlock()
	if cl, ok := h.origins[id]; ok {
		return cl
	}
	if len(h.origins) >= maxOrigins {
		clear(h.origins)
	}
	cl := h.srv.NewClient(nil, mochi.LocalListener, id, true)
	cl.Properties.ProtocolVersion = 5
	h.origins[id] = cl
	return cl
}

// OnPublish takes QoS 1 publishes from connected clients over (see the
// top of this file). The receive quota mochi would have taken is taken
// here, so mochi still disconnects a client that exceeds the receive
// maximum.
func (h *store) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || pk.FixedHeader.Qos == 0 {
		return pk, nil
	}
	cl.State.Inflight.DecreaseReceiveQuota()
	in := pk
	in.FixedHeader.Dup = false
	in.Properties.TopicAlias, in.Properties.TopicAliasFlag = 0, false // resolved already
	ack := &pendingAck{from: cl, packetID: pk.PacketID}
	if err := h.srv.InjectPacket(h.origin(cl.ID), in); err != nil {
		h.Log.Warn("store: routing a publish failed", "error", err, "client", cl.ID, "topic", pk.TopicName)
		ack.err = err // refused, in its turn among the client's PUBACKs
	}
	if !h.enqueue(op{ack: ack}) {
		// Shutting down: no PUBACK, so the client sends it again later.
		cl.State.Inflight.IncreaseReceiveQuota()
	}
	return pk, packets.ErrRejectPacket
}

// OnSessionEstablish runs before the CONNACK: a persistent session is on
// disk before the client learns that it has one.
func (h *store) OnSessionEstablish(cl *mochi.Client, _ packets.Packet) {
	if !persistent(cl) {
		h.enqueue(op{dropSession: true, key: []byte(cl.ID)})
		return
	}
	if o, ok := h.sessionOp(cl); ok {
		if err := h.wait(o); err != nil {
			h.Log.Error("store: session not stored", "client", cl.ID, "error", err)
		}
	}
}

func (h *store) OnDisconnect(cl *mochi.Client, _ error, expire bool) {
	if cl.Net.Inline || h.replaced(cl) {
		return
	}
	if expire {
		h.enqueue(op{dropSession: true, key: []byte(cl.ID)})
		return
	}
	if o, ok := h.sessionOp(cl); ok && persistent(cl) {
		h.enqueue(o) // DISCONNECT may have changed the session expiry
	}
}

// replaced reports whether another connection has taken cl's session, so
// that what cl does on its way out must not touch the stored session.
func (h *store) replaced(cl *mochi.Client) bool {
	if cl.IsTakenOver() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver) {
		return true
	}
	current, ok := h.srv.Clients.Get(cl.ID)
	return ok && current != cl
}

func (h *store) OnClientExpired(cl *mochi.Client) {
	h.enqueue(op{dropSession: true, key: []byte(cl.ID)})
}

// OnSubscribed runs before the SUBACK: the subscription is on disk before
// the client relies on it. Refused filters are not stored, and do not
// remove an earlier subscription to the same filter (mochi keeps it too).
func (h *store) OnSubscribed(cl *mochi.Client, pk packets.Packet, codes []byte) {
	if !persistent(cl) {
		return
	}
	var ops []op
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] >= packets.ErrUnspecifiedError.Code {
			continue
		}
		key := append(clientKey(cl.ID), f.Filter...)
		if len(key) > bbolt.MaxKeySize {
			h.Log.Warn("store: subscription too long to store", "client", cl.ID)
			continue
		}
		value, err := json.Marshal(storage.Subscription{
			T: storage.SubscriptionKey, Client: cl.ID, Filter: f.Filter, Qos: codes[i],
			Identifier: f.Identifier, RetainHandling: f.RetainHandling,
			RetainAsPublished: f.RetainAsPublished, NoLocal: f.NoLocal,
		})
		if err != nil {
			continue
		}
		ops = append(ops, op{bucket: bucketSubs, key: key, value: value})
	}
	if len(ops) == 0 {
		return
	}
	if err := h.wait(ops...); err != nil {
		h.Log.Error("store: subscription not stored", "client", cl.ID, "error", err)
	}
}

func (h *store) OnUnsubscribed(cl *mochi.Client, pk packets.Packet) {
	if !persistent(cl) {
		return
	}
	for _, f := range pk.Filters {
		h.enqueue(op{bucket: bucketSubs, key: append(clientKey(cl.ID), f.Filter...)})
	}
}

// OnQosPublish stores a message queued or in flight to a persistent
// session, with its packet id. It runs again for every resend.
func (h *store) OnQosPublish(cl *mochi.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type != packets.Publish || !persistent(cl) || cl.IsTakenOver() {
		return // a taken-over session's messages are the guard's (strand)
	}
	if pk.TopicName == "" {
		// Sent by outbound topic alias alone: the topic is not in the packet.
		// wgkex's clients accept no aliases, so mochi never does this to them.
		h.Log.Warn("store: message sent by topic alias not stored", "client", cl.ID)
		return
	}
	value, err := json.Marshal(messageRecord(cl.ID, pk))
	if err != nil {
		return
	}
	h.enqueue(op{bucket: bucketInflight, key: inflightKey(cl.ID, pk.PacketID), value: value})
}

// strand records a message that was routed to a session object that a
// reconnecting client has taken over (guard.go), under a key of its own
// until it is queued again with a new packet id; it returns the key.
func (h *store) strand(clientID string, pk packets.Packet) []byte {
	value, err := json.Marshal(messageRecord(clientID, pk))
	if err != nil {
		return nil
	}
	key := strandedKey(clientID, h.strandSeq.Add(1))
	h.enqueue(op{bucket: bucketInflight, key: key, value: value})
	return key
}

func (h *store) forget(key []byte) {
	h.enqueue(op{bucket: bucketInflight, key: key})
}

func (h *store) OnQosComplete(cl *mochi.Client, pk packets.Packet) {
	h.dropInflight(cl, pk.PacketID)
}

func (h *store) OnQosDropped(cl *mochi.Client, pk packets.Packet) {
	if cl.IsTakenOver() {
		return // the new connection carries the message on
	}
	h.dropInflight(cl, pk.PacketID)
}

// dropInflight deletes a completed message unless its packet id is in use
// again: mochi frees the id before it calls the hook, so a new message may
// already have taken the id and queued its own record under the same key.
// Checking under the queue lock orders the two writes correctly.
func (h *store) dropInflight(cl *mochi.Client, id uint16) {
	if !persistent(cl) {
		return
	}
	h.mu.Lock()
	if _, inUse := cl.State.Inflight.Get(id); inUse || h.closed {
		h.mu.Unlock()
		return
	}
	h.queue = append(h.queue, op{bucket: bucketInflight, key: inflightKey(cl.ID, id)})
	h.mu.Unlock()
	h.signal()
}

func (h *store) OnRetainMessage(_ *mochi.Client, pk packets.Packet, _ int64) {
	key := []byte(pk.TopicName)
	if len(key) > bbolt.MaxKeySize {
		h.Log.Warn("store: retained topic too long to store")
		return
	}
	if len(pk.Payload) == 0 { // an empty retained message clears the topic
		h.enqueue(op{bucket: bucketRetained, key: key})
		return
	}
	m := messageRecord("", pk)
	m.PacketID = 0
	value, err := json.Marshal(m)
	if err != nil {
		return
	}
	h.enqueue(op{bucket: bucketRetained, key: key, value: value})
}

func (h *store) OnRetainedExpired(topic string) {
	h.enqueue(op{bucket: bucketRetained, key: []byte(topic)})
}

func (h *store) StoredClients() ([]storage.Client, error) {
	return load[storage.Client](h, bucketSessions)
}

func (h *store) StoredSubscriptions() ([]storage.Subscription, error) {
	return load[storage.Subscription](h, bucketSubs)
}

func (h *store) StoredInflightMessages() ([]storage.Message, error) {
	return load[storage.Message](h, bucketInflight)
}

func (h *store) StoredRetainedMessages() ([]storage.Message, error) {
	return load[storage.Message](h, bucketRetained)
}

// load decodes a bucket; an unreadable record is skipped with a warning
// rather than keeping the server from starting.
func load[T any](h *store, bucket []byte) ([]T, error) {
	var out []T
	err := h.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			var x T
			if err := json.Unmarshal(v, &x); err != nil {
				h.Log.Warn("store: skipping unreadable record", "bucket", string(bucket), "key", fmt.Sprintf("%q", k), "error", err)
				return nil
			}
			out = append(out, x)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read store bucket %s: %w", bucket, err)
	}
	return out, nil
}

// sessionOp is the write of cl's session record. The topic alias maximum
// is left out: a session restored from the store must not address messages
// it queues by alias, as the connection that learnt the aliases is gone.
func (h *store) sessionOp(cl *mochi.Client) (op, bool) {
	if len(cl.ID) > bbolt.MaxKeySize {
		return op{}, false
	}
	p := cl.Properties.Props
	value, err := json.Marshal(storage.Client{
		ID: cl.ID, T: storage.ClientKey, Remote: cl.Net.Remote, Listener: cl.Net.Listener,
		Username: cl.Properties.Username, Clean: cl.Properties.Clean, ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval:     p.SessionExpiryInterval,
			SessionExpiryIntervalFlag: p.SessionExpiryIntervalFlag,
			ReceiveMaximum:            p.ReceiveMaximum,
			MaximumPacketSize:         p.MaximumPacketSize,
			RequestProblemInfo:        p.RequestProblemInfo,
			RequestProblemInfoFlag:    p.RequestProblemInfoFlag,
			RequestResponseInfo:       p.RequestResponseInfo,
			User:                      p.User,
		},
	})
	if err != nil {
		return op{}, false
	}
	return op{bucket: bucketSessions, key: []byte(cl.ID), value: value}, true
}

// persistent reports whether cl's session outlives its connection, by the
// rule mochi applies when the connection ends.
func persistent(cl *mochi.Client) bool {
	if cl.Net.Inline {
		return false
	}
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// messageRecord is pk as stored, packet id included: a message restored
// without it cannot be resent.
func messageRecord(clientID string, pk packets.Packet) storage.Message {
	p := pk.Properties
	return storage.Message{
		T:           storage.InflightKey,
		Client:      clientID,
		Origin:      pk.Origin,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain},
		PacketID:    pk.PacketID,
		Created:     pk.Created,
		Properties: storage.MessageProperties{
			PayloadFormat:          p.PayloadFormat,
			PayloadFormatFlag:      p.PayloadFormatFlag,
			MessageExpiryInterval:  p.MessageExpiryInterval,
			ContentType:            p.ContentType,
			ResponseTopic:          p.ResponseTopic,
			CorrelationData:        p.CorrelationData,
			SubscriptionIdentifier: p.SubscriptionIdentifier,
			User:                   p.User,
		},
	}
}

// clientKey prefixes a client's keys with the id's length, so that no
// client's prefix is the start of another's.
func clientKey(id string) []byte {
	k := make([]byte, 2, 2+len(id)+2)
	binary.BigEndian.PutUint16(k, uint16(len(id)))
	return append(k, id...)
}

func inflightKey(id string, packetID uint16) []byte {
	return binary.BigEndian.AppendUint16(clientKey(id), packetID)
}

// strandedKey cannot clash with an in-flight key: it is longer, and packet
// id 0 does not exist.
func strandedKey(id string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(inflightKey(id, 0), seq)
}

// settleStranded gives the stranded records an earlier run left (see
// strand) packet ids their sessions do not use, so that mochi loads them as
// in-flight messages.
func settleStranded(b *bbolt.Bucket) error {
	used := map[string]map[uint16]bool{} // client key → packet ids
	type pending struct{ key, client []byte }
	var stranded []pending
	err := b.ForEach(func(k, _ []byte) error {
		if len(k) < 2 {
			return nil
		}
		n := 2 + int(binary.BigEndian.Uint16(k))
		switch len(k) - n {
		case 2:
			c := string(k[:n])
			if used[c] == nil {
				used[c] = map[uint16]bool{}
			}
			used[c][binary.BigEndian.Uint16(k[n:])] = true
		case 10:
			stranded = append(stranded, pending{append([]byte(nil), k...), append([]byte(nil), k[:n]...)})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, s := range stranded {
		var m storage.Message
		if err := json.Unmarshal(b.Get(s.key), &m); err == nil {
			ids := used[string(s.client)]
			if ids == nil {
				ids = map[uint16]bool{}
				used[string(s.client)] = ids
			}
			id := uint16(1)
			for ids[id] && id < 65535 {
				id++
			}
			if !ids[id] {
				ids[id] = true
				m.PacketID = id
				value, err := json.Marshal(m)
				if err != nil {
					return err
				}
				if err := b.Put(binary.BigEndian.AppendUint16(s.client, id), value); err != nil {
					return err
				}
			}
		}
		if err := b.Delete(s.key); err != nil {
			return err
		}
	}
	return nil
}
