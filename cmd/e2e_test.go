package cmd_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/eventually"
	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/broker"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// nsHost is a test host: a process holding fresh network and mount
// namespaces (with a private /var/run/wireguard), entered with nsenter.
type nsHost struct {
	name string
	pid  int
	ip   string
}

func newNSHost(t *testing.T, name, ip string) *nsHost {
	t.Helper()
	if testing.Short() {
		t.Skip("namespace test: not run with -short")
	}
	cmd := exec.Command("unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
		"mkdir -p /var/run/wireguard && mount -t tmpfs tmpfs /var/run/wireguard && ip link set lo up && echo ready && exec sleep infinity")
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		testbus.Missing(t, "unshare: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		testbus.Missing(t, "cannot create namespaces for host %s (need root and unshare)", name)
	}
	return &nsHost{name: name, pid: cmd.Process.Pid, ip: ip}
}

func (h *nsHost) command(args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"-t", fmt.Sprint(h.pid), "-n", "-m", "--"}, args...)...)
}

// run runs a command on the host and returns its output; failure is fatal.
func (h *nsHost) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := h.command(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %v\n%s", h.name, args, err, out)
	}
	return string(out)
}

// try runs a command and reports whether it succeeded.
func (h *nsHost) try(args ...string) (string, bool) {
	out, err := h.command(args...).CombinedOutput()
	return string(out), err == nil
}

// useResolver points the host's /etc/resolv.conf at a name server, with a
// bind mount in the host's own mount namespace.
func (h *nsHost) useResolver(t *testing.T, dir, server string) {
	t.Helper()
	conf := filepath.Join(dir, h.name+"-resolv.conf")
	if err := os.WriteFile(conf, []byte("nameserver "+server+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.run(t, "mount", "--bind", conf, "/etc/resolv.conf")
}

// start runs wgkex on the host in the background.
func (h *nsHost) start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: h.command(append([]string{bin}, args...)...), stderr: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd.Env = append(cleanEnv(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s %v:\n%s", h.name, args, p.stderr)
		}
	})
	return p
}

// mesh is the test network: a broker host with a bridge, two gateways and
// two nodes, all on 10.99.0.0/24, plus the test process itself.
type mesh struct {
	broker, gw1, gw2, node1, node2 *nsHost
	cfg, dir                       string
}

var seq int

func newMesh(t *testing.T) *mesh {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: not run with -short")
	}
	if os.Geteuid() != 0 {
		testbus.Missing(t, "needs root for network namespaces (run scripts/test.sh as root)")
	}
	for _, b := range []string{"unshare", "nsenter", "ip", "wg", "ping", "mosquitto"} {
		if _, err := exec.LookPath(b); err != nil {
			if _, err := os.Stat("/usr/sbin/" + b); err != nil {
				testbus.Missing(t, "%s is not installed", b)
			}
		}
	}
	seq++
	tag := fmt.Sprintf("%d%d", os.Getpid()%1000, seq)
	m := &mesh{dir: t.TempDir()}
	m.broker = newNSHost(t, "broker", "10.99.0.1")
	m.gw1 = newNSHost(t, "gw1", "10.99.0.2")
	m.gw2 = newNSHost(t, "gw2", "10.99.0.3")
	m.node1 = newNSHost(t, "node1", "10.99.0.11")
	m.node2 = newNSHost(t, "node2", "10.99.0.12")
	m.broker.run(t, "ip", "link", "add", "br0", "type", "bridge")
	m.broker.run(t, "ip", "addr", "add", "10.99.0.1/24", "dev", "br0")
	m.broker.run(t, "ip", "link", "set", "br0", "up")
	// The test process joins the network too, to watch the broker.
	hosts := []*nsHost{m.gw1, m.gw2, m.node1, m.node2, {name: "test", pid: 1, ip: "10.99.0.254"}}
	for i, h := range hosts {
		outer, inner := fmt.Sprintf("w%s-%d", tag, i), fmt.Sprintf("e%s-%d", tag, i)
		if out, err := exec.Command("ip", "link", "add", outer, "type", "veth", "peer", "name", inner).CombinedOutput(); err != nil {
			t.Fatalf("veth: %v %s", err, out)
		}
		t.Cleanup(func() { exec.Command("ip", "link", "del", inner).Run() })
		exec.Command("ip", "link", "set", outer, "netns", fmt.Sprint(m.broker.pid)).Run()
		m.broker.run(t, "ip", "link", "set", outer, "master", "br0", "up")
		if h.pid != 1 {
			exec.Command("ip", "link", "set", inner, "netns", fmt.Sprint(h.pid)).Run()
			h.run(t, "ip", "addr", "add", h.ip+"/24", "dev", inner)
			h.run(t, "ip", "link", "set", inner, "up")
		} else {
			exec.Command("ip", "addr", "add", h.ip+"/24", "dev", inner).Run()
			exec.Command("ip", "link", "set", inner, "up").Run()
		}
	}
	m.cfg = filepath.Join(m.dir, "wgkex.yaml")
	os.WriteFile(m.cfg, []byte(`domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers:
  gw1: {weight: 1}
  gw2: {weight: 1}
broker_listen: {host: 0.0.0.0, port: 5000}
mqtt:
  broker_port: 1883
  keepalive: 5
worker:
  metrics_interval: 2s
`), 0o644)
	return m
}

