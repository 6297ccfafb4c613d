package mqtt

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/pkg/config"
)

// writePacket writes one test packet the way paho does: between Lock and
// Unlock, in pieces. A packet is id, seq, length (4 bytes each) and length
// bytes of byte(id+seq). inLock runs while the lock is held.
func writePacket(cc *coalescingConn, id, seq, n int, inLock func()) error {
	hdr := make([]byte, 12)
	binary.BigEndian.PutUint32(hdr, uint32(id))
	binary.BigEndian.PutUint32(hdr[4:], uint32(seq))
	binary.BigEndian.PutUint32(hdr[8:], uint32(n))
	cc.Lock()
	defer cc.Unlock()
	for _, p := range [][]byte{hdr[:4], hdr[4:], bytes.Repeat([]byte{byte(id + seq)}, n)} {
		if _, err := cc.Write(p); err != nil {
			return err
		}
	}
	if inLock != nil {
		inLock()
	}
	return nil
}

// checkStream reads test packets from r until EOF and checks that every
// writer's packets arrived whole, in order and all of them.
func checkStream(t *testing.T, r io.Reader, writers, each int) {
	t.Helper()
	next := make([]int, writers)
	hdr := make([]byte, 12)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			if err != io.EOF {
				t.Errorf("reading header: %v", err)
			}
			break
		}
		id, seq, n := int(binary.BigEndian.Uint32(hdr)), int(binary.BigEndian.Uint32(hdr[4:])), int(binary.BigEndian.Uint32(hdr[8:]))
		if id >= writers {
			t.Fatalf("garbage: writer %d", id)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			t.Fatalf("short body: %v", err)
		}
		if !bytes.Equal(body, bytes.Repeat([]byte{byte(id + seq)}, n)) {
			t.Fatalf("writer %d packet %d corrupted", id, seq)
		}
		if seq != next[id] {
			t.Fatalf("writer %d: packet %d arrived where %d was due", id, seq, next[id])
		}
		next[id]++
	}
	for id, n := range next {
		if n != each {
			t.Errorf("writer %d: %d packets arrived, want %d", id, n, each)
		}
	}
}

// Packets written concurrently in pieces (as paho does) arrive whole, and
// Close delivers what was still queued.
func TestCoalescingConnKeepsPacketsWhole(t *testing.T) {
	client, server := net.Pipe()
	cc := newCoalescingConn(client, client, nil)
	const writers, each = 8, 200
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		checkStream(t, server, writers, each)
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := writePacket(cc, w, i, 1+(w*31+i)%300, nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	cc.Close()
	<-checked
	if err := writePacket(cc, 0, 0, 1, nil); err == nil {
		t.Error("write after close succeeded")
	}
}

// A lone packet leaves without waiting for company: nothing else is queued.
func TestCoalescingConnFlushesLonePacket(t *testing.T) {
	client, server := net.Pipe()
	cc := newCoalescingConn(client, client, nil)
	defer cc.Close()
	if err := writePacket(cc, 1, 0, 10, nil); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 22)
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[12:], bytes.Repeat([]byte{1}, 10)) {
		t.Errorf("got %x", got)
	}
}

// stuckConn is a peer that reads nothing until gate opens; then it takes
// everything, or fails every write with err.
type stuckConn struct {
	net.Conn // only the methods below are used

	gate    chan struct{}
	err     error
	waiting atomic.Bool // a Write waits at the gate

	mu  sync.Mutex
	got bytes.Buffer

	expired, closed       chan struct{}
	expireOnce, closeOnce sync.Once
}

func newStuckConn(err error) *stuckConn {
	return &stuckConn{gate: make(chan struct{}), err: err, expired: make(chan struct{}), closed: make(chan struct{})}
}

