package config

import (
	"strings"
	"testing"
)

func TestWorkerAcknowledgementKeys(t *testing.T) {
	clearEnv(t)
	const base = "domains: [ffmuc_welt]\ndomain_prefixes: [ffmuc_]\n"
	cfg, err := Load(writeConfig(t, base))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Worker.ReceiveMaximum != defaultReceiveMaximum || cfg.Worker.StateDir != "/var/lib/wgkex" {
		t.Errorf("defaults: receive_maximum %d, state_dir %q", cfg.Worker.ReceiveMaximum, cfg.Worker.StateDir)
	}

	cfg, err = Load(writeConfig(t, base+"worker:\n  receive_maximum: 100\n  state_dir: /srv/wgkex\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Worker.ReceiveMaximum != 100 || cfg.Worker.StateDir != "/srv/wgkex" {
		t.Errorf("from the file: %+v", cfg.Worker)
	}
	if len(cfg.Notes) != 0 {
		t.Errorf("known keys reported: %v", cfg.Notes)
	}

	t.Setenv("WGKEX_WORKER_RECEIVE_MAXIMUM", "65535")
	t.Setenv("WGKEX_WORKER_STATE_DIR", "/run/wgkex")
	if cfg, err = Load(writeConfig(t, base)); err != nil {
		t.Fatal(err)
	}
	if cfg.Worker.ReceiveMaximum != 65535 || cfg.Worker.StateDir != "/run/wgkex" {
		t.Errorf("from the environment: %+v", cfg.Worker)
	}
	clearEnv(t)

	for _, c := range []struct{ yaml, want string }{
		{"receive_maximum: 70000", "worker.receive_maximum: must be 1-65535"},
		{"receive_maximum: -1", "worker.receive_maximum: must be 1-65535"},
		{"receive_maximum: many", "worker.receive_maximum: want an integer"},
		{"state_dir: var/lib/wgkex", `worker.state_dir: want an absolute path, got "var/lib/wgkex"`},
	} {
		cfg, err := Load(writeConfig(t, base+"worker:\n  "+c.yaml+"\n"))
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.yaml, err, c.want)
		}
	}
}
