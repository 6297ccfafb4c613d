// Package mqtt is the MQTT v5 glue (autopaho) shared by the broker and the
// worker: connection with TLS and credentials, reconnect with backoff,
// subscriptions renewed on every connection, publishes that fail fast when
// the connection drops, optional manual acknowledgement, clean disconnect.
package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"

	"github.com/freifunkMUC/wgkex/pkg/config"
)

const (
	dialTimeout = 10 * time.Second
	// failoverTimeout bounds each connection attempt (dial, TLS, CONNACK)
	// when there are fallbacks: a hung server, whose kernel still accepts
	// TCP connections, would otherwise hold every reconnection for
	// dialTimeout before the next server is tried. A CONNACK takes a few
	// round trips.
	failoverTimeout  = 3 * time.Second
	subscribeTimeout = 10 * time.Second
)

// Subscription is a topic filter and its QoS.
type Subscription struct {
	Filter string
	QoS    byte
}

// Message is a received publication.
type Message struct {
	Topic    string
	Payload  []byte
	QoS      byte
	Retained bool

	ack func() error // nil unless Options.ManualAck and QoS > 0
}

// Ack acknowledges m to the server; with Options.ManualAck the server sends
// m again (on the next connection of a persistent session) until it is
// acknowledged. MQTT wants acknowledgements in the order the messages
// arrived, so an Ack waits (without blocking the caller) for those of the
// messages before m. Ack returns once the acknowledgement is queued on the
// connection; it fails when the connection m came on is gone, and the
// server will then send m again. Without ManualAck, and for QoS 0, Ack does
// nothing.
func (m Message) Ack() error {
	if m.ack == nil {
		return nil
	}
	return m.ack()
}

// Options configure a Client.
type Options struct {
	// Server is the MQTT server; Fallbacks are more servers with the same
	// topics (bridged, or one cluster). Every (re)connection tries Server
	// first, then each fallback in order, until one accepts: a client stays
	// on a fallback while that connection lasts. Sessions are per server, so
	// a persistent session starts afresh on each server it moves to.
	Server    *url.URL
	Fallbacks []*url.URL
	ClientID  string
	Username  string
	Password  string
	Keepalive time.Duration
	// TLS is required for, and used only with, the TLS schemes (tls, ssl,
	// mqtts, wss).
	TLS *tls.Config

	// Persistent keeps the session on the server across connections and
	// restarts (clean start off, SessionExpiry), so QoS 1 messages sent
	// while the client is away are delivered when it returns.
	Persistent    bool
	SessionExpiry time.Duration

	Will *Will

	Subscriptions []Subscription
	// OnMessage gets every publication, in the order they arrive. It runs
	// on the receive path and must return quickly: hand slow work to a
	// goroutine of your own.
	OnMessage func(Message)
	// ManualAck leaves the acknowledgement of QoS 1 and 2 messages to the
	// receiver, which calls Message.Ack once it has taken care of a message
	// (a worker: once the key is installed), so that a message is never
	// acknowledged and then lost. The server sends at most ReceiveMaximum
	// messages ahead of the acknowledgements: every message must be
	// acknowledged eventually, or delivery stops.
	ManualAck bool
	// ReceiveMaximum is how many QoS 1 and 2 messages the server may send
	// before it waits for acknowledgements (0: the server's own limit; for
	// Mosquitto that is max_inflight_messages, 20 by default).
	ReceiveMaximum uint16
	// OnReady runs after each (re)connection once the subscriptions are
	// acknowledged, in a goroutine the Client owns; ctx ends when that
	// connection is lost or the Client closes.
	OnReady func(ctx context.Context)

	Logger *slog.Logger
}

// Will is the message the server publishes when the connection dies.
type Will struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

var (
	// errNotConnected is returned by Publish while the connection is down,
	// and (wrapped) when it drops before the server acknowledged a publish.
	errNotConnected = errors.New("not connected to the MQTT server")
	// errConnectionLost ends what waits on a connection that dropped.
	errConnectionLost = errors.New("connection lost")
)

