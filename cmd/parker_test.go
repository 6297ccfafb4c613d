package cmd_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/freifunkMUC/wgkex/internal/testbus"
	"github.com/freifunkMUC/wgkex/pkg/signify"
)

func TestParkerKeygen(t *testing.T) {
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "parker.sec"), filepath.Join(dir, "parker.pub")
	code, stdout, stderr := run(t, nil, "parker", "keygen", "--secret-key", sec, "--public-key", pub, "--comment", "ffmuc parker")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	key, err := signify.ReadPrivateKey(sec)
	if err != nil {
		t.Fatal(err)
	}
	pubKey, err := signify.ReadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	// stdout is exactly the line a site.conf needs, and it is the written key.
	if line := key.Public().String(); stdout != line+"\n" || pubKey.String() != line {
		t.Errorf("stdout %q, public key file %q, secret key's public %q", stdout, pubKey.String(), line)
	}
	if fi, err := os.Stat(sec); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("secret key mode: %v %v", fi.Mode(), err)
	}
	data, _ := os.ReadFile(pub)
	if !strings.HasPrefix(string(data), "untrusted comment: ffmuc parker public key\n") {
		t.Errorf("public key file %q", data)
	}

	// Never overwritten.
	before, _ := os.ReadFile(sec)
	code, _, stderr = run(t, nil, "parker", "keygen", "--secret-key", sec, "--public-key", filepath.Join(dir, "other.pub"))
	if code == 0 || stderr == "" {
		t.Errorf("overwrote an existing secret key: exit %d %q", code, stderr)
	}
	if after, _ := os.ReadFile(sec); string(after) != string(before) {
		t.Error("secret key changed")
	}

	// Both paths are required.
	code, _, stderr = run(t, nil, "parker", "keygen", "--secret-key", filepath.Join(dir, "x.sec"))
	if code == 0 || !strings.Contains(stderr, "public-key") {
		t.Errorf("no --public-key: exit %d %q", code, stderr)
	}

	// OpenBSD's signify takes the pair: a message signed with it verifies.
	bin, err := exec.LookPath("signify-openbsd")
	if err != nil {
		testbus.Missing(t, "signify-openbsd not installed (Debian package signify-openbsd): %v", err)
		return
	}
	msg := filepath.Join(dir, "msg")
	if err := os.WriteFile(msg, []byte("{\"nonce\":\"x\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-S", "-s", sec, "-m", msg).CombinedOutput(); err != nil {
		t.Fatalf("signify -S with the written key: %v %s", err, out)
	}
	if out, err := exec.Command(bin, "-V", "-p", pub, "-m", msg).CombinedOutput(); err != nil {
		t.Errorf("signify -V with the written key: %v %s", err, out)
	}
}
