// Package mqtt is the MQTT v5 glue (autopaho) shared by the broker and the
// worker: connection with TLS and credentials, reconnect with backoff,
// subscriptions renewed on every connection, clean disconnect.
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/freifunkMUC/wgkex/pkg/config"
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
}

// Options configure a Client.
type Options struct {
	Server    *url.URL
	ClientID  string
	Username  string
	Password  string
	Keepalive time.Duration
	TLS       *tls.Config

	// Persistent keeps the session on the server across connections and
	// restarts (clean start off, SessionExpiry), so QoS 1 messages sent
	// while the client is away are delivered when it returns.
	Persistent    bool
	SessionExpiry time.Duration

	Will *Will

	Subscriptions []Subscription
	// OnMessage gets every publication. It runs on the receive path and
	// must return quickly: hand slow work to a goroutine of your own.
	OnMessage func(Message)
	// OnReady runs after each (re)connection once the subscriptions are
	// acknowledged, in a goroutine the Client owns; ctx ends with the
	// connection's owner.
	OnReady func(ctx context.Context, c *Client)

	Logger *slog.Logger
}

// Will is the message the server publishes when the connection dies.
type Will struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// Client is a connection to an MQTT server that keeps itself up.
type Client struct {
	cm        atomic.Pointer[autopaho.ConnectionManager]
	opts      Options
	log       *slog.Logger
	connected atomic.Bool
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	// Connects counts successful connections (for tests and metrics).
	connects atomic.Int64
}

// ErrNotConnected is returned by Publish while the connection is down.
var ErrNotConnected = errors.New("not connected to the MQTT server")

// OptionsFromConfig fills the connection part of Options from cfg.
func OptionsFromConfig(cfg *config.Config) (Options, error) {
	u, err := cfg.ServerURL()
	if err != nil {
		return Options{}, err
	}
	o := Options{
		Server:    u,
		Username:  cfg.MQTT.Username,
		Password:  cfg.MQTT.Password,
		Keepalive: time.Duration(cfg.MQTT.Keepalive) * time.Second,
	}
	if u.Scheme == "tls" || u.Scheme == "mqtts" || u.Scheme == "ssl" || u.Scheme == "wss" || cfg.MQTT.TLS {
		if o.TLS, err = TLSConfig(cfg.MQTT); err != nil {
			return Options{}, err
		}
	}
	return o, nil
}

