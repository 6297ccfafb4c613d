package mqtt

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

const (
	// maxPending bounds what coalescingConn holds for a slow peer; a writer
	// starting a packet waits while this much is queued.
	maxPending = 1 << 20
	// flushSize ends a batch even while more writers are queued, so that a
	// steady stream of writers keeps the connection busy.
	flushSize = 64 << 10
	// closeFlushTimeout bounds how long Close tries to deliver what is
	// queued (a DISCONNECT, say) to a peer that does not read.
	closeFlushTimeout = 2 * time.Second
)

// errAborted is what writers get after abort.
var errAborted = errors.New("connection aborted")

// coalescingConn gathers the packets that concurrent writers (publishers,
// acknowledgements, pings) write and hands them to the network in one write
// from a single flusher goroutine. Under load, one syscall then carries many
// PUBLISH packets instead of one each (a broker answering thousands of
// requests a second spent a quarter of its CPU in writev). paho writes every
// packet between Lock and Unlock (it checks for sync.Locker), which keeps
// each packet whole.
//
// A packet is flushed when no other writer is queued behind it (mochi-mqtt's
// rule for its client write loop): the writer queued behind adds its packet
// to the same batch and flushes both. So a lone packet leaves at once and a
// burst leaves in batches.
type coalescingConn struct {
	net.Conn // what is written and read: TCP, TLS or websocket
	// raw is the TCP connection beneath, which abort closes without a
	// goodbye of any layer above.
	raw net.Conn
	// r buffers reads: paho reads a packet's header a byte at a time,
	// which unbuffered costs several syscalls per acknowledgement. Only
	// paho's single reader goroutine calls Read.
	r *bufio.Reader
	// onLost runs once, when the connection fails or is closed.
	onLost   func()
	lostOnce sync.Once

	queued atomic.Int32 // writers waiting for mu in Lock

	mu      sync.Mutex
	space   *sync.Cond // signalled when the flusher takes the buffer or the connection ends
	buf     []byte
	err     error // first write error (or errAborted); later writes fail with it
	closing bool

	wake chan struct{} // capacity 1: "there is something to flush"
	done chan struct{} // closed when the flusher has exited

	onWait func() // for tests: a writer starts waiting for space
}

