package signify

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/freifunkMUC/wgkex/internal/testbus"
)

// reply is what a broker sends: one JSON line, then the signature line.
const replyJSON = `{"nonce":"0123456789abcdef0123456789abcdef","time":1700000000,"id":30,"mtu":1375,"retry":120,"wg_keepalive":25}`

func signifyTool(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("signify-openbsd")
	if err != nil {
		testbus.Missing(t, "signify-openbsd not installed (Debian package signify-openbsd): %v", err)
	}
	return bin
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// splitLikeNode does what nodeconfig.sh does with a reply: `head -n -1`
// is the message, and the last line goes into a signature file after a
// first line (signify insists on an "untrusted comment:" there).
func splitLikeNode(t *testing.T, dir string, reply []byte) (msgPath, sigPath string) {
	t.Helper()
	body := bytes.TrimSuffix(reply, []byte("\n"))
	cut := bytes.LastIndexByte(body, '\n')
	if cut < 0 {
		t.Fatalf("reply has no newline: %q", reply)
	}
	msgPath = filepath.Join(dir, "config.json")
	sigPath = filepath.Join(dir, "config.json.sig")
	if err := os.WriteFile(msgPath, body[:cut+1], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sigPath, signatureFile(string(body[cut+1:]), "verify with parker.pub"), 0o644); err != nil {
		t.Fatal(err)
	}
	return msgPath, sigPath
}

func TestSignifyToolVerifiesOurReply(t *testing.T) {
	tool := signifyTool(t)
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "parker.sec"), filepath.Join(dir, "parker.pub")
	key, err := WriteKeyPair(sec, pub, "")
	if err != nil {
		t.Fatal(err)
	}

	msg := []byte(replyJSON + "\n")
	reply := append(bytes.Clone(msg), key.Sign(msg)...)
	if got := len(mustDecode(t, key.Sign(msg))); got != 74 {
		t.Fatalf("signature is %d bytes before base64, want 74", got)
	}

	msgPath, sigPath := splitLikeNode(t, dir, reply)
	if out, err := run(t, tool, "-V", "-p", pub, "-m", msgPath, "-x", sigPath); err != nil {
		t.Fatalf("signify-openbsd rejects our reply: %v\n%s", err, out)
	}

	// A reply with a final newline is split the same way by the node.
	msgPath, sigPath = splitLikeNode(t, dir, append(bytes.Clone(reply), '\n'))
	if out, err := run(t, tool, "-V", "-p", pub, "-m", msgPath, "-x", sigPath); err != nil {
		t.Fatalf("signify-openbsd rejects our reply with a final newline: %v\n%s", err, out)
	}

	// One changed byte in the body.
	changed := bytes.Replace(reply, []byte(`"mtu":1375`), []byte(`"mtu":1376`), 1)
	msgPath, sigPath = splitLikeNode(t, dir, changed)
	if out, err := run(t, tool, "-V", "-p", pub, "-m", msgPath, "-x", sigPath); err == nil {
		t.Fatalf("signify-openbsd accepts a changed body:\n%s", out)
	}

	// Signed by another key: signify checks the key number as usign does.
	other, err := generateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	msgPath, sigPath = splitLikeNode(t, dir, append(bytes.Clone(msg), other.Sign(msg)...))
	out, err := run(t, tool, "-V", "-p", pub, "-m", msgPath, "-x", sigPath)
	if err == nil {
		t.Fatalf("signify-openbsd accepts a signature by another key:\n%s", out)
	}

	// A bare Ed25519 signature (no "Ed" || keynum) is refused.
	bare := base64.StdEncoding.EncodeToString(ed25519.Sign(key.key, msg))
	msgPath, sigPath = splitLikeNode(t, dir, append(bytes.Clone(msg), bare...))
	if out, err := run(t, tool, "-V", "-p", pub, "-m", msgPath, "-x", sigPath); err == nil {
		t.Fatalf("signify-openbsd accepts a bare 64-byte signature:\n%s", out)
	}
}