// startBus runs the MQTT server: Mosquitto, or (embedded) nothing here,
// since the broker then runs its own.
func (m *mesh) startMosquitto(t *testing.T) {
	conf := filepath.Join(m.dir, "mosquitto.conf")
	os.WriteFile(conf, []byte("listener 1883 10.99.0.1\nallow_anonymous true\npersistence false\n"), 0o644)
	os.Chmod(m.dir, 0o755)
	cmd := m.broker.command("mosquitto", "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// statusPage is the broker's HTML status page (GET /).
func statusPage(t *testing.T) string {
	resp, err := http.Get("http://10.99.0.1:5000/")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// brokerStatus is the broker's GET /api/v1/status.
func brokerStatus() (broker.Status, bool) {
	var st broker.Status
	resp, err := http.Get("http://10.99.0.1:5000/api/v1/status")
	if err != nil {
		return st, false
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st) == nil
}

// brokerPeers is connected_peers of worker for ffmuc_welt as the broker
// has it, -1 when unknown.
func brokerPeers(worker string) int {
	st, _ := brokerStatus()
	for _, w := range st.Workers {
		if d, ok := w.Domains["ffmuc_welt"]; ok && w.Name == worker && d.ConnectedPeers != nil {
			return *d.ConnectedPeers
		}
	}
	return -1
}

// gatewaysReady reports whether the broker has n workers online that
// reported connected_peers and data for ffmuc_welt.
func gatewaysReady(n int) bool {
	st, _ := brokerStatus()
	ready := 0
	for _, w := range st.Workers {
		if d, ok := w.Domains["ffmuc_welt"]; ok && w.Online && d.ConnectedPeers != nil && d.Port != 0 {
			ready++
		}
	}
	return ready == n
}

var connectedRE = regexp.MustCompile(`connected: \S+ -> (\S+):(\d+) \(gateway (\S+), link address (\S+)\); own link address (\S+)`)

type nodeLink struct{ gatewayIP, gatewayKey, gatewayLL, ownLL, pubkey string }

func (m *mesh) connect(t *testing.T, node *nsHost, env []string) (*proc, nodeLink) {
	t.Helper()
	keyFile := filepath.Join(m.dir, node.name+".key")
	p := node.start(t, env, "client", "connect", "--broker", "http://10.99.0.1:5000", "--domain", "ffmuc_welt",
		"--private-key-file", keyFile, "--watch", "--interval", "2s", "--retries", "5", "--domain-seed", testSeed)
	var l nodeLink
	eventually.True(t, waitTimeout, node.name+" connected", func() bool {
		mm := connectedRE.FindStringSubmatch(p.stderr.String())
		if mm == nil {
			return false
		}
		l = nodeLink{gatewayIP: mm[1], gatewayKey: mm[3], gatewayLL: mm[4], ownLL: mm[5]}
		return true
	})
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file %s: %v %v", keyFile, fi.Mode(), err)
	}
	out, _ := node.try("wg", "show", "wg-mesh", "public-key")
	l.pubkey = strings.TrimSpace(out)
	return p, l
}

func (m *mesh) gateway(ip string) *nsHost {
	if ip == m.gw1.ip {
		return m.gw1
	}
	return m.gw2
}

func (m *mesh) other(gw *nsHost) *nsHost {
	if gw == m.gw1 {
		return m.gw2
	}
	return m.gw1
}

// installed checks a node's key on a gateway: peer, route and FDB entry.
func installed(gw *nsHost, key string) bool {
	ll := wgkex.LinkLocal(key).String()
	peers, _ := gw.try("wg", "show", "wg-welt", "allowed-ips")
	routes, _ := gw.try("ip", "-6", "route", "show", "dev", "wg-welt", "proto", "129")
	fdb, _ := gw.try("bridge", "fdb", "show", "dev", "vx-welt")
	return strings.Contains(peers, key+"\t"+ll+"/128") && strings.Contains(routes, ll) &&
		strings.Contains(fdb, "00:00:00:00:00:00 dst "+ll+" via wg-welt")
}

// pingable waits for ping to answer (VXLAN link-local addresses need a
// moment for duplicate address detection).
func pingable(t *testing.T, from *nsHost, target string) {
	t.Helper()
	var out string
	if eventually.Within(20*time.Second, func() bool {
		var ok bool
		out, ok = from.try("ping", "-6", "-c", "1", "-W", "1", target)
		return ok
	}) {
		return
	}
	diag, _ := from.try("sh", "-c", "wg show all; ip -6 addr; ip -6 route; bridge fdb show; ip -d link show")
	t.Fatalf("%s cannot ping %s:\n%s\n%s", from.name, target, out, diag)
}

func vxlanLL(t *testing.T, h *nsHost, dev string) string {
	out := h.run(t, "ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link")
	f := strings.Fields(out)
	for i, x := range f {
		if x == "inet6" && i+1 < len(f) {
			return strings.Split(f[i+1], "/")[0]
		}
	}
	t.Fatalf("no link-local address on %s: %s", dev, out)
	return ""
}

// TestEndToEnd builds a whole mesh from the wgkex binary: broker, two
// gateways (dummy-iface + worker) and two nodes (client connect), on a real
// Mosquitto and then on the broker's embedded bus.
func TestEndToEnd(t *testing.T) {
	for _, bus := range []string{"mosquitto", "embedded"} {
		t.Run(bus, func(t *testing.T) {
			m := newMesh(t)
			// Workers always name the server; the broker only for Mosquitto
			// (without broker_url it runs the embedded server).
			env := []string{"WGKEX_MQTT_BROKER_URL=10.99.0.1"}
			if bus == "mosquitto" {
				m.startMosquitto(t)
				m.broker.start(t, env, "broker", "--config", m.cfg)
			} else {
				// The embedded server beyond loopback requires credentials.
				env = append(env, "WGKEX_MQTT_USERNAME=wgkex", "WGKEX_MQTT_PASSWORD=e2e-secret")
				m.broker.start(t, append(env[1:], "WGKEX_MQTT_LISTEN=10.99.0.1:1883"), "broker", "--config", m.cfg)
			}
			eventually.True(t, waitTimeout, "broker", func() bool { return strings.Contains(statusPage(t), "wgkex") })

			workers := map[*nsHost]*proc{}
			for _, gw := range []*nsHost{m.gw1, m.gw2} {
				gw.start(t, nil, "dummy-iface", "--config", m.cfg, "--listen-port", "51820", "--domain-seed", testSeed, "--http")
				eventually.True(t, waitTimeout, gw.name+" interfaces", func() bool { _, ok := gw.try("ip", "link", "show", "vx-welt"); return ok })
				workers[gw] = gw.start(t, append(env, "WGKEX_EXTERNALNAME="+gw.ip), "worker", "--config", m.cfg, "--name", gw.name)
			}
			eventually.True(t, waitTimeout, "both workers online with data and metrics at the broker", func() bool { return gatewaysReady(2) })

			_, l1 := m.connect(t, m.node1, nil)
			gwA := m.gateway(l1.gatewayIP)
			t.Logf("node1 -> %s", gwA.name)
			eventually.True(t, waitTimeout, "node1's key on both gateways", func() bool { return installed(m.gw1, l1.pubkey) && installed(m.gw2, l1.pubkey) })
			pingable(t, m.node1, "fe80::1%vx-mesh")
			pingable(t, gwA, vxlanLL(t, m.node1, "vx-mesh")+"%vx-welt")
			// Gluon's liveness check of the gateway, answered by dummy-iface --http.
			if out, ok := m.node1.try("timeout", "5", "busybox", "wget", "-q", "-O", "-", "http://["+l1.gatewayLL+"%wg-mesh]/"); !ok || !strings.Contains(out, "wgkex test gateway") {
				t.Errorf("liveness check of %s: %v %s", gwA.name, ok, out)
			}
			if out := m.node1.run(t, "ip", "-d", "link", "show", "vx-mesh"); !strings.Contains(out, "vxlan id 8911352 ") {
				t.Errorf("node's vx-mesh does not use the domain seed's VNI:\n%s", out)
			}

			// Node1's handshake reaches the broker through gwA's metrics
			// (every 2 s here); until then a metrics message from before the
			// handshake can reset the broker's own count to 0. The pings
			// above prove the handshake; wait out one metrics interval.
			time.Sleep(2500 * time.Millisecond)
			eventually.True(t, waitTimeout, "node1 counted by the broker", func() bool {
				return brokerPeers(gwA.name) == 1 && brokerPeers(m.other(gwA).name) == 0
			})
			c2, l2 := m.connect(t, m.node2, nil)
			if l2.gatewayIP == l1.gatewayIP {
				t.Errorf("node2 sent to the same gateway as node1 (%s) with equal weights and loads", l2.gatewayIP)
			}
			pingable(t, m.node2, "fe80::1%vx-mesh")

			// client disconnect removes node2's interfaces; its connect
			// process notices and exits.
			m.node2.run(t, bin, "client", "disconnect")
			if out, ok := m.node2.try("ip", "link", "show"); !ok || strings.Contains(out, "wg-mesh") || strings.Contains(out, "vx-mesh") {
				t.Errorf("after disconnect:\n%s", out)
			}
			select {
			case <-c2.done:
				c2.done <- nil
			case <-time.After(10 * time.Second):
				t.Error("client connect still running after disconnect")
			}

			// The worker of node1's gateway restarts: the node's link survives.
			workers[gwA].signal(t, syscall.SIGTERM)
			workers[gwA] = gwA.start(t, append(env, "WGKEX_EXTERNALNAME="+gwA.ip), "worker", "--config", m.cfg, "--name", gwA.name)
			pingable(t, m.node1, "fe80::1%vx-mesh")

			// The whole gateway is rebuilt (new WireGuard key): the node sees
			// its link go down and registers again.
			workers[gwA].signal(t, syscall.SIGTERM)
			gwA.run(t, bin, "dummy-iface", "--config", m.cfg, "--delete")
			gwA.start(t, nil, "dummy-iface", "--config", m.cfg, "--listen-port", "51820", "--domain-seed", testSeed, "--http")
			eventually.True(t, waitTimeout, "rebuilt interfaces", func() bool { _, ok := gwA.try("ip", "link", "show", "vx-welt"); return ok })
			gwA.start(t, append(env, "WGKEX_EXTERNALNAME="+gwA.ip), "worker", "--config", m.cfg, "--name", gwA.name)
			eventually.True(t, 60*time.Second, "node1 to reconnect after its gateway was rebuilt", func() bool {
				_, ok := m.node1.try("ping", "-6", "-c", "1", "-W", "1", "fe80::1%vx-mesh")
				return ok
			})
		})
	}
}
