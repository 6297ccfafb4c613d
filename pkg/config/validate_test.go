package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeConfig writes a config file for one test and returns its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "wgkex.yaml")
	if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// loadProblems loads text and returns the keys of the problems Load
// reports, failing unless it reports them as one one-line *Error.
func loadProblems(t *testing.T, text string) (keys []string, msg string) {
	t.Helper()
	_, err := Load(writeConfig(t, text))
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("Load = %v, want *Error", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error spans lines:\n%s", err)
	}
	for _, p := range cerr.Problems {
		keys = append(keys, p.Key)
	}
	return keys, err.Error()
}

func TestLoadNamesEveryWrongKey(t *testing.T) {
	const base = "domains: [ffmuc_welt]\ndomain_prefixes: [ffmuc_]\n"
	for _, tc := range []struct {
		name, yaml string
		env        map[string]string
		want       []string
		msgs       []string
	}{{
		name: "two type errors",
		yaml: base + "broker_listen: {port: \"abc\"}\nmqtt: {keepalive: \"x\"}\n",
		want: []string{"mqtt.keepalive", "broker_listen.port"},
		msgs: []string{`mqtt.keepalive: want an integer, got "x"`, `broker_listen.port: want an integer, got "abc"`},
	}, {
		name: "type error and validation problems",
		yaml: base + "broker_listen: {port: \"abc\"}\nworkers: {gw1: {weight: 0}}\nmqtt: {broker_url: \"mqtt://m.example.net\", tls: true}\n",
		want: []string{"broker_listen.port", "workers.gw1.weight", "mqtt.tls"},
		msgs: []string{"workers.gw1.weight: must be a positive integer, got 0", "mqtt.tls: true, but mqtt.broker_url mqtt://m.example.net is plain text: use tls://m.example.net instead"},
	}, {
		name: "two type errors and a validation problem",
		yaml: base + "mqtt: {keepalive: [1], broker_port: 70000}\nworker: {peer_timeout: forever}\n",
		want: []string{"mqtt.keepalive", "worker.peer_timeout", "mqtt.broker_port"},
		msgs: []string{"mqtt.broker_port: must be 1-65535, got 70000", "worker.peer_timeout: want a duration"},
	}, {
		name: "environment and file",
		yaml: base + "worker: {metrics_interval: -5s}\n",
		env:  map[string]string{"WGKEX_BROKER_LISTEN_PORT": "http", "MQTT_TLS": "perhaps"},
		want: []string{"mqtt.tls", "broker_listen.port", "worker.metrics_interval"},
	}, {
		// A key of the wrong type holds its default for validation, but is
		// named once: domains is not also "empty".
		name: "a key is named once",
		yaml: "domains: {ffmuc_welt: 1}\ndomain_prefixes: [ffmuc_]\nmqtt: {broker_port: 0, keepalive: x}\n",
		want: []string{"domains", "mqtt.keepalive", "mqtt.broker_port"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			keys, msg := loadProblems(t, tc.yaml)
			if strings.Join(keys, " ") != strings.Join(tc.want, " ") {
				t.Errorf("problem keys %q, want %q\n%s", keys, tc.want, msg)
			}
			for _, m := range tc.msgs {
				if !strings.Contains(msg, m) {
					t.Errorf("error lacks %q:\n%s", m, msg)
				}
			}
		})
	}
}

// Without type problems Load leaves validation to the caller, who may apply
// flags first.
func TestLoadLeavesValidationToCaller(t *testing.T) {
	clearEnv(t)
	cfg, err := Load(writeConfig(t, "workers: {gw1: {weight: 0}}\n"))
	if err != nil {
		t.Fatalf("Load = %v", err)
	}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "workers.gw1.weight") {
		t.Errorf("Validate = %v", err)
	}
}

func TestTLSNeverSilentlyPlain(t *testing.T) {
	for _, tc := range []struct {
		url     string
		tls     bool
		want    string // ServerURL, "" when it must be a config error
		suggest string // the URL the error proposes
	}{
		{"m.example.net", true, "tls://m.example.net:1883", ""},
		{"2001:db8::1", true, "tls://[2001:db8::1]:1883", ""},
		{"m.example.net", false, "mqtt://m.example.net:1883", ""},
		{"tls://m.example.net:8883", true, "tls://m.example.net:8883", ""},
		{"mqtts://m.example.net", true, "mqtts://m.example.net:1883", ""},
		{"ssl://m.example.net:8883", true, "ssl://m.example.net:8883", ""},
		{"wss://m.example.net/mqtt", true, "wss://m.example.net:1883/mqtt", ""},
		{"tls://m.example.net:8883", false, "tls://m.example.net:8883", ""},
		{"mqtt://m.example.net", false, "mqtt://m.example.net:1883", ""},
		{"mqtt://m.example.net:8883", true, "", "tls://m.example.net:8883"},
		{"tcp://m.example.net", true, "", "tls://m.example.net"},
		{"MQTT://m.example.net", true, "", "tls://m.example.net"},
		{"ws://m.example.net/mqtt", true, "", "wss://m.example.net/mqtt"},
		{"mqtt://u:secret@m.example.net", true, "", "tls://u:xxxxx@m.example.net"},
	} {
		c := validConfig()
		c.MQTT.BrokerURLs, c.MQTT.TLS = []string{tc.url}, tc.tls
		u, uerr := serverURL(c)
		verr := c.Validate()
		if tc.want != "" {
			if uerr != nil || u.String() != tc.want || verr != nil {
				t.Errorf("%q tls=%v: ServerURL = %v, %v; Validate = %v; want %s", tc.url, tc.tls, u, uerr, verr, tc.want)
			}
			if got := TLSScheme(u.Scheme); got != (tc.tls || strings.HasPrefix(tc.want, "tls") || strings.HasPrefix(tc.want, "wss")) {
				t.Errorf("%q tls=%v: TLSScheme(%s) = %v", tc.url, tc.tls, u.Scheme, got)
			}
			continue
		}
		if uerr == nil {
			t.Errorf("%q tls=%v: ServerURL = %v, want an error", tc.url, tc.tls, u)
		}
		var cerr *Error
		if !errors.As(verr, &cerr) || len(cerr.Problems) != 1 {
			t.Fatalf("%q tls=%v: Validate = %v, want one problem", tc.url, tc.tls, verr)
		}
		p := cerr.Problems[0]
		if p.Key != "mqtt.tls" || !strings.Contains(p.Msg, "mqtt.broker_url") || !strings.Contains(p.Msg, "use "+tc.suggest+" instead") ||
			!strings.Contains(p.Msg, "bare host name") || strings.Contains(p.Msg, "secret") {
			t.Errorf("%q tls=%v: problem %q", tc.url, tc.tls, p)
		}
	}
}