func TestWriteKeyPairFiles(t *testing.T) {
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "k.sec"), filepath.Join(dir, "k.pub")
	key, err := WriteKeyPair(sec, pub, "wgkex parker")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(sec)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("secret key mode %v, want 0600", st.Mode().Perm())
	}
	secText, _ := os.ReadFile(sec)
	pubText, _ := os.ReadFile(pub)
	if !strings.HasPrefix(string(secText), "untrusted comment: wgkex parker secret key\n") {
		t.Errorf("secret key file starts %q", secText)
	}
	if want := "untrusted comment: wgkex parker public key\n" + key.Public().String() + "\n"; string(pubText) != want {
		t.Errorf("public key file %q, want %q", pubText, want)
	}
	again, err := ReadPrivateKey(sec)
	if err != nil {
		t.Fatal(err)
	}
	if again.Public().String() != key.Public().String() {
		t.Error("secret key read back has another public key")
	}
	if _, err := WriteKeyPair(sec, filepath.Join(dir, "other.pub"), ""); err == nil {
		t.Error("WriteKeyPair overwrote an existing secret key")
	}
	if again, _ := os.ReadFile(sec); !bytes.Equal(again, secText) {
		t.Error("secret key changed by a refused WriteKeyPair")
	}
	if _, err := os.Stat(filepath.Join(dir, "other.pub")); !errors.Is(err, os.ErrNotExist) {
		t.Error("refused WriteKeyPair left a public key behind")
	}
}

func TestWeVerifySignifyTool(t *testing.T) {
	tool := signifyTool(t)
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "tool.sec"), filepath.Join(dir, "tool.pub")
	if out, err := run(t, tool, "-G", "-n", "-p", pub, "-s", sec); err != nil {
		t.Fatalf("signify-openbsd -G: %v\n%s", err, out)
	}
	msgPath := filepath.Join(dir, "msg")
	msg := []byte(replyJSON + "\n")
	if err := os.WriteFile(msgPath, msg, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, tool, "-S", "-s", sec, "-m", msgPath, "-x", msgPath+".sig"); err != nil {
		t.Fatalf("signify-openbsd -S: %v\n%s", err, out)
	}
	sigText, err := os.ReadFile(msgPath + ".sig")
	if err != nil {
		t.Fatal(err)
	}
	pk, err := ReadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := pk.Verify(msg, string(sigText)); err != nil {
		t.Fatalf("signature file from signify-openbsd: %v", err)
	}
	sigLine := strings.Split(strings.TrimSpace(string(sigText)), "\n")[1]
	if _, err := pk.VerifyReply(append(bytes.Clone(msg), sigLine...)); err != nil {
		t.Fatalf("reply signed by signify-openbsd: %v", err)
	}
	changed := bytes.Replace(msg, []byte("1375"), []byte("1376"), 1)
	if err := pk.Verify(changed, string(sigText)); !errors.Is(err, errBadSignature) {
		t.Fatalf("changed message: got %v, want ErrBadSignature", err)
	}

	// Its secret key is ours to sign with, and it verifies what we sign.
	key, err := ReadPrivateKey(sec)
	if err != nil {
		t.Fatal(err)
	}
	if key.Public().String() != pk.String() || key.keyNum() != pk.keyNum() {
		t.Fatalf("public key from signify's secret key %s, its public key file %s", key.Public(), pk)
	}
	msgPath2, sigPath2 := splitLikeNode(t, dir, append(bytes.Clone(msg), key.Sign(msg)...))
	if out, err := run(t, tool, "-V", "-p", pub, "-m", msgPath2, "-x", sigPath2); err != nil {
		t.Fatalf("signify-openbsd rejects our signature with its key: %v\n%s", err, out)
	}

	// Our secret key file is one signify-openbsd signs with.
	ourSec, ourPub := filepath.Join(dir, "our.sec"), filepath.Join(dir, "our.pub")
	ours, err := WriteKeyPair(ourSec, ourPub, "")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, tool, "-S", "-s", ourSec, "-m", msgPath, "-x", msgPath+".our.sig"); err != nil {
		t.Fatalf("signify-openbsd cannot sign with our secret key: %v\n%s", err, out)
	}
	ourSig, _ := os.ReadFile(msgPath + ".our.sig")
	if err := ours.Public().Verify(msg, string(ourSig)); err != nil {
		t.Fatalf("signature by signify-openbsd with our key: %v", err)
	}
}

