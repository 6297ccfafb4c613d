package mqtt_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/config"
	"github.com/freifunkMUC/wgkex/pkg/mqtt"
)

// pki writes a CA, a server certificate for 127.0.0.1 and a client
// certificate (PEM) into dir.
func pki(t *testing.T, dir string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wgkex test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage, ips []net.IP) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: ips,
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		write(name+".pem", "CERTIFICATE", der)
		write(name+".key", "EC PRIVATE KEY", kder)
	}
	leaf("server", 2, x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	leaf("client", 3, x509.ExtKeyUsageClientAuth, nil)
}

// onMessage is a log handler that signals when a record with its message
// is logged.
type onMessage struct {
	msg  string
	seen chan struct{}
}

func (h onMessage) Enabled(context.Context, slog.Level) bool { return true }
func (h onMessage) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case h.seen <- struct{}{}:
		default:
		}
	}
	return nil
}
func (h onMessage) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h onMessage) WithGroup(string) slog.Handler      { return h }

// TLS with a private CA (mqtt.ca_file) and a client certificate
// (mqtt.cert_file, mqtt.key_file) against a Mosquitto that requires one.
func TestTLSWithClientCertificate(t *testing.T) {
	dir := t.TempDir()
	// mosquitto drops to its own user: it must reach the files.
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	pki(t, dir)
	srv := testbus.MosquittoWith(t, "cafile "+filepath.Join(dir, "ca.pem")+"\ncertfile "+filepath.Join(dir, "server.pem")+
		"\nkeyfile "+filepath.Join(dir, "server.key")+"\nrequire_certificate true")

	port, _ := strconv.Atoi(srv.URL.Port())
	cfg := &config.Config{MQTT: config.MQTT{BrokerURLs: []string{"127.0.0.1"}, Port: port, TLS: true, Keepalive: 5,
		CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key")}}
	o, err := mqtt.OptionsFromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if o.Server.Scheme != "tls" || o.TLS == nil {
		t.Fatalf("options %+v", o)
	}
	got := make(chan string, 1)
	o.ClientID = "tls-client"
	o.Subscriptions = []mqtt.Subscription{{Filter: "tls/test", QoS: 1}}
	o.OnMessage = func(m mqtt.Message) { got <- string(m.Payload) }
	c := testbus.Connect(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Publish(ctx, "tls/test", []byte("over TLS"), 1, false); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "over TLS" {
			t.Errorf("got %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing received over TLS")
	}

	// Without the client certificate the server refuses us.
	cfg.MQTT.CertFile, cfg.MQTT.KeyFile = "", ""
	o2, err := mqtt.OptionsFromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	failed := make(chan struct{}, 1)
	o2.ClientID, o2.Logger = "no-cert", slog.New(onMessage{"MQTT connect failed", failed})
	c2 := mqtt.New(o2)
	if err := c2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer c2.Close(context.Background())
	select {
	case <-failed:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection attempt failed")
	}
	if n := c2.Connects(); n != 0 {
		t.Errorf("connected %d times without a client certificate", n)
	}

	// A missing CA file is a clear error.
	cfg.MQTT.CAFile = filepath.Join(dir, "absent.pem")
	if _, err := mqtt.OptionsFromConfig(cfg); err == nil {
		t.Error("missing ca_file accepted")
	}
}