// TLSConfig builds the client TLS settings: the system roots, plus ca_file
// for a private CA, plus a client certificate when cert_file/key_file are set.
func TLSConfig(m config.MQTT) (*tls.Config, error) {
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

// Connect is New followed by Start.
func Connect(ctx context.Context, o Options) (*Client, error) {
	c := New(o)
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// New makes a Client without connecting it, so that the Client can be
// handed to whatever its OnMessage feeds before the first message arrives.
// Publish fails with ErrNotConnected until Start.
func New(o Options) *Client {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Client{opts: o, log: o.Logger}
	if o.Server != nil {
		c.log = o.Logger.With("mqtt", o.Server.Redacted())
	}
	return c
}

// Start starts the connection manager. It returns at once; the connection
// comes up (and is retried with backoff) in the background until Close. Use
// AwaitConnection to wait for it. Call Start once.
func (c *Client) Start(ctx context.Context) error {
	o := c.opts
	if o.Server == nil {
		return errors.New("mqtt: no server URL")
	}
	if c.cm.Load() != nil {
		return errors.New("mqtt: client already started")
	}
	c.ctx, c.cancel = context.WithCancel(ctx)

	keepalive := uint16(o.Keepalive / time.Second)
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{o.Server},
		TlsCfg:                        o.TLS,
		KeepAlive:                     keepalive,
		CleanStartOnInitialConnection: !o.Persistent,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(250*time.Millisecond, 30*time.Second, time.Second, 2),
		ConnectTimeout:                10 * time.Second,
		ConnectUsername:               o.Username,
		OnConnectionUp:                c.onUp,
		OnConnectionDown: func() bool {
			c.connected.Store(false)
			c.log.Warn("MQTT connection lost, reconnecting")
			return true
		},
		OnConnectError: func(err error) {
			c.log.Warn("MQTT connect failed", "err", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID: o.ClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) {
					if o.OnMessage != nil && pr.Packet != nil {
						o.OnMessage(Message{Topic: pr.Packet.Topic, Payload: pr.Packet.Payload, QoS: pr.Packet.QoS, Retained: pr.Packet.Retain})
					}
					return true, nil
				},
			},
			OnClientError: func(err error) { c.log.Debug("MQTT client error", "err", err) },
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
	if dial := dialer(o.Server.Scheme, o.TLS); dial != nil {
		cfg.AttemptConnection = func(ctx context.Context, _ autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return dial(ctx, u.Host)
		}
	}
	if o.Persistent {
		cfg.SessionExpiryInterval = uint32(o.SessionExpiry / time.Second)
	}
	if o.Will != nil {
		cfg.WillMessage = &paho.WillMessage{Topic: o.Will.Topic, Payload: o.Will.Payload, QoS: o.Will.QoS, Retain: o.Will.Retain}
	}
	cm, err := autopaho.NewConnection(c.ctx, cfg)
	if err != nil {
		c.cancel()
		return fmt.Errorf("mqtt: %w", err)
	}
	c.cm.Store(cm)
	return nil
}

// onUp must not block: subscribing waits for the SUBACK, so it runs in a
// goroutine the Client owns.
func (c *Client) onUp(cm *autopaho.ConnectionManager, ack *paho.Connack) {
	c.connects.Add(1)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if len(c.opts.Subscriptions) > 0 {
			sub := &paho.Subscribe{}
			for _, s := range c.opts.Subscriptions {
				sub.Subscriptions = append(sub.Subscriptions, paho.SubscribeOptions{Topic: s.Filter, QoS: s.QoS})
			}
			ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
			suback, err := cm.Subscribe(ctx, sub)
			cancel()
			if err != nil {
				c.log.Error("MQTT subscribe failed; reconnecting", "err", err)
				cm.TerminateConnectionForTest() // drop the connection so the next one subscribes again
				return
			}
			for i, code := range suback.Reasons {
				if code >= 0x80 && i < len(c.opts.Subscriptions) {
					c.log.Error("MQTT server refused subscription", "filter", c.opts.Subscriptions[i].Filter, "code", code)
				}
			}
		}
		c.connected.Store(true)
		c.log.Info("MQTT connected", "session_present", ack.SessionPresent)
		if c.opts.OnReady != nil {
			c.opts.OnReady(c.ctx, c)
		}
	}()
}

// AwaitConnection waits until the connection is up and subscribed.
func (c *Client) AwaitConnection(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !c.connected.Load() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for MQTT connection to %s: %w", c.opts.Server.Redacted(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Connected reports whether the connection is up and subscribed.
func (c *Client) Connected() bool { return c.connected.Load() }

// Connects is the number of successful connections so far.
func (c *Client) Connects() int64 { return c.connects.Load() }

// Publish sends one message and, for QoS 1 and 2, waits for the server's
// acknowledgement. It fails fast with ErrNotConnected while the
// connection is down instead of queueing, so callers can tell their users.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error {
	cm := c.cm.Load()
	if cm == nil {
		return ErrNotConnected
	}
	resp, err := cm.Publish(ctx, &paho.Publish{Topic: topic, Payload: payload, QoS: qos, Retain: retain})
	if errors.Is(err, autopaho.ConnectionDownError) {
		return ErrNotConnected
	}
	if err != nil {
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
	cm := c.cm.Load()
	if cm == nil {
		return nil
	}
	err := cm.Disconnect(ctx)
	c.cancel()
	c.wg.Wait()
	c.connected.Store(false)
	return err
}

// Kill drops the connection without DISCONNECT, as a crash would, so the
// server publishes the will. For tests.
func (c *Client) Kill() {
	if cm := c.cm.Load(); cm != nil {
		cm.TerminateConnectionForTest()
	}
}
