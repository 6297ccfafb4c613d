package cmd_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const baseConfig = "domains: [ffmuc_welt]\ndomain_prefixes: [ffmuc_]\n"

// runFast is run without the race detector's one-second pause at a
// successful exit (GORACE atexit_sleep_ms): these tests run many short commands.
func runFast(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	return run(t, append(env[:len(env):len(env)], "GORACE=atexit_sleep_ms=0"), args...)
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// heldPort listens on a loopback port for the whole test, so that a
// command that got as far as binding or dialling it would show.
func heldPort(t *testing.T) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dialled reports whether anything connected to ln. The kernel queues a
// completed connection before the dialling process can exit, so checking
// after the process has exited needs no waiting.
func dialled(ln *net.TCPListener) bool {
	ln.SetDeadline(time.Now())
	c, err := ln.Accept()
	if err == nil {
		c.Close()
		return true
	}
	return false
}

// Type errors and validation problems are reported together, by config
// check as a list and by the services as one line, before anything touches
// the network.
func TestConfigErrorsNameEveryKey(t *testing.T) {
	mqttPort, httpPort := heldPort(t), heldPort(t)
	for _, tc := range []struct {
		name, yaml string
		keys       []string
	}{{
		name: "two type errors",
		yaml: baseConfig + "broker_listen: {port: \"abc\"}\nmqtt: {keepalive: \"x\"}\n",
		keys: []string{"broker_listen.port: want an integer", "mqtt.keepalive: want an integer"},
	}, {
		name: "type errors and validation problems",
		yaml: baseConfig + fmt.Sprintf("broker_listen: {host: 127.0.0.1, port: %d}\n", httpPort.Addr().(*net.TCPAddr).Port) +
			fmt.Sprintf("mqtt: {keepalive: \"x\", broker_url: \"mqtt://%s\", tls: true}\n", mqttPort.Addr()) +
			"workers: {gw1: {weight: 0}}\n",
		keys: []string{"mqtt.keepalive: want an integer", "workers.gw1.weight: must be a positive integer",
			"mqtt.tls: true, but mqtt.broker_url mqtt://127.0.0.1:"},
	}, {
		name: "three type errors and a validation problem",
		yaml: baseConfig + "broker_listen: {port: \"abc\"}\nmqtt: {keepalive: \"x\", tls: maybe, broker_port: 0}\nworker: {peer_timeout: forever}\n",
		keys: []string{"broker_listen.port: want an integer", "mqtt.keepalive: want an integer", "mqtt.tls: want true or false",
			"worker.peer_timeout: want a duration", "mqtt.broker_port: must be 1-65535"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			file := writeFile(t, "wgkex.yaml", tc.yaml)
			code, _, stderr := runFast(t, nil, "config", "check", "--config", file)
			if code == 0 || !strings.Contains(stderr, fmt.Sprintf("%d problem(s):", len(tc.keys))) {
				t.Errorf("config check: exit %d\n%s", code, stderr)
			}
			for _, k := range tc.keys {
				if !strings.Contains(stderr, "  "+k) {
					t.Errorf("config check does not list %q:\n%s", k, stderr)
				}
			}
			for _, service := range []string{"broker", "worker"} {
				code, _, stderr := runFast(t, nil, service, "--config", file)
				line := strings.TrimSpace(stderr)
				if code == 0 || strings.Contains(line, "\n") || !strings.HasPrefix(line, "wgkex: invalid configuration in "+file+": ") {
					t.Errorf("%s: exit %d, want one line of config error:\n%s", service, code, stderr)
				}
				for _, k := range tc.keys {
					if !strings.Contains(line, k) {
						t.Errorf("%s does not name %q:\n%s", service, k, stderr)
					}
				}
			}
			if dialled(mqttPort) {
				t.Error("a command connected to the MQTT server despite the config errors")
			}
		})
	}
}

func TestConfigCheckRefusesPlainTextTLS(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"mqtt://mqtt.example.net:8883", "use tls://mqtt.example.net:8883 instead"},
		{"tcp://mqtt.example.net", "use tls://mqtt.example.net instead"},
		{"ws://mqtt.example.net/mqtt", "use wss://mqtt.example.net/mqtt instead"},
		{"", "mqtt.tls: true, but mqtt.broker_url is empty and the embedded MQTT server speaks plain TCP only"},
	} {
		file := writeFile(t, "wgkex.yaml", baseConfig+fmt.Sprintf("mqtt: {broker_url: %q, tls: true}\n", tc.url))
		code, _, stderr := runFast(t, nil, "config", "check", "--config", file)
		if code == 0 || !strings.Contains(stderr, "1 problem(s):\n  mqtt.tls: ") || !strings.Contains(stderr, "mqtt.broker_url") ||
			!strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d\n%s", tc.url, code, stderr)
		}
	}
	// The Python container variables meet the same rule.
	code, _, stderr := runFast(t, []string{"MQTT_BROKER_URL=mqtt://m.example.net", "MQTT_TLS=True"},
		"config", "check", "--config", writeFile(t, "wgkex.yaml", baseConfig))
	if code == 0 || !strings.Contains(stderr, "mqtt.tls: true, but mqtt.broker_url mqtt://m.example.net is plain text") {
		t.Errorf("MQTT_TLS=True with mqtt://: exit %d\n%s", code, stderr)
	}
}

// writeCA writes a self-signed CA certificate and its key (usable as a
// client certificate pair too) and returns their paths.
func writeCA(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wgkex test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = writeFile(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyFile = writeFile(t, "ca.key", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})))
	return certFile, keyFile
}

