package mqttserver_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
	"github.com/freifunkMUC/wgkex/pkg/mqttserver"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// passwordFile writes users (name → password) with mosquitto_passwd, each
// with the hash named in hashes (default sha512-pbkdf2).
func passwordFile(t *testing.T, users map[string]string, hashes map[string]string) string {
	t.Helper()
	tool, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		testbus.Missing(t, "mosquitto_passwd is not installed (apt-get install mosquitto)")
	}
	f := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, pass := range users {
		args := []string{"-b", f, name, pass}
		if h := hashes[name]; h != "" {
			args = append([]string{"-H", h}, args...)
		}
		if out, err := exec.Command(tool, args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd: %v: %s", err, out)
		}
	}
	return f
}

func startRoles(t *testing.T) *url.URL {
	t.Helper()
	pw := passwordFile(t, map[string]string{"gw1": "gw1-pw", "gw2": "gw2-pw"}, nil)
	srv, err := mqttserver.Start(mqttserver.Options{Listen: "127.0.0.1:0", Username: "wgkex", Password: "broker-pw", PasswordFile: pw, Logger: testbus.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &url.URL{Scheme: "mqtt", Host: srv.Addr().String()}
}

// dialPaho connects a bare MQTT 5 client, so a test sees CONNACK and SUBACK codes.
func dialPaho(t *testing.T, u *url.URL, user, pass string, will *paho.WillMessage) (*paho.Client, net.Conn, *paho.Connack, error) {
	t.Helper()
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, &paho.Connect{
		ClientID: fmt.Sprintf("auth-test-%s-%d", user, time.Now().UnixNano()), KeepAlive: 30, CleanStart: true,
		Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true, WillMessage: will,
	})
	return c, conn, ack, err
}

func TestPasswordFileLogins(t *testing.T) {
	pw := passwordFile(t,
		map[string]string{"gw-pbkdf2": "one", "gw-sha512": "two", "wgkex": "from-file"},
		map[string]string{"gw-sha512": "sha512"})
	data, _ := os.ReadFile(pw)
	if !strings.Contains(string(data), "gw-pbkdf2:$7$") || !strings.Contains(string(data), "gw-sha512:$6$") {
		t.Fatalf("mosquitto_passwd wrote other hashes than the test means to check:\n%s", data)
	}
	srv, err := mqttserver.Start(mqttserver.Options{Listen: "127.0.0.1:0", Username: "wgkex", Password: "from-options", PasswordFile: pw, Logger: testbus.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	u := &url.URL{Scheme: "mqtt", Host: srv.Addr().String()}
	for _, tc := range []struct {
		user, pass string
		ok         bool
	}{
		{"gw-pbkdf2", "one", true},
		{"gw-pbkdf2", "two", false},
		{"gw-sha512", "two", true},
		{"gw-sha512", "one", false},
		{"wgkex", "from-options", true},
		{"wgkex", "from-file", true},
		{"wgkex", "other", false},
		{"gw-unknown", "one", false},
		{"", "", false},
	} {
		_, _, _, err := dialPaho(t, u, tc.user, tc.pass, nil)
		if (err == nil) != tc.ok {
			t.Errorf("%q/%q: connect error %v, want admitted=%v", tc.user, tc.pass, err, tc.ok)
		}
	}
}

func TestPasswordFileRefused(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		"plain text":         "gw1:secret\n",
		"no hash":            "gw1\n",
		"bad base64":         "gw1:$7$101$!!!$abc\n",
		"not a name":         "gw/1:$6$c2FsdA==$" + strings.Repeat("A", 86) + "==\n",
		"missing":            "",
		"no broker password": "gw1:$6$c2FsdA==$" + strings.Repeat("A", 86) + "==\n",
	} {
		f := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if text != "" {
			os.WriteFile(f, []byte(text), 0o600)
		}
		o := mqttserver.Options{Listen: "127.0.0.1:0", Username: "wgkex", Password: "broker-pw", PasswordFile: f, Logger: testbus.Quiet()}
		if name == "no broker password" {
			o.Password = ""
		}
		if srv, err := mqttserver.Start(o); err == nil {
			srv.Close()
			t.Errorf("%s: started", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	good := passwordFile(t, map[string]string{"gw1": "gw1-pw"}, nil)
	if srv, err := mqttserver.Start(mqttserver.Options{Listen: "127.0.0.1:0", PasswordFile: good, Logger: testbus.Quiet()}); err == nil {
		srv.Close()
		t.Error("started with a password file and no broker user")
	}
}

func TestRolesSubscriptions(t *testing.T) {
	u := startRoles(t)
	for _, tc := range []struct {
		user, pass string
		filter     string
		ok         bool
	}{
		{"gw1", "gw1-pw", wgkex.KeyFilter("ffmuc_welt"), true},
		{"gw1", "gw1-pw", "parker/wireguard/all", true},
		{"gw1", "gw1-pw", "wireguard-worker/#", false},
		{"gw1", "gw1-pw", wgkex.FilterMetrics, false},
		{"gw1", "gw1-pw", "#", false},
		{"wgkex", "broker-pw", wgkex.FilterMetrics, true},
		{"wgkex", "broker-pw", wgkex.FilterWorkerStatus, true},
		{"wgkex", "broker-pw", wgkex.FilterWorkerData, true},
		{"wgkex", "broker-pw", wgkex.FilterBrokerStatus, true},
		{"wgkex", "broker-pw", "$share/brokers/" + wgkex.FilterMetrics, true},
		{"wgkex", "broker-pw", "#", false},
		{"wgkex", "broker-pw", "+/+/status", false},
	} {
		c, _, _, err := dialPaho(t, u, tc.user, tc.pass, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.user, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ack, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: tc.filter, QoS: 1}}})
		cancel()
		if ack == nil {
			t.Fatalf("%s subscribing %s: %v", tc.user, tc.filter, err)
		}
		if got := ack.Reasons[0] < 0x80; got != tc.ok {
			t.Errorf("%s subscribing %s: reason %#x, want granted=%v", tc.user, tc.filter, ack.Reasons[0], tc.ok)
		}
		if !tc.ok && ack.Reasons[0] != 0x87 {
			t.Errorf("%s subscribing %s: reason %#x, want 0x87 not authorized", tc.user, tc.filter, ack.Reasons[0])
		}
	}
}

// A will goes out later on the client's behalf: a will on another worker's
// topic is refused at the door, one's own is delivered.
func TestRolesWill(t *testing.T) {
	u := startRoles(t)
	state := make(chan mqtt.Message, 10)
	testbus.Connect(t, mqtt.Options{Server: u, ClientID: "broker", Username: "wgkex", Password: "broker-pw",
		Subscriptions: []mqtt.Subscription{{Filter: wgkex.FilterWorkerStatus, QoS: 1}},
		OnMessage:     func(m mqtt.Message) { state <- m }})

	will := func(worker string) *paho.WillMessage {
		return &paho.WillMessage{Topic: wgkex.StatusTopic(worker), Payload: []byte("0"), QoS: 1, Retain: true}
	}
	if _, _, _, err := dialPaho(t, u, "gw1", "gw1-pw", will("gw2")); err == nil {
		t.Error("gw1 admitted with a will on gw2's status")
	}
	_, conn, _, err := dialPaho(t, u, "gw1", "gw1-pw", will("gw1"))
	if err != nil {
		t.Fatalf("gw1 with its own will: %v", err)
	}
	conn.Close() // gone without DISCONNECT: the will goes out
	select {
	case m := <-state:
		if m.Topic != wgkex.StatusTopic("gw1") || string(m.Payload) != "0" {
			t.Errorf("got %s %q, want gw1's will", m.Topic, m.Payload)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("gw1's will did not arrive")
	}
}

// MQTT 3.1.1 clients (the Python worker) have no refusal code: the refused
// message is dropped (QoS 0) or the client disconnected (QoS 1), and never
// delivered.
func TestRolesMQTT311(t *testing.T) {
	tool, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		testbus.Missing(t, "mosquitto_pub is not installed (apt-get install mosquitto-clients)")
	}
	u := startRoles(t)
	state := make(chan mqtt.Message, 10)
	testbus.Connect(t, mqtt.Options{Server: u, ClientID: "broker", Username: "wgkex", Password: "broker-pw",
		Subscriptions: []mqtt.Subscription{{Filter: wgkex.FilterWorkerStatus, QoS: 1}},
		OnMessage:     func(m mqtt.Message) { state <- m }})
	host, port, _ := net.SplitHostPort(u.Host)
	pub := func(qos, topic, payload string) {
		t.Helper()
		out, err := exec.Command(tool, "-V", "mqttv311", "-h", host, "-p", port, "-u", "gw1", "-P", "gw1-pw",
			"-q", qos, "-t", topic, "-m", payload).CombinedOutput()
		t.Logf("mosquitto_pub -q %s %s: %v %s", qos, topic, err, out)
	}
	pub("0", wgkex.StatusTopic("gw2"), "forged-qos0")
	pub("1", wgkex.StatusTopic("gw2"), "forged-qos1")
	pub("1", wgkex.StatusTopic("gw1"), "1")
	select {
	case m := <-state:
		if m.Topic != wgkex.StatusTopic("gw1") {
			t.Errorf("got %s %q first: a refused message was delivered", m.Topic, m.Payload)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("gw1's own status did not arrive")
	}
}

// Without a password file the configured user is shared and may do
// anything, as before roles.
func TestSharedUserWithoutPasswordFile(t *testing.T) {
	srv, err := mqttserver.Start(mqttserver.Options{Listen: "127.0.0.1:0", Username: "wgkex", Password: "s3cret", Logger: testbus.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	u := &url.URL{Scheme: "mqtt", Host: srv.Addr().String()}
	c := testbus.Connect(t, mqtt.Options{Server: u, ClientID: "worker", Username: "wgkex", Password: "s3cret"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, topic := range []string{wgkex.StatusTopic("gw1"), wgkex.KeyTopic("ffmuc_welt")} {
		if err := c.Publish(ctx, topic, []byte("x"), 1, false); err != nil {
			t.Errorf("%s: %v", topic, err)
		}
	}
}
