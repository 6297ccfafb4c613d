package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/freifunkMUC/wgkex/internal/httpjson"
)

// Server limits (docs/protocol.md §2.2).
const (
	maxHeaderBytes    = 16 << 10
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 15 * time.Second
	idleTimeout       = 120 * time.Second
	shutdownTimeout   = 10 * time.Second
)

// defaultMaxConnections bounds the HTTP connections the broker serves at
// once. An idle connection costs it about 16 KiB (goroutine stack, read and
// write buffers), some 20 KiB with the collector's headroom, so this bound
// keeps a flood of idle connections near 100 MiB (bench/idleconns.sh; without
// it, 20,000 of them took the broker past 200 MiB). Real load is far below it:
// a node's key exchange holds a connection for milliseconds. It equals
// Linux's default accept queue (somaxconn), which waits behind it.
const defaultMaxConnections = 4096

// Serve answers HTTP on ln until ctx is done, then stops accepting, lets the
// requests in flight finish (at most 10 s) and returns nil. Serve closes ln.
//
// At most Options.MaxConnections connections are served at once. Further
// clients wait: one accepted but not yet read, the others already connected
// in the kernel's accept queue (beyond its length the kernel drops their
// SYNs, which clients retry). They cost the broker no memory and are served
// as soon as places free up. Accepting them only to answer 503 would turn a
// client that could be served seconds later into a failure, and to deliver
// a 503 reliably (without a reset discarding it) the broker would have to
// keep reading each refused connection for a while. Places free up quickly:
// a connection that sends no complete header is closed after 5 s, and a
// waiting client makes an idle keep-alive connection close.
func (b *Broker) Serve(ctx context.Context, ln net.Listener) error {
	return b.serve(ctx, ln, b.newServer())
}

func (b *Broker) newServer() *http.Server {
	return &http.Server{
		Handler:           b,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// net/http logs failed accepts (such as running out of file
		// descriptors) and panics in handlers here.
		ErrorLog: slog.NewLogLogger(b.log.Handler(), slog.LevelWarn),
	}
}

func (b *Broker) serve(ctx context.Context, ln net.Listener, srv *http.Server) error {
	if b.maxConn > 0 {
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < uint64(b.maxConn)+128 {
			b.log.Warn("the open-files limit is below broker_listen.max_connections; accepts fail with EMFILE before the bound is reached",
				"limit", lim.Cur, "max_connections", b.maxConn)
		}
	}
	l := b.limitListener(ln, srv.MaxHeaderBytes)
	srv.ConnState = l.track
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	b.log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		b.log.Warn("HTTP shutdown: closing the connections still busy", "err", err)
		srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http server: %w", err)
	}
	return nil
}

// limitListener bounds the open connections (golang.org/x/net/netutil's
// LimitListener does too, but its connections hide the TCP CloseWrite that
// net/http uses to deliver an error reply before hanging up) and turns the
// error replies net/http writes by itself into JSON.
type limitListener struct {
	net.Listener
	b         *Broker
	sem       chan struct{} // nil: no bound
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	maxHeader int

	idleMu sync.Mutex
	idle   map[*serverConn]struct{} // keep-alive connections between requests
}

func (b *Broker) limitListener(ln net.Listener, maxHeader int) *limitListener {
	l := &limitListener{Listener: ln, b: b, done: make(chan struct{}), maxHeader: maxHeader, idle: map[*serverConn]struct{}{}}
	if b.maxConn > 0 {
		l.sem = make(chan struct{}, b.maxConn)
	}
	return l
}

func (l *limitListener) Accept() (net.Conn, error) {
	// Accept first: only a client actually waiting may push out an idle
	// connection. At the bound it waits here, accepted but not served, and
	// those behind it wait in the kernel's queue.
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if l.sem != nil {
		select {
		case l.sem <- struct{}{}:
		default:
			// At the bound, an idle keep-alive connection gives its place:
			// otherwise a client could hold one for the idle timeout with a
			// single request.
			l.closeIdle()
			select {
			case l.sem <- struct{}{}:
			case <-l.done:
				c.Close()
				return nil, net.ErrClosed
			}
		}
	}
	l.b.open.Add(1)
	return &serverConn{Conn: c, l: l}, nil
}

