package config

import (
	"strings"
	"testing"
)

func TestBrokerNameAndSelectionDefaults(t *testing.T) {
	cfg, err := loadYAML(t, baseYAML)
	if err != nil {
		t.Fatal(err)
	}
	if b := cfg.Broker; b.Name != "" || b.Selection != selectionLeastLoaded || b.StickyTolerance != defaultStickyTolerance {
		t.Errorf("defaults: name %q, selection %q, tolerance %v", b.Name, b.Selection, b.StickyTolerance)
	}
}

func TestBrokerNameAndSelection(t *testing.T) {
	cfg, err := loadYAML(t, baseYAML+"broker: {name: broker1.ffmuc.net, selection: Sticky, sticky_tolerance: 25}\n")
	if err != nil {
		t.Fatal(err)
	}
	if b := cfg.Broker; b.Name != "broker1.ffmuc.net" || b.Selection != SelectionSticky || b.StickyTolerance != 25 {
		t.Errorf("from YAML: %+v", b)
	}
	cfg, err = loadYAML(t, baseYAML, "WGKEX_BROKER_NAME", "b2", "WGKEX_BROKER_SELECTION", "sticky", "WGKEX_BROKER_STICKY_TOLERANCE", "0.5")
	if err != nil {
		t.Fatal(err)
	}
	if b := cfg.Broker; b.Name != "b2" || b.Selection != SelectionSticky || b.StickyTolerance != 0.5 {
		t.Errorf("from the environment: %+v", b)
	}
	// 0 is a valid tolerance: only gateways at or below their share keep
	// their nodes.
	if _, err := loadYAML(t, baseYAML+"broker: {selection: sticky, sticky_tolerance: 0}\n"); err != nil {
		t.Errorf("tolerance 0: %v", err)
	}
}

func TestBrokerNameAndSelectionProblems(t *testing.T) {
	for _, tc := range []struct{ yaml, key, says string }{
		{"broker: {name: a/b}\n", "broker.name", `"a/b" cannot stand in an MQTT topic`},
		{"broker: {name: \"a+\"}\n", "broker.name", "cannot stand in an MQTT topic"},
		{"broker: {selection: random}\n", "broker.selection", `want least_loaded or sticky, got "random"`},
		{"broker: {sticky_tolerance: -1}\n", "broker.sticky_tolerance", "want a percentage of 0 or more, got -1"},
		{"broker: {sticky_tolerance: .nan}\n", "broker.sticky_tolerance", "want a percentage of 0 or more"},
		{"broker: {sticky_tolerance: lots}\n", "broker.sticky_tolerance", "want a number"},
	} {
		_, err := loadYAML(t, baseYAML+tc.yaml)
		if err == nil || !strings.Contains(err.Error(), tc.key+": ") || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: error %v, want %s: ...%s...", strings.TrimSpace(tc.yaml), err, tc.key, tc.says)
		}
	}
}
