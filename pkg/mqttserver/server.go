// Package mqttserver runs an in-process MQTT server (mochi-mqtt) so that a
// broker needs no other service. Workers and other brokers connect to it
// like to any MQTT server.
package mqttserver

import (
	"context"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net"
	"strings"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Options configure the server.
type Options struct {
	Listen string // host:port; port 0 picks a free one
	// Username and Password, when set, are required of every client.
	Username string
	Password string
	Logger   *slog.Logger
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

// Start listens and serves in the background until Close.
func Start(o Options) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumMessageExpiryInterval = retainedLifetime
	srv := mochi.New(&mochi.Options{
		Capabilities: caps,
		Logger:       quieter(o.Logger).With("component", "embedded-mqtt"),
	})
	if err := srv.AddHook(&authHook{user: []byte(o.Username), pass: []byte(o.Password)}, nil); err != nil {
		return nil, fmt.Errorf("embedded MQTT server: %w", err)
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded MQTT server: listen on %s: %w", o.Listen, err)
	}
	if err := srv.AddListener(listeners.NewNet("tcp", ln)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("embedded MQTT server: %w", err)
	}
	if err := srv.Serve(); err != nil {
		ln.Close()
		return nil, fmt.Errorf("embedded MQTT server: %w", err)
	}
	return &Server{srv: srv, addr: ln.Addr()}, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.addr }

// Close disconnects every client and stops listening.
func (s *Server) Close() error { return s.srv.Close() }

// authHook admits everyone when no credentials are configured (loopback
// only, config validation sees to that), and otherwise only clients with
// the configured username and password, compared in constant time.
type authHook struct {
	mochi.HookBase
	user, pass []byte
}

func (h *authHook) ID() string { return "wgkex-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (h *authHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	if len(h.user) == 0 && len(h.pass) == 0 {
		return true
	}
	userOK := subtle.ConstantTimeCompare(pk.Connect.Username, h.user)
	passOK := subtle.ConstantTimeCompare(pk.Connect.Password, h.pass)
	return userOK&passOK == 1
}

func (h *authHook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool { return true }

// quieter passes mochi's chatty info lines (every connect, every hook) only
// when debug logging is on; warnings and errors always.
func quieter(l *slog.Logger) *slog.Logger {
	if l.Enabled(context.Background(), slog.LevelDebug) {
		return l
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
// itself on shutdown.
func (h minLevel) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "client keepalive is below minimum") {
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
