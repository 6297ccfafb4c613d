package cmd_test

import (
	"strings"
	"testing"
)

// config check names every MQTT server of a list, in the order they are
// tried, each with its transport; the list comes from the file or, comma
// separated, from the environment.
func TestConfigCheckServerList(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		env        []string
		want       []string
		warn       string
	}{{
		name: "YAML list",
		yaml: baseConfig + "mqtt: {broker_url: [mqtt1.example.net, \"tls://u:hunter2@mqtt2.example.net:8883\"], username: u, password: hunter2}\n",
		want: []string{
			`  broker_url: ["mqtt1.example.net", "tls://u:xxxxx@mqtt2.example.net:8883"]   # tried in this order` + "\n",
			"# broker -> MQTT: mqtt://mqtt1.example.net:1883 (plain TCP, unencrypted, password sent in clear text)\n",
			"# broker -> MQTT, fallback 1: tls://u:xxxxx@mqtt2.example.net:8883 (TLS, server certificate checked against system roots)\n",
			"# worker -> MQTT: mqtt://mqtt1.example.net:1883 (plain TCP, unencrypted, password sent in clear text)\n",
			"# worker -> MQTT, fallback 1: tls://u:xxxxx@mqtt2.example.net:8883 (TLS, server certificate checked against system roots)\n",
		},
		warn: "warning: mqtt.broker_url: item 1, mqtt://mqtt1.example.net:1883, is plain text while the others use TLS",
	}, {
		name: "Python container variable",
		yaml: baseConfig,
		env:  []string{"MQTT_BROKER_URL=mqtt1.example.net,mqtt2.example.net", "MQTT_TLS=true"},
		want: []string{
			"# worker -> MQTT: tls://mqtt1.example.net:1883 (TLS, server certificate checked against system roots)\n",
			"# worker -> MQTT, fallback 1: tls://mqtt2.example.net:1883 (TLS, server certificate checked against system roots)\n",
		},
	}, {
		name: "one server, as before",
		yaml: baseConfig + "mqtt: {broker_url: mqtt1.example.net}\n",
		want: []string{"  broker_url: \"mqtt1.example.net\"\n", "# worker -> MQTT: mqtt://mqtt1.example.net:1883 (plain TCP, unencrypted)\n"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runFast(t, tc.env, "config", "check", "--config", writeFile(t, "wgkex.yaml", tc.yaml), "--name", "gw04")
			if code != 0 || !strings.HasSuffix(out, "# configuration OK\n") {
				t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "fallback 2") {
				t.Errorf("a server too many:\n%s", out)
			}
			if (tc.warn == "") != (stderr == "") || !strings.Contains(stderr, tc.warn) {
				t.Errorf("stderr %q, want %q", stderr, tc.warn)
			}
			if strings.Contains(out+stderr, "hunter2") {
				t.Error("password printed")
			}
		})
	}
	code, _, stderr := runFast(t, []string{"WGKEX_MQTT_BROKER_URL=mqtt1.example.net,http://mqtt2.example.net"}, "config", "check",
		"--config", writeFile(t, "wgkex.yaml", baseConfig))
	if code == 0 || !strings.Contains(stderr, `mqtt.broker_url: item 2: unsupported scheme "http"`) {
		t.Errorf("bad second server: exit %d\n%s", code, stderr)
	}
}
