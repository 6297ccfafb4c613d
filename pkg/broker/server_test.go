package broker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/httpjson"
)

// serveTest runs b.serve on a loopback port and returns its address. The
// header timeout is long, so connections held by the test stay open.
func serveTest(t *testing.T, b *Broker) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := b.newServer()
	srv.ReadHeaderTimeout = time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.serve(ctx, ln, srv) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

func quietBroker(o Options) *Broker {
	o.Domains = []string{"ffmuc_welt"}
	o.Publisher = &fakePublisher{}
	o.KeyQoS = 1
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return New(o)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dialPartial opens a connection that sends half a request header.
func dialPartial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "POST /api/v2/wg/key/exchange HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestConnectionCap(t *testing.T) {
	const limit = 3
	b := quietBroker(Options{MaxConnections: limit})
	addr := serveTest(t, b)
	var held []net.Conn
	for range limit {
		held = append(held, dialPartial(t, addr))
	}
	waitFor(t, "the bound to be reached", func() bool { return b.open.Load() == limit })

	// The kernel completes the handshake, but the broker does not serve the
	// connection: its request stays unanswered.
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	io.WriteString(extra, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	extra.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := extra.Read(make([]byte, 1)); n != 0 || !isTimeout(err) {
		t.Fatalf("connection beyond the bound was served: %d %v", n, err)
	}
	if got := b.open.Load(); got != limit {
		t.Fatalf("%d connections open, bound %d", got, limit)
	}

	// A place frees up: the waiting request is served, and so is a new one.
	held[0].Close()
	extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(extra), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("waiting request after a place freed: %v %v", resp, err)
	}
	resp.Body.Close()
	held[1].Close()
	r2, err := http.Get("http://" + addr + "/healthz")
	if err != nil || r2.StatusCode != 200 {
		t.Fatalf("new request: %v %v", r2, err)
	}
	r2.Body.Close()
}

// At the bound, a keep-alive connection between requests makes room instead
// of holding its place for the idle timeout.
func TestConnectionCapClosesIdle(t *testing.T) {
	b := quietBroker(Options{MaxConnections: 2})
	addr := serveTest(t, b)
	for range 2 {
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get("http://" + addr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	waitFor(t, "two idle connections", func() bool { return b.open.Load() == 2 })
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("request at the bound: %v %v", resp, err)
	}
	resp.Body.Close()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Replies net/http writes by itself come in our JSON error shape.
func TestServerErrorsAreJSON(t *testing.T) {
	addr := serveTest(t, quietBroker(Options{}))
	for _, tc := range []struct {
		name, request string
		code          int
		msg           string
	}{
		{"header too large", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 24<<10) + "\r\n\r\n",
			431, "request headers over 16384 bytes"},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 400, "missing required Host header"},
		{"garbage", "HELLO\r\n\r\n", 400, "malformed HTTP request"},
		{"transfer coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "unsupported transfer encoding"},
		{"version", "GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505, "unsupported protocol version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, tc.request); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e httpjson.ErrorBody
			raw, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(raw, &e); err != nil || resp.StatusCode != tc.code ||
				resp.Header.Get("Content-Type") != "application/json" || e.Error.Message != tc.msg {
				t.Errorf("%d %q %q (%v), want %d %q", resp.StatusCode, resp.Header.Get("Content-Type"), raw, err, tc.code, tc.msg)
			}
		})
	}
}

func TestJSONServerErrorLeavesOtherWritesAlone(t *testing.T) {
	for _, p := range []string{
		"HTTP/1.1 400 Bad Request\r\nContent-Length: 10\r\nContent-Type: application/json\r\n\r\n{}",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n200 OK",
		"HTTP/1.1 4" + netHTTPErrorHeaders,
		"HTTP/1.1 4xx Bad" + netHTTPErrorHeaders + "x",
		"{\"some\":\"body\"}",
	} {
		if _, _, ok := jsonServerError([]byte(p), 1); ok {
			t.Errorf("rewrote %q", p)
		}
	}
}

func FuzzJSONServerError(f *testing.F) {
	f.Add([]byte("HTTP/1.1 431 Request Header Fields Too Large" + netHTTPErrorHeaders + "431 Request Header Fields Too Large"))
	f.Add([]byte("HTTP/1.1 400 Bad Request: x" + netHTTPErrorHeaders + "400 Bad Request: x"))
	f.Fuzz(func(t *testing.T, p []byte) {
		reply, code, ok := jsonServerError(p, 16<<10)
		if !ok {
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(reply))), nil)
		if err != nil || resp.StatusCode != code {
			t.Fatalf("%q became an unreadable reply %q: %v", p, reply, err)
		}
		var e httpjson.ErrorBody
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Error.Message == "" {
			t.Fatalf("%q: body %v", p, err)
		}
	})
}

func TestServeStopsWithContext(t *testing.T) {
	b := quietBroker(Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Serve(ctx, ln) }()
	waitFor(t, "serving", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://%s/healthz", ln.Addr()))
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("still accepting after Serve returned")
	}
}