func (s *stuckConn) Write(p []byte) (int, error) {
	s.waiting.Store(true)
	select {
	case <-s.gate:
	case <-s.expired:
		return 0, os.ErrDeadlineExceeded
	case <-s.closed:
		return 0, net.ErrClosed
	}
	if s.err != nil {
		return 0, s.err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got.Write(p)
}

func (s *stuckConn) SetWriteDeadline(t time.Time) error {
	time.AfterFunc(time.Until(t), func() { s.expireOnce.Do(func() { close(s.expired) }) })
	return nil
}

func (s *stuckConn) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	return nil
}

func (s *stuckConn) Read([]byte) (int, error) {
	<-s.closed
	return 0, net.ErrClosed
}

// fill starts writers that write each packets of size bytes to cc (more
// than it may hold) and returns once the flusher is stuck on the peer and a
// writer waits for space: then nobody makes progress. It also returns the
// bytes the writers have had accepted, and a channel with each writer's
// error (nil when it wrote everything), closed when all are done. It fails
// the test if the writers finish instead.
func fill(t *testing.T, cc *coalescingConn, sc *stuckConn, writers, each, size int) (*atomic.Int64, chan error) {
	t.Helper()
	var accepted atomic.Int64
	stuck := make(chan struct{})
	var stuckOnce sync.Once
	cc.onWait = func() {
		if sc.waiting.Load() {
			stuckOnce.Do(func() { close(stuck) })
		}
	}
	errs := make(chan error, writers)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := writePacket(cc, w, i, size, nil); err != nil {
					errs <- err
					return
				}
				accepted.Add(int64(12 + size))
			}
			errs <- nil
		}()
	}
	go func() {
		wg.Wait()
		close(errs)
		close(done)
	}()
	select {
	case <-stuck:
	case <-done:
		t.Fatalf("writers wrote %d bytes to a peer that reads nothing", accepted.Load())
	}
	return &accepted, errs
}

// A peer that does not read holds the writers back: what the connection
// holds stays bounded, and once the peer reads, everything arrives in order.
func TestCoalescingConnBackPressure(t *testing.T) {
	sc := newStuckConn(nil)
	cc := newCoalescingConn(sc, sc, nil)
	const writers, each, size = 4, 600, 4000 // 9.6 MB, several times what the connection may hold
	accepted, errs := fill(t, cc, sc, writers, each, size)

	// The flusher holds at most one full buffer and the writers fill
	// another; then they wait.
	bound := int64(2 * (maxPending + 12 + size))
	if a := accepted.Load(); a > bound {
		t.Errorf("%d bytes accepted for a peer that reads nothing, want at most %d", a, bound)
	}

	close(sc.gate)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if err := cc.Close(); err != nil {
		t.Error(err)
	}
	checkStream(t, &sc.got, writers, each)
}

// A write error reaches every writer, including those waiting for space,
// and every later write; the connection reports itself lost once.
func TestCoalescingConnWriteError(t *testing.T) {
	boom := errors.New("boom")
	sc := newStuckConn(boom)
	var losses atomic.Int32
	lost := make(chan struct{})
	cc := newCoalescingConn(sc, sc, func() {
		losses.Add(1)
		close(lost)
	})
	_, errs := fill(t, cc, sc, 4, 600, 4000)

	close(sc.gate) // the flusher's write fails now
	<-lost
	for err := range errs {
		if !errors.Is(err, boom) {
			t.Errorf("writer ended with %v, want %v", err, boom)
		}
	}
	if err := writePacket(cc, 0, 0, 1, nil); !errors.Is(err, boom) {
		t.Errorf("write after the error: %v", err)
	}
	select {
	case <-sc.closed:
	default:
		t.Error("the failed connection was not closed")
	}
	cc.Close()
	<-cc.done // the flusher is gone
	if n := losses.Load(); n != 1 {
		t.Errorf("lost reported %d times", n)
	}
}