func TestTLSWithEmbeddedServer(t *testing.T) {
	c := validConfig()
	c.MQTT.BrokerURLs, c.MQTT.TLS = nil, true
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "mqtt.tls: true, but mqtt.broker_url is empty and the embedded MQTT server speaks plain TCP only") {
		t.Errorf("Validate = %v", err)
	}
	if _, err := serverURL(c); err == nil {
		t.Error("ServerURL gives a plain URL for tls: true")
	}
	c.MQTT.TLS = false
	if err := c.Validate(); err != nil {
		t.Errorf("embedded without tls: %v", err)
	}
}

func TestWarnings(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, nil, 0o644)
	for _, tc := range []struct {
		name     string
		edit     func(*Config)
		worker   string
		want     []string // keys warned about
		contains string
	}{
		{"DNS names", func(c *Config) {}, "gw04", nil, ""},
		{"externalName IPv4", func(c *Config) { c.ExternalName = "192.0.2.4" }, "gw04", []string{"externalName"}, `"192.0.2.4" is an IP literal: deployed Gluon nodes resolve the v2 Address with busybox nslookup`},
		{"externalName bracketed IPv6", func(c *Config) { c.ExternalName = "[2001:db8::4]" }, "gw04", []string{"externalName"}, "NODATA"},
		{"worker name IPv6", func(c *Config) { c.ExternalName = "" }, "2001:db8::4", []string{"externalName"}, `not set, so the worker advertises its name "2001:db8::4"`},
		{"worker name IP but externalName set", func(c *Config) {}, "192.0.2.4", nil, ""},
		{"workers entry, no externalName", func(c *Config) { c.ExternalName = ""; c.Workers["192.0.2.5"] = 1 }, "gw04", []string{"workers.192.0.2.5"}, "give that worker externalName"},
		{"workers entry is this worker", func(c *Config) { c.ExternalName = ""; c.Workers["192.0.2.5"] = 1 }, "192.0.2.5", []string{"externalName"}, ""},
		{"workers entry, externalName set", func(c *Config) { c.Workers["192.0.2.5"] = 1 }, "gw04", nil, ""},
		{"ca_file unused", func(c *Config) { c.MQTT.BrokerURLs, c.MQTT.CAFile = []string{"m.example.net"}, ca }, "gw04", []string{"mqtt.ca_file"}, "mqtt://m.example.net:1883) is plain text, so it is not used"},
		{"ca_file used", func(c *Config) { c.MQTT.BrokerURLs, c.MQTT.CAFile, c.MQTT.TLS = []string{"m.example.net"}, ca, true }, "gw04", nil, ""},
	} {
		c := validConfig()
		c.ExternalName = "gw04.ext.example.net"
		tc.edit(c)
		if err := c.Validate(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		ws := c.Warnings(tc.worker)
		var keys []string
		for _, w := range ws {
			keys = append(keys, w.Key)
		}
		if strings.Join(keys, " ") != strings.Join(tc.want, " ") {
			t.Errorf("%s: warnings %v, want keys %v", tc.name, ws, tc.want)
		}
		if tc.contains != "" && (len(ws) == 0 || !strings.Contains(ws[0].String(), tc.contains)) {
			t.Errorf("%s: warnings %v lack %q", tc.name, ws, tc.contains)
		}
	}
}

func TestExternalAddress(t *testing.T) {
	c := &Config{}
	if got := c.ExternalAddress("gw04"); got != "gw04" {
		t.Errorf("no externalName: %q", got)
	}
	c.ExternalName = "gw04.ext.example.net"
	if got := c.ExternalAddress("gw04"); got != "gw04.ext.example.net" {
		t.Errorf("externalName: %q", got)
	}
}

// validConfig is a Config that passes Validate, for tests to break one
// thing at a time.
func validConfig() *Config {
	return &Config{
		Domains: []string{"ffmuc_welt"}, DomainPrefixes: []string{"ffmuc_"}, Workers: map[string]int{"gw04": 1},
		MQTT:         MQTT{Port: 1883, Keepalive: 5, Listen: defaultEmbeddedListen},
		BrokerListen: Listen{Host: defaultListenHost, Port: defaultListenPort},
		Worker: Worker{MetricsInterval: defaultMetricsInterval, CleanupInterval: defaultCleanupInterval,
			PeerTimeout: defaultPeerTimeout, NewPeerGrace: defaultNewPeerGrace},
	}
}