func TestVerifyRefuses(t *testing.T) {
	key, err := generateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	pub := key.Public()
	msg := []byte(replyJSON + "\n")
	sig := key.Sign(msg)
	if err := pub.Verify(msg, sig); err != nil {
		t.Fatalf("own signature: %v", err)
	}
	raw := mustDecode(t, sig)

	other, _ := generateKey(nil)
	wrongNum := bytes.Clone(raw)
	copy(wrongNum[2:10], other.num[:])

	cases := map[string]string{
		"bare 64 bytes":   base64.StdEncoding.EncodeToString(raw[10:]),
		"other key":       other.Sign(msg),
		"other keynum":    base64.StdEncoding.EncodeToString(wrongNum),
		"not base64":      "Ed!!",
		"bad comment":     "a comment\n" + sig,
		"three lines":     "untrusted comment: x\n" + sig + "\n" + sig,
		"other algorithm": base64.StdEncoding.EncodeToString(append([]byte("Xx"), raw[2:]...)),
	}
	for name, s := range cases {
		if err := pub.Verify(msg, s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := pub.Verify(msg[:len(msg)-1], sig); !errors.Is(err, errBadSignature) {
		t.Errorf("message without its newline: got %v, want ErrBadSignature", err)
	}
	if _, err := pub.VerifyReply(append(bytes.Clone(msg), sig...)); err != nil {
		t.Errorf("VerifyReply: %v", err)
	}
	if _, err := pub.VerifyReply([]byte(sig)); err == nil {
		t.Error("VerifyReply accepted a reply without a message")
	}
}

func TestParsePrivateKeyRefuses(t *testing.T) {
	key, err := generateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	file, err := key.marshalSecret(DefaultComment, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parsePrivateKey(file); err != nil {
		t.Fatalf("own key: %v", err)
	}
	// The base64 line alone, as upstream's broker_signing_key holds it.
	line := strings.Split(string(file), "\n")[1]
	if k, err := parsePrivateKey([]byte(line)); err != nil || k.Public().String() != key.Public().String() {
		t.Fatalf("base64 line alone: %v", err)
	}
	raw := mustDecode(t, line)
	mutate := func(f func(b []byte)) []byte {
		b := bytes.Clone(raw)
		f(b)
		return []byte(base64.StdEncoding.EncodeToString(b))
	}

	encrypted := mutate(func(b []byte) { b[7] = 42 })
	_, err = parsePrivateKey(encrypted)
	if err == nil || !strings.Contains(err.Error(), "passphrase") || !strings.Contains(err.Error(), "kdfrounds 42") {
		t.Errorf("encrypted key: got %v, want a passphrase error naming kdfrounds", err)
	}
	for name, data := range map[string][]byte{
		"checksum":      mutate(func(b []byte) { b[24] ^= 1 }),
		"seed":          mutate(func(b []byte) { b[40] ^= 1 }),
		"public half":   mutate(func(b []byte) { b[103] ^= 1 }),
		"kdf algorithm": mutate(func(b []byte) { b[2] = 'X' }),
		"truncated":     []byte(base64.StdEncoding.EncodeToString(raw[:100])),
		"public key":    []byte(key.Public().String()),
		"empty":         nil,
	} {
		if _, err := parsePrivateKey(data); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := parsePublicKey([]byte(line)); err == nil {
		t.Error("ParsePublicKey accepted a secret key")
	}
	if _, err := key.marshalSecret("two\nlines", nil); err == nil {
		t.Error("marshalSecret accepted a two-line comment")
	}
}

func mustDecode(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
