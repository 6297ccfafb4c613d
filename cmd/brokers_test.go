package cmd_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/freifunkMUC/wgkex/internal/eventually"
	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/broker"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// brokerBinary is a wgkex broker process with its HTTP port.
type brokerBinary struct {
	*proc
	name string
	port int
}

// startNamedBroker runs the broker binary as name on the MQTT server bus,
// with more environment, and waits until it answers.
func startNamedBroker(t *testing.T, bus, name string, env ...string) *brokerBinary {
	t.Helper()
	port := testbus.FreePort(t)
	env = append(env, "WGKEX_MQTT_BROKER_URL="+bus, "WGKEX_BROKER_NAME="+name, fmt.Sprintf("WGKEX_BROKER_LISTEN_PORT=%d", port))
	p := start(t, env, "broker", "--config", filepath.Join("..", "testdata", "minimal.yaml"))
	b := &brokerBinary{proc: p, name: name, port: port}
	eventually.True(t, waitTimeout, name+" answering", func() bool { _, ok := b.status(); return ok })
	return b
}

func (b *brokerBinary) status() (broker.Status, bool) {
	var st broker.Status
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/status", b.port))
	if err != nil {
		return st, false
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st) == nil
}

// sees reports whether b's status lists exactly the brokers in want (name
// -> online), itself marked as this broker.
func (b *brokerBinary) sees(want map[string]bool) bool {
	st, ok := b.status()
	if !ok || len(st.Brokers) != len(want) {
		return false
	}
	for _, x := range st.Brokers {
		online, known := want[x.Name]
		if !known || x.Online != online || x.ThisBroker != (x.Name == b.name) {
			return false
		}
	}
	return true
}

// v2 posts a v2 key exchange and returns the status and Endpoint.Port.
func (b *brokerBinary) v2(t *testing.T, key string) (int, string) {
	t.Helper()
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/api/v2/wg/key/exchange", b.port), "application/x-www-form-urlencoded",
		strings.NewReader(`{"domain":"ffmuc_welt","public_key":"`+key+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r wgkex.ReplyV2
	json.NewDecoder(resp.Body).Decode(&r)
	return resp.StatusCode, r.Endpoint.Port
}

// Two broker processes on one Mosquitto, as deployed: they announce
// themselves and count each other, sticky selection gives a node the same
// gateway from both, and a broker that stops or dies is counted out.
func TestTwoBrokerProcessesOnOneBus(t *testing.T) {
	srv := testbus.Mosquitto(t)
	bus := srv.URL.String()
	for i, w := range []string{"gw1", "gw2"} {
		testbus.Publish(t, srv.URL, wgkex.DataTopic(w, "ffmuc_welt"), fmt.Sprintf(
			`{"ExternalAddress":"%s.example.net","Port":%d,"PublicKey":"%s","LinkAddress":"fe80::%d"}`, w, 40001+i, keyB, i+1), 1, true)
		testbus.Publish(t, srv.URL, wgkex.ConnectedPeersTopic("ffmuc_welt", w), "100", 1, true)
		testbus.Publish(t, srv.URL, wgkex.StatusTopic(w), "1", 1, true)
	}
	sticky := []string{"WGKEX_BROKER_SELECTION=sticky", "WGKEX_BROKER_RATE_LIMIT_PER_CLIENT=0"}
	a := startNamedBroker(t, bus, "broker-a", sticky...)
	b := startNamedBroker(t, bus, "broker-b", sticky...)
	both := map[string]bool{"broker-a": true, "broker-b": true}
	eventually.True(t, waitTimeout, "the brokers to see each other", func() bool { return a.sees(both) && b.sees(both) })
	if st, _ := a.status(); st.Selection != "sticky" {
		t.Errorf("selection %q, want sticky", st.Selection)
	}

	ports := map[string]int{}
	for i := range 20 {
		sum := sha256.Sum256([]byte(fmt.Sprint("node", i)))
		key := base64.StdEncoding.EncodeToString(sum[:])
		codeA, portA := a.v2(t, key)
		codeB, portB := b.v2(t, key)
		if codeA != 200 || codeB != 200 || portA != portB {
			t.Fatalf("node %d: broker-a %d %s, broker-b %d %s", i, codeA, portA, codeB, portB)
		}
		ports[portA]++
	}
	t.Logf("20 nodes asking both brokers, by gateway port: %v", ports)
	if len(ports) != 2 {
		t.Errorf("one gateway got every node: %v", ports)
	}

	// SIGTERM: it says 0 before it disconnects.
	if err := b.signal(t, syscall.SIGTERM); err != nil {
		t.Fatalf("broker-b exit: %v\n%s", err, b.stderr)
	}
	eventually.True(t, waitTimeout, "broker-a to see broker-b stopped", func() bool {
		return a.sees(map[string]bool{"broker-a": true, "broker-b": false})
	})
	// Killed: the MQTT server publishes its will.
	c := startNamedBroker(t, bus, "broker-c", sticky...)
	three := map[string]bool{"broker-a": true, "broker-b": false, "broker-c": true}
	eventually.True(t, waitTimeout, "broker-a to see broker-c", func() bool { return a.sees(three) })
	c.signal(t, syscall.SIGKILL)
	three["broker-c"] = false
	eventually.True(t, waitTimeout, "broker-a to see broker-c killed", func() bool { return a.sees(three) })
}