// track follows net/http's view of each connection (http.Server.ConnState).
func (l *limitListener) track(c net.Conn, state http.ConnState) {
	sc, ok := c.(*serverConn)
	if !ok {
		return
	}
	l.idleMu.Lock()
	defer l.idleMu.Unlock()
	if state == http.StateIdle {
		l.idle[sc] = struct{}{}
	} else {
		delete(l.idle, sc)
	}
}

// closeIdle closes one keep-alive connection waiting for its next request,
// if there is one. A request arriving on it at this very moment fails, as
// it would at the idle timeout; HTTP clients retry those.
func (l *limitListener) closeIdle() {
	l.idleMu.Lock()
	var victim *serverConn
	for c := range l.idle {
		victim = c
		delete(l.idle, c)
		break
	}
	l.idleMu.Unlock()
	if victim != nil {
		victim.Close()
	}
}

func (l *limitListener) release() {
	if l.sem != nil {
		<-l.sem
	}
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// serverConn is an accepted connection: it gives its place back when closed.
type serverConn struct {
	net.Conn
	l         *limitListener
	closeOnce sync.Once
}

func (c *serverConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.l.b.open.Add(-1)
		c.l.release()
	})
	return err
}

// CloseWrite lets net/http send FIN after an error reply, so the client reads
// the reply instead of a connection reset.
func (c *serverConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *serverConn) Write(p []byte) (int, error) {
	if reply, code, ok := jsonServerError(p, c.l.maxHeader); ok {
		c.l.b.limits.protocolErrors.WithLabelValues(strconv.Itoa(code)).Inc()
		if _, err := c.Conn.Write(reply); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// netHTTPErrorHeaders follow the status line of every reply net/http writes
// itself, before any handler runs: 431 (header over MaxHeaderBytes), 400
// (malformed request), 501 (unknown transfer coding), 505 (HTTP version).
// It writes each such reply, whole, in one Write on the connection; net/http
// has no hook to shape them otherwise.
const netHTTPErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// jsonServerError turns such a reply into our error shape
// (docs/protocol.md §2.2). Anything else is not touched: the replies of our
// handlers carry other headers (Content-Length, Date) after the status line,
// and their bodies never hold a CR LF.
func jsonServerError(p []byte, maxHeader int) (reply []byte, code int, ok bool) {
	const proto = "HTTP/1.1 "
	if len(p) < len(proto)+4 || !bytes.HasPrefix(p, []byte(proto)) || (p[len(proto)] != '4' && p[len(proto)] != '5') {
		return nil, 0, false
	}
	i := bytes.Index(p, []byte(netHTTPErrorHeaders))
	if i < len(proto)+4 { // not there, or no room for the code and a space
		return nil, 0, false
	}
	status, body := string(p[len(proto):i]), string(p[i+len(netHTTPErrorHeaders):])
	code, err := strconv.Atoi(status[:3])
	if err != nil || status[3] != ' ' || strings.ContainsAny(status, "\r\n") || http.StatusText(code) == "" {
		return nil, 0, false
	}
	var msg string
	switch _, detail, found := strings.Cut(body, ": "); {
	case code == http.StatusRequestHeaderFieldsTooLarge:
		msg = fmt.Sprintf("request headers over %d bytes", maxHeader)
	case found && strings.HasPrefix(body, status[:3]):
		msg = detail // "400 Bad Request: missing required Host header"
	case body == status && code == http.StatusBadRequest:
		msg = "malformed HTTP request"
	default:
		msg = strings.ToLower(strings.TrimPrefix(body, status[:4]))
	}
	if msg == "" {
		msg = strings.ToLower(http.StatusText(code))
	}
	var e httpjson.ErrorBody
	e.Error.Message = msg
	js, _ := json.Marshal(e)
	reply = fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Length: %d\r\nContent-Type: application/json\r\n\r\n%s\n",
		code, http.StatusText(code), len(js)+1, js)
	return reply, code, true
}
