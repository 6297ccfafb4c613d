package config

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

// serverURL is the first server of c, for the tests of a single broker_url.
func serverURL(c *Config) (*url.URL, error) {
	urls, err := c.ServerURLs()
	if err != nil {
		return nil, err
	}
	return urls[0], nil
}

func serverList(t *testing.T, c *Config) string {
	t.Helper()
	urls, err := c.ServerURLs()
	if err != nil {
		t.Fatalf("ServerURLs: %v", err)
	}
	s := make([]string, len(urls))
	for i, u := range urls {
		s[i] = u.String()
	}
	return strings.Join(s, " ")
}

// broker_url takes several servers: a YAML list, or commas in the
// environment (the Python container's MQTT_BROKER_URL too). Each entry gets
// broker_port and the tls scheme as a single one does.
func TestBrokerURLList(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		env        []string
		want       string
	}{
		{"one string, as before", "mqtt: {broker_url: m1.example.net}\n", nil, "mqtt://m1.example.net:1883"},
		{"YAML list", "mqtt: {broker_url: [m1.example.net, \"tls://m2.example.net:8883\", \"2001:db8::1\"], broker_port: 1884}\n", nil,
			"mqtt://m1.example.net:1884 tls://m2.example.net:8883 mqtt://[2001:db8::1]:1884"},
		{"YAML list, tls: true", "mqtt: {broker_url: [m1.example.net, \"wss://m2.example.net/mqtt\"], tls: true}\n", nil,
			"tls://m1.example.net:1883 wss://m2.example.net:1883/mqtt"},
		{"WGKEX_ variable", "", []string{"WGKEX_MQTT_BROKER_URL", "m1.example.net, mqtt://m2.example.net:1885"},
			"mqtt://m1.example.net:1883 mqtt://m2.example.net:1885"},
		{"Python container variable", "", []string{"MQTT_BROKER_URL", "m1.example.net,m2.example.net"},
			"mqtt://m1.example.net:1883 mqtt://m2.example.net:1883"},
		{"variable over file", "mqtt: {broker_url: [a.example.net, b.example.net]}\n", []string{"MQTT_BROKER_URL", "c.example.net"},
			"mqtt://c.example.net:1883"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			cfg, err := loadYAML(t, baseYAML+tc.yaml, tc.env...)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Embedded() {
				t.Fatal("embedded")
			}
			if got := serverList(t, cfg); got != tc.want {
				t.Errorf("servers %s, want %s", got, tc.want)
			}
			if len(cfg.Notes) != 0 {
				t.Errorf("notes %v", cfg.Notes)
			}
		})
	}
	for _, empty := range []string{"", "mqtt: {broker_url: \"\"}\n", "mqtt: {broker_url: []}\n"} {
		clearEnv(t)
		cfg, err := loadYAML(t, baseYAML+empty)
		if err != nil || !cfg.Embedded() || serverList(t, cfg) != "mqtt://127.0.0.1:1883" {
			t.Errorf("%q: %v, not the embedded server", empty, err)
		}
	}
}

// Every bad entry is named with its place in the list; a single entry
// keeps the message it always had.
func TestBrokerURLListProblems(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"single, as before", "mqtt: {broker_url: \"http://x\"}\n",
			[]string{`mqtt.broker_url: unsupported scheme "http" (want mqtt, tls, ws or wss)`}},
		{"bad scheme and an empty entry", "mqtt: {broker_url: [m1.example.net, \"http://x\", \"\"]}\n",
			[]string{`mqtt.broker_url: item 2: unsupported scheme "http"`, "mqtt.broker_url: item 3: empty"}},
		{"the same server twice", "mqtt: {broker_url: [m1.example.net, \"mqtt://m1.example.net:1883\"]}\n",
			[]string{"mqtt.broker_url: item 2: mqtt://m1.example.net:1883 is already item 1"}},
		{"tls: true with a plain entry", "mqtt: {broker_url: [m1.example.net, \"mqtt://u:secret@m2.example.net\"], tls: true}\n",
			[]string{"mqtt.tls: true, but mqtt.broker_url item 2 mqtt://u:xxxxx@m2.example.net is plain text: use tls://u:xxxxx@m2.example.net instead"}},
		{"a map is no list", "mqtt: {broker_url: {a: b}}\n", []string{"mqtt.broker_url: want a list of strings"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			_, err := loadYAML(t, baseYAML+tc.yaml)
			var cerr *Error
			if !errors.As(err, &cerr) || len(cerr.Problems) != len(tc.want) {
				t.Fatalf("got %v, want %d problem(s)", err, len(tc.want))
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%s", w, err)
				}
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("password in the error: %s", err)
			}
		})
	}
}

// A list that mixes TLS and plain text is valid but warned about: a
// failover would drop the encryption.
func TestBrokerURLListMixedTLSWarning(t *testing.T) {
	c := validConfig()
	c.ExternalName = "gw04.ext.example.net"
	c.MQTT.BrokerURLs = []string{"tls://m1.example.net:8883", "mqtt://m2.example.net"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	ws := c.Warnings("gw04")
	if len(ws) != 1 || ws[0].Key != "mqtt.broker_url" || !strings.Contains(ws[0].Msg, "item 2, mqtt://m2.example.net:1883, is plain text") {
		t.Errorf("warnings %v", ws)
	}
	c.MQTT.BrokerURLs = []string{"tls://m1.example.net:8883", "wss://m2.example.net/mqtt"}
	if ws := c.Warnings("gw04"); len(ws) != 0 {
		t.Errorf("all TLS: warnings %v", ws)
	}
}
