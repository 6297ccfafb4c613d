package dummyiface

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// livenessServer answers Gluon's gateway check: an HTTP GET of
// http://[<gateway link address>%<wg if>]/ that must succeed before a node
// keeps a gateway (docs/protocol.md §2). On a real gateway a web server
// answers it; wgkex itself does not.
type livenessServer struct {
	srv  *http.Server
	done chan struct{}
}

func serveLiveness(addr netip.Addr, iface string, log *slog.Logger) (*livenessServer, error) {
	// IPV6_FREEBIND: the address may still be tentative (duplicate address
	// detection) right after it was added.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	hostport := net.JoinHostPort(addr.WithZone(iface).String(), "80")
	ln, err := lc.Listen(context.Background(), "tcp6", hostport)
	if err != nil {
		return nil, fmt.Errorf("liveness HTTP on %s: %w", hostport, err)
	}
	s := &livenessServer{
		srv: &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				fmt.Fprintln(w, "wgkex test gateway")
			}),
			ReadHeaderTimeout: 5 * time.Second,
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("liveness HTTP server stopped", "addr", hostport, "err", err)
		}
	}()
	log.Info("answering Gluon's liveness check", "url", "http://"+hostport+"/")
	return s, nil
}

func (s *livenessServer) close() {
	s.srv.Close()
	<-s.done
}
