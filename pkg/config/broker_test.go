package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func loadYAML(t *testing.T, yaml string, env ...string) (*Config, error) {
	t.Helper()
	for i := 0; i+1 < len(env); i += 2 {
		t.Setenv(env[i], env[i+1])
	}
	f := filepath.Join(t.TempDir(), "wgkex.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(f)
	if err != nil {
		return nil, err
	}
	return cfg, cfg.Validate()
}

const baseYAML = "domains: [ffmuc_welt]\ndomain_prefixes: [ffmuc_]\n"

func TestBrokerDefaults(t *testing.T) {
	cfg, err := loadYAML(t, baseYAML)
	if err != nil {
		t.Fatal(err)
	}
	b := cfg.Broker
	if b.KnownWorkersOnly || b.WorkerExpiry != defaultWorkerExpiry || b.BlocklistFile != "" || b.AllowlistFile != "" {
		t.Errorf("broker defaults %+v", b)
	}
	if r := b.RateLimit; r.PerClient != 1 || r.PerClientBurst != 60 || r.Global != 2000 || r.GlobalBurst != 20000 || r.MaxClients != 100000 {
		t.Errorf("rate limit defaults %+v", r)
	}
	if cfg.BrokerListen.MaxConnections != defaultMaxConnections || len(cfg.BrokerListen.TrustedProxies) != 0 {
		t.Errorf("listen defaults %+v", cfg.BrokerListen)
	}
	// Listing workers turns known_workers_only on, unless it is set.
	cfg, err = loadYAML(t, baseYAML+"workers: {gw1: {weight: 1}}\n")
	if err != nil || !cfg.Broker.KnownWorkersOnly {
		t.Errorf("with workers: known_workers_only = %v, %v", cfg.Broker.KnownWorkersOnly, err)
	}
	cfg, err = loadYAML(t, baseYAML+"workers: {gw1: {weight: 1}}\nbroker: {known_workers_only: false}\n")
	if err != nil || cfg.Broker.KnownWorkersOnly {
		t.Errorf("explicit false: %v, %v", cfg.Broker.KnownWorkersOnly, err)
	}
}

func TestBrokerSettings(t *testing.T) {
	cfg, err := loadYAML(t, baseYAML+`
broker_listen: {max_connections: 100, trusted_proxies: [10.0.0.1, "2001:db8::/64"]}
broker:
  worker_expiry: 2m
  blocklist_file: /etc/wgkex/blocked.yaml
  rate_limit: {per_client: 0.5, per_client_burst: 10, global: 0}
`, "WGKEX_BROKER_ALLOWLIST_FILE", "/etc/wgkex/allowed.yaml", "WGKEX_BROKER_RATE_LIMIT_GLOBAL_BURST", "7")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BrokerListen.MaxConnections != 100 || strings.Join(cfg.BrokerListen.TrustedProxies, ",") != "10.0.0.1,2001:db8::/64" {
		t.Errorf("listen %+v", cfg.BrokerListen)
	}
	b := cfg.Broker
	if b.WorkerExpiry != 2*time.Minute || b.BlocklistFile != "/etc/wgkex/blocked.yaml" || b.AllowlistFile != "/etc/wgkex/allowed.yaml" {
		t.Errorf("broker %+v", b)
	}
	if r := b.RateLimit; r.PerClient != 0.5 || r.PerClientBurst != 10 || r.Global != 0 || r.GlobalBurst != 7 {
		t.Errorf("rate limit %+v", r)
	}
}

func TestBrokerProblemsAllNamed(t *testing.T) {
	_, err := loadYAML(t, baseYAML+`
broker_listen: {max_connections: -1, trusted_proxies: [not-an-address]}
broker:
  known_workers_only: true
  rate_limit: {per_client: -1, global: 5, global_burst: 0, per_client_burst: x}
`)
	if err == nil {
		t.Fatal("no error")
	}
	for _, key := range []string{"broker_listen.max_connections", "broker_listen.trusted_proxies", "broker.known_workers_only",
		"broker.rate_limit.per_client:", "broker.rate_limit.global_burst", "broker.rate_limit.per_client_burst"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s: %v", key, err)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error spans lines: %v", err)
	}
}

// A migrated Python config's logging_config root level becomes the log
// level (WARNING: no line per request), unless log_level says otherwise.
func TestPythonLoggingRootLevel(t *testing.T) {
	const logging = "logging_config:\n  version: 1\n  root: {handlers: [console], level: WARNING}\n"
	cfg, err := loadYAML(t, baseYAML+logging)
	if err != nil || cfg.LogLevel != "WARNING" {
		t.Fatalf("LogLevel %q, %v", cfg.LogLevel, err)
	}
	if lvl, _ := ParseLogLevel(cfg.LogLevel); lvl.String() != "WARN" {
		t.Errorf("level %v", lvl)
	}
	if notes := strings.Join(cfg.Notes, "\n"); !strings.Contains(notes, "root level WARNING is used as the log level") {
		t.Errorf("notes %q", notes)
	}
	cfg, err = loadYAML(t, baseYAML+logging+"log_level: debug\n")
	if err != nil || cfg.LogLevel != "debug" || !strings.Contains(strings.Join(cfg.Notes, "\n"), "overridden by log_level") {
		t.Errorf("log_level wins: %q %v %v", cfg.LogLevel, cfg.Notes, err)
	}
	cfg, err = loadYAML(t, baseYAML+"logging_config:\n  root: {level: NOTSET}\n")
	if err != nil || cfg.LogLevel != "" || !strings.Contains(strings.Join(cfg.Notes, "\n"), "not a level wgkex knows") {
		t.Errorf("unknown level: %q %v %v", cfg.LogLevel, cfg.Notes, err)
	}
}

func TestEmbeddedServerKeys(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "passwd")
	os.WriteFile(pw, []byte("gw1:$7$101$x$y\n"), 0o600)
	cfg, err := loadYAML(t, baseYAML+"mqtt: {store: /var/lib/wgkex/mqtt.db, username: broker, password_file: "+pw+"}\n")
	if err != nil || cfg.MQTT.Store != "/var/lib/wgkex/mqtt.db" || cfg.MQTT.PasswordFile != pw {
		t.Fatalf("%+v %v", cfg.MQTT, err)
	}
	// A password file needs the broker's user; both keys mean nothing with
	// an external server.
	if _, err := loadYAML(t, baseYAML+"mqtt: {password_file: "+pw+"}\n"); err == nil || !strings.Contains(err.Error(), "mqtt.password_file: needs mqtt.username") {
		t.Errorf("password_file without username: %v", err)
	}
	_, err = loadYAML(t, baseYAML+"mqtt: {broker_url: mqtt.example.net, store: /x, password_file: "+pw+"}\n")
	if err == nil || !strings.Contains(err.Error(), "mqtt.store: set, but mqtt.broker_url") || !strings.Contains(err.Error(), "mqtt.password_file: set, but") {
		t.Errorf("with an external server: %v", err)
	}
}