// Close releases writers waiting for a peer that never reads, and itself
// returns once its try to deliver the rest times out.
func TestCoalescingConnCloseUnblocksWriters(t *testing.T) {
	sc := newStuckConn(nil)
	lost := make(chan struct{})
	cc := newCoalescingConn(sc, sc, func() { close(lost) })
	_, errs := fill(t, cc, sc, 4, 600, 4000)

	closed := make(chan error, 1)
	go func() { closed <- cc.Close() }()
	for err := range errs {
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("writer ended with %v, want %v", err, net.ErrClosed)
		}
	}
	<-closed
	<-cc.done
	<-lost
	select {
	case <-sc.closed:
	default:
		t.Error("connection not closed")
	}
}

// abort drops the connection without delivering what is queued.
func TestCoalescingConnAbort(t *testing.T) {
	sc := newStuckConn(nil)
	lost := make(chan struct{})
	cc := newCoalescingConn(sc, sc, func() { close(lost) })
	_, errs := fill(t, cc, sc, 2, 600, 4000)
	cc.abort()
	<-lost
	for err := range errs {
		if !errors.Is(err, errAborted) {
			t.Errorf("writer ended with %v, want %v", err, errAborted)
		}
	}
	cc.Close()
	if sc.got.Len() != 0 {
		t.Errorf("%d bytes delivered after abort", sc.got.Len())
	}
}

// The TLS schemes speak TLS from the first byte, also for a bare host with
// mqtt.tls: true, and never fall back to plain text.
func TestDialTLSSchemes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	o, err := OptionsFromConfig(&config.Config{MQTT: config.MQTT{BrokerURLs: []string{"127.0.0.1"}, Port: port, TLS: true, Keepalive: 5}})
	if err != nil {
		t.Fatal(err)
	}
	if o.TLS == nil {
		t.Fatal("mqtt.tls: true gave no TLS settings")
	}
	urls := []*url.URL{o.Server}
	for _, scheme := range []string{"tls", "ssl", "mqtts", "wss"} {
		urls = append(urls, &url.URL{Scheme: scheme, Host: ln.Addr().String(), Path: "/mqtt"})
	}
	for _, u := range urls {
		t.Run(u.Scheme, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			dialed := make(chan error, 1)
			go func() {
				c, err := dial(ctx, u, o.TLS, nil)
				if err == nil {
					c.Close()
				}
				dialed <- err
			}()
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			first := make([]byte, 1)
			_, err = io.ReadFull(sc, first)
			sc.Close()
			if err != nil {
				t.Fatal(err)
			}
			if first[0] != 0x16 { // a TLS handshake record
				t.Errorf("%s: first byte %#x, not a TLS handshake", u, first[0])
			}
			if err := <-dialed; err == nil {
				t.Error("dial succeeded against a server that hung up")
			}
		})
	}
}

// mqtt.tls with a plain-text URL (or the embedded server) is an error, not
// a plain connection.
func TestTLSNeverSilentlyPlain(t *testing.T) {
	for _, bu := range []string{"mqtt://bus.example.net", "tcp://bus.example.net:1883", "ws://bus.example.net/mqtt", ""} {
		cfg := &config.Config{MQTT: config.MQTT{BrokerURLs: strings.Fields(bu), Port: 1883, TLS: true, Listen: "127.0.0.1:1883"}}
		_, err := OptionsFromConfig(cfg)
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte("mqtt.tls")) {
			t.Errorf("broker_url %q with tls: err = %v, want one naming mqtt.tls", bu, err)
		}
	}
	for _, bu := range []string{"bus.example.net", "tls://bus.example.net", "wss://bus.example.net/mqtt"} {
		o, err := OptionsFromConfig(&config.Config{MQTT: config.MQTT{BrokerURLs: strings.Fields(bu), Port: 8883, TLS: true}})
		if err != nil || o.TLS == nil || !tlsScheme(o.Server.Scheme) {
			t.Errorf("broker_url %q with tls: %v, %+v", bu, err, o)
		}
	}
	c := New(Options{Server: &url.URL{Scheme: "mqtt", Host: "127.0.0.1:" + strconv.Itoa(1883)}, TLS: &tls.Config{}})
	if err := c.Start(context.Background()); err == nil {
		c.Close(context.Background())
		t.Error("Start with TLS settings and a plain URL succeeded")
	}
}