func TestConfigCheckSaysTransports(t *testing.T) {
	ca, key := writeCA(t)
	for _, tc := range []struct {
		name, yaml string
		env        []string
		want       []string
	}{{
		name: "embedded server",
		yaml: baseConfig,
		want: []string{
			"# broker -> MQTT: mqtt://127.0.0.1:1883 (its own embedded server, plain TCP)\n",
			"# worker -> MQTT: mqtt://127.0.0.1:1883 (plain TCP, to the embedded server of a broker on this host)\n",
			"# embedded MQTT server: plain TCP on 127.0.0.1:1883 (no credentials: loopback only)\n",
			"# HTTP API (broker): plain HTTP on 127.0.0.1:5000\n",
		},
	}, {
		name: "embedded server beyond loopback",
		yaml: baseConfig + "mqtt: {listen: \"0.0.0.0:1884\", username: u, password: p}\nbroker_listen: {host: \"::\", port: 5001}\n",
		want: []string{
			"# broker -> MQTT: mqtt://127.0.0.1:1884 (its own embedded server, plain TCP)\n",
			"# embedded MQTT server: plain TCP on 0.0.0.0:1884 (username and password required)\n",
			"# HTTP API (broker): plain HTTP on [::]:5001\n",
		},
	}, {
		name: "TLS by flag, private CA and client certificate",
		yaml: baseConfig + fmt.Sprintf("mqtt: {broker_url: mqtt.example.net, broker_port: 8883, tls: true, ca_file: %s, cert_file: %s, key_file: %s}\n", ca, ca, key),
		want: []string{
			"# broker -> MQTT: tls://mqtt.example.net:8883 (TLS, server certificate checked against system roots + ca_file, client certificate from cert_file)\n",
			"# worker -> MQTT: tls://mqtt.example.net:8883 (TLS, server certificate checked against system roots + ca_file, client certificate from cert_file)\n",
		},
	}, {
		name: "TLS by scheme",
		yaml: baseConfig + "mqtt: {broker_url: \"wss://mqtt.example.net:443/mqtt\"}\n",
		want: []string{"# worker -> MQTT: wss://mqtt.example.net:443/mqtt (websocket over TLS, server certificate checked against system roots)\n"},
	}, {
		name: "plain text with a password",
		yaml: baseConfig + "mqtt: {broker_url: mqtt.example.net, username: u}\nworker: {metrics_listen: \"[::1]:9100\"}\n",
		env:  []string{"MQTT_PASSWORD=hunter2"},
		want: []string{
			"# broker -> MQTT: mqtt://mqtt.example.net:1883 (plain TCP, unencrypted, password sent in clear text)\n",
			"# worker metrics: plain HTTP on [::1]:9100\n",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runFast(t, tc.env, "config", "check", "--config", writeFile(t, "wgkex.yaml", tc.yaml), "--name", "gw04")
			if code != 0 || !strings.HasSuffix(out, "# configuration OK\n") || stderr != "" {
				t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "hunter2") {
				t.Error("password printed")
			}
		})
	}
}

func TestConfigCheckWarnsAboutIPAddress(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		env        []string
		args       []string
		warn       string // "" for no warning
	}{
		{"externalName IP", baseConfig + "externalName: 192.0.2.4\n", nil, nil, `warning: externalName: "192.0.2.4" is an IP literal`},
		{"--name IP", baseConfig, nil, []string{"--name", "2001:db8::4"}, `warning: externalName: not set, so the worker advertises its name "2001:db8::4"`},
		{"worker.name IP", baseConfig, []string{"WGKEX_WORKER_NAME=192.0.2.4"}, nil, `advertises its name "192.0.2.4"`},
		{"IP name, DNS externalName", baseConfig + "externalName: gw04.ext.example.net\n", nil, []string{"--name", "192.0.2.4"}, ""},
		{"workers entry", baseConfig + "workers: {192.0.2.5: {weight: 2}}\n", nil, []string{"--name", "gw04"}, "warning: workers.192.0.2.5: an IP literal"},
		{"DNS names", baseConfig + "workers: {gw05: {weight: 2}}\n", nil, []string{"--name", "gw04"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"config", "check", "--config", writeFile(t, "wgkex.yaml", tc.yaml)}, tc.args...)
			code, out, stderr := runFast(t, tc.env, args...)
			if code != 0 || !strings.HasSuffix(out, "# configuration OK\n") {
				t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
			}
			if tc.warn == "" {
				if stderr != "" {
					t.Errorf("unexpected warning: %s", stderr)
				}
				return
			}
			if !strings.Contains(stderr, tc.warn) || !strings.Contains(stderr, "busybox nslookup") {
				t.Errorf("stderr lacks %q:\n%s", tc.warn, stderr)
			}
			if strings.HasPrefix(tc.warn, "warning: externalName") && !strings.Contains(stderr, "NODATA") {
				t.Errorf("warning does not say the resolver must answer NODATA:\n%s", stderr)
			}
		})
	}
	// The worker name is resolved as the worker does it: --name over worker.name.
	code, out, _ := runFast(t, []string{"WGKEX_WORKER_NAME=192.0.2.4"}, "config", "check", "--config",
		writeFile(t, "wgkex.yaml", baseConfig), "--name", "gw04")
	if code != 0 || !strings.Contains(out, `# worker: name "gw04" (from --name), hands nodes the Address "gw04" (the worker name)`) {
		t.Errorf("--name over worker.name: exit %d\n%s", code, out)
	}
	code, _, stderr := runFast(t, nil, "config", "check", "--config", writeFile(t, "wgkex.yaml", baseConfig), "--name", "gw/04")
	if code == 0 || !strings.Contains(stderr, `worker name "gw/04" (from --name) cannot stand in an MQTT topic`) {
		t.Errorf("bad --name: exit %d\n%s", code, stderr)
	}
}