// OptionsFromConfig fills the connection part of Options from cfg: the
// first server of mqtt.broker_url, the others as fallbacks. It refuses
// mqtt.tls with a plain-text server URL rather than connect without TLS.
func OptionsFromConfig(cfg *config.Config) (Options, error) {
	urls, err := cfg.ServerURLs()
	if err != nil {
		return Options{}, err
	}
	o := Options{
		Server:    urls[0],
		Fallbacks: urls[1:],
		Username:  cfg.MQTT.Username,
		Password:  cfg.MQTT.Password,
		Keepalive: time.Duration(cfg.MQTT.Keepalive) * time.Second,
	}
	anyTLS := false
	for _, u := range urls {
		if cfg.MQTT.TLS && !tlsScheme(u.Scheme) {
			return Options{}, fmt.Errorf("mqtt.tls: true, but the MQTT server %s is plain text (use a tls://, mqtts://, ssl:// or wss:// URL, or a bare host name)", u.Redacted())
		}
		anyTLS = anyTLS || tlsScheme(u.Scheme)
	}
	if anyTLS {
		if o.TLS, err = tlsConfig(cfg.MQTT); err != nil {
			return Options{}, err
		}
	}
	return o, nil
}

// servers lists Server and the fallbacks, in the order they are tried.
func (o Options) servers() []*url.URL {
	if o.Server == nil {
		return nil
	}
	return append([]*url.URL{o.Server}, o.Fallbacks...)
}

// connectTimeout bounds one connection attempt to one server.
func (o Options) connectTimeout() time.Duration {
	if len(o.Fallbacks) > 0 {
		return failoverTimeout
	}
	return dialTimeout
}

// serverNames is the servers for messages, passwords masked.
func (o Options) serverNames() string {
	names := make([]string, 0, 1+len(o.Fallbacks))
	for _, u := range o.servers() {
		names = append(names, u.Redacted())
	}
	return strings.Join(names, ", ")
}

func tlsScheme(scheme string) bool {
	switch strings.ToLower(scheme) {
	case "tls", "ssl", "mqtts", "wss":
		return true
	}
	return false
}

