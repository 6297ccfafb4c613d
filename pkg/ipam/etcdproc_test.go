package ipam

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/testbus"
)

// etcdServer is a real etcd (Debian's etcd-server) on free loopback ports,
// its data in a temporary directory.
type etcdServer struct {
	t        testing.TB
	bin, dir string
	client   string // client URL
	peer     string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *strings.Builder
}

func etcdBinary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/etcd", "/usr/local/bin/etcd"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p
	}
	testbus.Missing(t, "etcd not installed (Debian package etcd-server)")
	return ""
}

// startEtcd runs an etcd for this test; it is stopped at the test's end.
func startEtcd(t testing.TB) *etcdServer {
	t.Helper()
	s := &etcdServer{
		t:      t,
		bin:    etcdBinary(t),
		dir:    t.TempDir(),
		client: fmt.Sprintf("http://127.0.0.1:%d", testbus.FreePort(t)),
		peer:   fmt.Sprintf("http://127.0.0.1:%d", testbus.FreePort(t)),
	}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Start starts etcd (again, with the same data and ports) and returns when
// it serves clients.
func (s *etcdServer) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	cmd := exec.Command(s.bin,
		"--name", "test",
		"--data-dir", s.dir,
		"--listen-client-urls", s.client, "--advertise-client-urls", s.client,
		"--listen-peer-urls", s.peer, "--initial-advertise-peer-urls", s.peer,
		"--initial-cluster", "test="+s.peer,
		"--logger", "zap", "--log-outputs", "stderr")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start etcd: %v", err)
	}
	ready, done := make(chan struct{}), make(chan struct{})
	log := &strings.Builder{}
	var logMu sync.Mutex
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			logMu.Lock()
			log.WriteString(line + "\n")
			logMu.Unlock()
			// etcd 3.4 with the zap logger says this once it takes client
			// requests (after it has elected itself).
			if !signalled && strings.Contains(line, "serving client traffic") {
				signalled = true
				close(ready)
			}
		}
		cmd.Wait()
	}()
	select {
	case <-ready:
	case <-done:
		logMu.Lock()
		defer logMu.Unlock()
		s.t.Fatalf("etcd exited before serving:\n%s", log.String())
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		s.t.Fatalf("etcd did not serve within 60s:\n%s", log.String())
	}
	s.cmd, s.done, s.log = cmd, done, log
}

// Stop ends etcd and waits for it.
func (s *etcdServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Open is a new client (a broker) on this etcd.
func (s *etcdServer) Open(t testing.TB, prefix string) *Etcd {
	t.Helper()
	e, err := OpenEtcd(EtcdConfig{Endpoints: []string{s.client}, Prefix: prefix, OpTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}
