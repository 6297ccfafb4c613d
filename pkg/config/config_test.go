package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testdata(name string) string { return filepath.Join("..", "..", "testdata", name) }

// clearEnv makes sure the machine's environment does not leak into a test.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, k := range keys {
		for _, e := range k.env {
			if _, ok := os.LookupEnv(e); ok {
				t.Setenv(e, "")
				os.Unsetenv(e)
			}
		}
	}
	t.Setenv(EnvConfigFile, "")
}

func TestLoadPythonExample(t *testing.T) {
	clearEnv(t)
	cfg, err := Load(testdata("python-example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Domains) != 7 || cfg.Domains[5] != "ffmuc_welt" {
		t.Errorf("domains = %v", cfg.Domains)
	}
	if got := cfg.Weight("gw04.in.ffmuc.net"); got != 30 {
		t.Errorf("weight gw04 = %d, want 30 (dotted worker names must survive)", got)
	}
	if got := cfg.Weight("GW06.in.ffmuc.net"); got != 20 {
		t.Errorf("weight GW06 = %d, want 20", got)
	}
	if got := cfg.Weight("unlisted"); got != 1 {
		t.Errorf("unlisted weight = %d, want 1", got)
	}
	if cfg.ExternalName != "gw04.ext.ffmuc.net" {
		t.Errorf("externalName = %q", cfg.ExternalName)
	}
	m := cfg.MQTT
	if strings.Join(m.BrokerURLs, ",") != "broker.hivemq.com" || m.Port != 1883 || m.Username != "user" || m.Password != "SECRET" || m.Keepalive != 5 || m.TLS {
		t.Errorf("mqtt = %+v", m)
	}
	if cfg.BrokerListen.Addr() != "0.0.0.0:5000" {
		t.Errorf("broker_listen = %s", cfg.BrokerListen.Addr())
	}
	u, err := serverURL(cfg)
	if err != nil || u.String() != "mqtt://broker.hivemq.com:1883" {
		t.Errorf("ServerURL = %v, %v", u, err)
	}
	if !strings.Contains(strings.Join(cfg.Notes, "\n"), "logging_config") {
		t.Errorf("no note about logging_config: %v", cfg.Notes)
	}
	ifs := cfg.Interfaces()
	if ifs["ffwert_city"].WireGuard != "wg-city" || ifs["ffmuc_muc_cty"].VXLAN != "vx-muc_cty" {
		t.Errorf("interfaces = %v", ifs)
	}
	// Defaults of the keys the Python file does not have.
	if cfg.Worker.PeerTimeout != 3*time.Hour || cfg.Worker.CleanupInterval != time.Hour ||
		cfg.Worker.MetricsInterval != time.Minute || cfg.Worker.NewPeerGrace != 10*time.Minute {
		t.Errorf("worker defaults = %+v", cfg.Worker)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	clearEnv(t)
	t.Setenv("WGKEX_MQTT_BROKER_URL", "mqtt.example.net")
	t.Setenv("WGKEX_BROKER_LISTEN_PORT", "5555")
	t.Setenv("WGKEX_DOMAINS", "ffmuc_a, ffmuc_b,ffmuc_c")
	t.Setenv("WGKEX_WORKER_PEER_TIMEOUT", "2h")
	cfg, err := Load(testdata("python-example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.MQTT.BrokerURLs, ",") != "mqtt.example.net" || cfg.BrokerListen.Port != 5555 {
		t.Errorf("env not applied: %+v %+v", cfg.MQTT, cfg.BrokerListen)
	}
	if strings.Join(cfg.Domains, " ") != "ffmuc_a ffmuc_b ffmuc_c" {
		t.Errorf("domains = %q", cfg.Domains)
	}
	if cfg.Worker.PeerTimeout != 2*time.Hour {
		t.Errorf("peer_timeout = %v", cfg.Worker.PeerTimeout)
	}
	if cfg.MQTT.Username != "user" {
		t.Error("file value lost")
	}
}

func TestPythonContainerVariables(t *testing.T) {
	clearEnv(t)
	t.Setenv(EnvConfigFile, filepath.Join(t.TempDir(), "absent.yaml"))
	if _, err := Load(""); err == nil {
		t.Fatal("an explicitly named missing file must be an error")
	}
	t.Setenv(EnvConfigFile, testdata("minimal.yaml"))
	t.Setenv("WGKEX_DOMAINS", "ffmuc_muc_cty, ffmuc_welt, ffwert_city")
	t.Setenv("WGKEX_DOMAIN_PREFIXES", "ffmuc_, ffdon_, ffwert_")
	t.Setenv("WGKEX_DEBUG", "DEBUG")
	t.Setenv("MQTT_BROKER_URL", "mqtt")
	t.Setenv("MQTT_BROKER_PORT", "1884")
	t.Setenv("MQTT_USERNAME", "u")
	t.Setenv("MQTT_PASSWORD", "p")
	t.Setenv("MQTT_KEEPALIVE", "7")
	t.Setenv("MQTT_TLS", "False")
	cfg, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.File != testdata("minimal.yaml") || len(cfg.Domains) != 3 || len(cfg.DomainPrefixes) != 3 {
		t.Errorf("cfg = %+v", cfg)
	}
	if m := cfg.MQTT; strings.Join(m.BrokerURLs, ",") != "mqtt" || m.Port != 1884 || m.Username != "u" || m.Password != "p" || m.Keepalive != 7 || m.TLS {
		t.Errorf("mqtt = %+v", m)
	}
	if cfg.LogLevel != "DEBUG" {
		t.Errorf("log level = %q", cfg.LogLevel)
	}
	t.Setenv("MQTT_TLS", "True")
	cfg, _ = Load("")
	if u, _ := serverURL(cfg); !cfg.MQTT.TLS || u.Scheme != "tls" {
		t.Errorf("MQTT_TLS=True: %v %v", cfg.MQTT.TLS, u)
	}
}

func TestValidateReportsEverything(t *testing.T) {
	clearEnv(t)
	cfg, err := Load(testdata("invalid.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.Validate()
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("Validate() = %v, want *Error", err)
	}
	msg := err.Error()
	for _, want := range []string{
		`"ffxyz_nord" starts with none of the domain prefixes`,
		`"ffmuc_abcdefghijklmn" gives interface name "wg-abcdefghijklmn" of 17 bytes`,
		`"ffmuc_sued" and "ffwert_sued" both give interfaces wg-sued/vx-sued`,
		"workers.gw01.weight: must be a positive integer, got 0",
		"workers.gw02.weight: must be a positive integer, got -3",
		"mqtt.broker_port: must be 1-65535, got 70000",
		"mqtt.keepalive: must be 0-65535 seconds, got -1",
		"mqtt.ca_file: cannot read",
		"broker_listen.port: must be 1-65535, got 0",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if len(cerr.Problems) != 9 {
		t.Errorf("%d problems, want 9: %v", len(cerr.Problems), cerr.Problems)
	}
}

func TestValidateEmpty(t *testing.T) {
	clearEnv(t)
	cfg := &Config{MQTT: MQTT{Port: 1883, Listen: "0.0.0.0:1883"}, BrokerListen: Listen{Port: 5000},
		Worker: Worker{MetricsInterval: 1, CleanupInterval: 1, PeerTimeout: 1}}
	msg := cfg.Validate().Error()
	for _, want := range []string{"domains: empty", "domain_prefixes: empty", "mqtt.listen: the embedded MQTT server listens beyond loopback"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q: %s", want, msg)
		}
	}
	cfg.MQTT.Username, cfg.MQTT.Password = "u", "p"
	if strings.Contains(cfg.Validate().Error(), "mqtt.listen") {
		t.Error("credentials should satisfy mqtt.listen")
	}
}

func TestBrokenFiles(t *testing.T) {
	clearEnv(t)
	_, err := Load(testdata("broken.yaml"))
	if err == nil || !strings.Contains(err.Error(), "not valid YAML") {
		t.Errorf("broken YAML: %v", err)
	}
	_, err = Load(testdata("types.yaml"))
	var cerr *Error
	if !errors.As(err, &cerr) || len(cerr.Problems) != 3 {
		t.Fatalf("types.yaml: %v", err)
	}
	for _, want := range []string{"mqtt.broker_port: want an integer", "mqtt.tls: want true or false", "worker.peer_timeout: want a duration"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestServerURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		tls  bool
		want string
	}{
		{"mqtt.example.net", false, "mqtt://mqtt.example.net:1883"},
		{"mqtt.example.net", true, "tls://mqtt.example.net:1883"},
		{"2001:db8::1", false, "mqtt://[2001:db8::1]:1883"},
		{"tls://m.example.net:8883", false, "tls://m.example.net:8883"},
		{"ws://m.example.net", false, "ws://m.example.net:1883"},
	} {
		c := &Config{MQTT: MQTT{BrokerURLs: []string{tc.url}, Port: 1883, TLS: tc.tls}}
		u, err := serverURL(c)
		if err != nil || u.String() != tc.want {
			t.Errorf("ServerURL(%q) = %v, %v; want %s", tc.url, u, err, tc.want)
		}
	}
	c := &Config{MQTT: MQTT{Listen: "0.0.0.0:1999"}}
	if u, _ := serverURL(c); u.String() != "mqtt://127.0.0.1:1999" {
		t.Errorf("embedded ServerURL = %v", u)
	}
	c = &Config{MQTT: MQTT{BrokerURLs: []string{"http://x"}}}
	if _, err := serverURL(c); err == nil {
		t.Error("http:// accepted")
	}
}

func TestExampleConfigIsValid(t *testing.T) {
	clearEnv(t)
	cfg, err := Load(filepath.Join("..", "..", "wgkex.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if !cfg.Embedded() || len(cfg.Notes) != 0 {
		t.Errorf("example: embedded=%v notes=%v", cfg.Embedded(), cfg.Notes)
	}
}
