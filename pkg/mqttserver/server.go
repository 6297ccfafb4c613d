// Package mqttserver runs an in-process MQTT server (mochi-mqtt) so that a
// broker needs no other service. Workers and other brokers connect to it
// like to any MQTT server.
package mqttserver

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// Options configure the server.
type Options struct {
	Listen string // host:port; port 0 picks a free one
	// Username and Password, when set, are required of every client.
	Username string
	Password string
	// PasswordFile, a file in mosquitto_passwd(1) format, gives every
	// client a role (auth.go): Username (with Password, or its entry in the
	// file) is the broker, every other user in the file the worker of that
	// name, and each may use only its own topics (docs/protocol.md §3.5).
	// Empty: Username and Password are shared by all, with every right.
	PasswordFile string
	// Store is the path of a file in which the server keeps persistent
	// sessions, the QoS 1 messages queued for them and retained messages
	// across restarts, killed or stopped; it acknowledges a QoS 1 publish
	// once the message is on disk in every persistent session it goes to
	// (store.go). Empty keeps all of it in memory.
	Store  string
	Logger *slog.Logger
}

// Server is a running MQTT server.
type Server struct {
	srv  *mochi.Server
	addr net.Addr
}

// retainedLifetime keeps retained worker state for ten years: mochi expires
// messages after a day by default, which would make a broker restarted a day
// after its workers forget them.
const retainedLifetime = 10 * 365 * 24 * 60 * 60

// maxQueued is how many QoS 1 messages a session holds (queued while the
// client is away, or unacknowledged): all the packet ids there are. mochi's
// default of 8192 drops keys after four seconds away at 2,000 keys/s.
const maxQueued = 65535

// Start listens and serves in the background until Close.
func Start(o Options) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumMessageExpiryInterval = retainedLifetime
	caps.MaximumInflight = maxQueued
	if o.Store != "" {
		// The store's guarantees cover QoS 1 flows; wgkex uses no QoS 2, and
		// clients are told so in the CONNACK.
		caps.MaximumQos = 1
	}
	srv := mochi.New(&mochi.Options{
		Capabilities: caps,
		Logger:       quieter(o.Logger).With("component", "embedded-mqtt"),
	})
	auth, err := newAuthHook(o)
	if err != nil {
		return nil, fmt.Errorf("embedded MQTT server: %w", err)
	}
	if err := srv.AddHook(auth, nil); err != nil {
		return nil, fmt.Errorf("embedded MQTT server: %w", err)
	}
	var st *store
	if o.Store != "" {
		st = newStore(srv)
		if err := srv.AddHook(st, o.Store); err != nil {
			return nil, fmt.Errorf("embedded MQTT server: %w", err)
		}
	}
	if err := srv.AddHook(newGuard(srv, st), nil); err != nil {
		srv.Close()
		return nil, fmt.Errorf("embedded MQTT server: %w", err)
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("embedded MQTT server: listen on %s: %w", o.Listen, err)
	}
	if err := srv.AddListener(listeners.NewNet("tcp", ln)); err != nil {
		ln.Close()
		srv.Close()
		return nil, fmt.Errorf("embedded MQTT server: %w", err)
	}
	if err := srv.Serve(); err != nil { // loads the store first
		ln.Close()
		srv.Close()
		return nil, fmt.Errorf("embedded MQTT server: %w", err)
	}
	return &Server{srv: srv, addr: ln.Addr()}, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.addr }

// Close disconnects every client and stops listening.
func (s *Server) Close() error { return s.srv.Close() }

// quieter passes mochi's chatty info lines (every connect, every hook) only
// when debug logging is on; warnings and errors always.
func quieter(l *slog.Logger) *slog.Logger {
	if l.Enabled(context.Background(), slog.LevelDebug) {
		return slog.New(minLevel{l.Handler(), slog.LevelDebug})
	}
	return slog.New(minLevel{l.Handler(), slog.LevelWarn})
}

type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

// Handle drops two warnings mochi gives in normal operation: one for every
// client with the default 5 s keepalive (it compares with <= against its
// own recommended minimum of 5), and one for each connection it closes
// itself on shutdown. It also drops the debug line mochi writes for every
// publish the store takes over (it rejects them to mochi, store.go).
func (h minLevel) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "client keepalive is below minimum") || r.Message == "publish packet rejected" {
		return nil
	}
	noise := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" && strings.Contains(a.Value.String(), "use of closed network connection") {
			noise = true
		}
		return !noise
	})
	if noise {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(a), h.min}
}
func (h minLevel) WithGroup(n string) slog.Handler { return minLevel{h.Handler.WithGroup(n), h.min} }
