package cmd_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/mqttserver"
)

var aclPasswords = map[string]string{"wgkex": "broker-pw", "gw1": "gw1-pw", "gw2": "gw2-pw"}

// aclPasswordFile makes a password file with mosquitto_passwd, in a
// directory Mosquitto can read after it drops root.
func aclPasswordFile(t *testing.T) string {
	t.Helper()
	tool, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		testbus.Missing(t, "mosquitto_passwd is not installed (apt-get install mosquitto)")
	}
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755) // the test's temporary directory
	os.Chmod(dir, 0o755)
	f := filepath.Join(dir, "passwd")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"wgkex", "gw1", "gw2"} {
		if out, err := exec.Command(tool, "-b", f, u, aclPasswords[u]).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd: %v: %s", err, out)
		}
	}
	os.Chmod(f, 0o644)
	return f
}

func TestMosquittoACL(t *testing.T) {
	pw := aclPasswordFile(t)
	for _, tc := range []struct{ name, workers string }{
		{"pattern", ""},
		{"listed workers", "workers:\n  gw1: {weight: 1}\n  gw2: {weight: 1}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeFile(t, "wgkex.yaml", baseConfig+"mqtt:\n  username: wgkex\n"+tc.workers)
			code, acl, stderr := runFast(t, nil, "config", "mosquitto-acl", "-c", cfg, "--password-file", pw)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if !strings.Contains(acl, "mosquitto_passwd -c "+pw+" wgkex") {
				t.Errorf("no password hint for the broker user:\n%s", acl)
			}
			aclFile := filepath.Join(filepath.Dir(pw), "acl-"+strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(aclFile, []byte(acl), 0o644); err != nil {
				t.Fatal(err)
			}
			srv := testbus.MosquittoWith(t, fmt.Sprintf("allow_anonymous false\npassword_file %s\nacl_file %s\n", pw, aclFile))
			checkRoles(t, srv.URL)
		})
	}
}

func TestMosquittoACLNeedsBrokerUser(t *testing.T) {
	cfg := writeFile(t, "wgkex.yaml", baseConfig)
	if code, _, stderr := runFast(t, nil, "config", "mosquitto-acl", "-c", cfg); code == 0 || !strings.Contains(stderr, "mqtt.username") {
		t.Errorf("exit %d, stderr %q; want a complaint about mqtt.username", code, stderr)
	}
}

// The embedded server gives the same rights with the same password file.
func TestEmbeddedACLWithMosquittoPasswordFile(t *testing.T) {
	pw := aclPasswordFile(t)
	srv, err := mqttserver.Start(mqttserver.Options{Listen: "127.0.0.1:0", Username: "wgkex", PasswordFile: pw, Logger: testbus.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	checkRoles(t, &url.URL{Scheme: "mqtt", Host: srv.Addr().String()})
}

// checkRoles: a worker cannot publish another worker's status or keys, its
// own status goes through, the broker user publishes keys. A refused
// publish is followed by an allowed one on the same topic filters, so that
// the first message a subscriber gets tells whether the refused one was
// delivered. The publisher must hear the refusal (MQTT 5 PUBACK 0x87), as
// from Mosquitto.
func checkRoles(t *testing.T, server *url.URL) {
	t.Helper()
	login := func(user string, o mqtt.Options) *mqtt.Client {
		o.Server, o.ClientID, o.Username, o.Password = server, "acl-test-"+user, user, aclPasswords[user]
		return testbus.Connect(t, o)
	}
	state := make(chan mqtt.Message, 100)
	broker := login("wgkex", mqtt.Options{
		Subscriptions: []mqtt.Subscription{{Filter: "wireguard-worker/#", QoS: 1}, {Filter: "wireguard-metrics/#", QoS: 1}},
		OnMessage:     func(m mqtt.Message) { state <- m },
	})
	keys := make(chan mqtt.Message, 100)
	login("gw2", mqtt.Options{
		Subscriptions: []mqtt.Subscription{{Filter: "wireguard/ffmuc_welt/+", QoS: 1}},
		OnMessage:     func(m mqtt.Message) { keys <- m },
	})
	gw1 := login("gw1", mqtt.Options{})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	publish := func(c *mqtt.Client, who, topic, payload string, allowed bool) {
		t.Helper()
		err := c.Publish(ctx, topic, []byte(payload), 1, false)
		switch {
		case allowed && err != nil:
			t.Fatalf("%s publishing %s: %v", who, topic, err)
		case !allowed && (err == nil || !strings.Contains(err.Error(), "0x87") && !strings.Contains(err.Error(), "not authorized")):
			t.Errorf("%s publishing %s: %v; want refused as not authorized (0x87)", who, topic, err)
		}
	}
	first := func(ch chan mqtt.Message, what string) mqtt.Message {
		t.Helper()
		select {
		case m := <-ch:
			return m
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: nothing arrived", what)
			return mqtt.Message{}
		}
	}

	publish(gw1, "gw1", "wireguard-worker/gw2/status", "0", false)
	publish(gw1, "gw1", "wireguard-metrics/ffmuc_welt/gw2/connected_peers", "-1", false)
	publish(gw1, "gw1", "wireguard-worker/gw1/status", "1", true)
	if m := first(state, "broker subscriber"); m.Topic != "wireguard-worker/gw1/status" || string(m.Payload) != "1" {
		t.Errorf("broker subscriber got %s %q first; want gw1's own status (the forged one was delivered)", m.Topic, m.Payload)
	}
	publish(gw1, "gw1", "wireguard-metrics/ffmuc_welt/gw1/connected_peers", "3", true)
	if m := first(state, "broker subscriber"); m.Topic != "wireguard-metrics/ffmuc_welt/gw1/connected_peers" {
		t.Errorf("broker subscriber got %s; want gw1's metric", m.Topic)
	}

	publish(gw1, "gw1", "wireguard/ffmuc_welt/all", "forged-key", false)
	publish(broker, "broker", "wireguard/ffmuc_welt/all", "real-key", true)
	if m := first(keys, "worker gw2"); string(m.Payload) != "real-key" {
		t.Errorf("worker gw2 got %q first; want the broker's key (the worker's was delivered)", m.Payload)
	}
}