func newCoalescingConn(c, raw net.Conn, onLost func()) *coalescingConn {
	if raw == nil {
		raw = c
	}
	cc := &coalescingConn{Conn: c, raw: raw, onLost: onLost, r: bufio.NewReaderSize(c, 64<<10),
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	cc.space = sync.NewCond(&cc.mu)
	go cc.flusher()
	return cc
}

// Lock starts a packet; it waits while too much is queued.
func (c *coalescingConn) Lock() {
	c.queued.Add(1)
	c.mu.Lock()
	c.queued.Add(-1)
	for len(c.buf) >= maxPending && c.err == nil && !c.closing {
		if c.onWait != nil {
			c.onWait()
		}
		c.space.Wait()
	}
}

// Unlock ends a packet. It wakes the flusher unless another writer is
// queued, which will then do it.
func (c *coalescingConn) Unlock() {
	flush := len(c.buf) > 0 && (c.queued.Load() == 0 || len(c.buf) >= flushSize)
	c.mu.Unlock()
	if flush {
		c.kick()
	}
}

func (c *coalescingConn) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Read reads through the buffer. The reader is the first to see a peer go
// away, so its error ends the connection for everyone.
func (c *coalescingConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil {
		c.lost()
	}
	return n, err
}

// Write queues p. Callers hold the lock (paho does, via Lock/Unlock).
func (c *coalescingConn) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if c.closing {
		return 0, net.ErrClosed
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

func (c *coalescingConn) flusher() {
	defer close(c.done)
	var out []byte
	for range c.wake {
		c.mu.Lock()
		if c.err != nil {
			c.mu.Unlock()
			return
		}
		out, c.buf = c.buf, out[:0]
		closing := c.closing
		c.space.Broadcast()
		c.mu.Unlock()
		if len(out) > 0 {
			if _, err := c.Conn.Write(out); err != nil {
				c.fail(err)
				return
			}
		}
		if closing {
			return
		}
	}
}

// fail records the first error, releases the writers waiting for space and
// drops the connection: the reader sees it and the client reconnects.
func (c *coalescingConn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.space.Broadcast()
	c.mu.Unlock()
	c.raw.Close()
	c.lost()
}

func (c *coalescingConn) lost() {
	if c.onLost != nil {
		c.lostOnce.Do(c.onLost)
	}
}

// abort drops the connection at once, without sending what is queued or a
// goodbye of any protocol layer, as a crash would.
func (c *coalescingConn) abort() {
	c.fail(errAborted)
	c.kick() // an idle flusher sees the error and exits
}

// Close sends what is queued (a DISCONNECT, say, so that the server does not
// publish the will) within closeFlushTimeout, then closes. Writers waiting
// for space are released and fail.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		<-c.done
		return nil
	}
	c.closing = true
	c.space.Broadcast()
	c.mu.Unlock()
	c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
	c.kick()
	<-c.done
	c.mu.Lock()
	failed := c.err != nil
	c.mu.Unlock()
	var err error
	if failed {
		err = c.raw.Close() // no TLS goodbye on a connection that failed
	} else {
		err = c.Conn.Close()
	}
	c.lost()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// dial opens a connection to u (mqtt/tcp, tls/ssl/mqtts, ws or wss) wrapped
// in a coalescingConn; onLost runs once when it fails or closes. tlsCfg is
// used for the TLS schemes (nil means the system defaults).
func dial(ctx context.Context, u *url.URL, tlsCfg *tls.Config, onLost func()) (*coalescingConn, error) {
	var d net.Dialer
	switch scheme := strings.ToLower(u.Scheme); scheme {
	case "mqtt", "tcp", "":
		c, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, err
		}
		return newCoalescingConn(c, c, onLost), nil
	case "tls", "ssl", "mqtts":
		raw, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(raw, clientTLS(tlsCfg, u))
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", u.Host, err)
		}
		return newCoalescingConn(tc, raw, onLost), nil
	case "ws", "wss":
		var raw net.Conn
		wd := websocket.Dialer{
			Subprotocols: []string{"mqtt"},
			NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := d.DialContext(ctx, network, addr)
				raw = c
				return c, err
			},
			HandshakeTimeout: 10 * time.Second,
		}
		if scheme == "wss" {
			wd.TLSClientConfig = clientTLS(tlsCfg, u)
		}
		ws, _, err := wd.DialContext(ctx, u.String(), nil)
		if err != nil {
			if raw != nil {
				raw.Close()
			}
			return nil, fmt.Errorf("websocket connection to %s: %w", u.Redacted(), err)
		}
		return newCoalescingConn(&wsConn{Conn: ws}, raw, onLost), nil
	}
	return nil, fmt.Errorf("unsupported scheme %q in %s", u.Scheme, u.Redacted())
}

// clientTLS is tlsCfg (or the defaults) with the server name taken from u
// when it names none, as tls.Dialer does.
func clientTLS(tlsCfg *tls.Config, u *url.URL) *tls.Config {
	if tlsCfg == nil {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if tlsCfg.ServerName != "" {
		return tlsCfg
	}
	c := tlsCfg.Clone()
	c.ServerName = u.Hostname()
	return c
}

// wsConn carries the MQTT byte stream in binary websocket messages (MQTT
// 5.0 section 6): each flush is one message, and a packet may span
// messages. Only the flusher writes and only paho's reader reads.
type wsConn struct {
	*websocket.Conn
	r io.Reader // the message being read
	// writeDeadline is for the flusher to hand to the websocket, whose own
	// deadline must not change during a write.
	writeDeadline atomic.Pointer[time.Time]
}

func (w *wsConn) Read(p []byte) (int, error) {
	for {
		if w.r == nil {
			typ, r, err := w.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, fmt.Errorf("websocket: got a message of type %d, MQTT uses binary messages only", typ)
			}
			w.r = r
		}
		n, err := w.r.Read(p)
		if errors.Is(err, io.EOF) {
			w.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (w *wsConn) Write(p []byte) (int, error) {
	if d := w.writeDeadline.Load(); d != nil {
		w.Conn.SetWriteDeadline(*d)
	}
	if err := w.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SetWriteDeadline applies to a write under way (through the connection
// beneath) and to later ones.
func (w *wsConn) SetWriteDeadline(t time.Time) error {
	w.writeDeadline.Store(&t)
	return w.NetConn().SetWriteDeadline(t)
}

func (w *wsConn) SetDeadline(t time.Time) error {
	if err := w.SetReadDeadline(t); err != nil {
		return err
	}
	return w.SetWriteDeadline(t)
}