// tlsConfig builds the client TLS settings: the system roots, plus ca_file
// for a private CA, plus a client certificate when cert_file/key_file are set.
func tlsConfig(m config.MQTT) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if m.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(m.CAFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt.ca_file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mqtt.ca_file %s: no PEM certificates found", m.CAFile)
		}
		tc.RootCAs = pool
	}
	if m.CertFile != "" || m.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(m.CertFile, m.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt.cert_file/mqtt.key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Client is a connection to an MQTT server that keeps itself up.
type Client struct {
	opts Options
	log  *slog.Logger
	// session is the MQTT session state, which outlives connections;
	// manual acknowledgements go to it directly.
	session *state.State

	ctx  context.Context // ends with Close
	stop context.CancelFunc
	wg   sync.WaitGroup // OnReady goroutines

	mu       sync.Mutex
	cm       *autopaho.ConnectionManager
	conn     *connection   // the latest connection (perhaps already lost)
	changed  chan struct{} // closed and replaced when conn or its state changes
	connects int           // connections that came up (for tests)
}

// connection is one network connection and what hangs off it: its context
// ends when the connection is lost, which ends its publishes waiting for an
// acknowledgement, its OnReady, and its message acknowledgements, so none
// of them can act on a later connection.
type connection struct {
	ctx    context.Context
	cancel context.CancelFunc
	net    *coalescingConn
	server *url.URL // the server dialled
	up     bool     // CONNACK received (guarded by Client.mu)
	ready  bool     // subscribed (guarded by Client.mu)

	ackMu   sync.Mutex
	unacked []*inbound // ManualAck: received QoS 1/2 messages, oldest first, until acknowledged in order
}

type inbound struct {
	pkt   *packets.Publish
	acked bool
}

// New makes a Client without connecting it, so that the Client can be
// handed to whatever its OnMessage feeds before the first message arrives.
// Publish fails until Start.
func New(o Options) *Client {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Client{opts: o, log: o.Logger, session: state.NewInMemory(), changed: make(chan struct{})}
	if o.Server != nil {
		c.log = o.Logger.With("mqtt", o.serverNames())
	}
	return c
}

// Start starts the connection manager. It returns at once; the connection
// comes up (and is retried with backoff) in the background until Close or
// until ctx ends. Use AwaitConnection to wait for it. Call Start once.
func (c *Client) Start(ctx context.Context) error {
	o := c.opts
	if o.Server == nil {
		return errors.New("mqtt: no server URL")
	}
	servers := o.servers()
	anyTLS := false
	for _, u := range servers {
		if u == nil {
			return errors.New("mqtt: a fallback server without URL")
		}
		anyTLS = anyTLS || tlsScheme(u.Scheme)
	}
	if o.TLS != nil && !anyTLS {
		return fmt.Errorf("mqtt: TLS settings given, but no server URL uses TLS (%s)", o.serverNames())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx != nil {
		return errors.New("mqtt: client already started")
	}
	c.ctx, c.stop = context.WithCancel(ctx)

	var sess session.SessionManager = c.session
	if o.ManualAck {
		sess = manualAcks{c.session}
	}
	cfg := autopaho.ClientConfig{
		ServerUrls:                    servers,
		KeepAlive:                     uint16(o.Keepalive / time.Second),
		CleanStartOnInitialConnection: !o.Persistent,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(250*time.Millisecond, 30*time.Second, time.Second, 2),
		ConnectTimeout:                o.connectTimeout(),
		ConnectUsername:               o.Username,
		AttemptConnection:             c.dial,
		OnConnectionUp:                c.onUp,
		OnConnectionDown:              c.onDown,
		OnConnectError: func(err error) {
			c.log.Warn("MQTT connect failed", "err", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID:          o.ClientID,
			Session:           sess,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){c.received},
			OnClientError:     func(err error) { c.log.Debug("MQTT client error", "err", err) },
			OnServerDisconnect: func(d *paho.Disconnect) {
				reason := ""
				if d.Properties != nil {
					reason = d.Properties.ReasonString
				}
				c.log.Warn("MQTT server disconnected us", "code", d.ReasonCode, "reason", reason)
			},
		},
	}
	if o.Password != "" {
		cfg.ConnectPassword = []byte(o.Password)
	}
	if o.Persistent {
		cfg.SessionExpiryInterval = uint32(o.SessionExpiry / time.Second)
	}
	if o.ReceiveMaximum > 0 {
		rm := o.ReceiveMaximum
		cfg.ConnectPacketBuilder = func(cp *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if cp.Properties == nil {
				cp.Properties = &paho.ConnectProperties{}
			}
			cp.Properties.ReceiveMaximum = &rm
			return cp, nil
		}
	}
	if o.Will != nil {
		cfg.WillMessage = &paho.WillMessage{Topic: o.Will.Topic, Payload: o.Will.Payload, QoS: o.Will.QoS, Retain: o.Will.Retain}
	}
	cm, err := autopaho.NewConnection(c.ctx, cfg)
	if err != nil {
		c.stop()
		return fmt.Errorf("mqtt: %w", err)
	}
	c.cm = cm
	return nil
}

// notifyLocked wakes everyone waiting for a change. c.mu is held.
func (c *Client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// dial opens each connection autopaho asks for (one at a time), and starts
// the connection's life.
func (c *Client) dial(ctx context.Context, _ autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
	c.mu.Lock()
	prev := c.conn
	c.mu.Unlock()
	if prev != nil {
		prev.retire()
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.connectTimeout())
	defer cancel()
	conn := &connection{}
	conn.ctx, conn.cancel = context.WithCancel(c.ctx)
	nc, err := dial(ctx, u, c.opts.TLS, func() { c.lost(conn) })
	if err != nil {
		conn.cancel()
		return nil, err
	}
	conn.net, conn.server = nc, u
	c.mu.Lock()
	c.conn = conn
	c.notifyLocked()
	c.mu.Unlock()
	return nc, nil
}

// lost ends conn: whatever waits on it gives up.
func (c *Client) lost(conn *connection) {
	conn.cancel()
	c.mu.Lock()
	if c.conn == conn {
		c.notifyLocked()
	}
	c.mu.Unlock()
}

// retire makes sure that no acknowledgement of conn's is still being
// written when the next connection takes over the session.
func (conn *connection) retire() {
	conn.cancel()
	conn.ackMu.Lock()
	conn.unacked = nil
	conn.ackMu.Unlock()
}

// onUp must not block: subscribing waits for the SUBACK, so it runs in a
// goroutine the Client owns, tied to this connection.
func (c *Client) onUp(cm *autopaho.ConnectionManager, ack *paho.Connack) {
	c.mu.Lock()
	conn := c.conn
	conn.up = true
	c.connects++
	c.notifyLocked()
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.subscribe(cm, conn, ack)
	}()
}

func (c *Client) subscribe(cm *autopaho.ConnectionManager, conn *connection, ack *paho.Connack) {
	if len(c.opts.Subscriptions) > 0 {
		sub := &paho.Subscribe{}
		for _, s := range c.opts.Subscriptions {
			sub.Subscriptions = append(sub.Subscriptions, paho.SubscribeOptions{Topic: s.Filter, QoS: s.QoS})
		}
		ctx, cancel := context.WithTimeout(conn.ctx, subscribeTimeout)
		suback, err := cm.Subscribe(ctx, sub)
		cancel()
		if conn.ctx.Err() != nil {
			return // the next connection subscribes again
		}
		refused := false
		if suback != nil {
			for i, code := range suback.Reasons {
				if code >= 0x80 && i < len(c.opts.Subscriptions) {
					c.log.Error("MQTT server refused subscription", "filter", c.opts.Subscriptions[i].Filter, "code", code)
					refused = true
				}
			}
		}
		if err != nil || refused {
			// Not ready without every subscription: try again on a new
			// connection.
			c.log.Error("MQTT subscribe failed; reconnecting", "err", err)
			conn.net.abort()
			return
		}
	}
	c.mu.Lock()
	current := c.conn == conn && conn.ctx.Err() == nil
	if current {
		conn.ready = true
		c.notifyLocked()
	}
	c.mu.Unlock()
	if !current {
		return
	}
	// The server's receive maximum bounds the QoS 1 publishes awaiting
	// acknowledgement (Mosquitto: max_inflight_messages, 20 by default);
	// more wait for a slot.
	inflight := "unlimited"
	if ack.Properties != nil && ack.Properties.ReceiveMaximum != nil {
		inflight = strconv.Itoa(int(*ack.Properties.ReceiveMaximum))
	}
	c.log.Info("MQTT connected", "server", conn.server.Redacted(), "session_present", ack.SessionPresent, "server_receive_maximum", inflight)
	if c.opts.OnReady != nil {
		c.opts.OnReady(conn.ctx)
	}
}

// onDown runs once autopaho has shut the lost connection down; the
// connection has normally ended itself already when its reader failed.
func (c *Client) onDown() bool {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		c.lost(conn)
	}
	c.log.Warn("MQTT connection lost, reconnecting")
	return true
}

// received hands a publication to OnMessage. paho calls it for one
// connection at a time, in the order the messages arrived.
func (c *Client) received(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	m := Message{Topic: p.Topic, Payload: p.Payload, QoS: p.QoS, Retained: p.Retain}
	if c.opts.ManualAck && p.QoS > 0 {
		c.mu.Lock()
		conn := c.conn // the one paho reads from: the next is dialled only after this one shut down
		c.mu.Unlock()
		in := &inbound{pkt: p.Packet()}
		conn.ackMu.Lock()
		conn.unacked = append(conn.unacked, in)
		conn.ackMu.Unlock()
		m.ack = func() error { return conn.ack(c.session, in) }
	}
	if c.opts.OnMessage == nil {
		return true, m.Ack()
	}
	c.opts.OnMessage(m)
	return true, nil
}

// ack marks in acknowledged and sends the acknowledgements that are due:
// MQTT requires them in the order the messages arrived [MQTT-4.6.0-2].
func (conn *connection) ack(s *state.State, in *inbound) error {
	conn.ackMu.Lock()
	defer conn.ackMu.Unlock()
	if conn.ctx.Err() != nil {
		return fmt.Errorf("acknowledge: connection lost, the server will send the message again: %w", errNotConnected)
	}
	in.acked = true
	n := 0
	for _, m := range conn.unacked {
		if !m.acked {
			break
		}
		if err := s.Ack(m.pkt); err != nil {
			conn.unacked = conn.unacked[n:]
			return fmt.Errorf("acknowledge: %w", err)
		}
		n++
	}
	conn.unacked = conn.unacked[n:]
	return nil
}

// manualAcks is the session state without the acknowledgement paho sends
// once OnPublishReceived returns: with ManualAck, Message.Ack sends it.
// (paho's own EnableManualAcknowledgment sends acknowledgements from a
// 50 ms ticker and drops those still pending when the connection closes,
// so a caller could never tell when an acknowledgement has left.)
type manualAcks struct{ *state.State }

func (manualAcks) Ack(*packets.Publish) error { return nil }

// AwaitConnection waits until the connection is up and subscribed.
func (c *Client) AwaitConnection(ctx context.Context) error {
	for {
		c.mu.Lock()
		ready := c.readyLocked()
		closed := c.ctx != nil && c.ctx.Err() != nil
		changed := c.changed
		c.mu.Unlock()
		if ready {
			return nil
		}
		if closed {
			return fmt.Errorf("waiting for MQTT connection to %s: client closed", c.opts.serverNames())
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for MQTT connection to %s: %w", c.opts.serverNames(), ctx.Err())
		}
	}
}

func (c *Client) readyLocked() bool {
	return c.conn != nil && c.conn.ready && c.conn.ctx.Err() == nil
}

// Connected reports whether the connection is up and subscribed.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readyLocked()
}

