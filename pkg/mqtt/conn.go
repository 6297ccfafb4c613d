package mqtt

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"runtime"
	"sync"
	"time"
)

// maxPending bounds what coalescingConn holds for a slow peer; a writer
// starting a packet waits while more than this is queued.
const maxPending = 1 << 20

// coalescingConn gathers the packets that concurrent publishers write and
// hands them to the kernel in one write from a single flusher goroutine.
// Under load, one syscall then carries many PUBLISH packets instead of one
// each (a broker answering thousands of requests a second spent a quarter
// of its CPU in writev). paho writes every packet between Lock and Unlock
// (it checks for sync.Locker), which keeps each packet whole.
type coalescingConn struct {
	net.Conn
	// r buffers reads: paho reads a packet's header a byte at a time,
	// which unbuffered costs several syscalls per acknowledgement. Only
	// paho's single reader goroutine calls Read.
	r *bufio.Reader

	mu      sync.Mutex
	space   *sync.Cond // signalled when the flusher takes the buffer
	buf     []byte
	err     error // first write error; later writes fail with it
	closing bool

	wake chan struct{} // capacity 1: "there is something to flush"
	done chan struct{} // closed when the flusher has exited
}

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c, r: bufio.NewReaderSize(c, 64<<10), wake: make(chan struct{}, 1), done: make(chan struct{})}
	cc.space = sync.NewCond(&cc.mu)
	go cc.flusher()
	return cc
}

// Lock starts a packet; it waits while too much is queued.
func (c *coalescingConn) Lock() {
	c.mu.Lock()
	for len(c.buf) > maxPending && c.err == nil && !c.closing {
		c.space.Wait()
	}
}

// Unlock ends a packet and wakes the flusher.
func (c *coalescingConn) Unlock() {
	pending := len(c.buf) > 0
	c.mu.Unlock()
	if pending {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// Read reads through the buffer.
func (c *coalescingConn) Read(p []byte) (int, error) { return c.r.Read(p) }

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
		// Let publishers that are about to write join this batch.
		runtime.Gosched()
		c.mu.Lock()
		out, c.buf = c.buf, out[:0]
		closing := c.closing
		c.space.Broadcast()
		c.mu.Unlock()
		if len(out) > 0 {
			if _, err := c.Conn.Write(out); err != nil {
				c.mu.Lock()
				c.err = err
				c.space.Broadcast()
				c.mu.Unlock()
				c.Conn.Close() // the reader sees it and the client reconnects
				return
			}
		}
		if closing {
			return
		}
	}
}

// Close sends what is queued (a DISCONNECT, say, so that the server does not
// publish the will) within a short deadline, then closes.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return nil
	}
	c.closing = true
	c.space.Broadcast()
	c.mu.Unlock()
	c.Conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	select {
	case c.wake <- struct{}{}:
	default:
	}
	<-c.done
	return c.Conn.Close()
}

// dialer returns an AttemptConnection function for mqtt:// and tls:// URLs
// that wraps the connection in a coalescingConn; other schemes (websockets)
// are left to autopaho.
func dialer(scheme string, tlsCfg *tls.Config) func(context.Context, string) (net.Conn, error) {
	switch scheme {
	case "mqtt", "tcp", "":
		return func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return newCoalescingConn(c), nil
		}
	case "tls", "ssl", "mqtts":
		return func(ctx context.Context, addr string) (net.Conn, error) {
			d := tls.Dialer{Config: tlsCfg}
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return newCoalescingConn(c), nil
		}
	}
	return nil
}