// Publish sends one message and, for QoS 1 and 2, waits for the server's
// acknowledgement. It fails at once while the connection is down instead
// of queueing, and as soon as the connection drops while it waits, so
// callers can tell their users. (A QoS 1 message that was sent before the
// drop may still reach the server, when a persistent session sends it
// again on the next connection.)
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error {
	c.mu.Lock()
	cm, conn := c.cm, c.conn
	up := conn != nil && conn.up
	c.mu.Unlock()
	if cm == nil || !up || conn.ctx.Err() != nil {
		return errNotConnected
	}
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(conn.ctx, func() { cancel(errConnectionLost) })()
	resp, err := cm.Publish(pctx, &paho.Publish{Topic: topic, Payload: payload, QoS: qos, Retain: retain})
	switch {
	case err == nil:
	case errors.Is(context.Cause(pctx), errConnectionLost):
		return fmt.Errorf("publish to %s: %w before the server acknowledged: %w", topic, errConnectionLost, errNotConnected)
	case errors.Is(err, autopaho.ConnectionDownError), errors.Is(err, session.ErrNoConnection):
		return errNotConnected
	default:
		return fmt.Errorf("publish to %s: %w", topic, err)
	}
	if resp != nil && resp.ReasonCode >= 0x80 {
		return fmt.Errorf("publish to %s: refused by server (reason %#x)", topic, resp.ReasonCode)
	}
	return nil
}

// Close disconnects cleanly (sending DISCONNECT, so no will is published)
// and waits for every goroutine of the Client, bounded by ctx.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	cm := c.cm
	c.mu.Unlock()
	if cm == nil {
		return nil
	}
	err := cm.Disconnect(ctx)
	c.stop()
	c.mu.Lock()
	c.notifyLocked() // AwaitConnection gives up
	c.mu.Unlock()
	done := make(chan struct{})
	go func() {
		<-cm.Done() // no OnReady starts after this
		c.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	return err
}

// Kill drops the connection without DISCONNECT, as a crash would, so the
// server publishes the will. The client then reconnects.
func (c *Client) Kill() {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil && conn.net != nil {
		conn.net.abort()
	}
}
