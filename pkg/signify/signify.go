// Package signify reads, writes and uses Ed25519 keys in the format of
// OpenBSD's signify and OpenWrt's usign: Parker nodes check the broker's
// configuration reply with `usign -V` against the site's public key (see
// docs/protocol.md §8).
//
// Formats (all integers big-endian), each file a comment line
// "untrusted comment: ..." followed by one line of standard base64:
//
//	secret key (104 bytes): "Ed" "BK" kdfrounds(4) salt(16) checksum(8) keynum(8) seckey(64)
//	public key  (42 bytes): "Ed" keynum(8) pubkey(32)
//	signature   (74 bytes): "Ed" keynum(8) sig(64)
//
// seckey is the Ed25519 seed followed by the public key (Go's
// ed25519.PrivateKey), checksum the first 8 bytes of SHA-512(seckey), and
// keynum a random number that ties signatures to their key: usign refuses a
// signature whose keynum is not the public key's. Only unencrypted secret
// keys (kdfrounds 0, `signify -G -n`) are supported: a broker signs
// unattended and has nobody to ask for a passphrase.
package signify

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

const (
	commentPrefix = "untrusted comment: "
	keyNumLen     = 8
	secretLen     = 2 + 2 + 4 + 16 + 8 + keyNumLen + ed25519.PrivateKeySize
	publicLen     = 2 + keyNumLen + ed25519.PublicKeySize
	signatureLen  = 2 + keyNumLen + ed25519.SignatureSize
	// DefaultComment is what signify writes when not given -c.
	DefaultComment = "signify"
)

var (
	pkAlg  = []byte("Ed")
	kdfAlg = []byte("BK")
)

// errBadSignature is returned when a signature does not match the message
// or was made by another key.
var errBadSignature = errors.New("signature verification failed")

// keyNum identifies a key pair; signatures carry it.
type keyNum [keyNumLen]byte

// String is the key number in hex.
func (n keyNum) String() string { return fmt.Sprintf("%x", n[:]) }

// PrivateKey is an unencrypted signify secret key.
type PrivateKey struct {
	num keyNum
	key ed25519.PrivateKey
}

// PublicKey is a signify public key.
type PublicKey struct {
	num keyNum
	key ed25519.PublicKey
}

// generateKey makes a new key pair with a random key number.
func generateKey(random io.Reader) (*PrivateKey, error) {
	if random == nil {
		random = rand.Reader
	}
	_, key, err := ed25519.GenerateKey(random)
	if err != nil {
		return nil, fmt.Errorf("generate Ed25519 key: %w", err)
	}
	k := &PrivateKey{key: key}
	if _, err := io.ReadFull(random, k.num[:]); err != nil {
		return nil, fmt.Errorf("generate key number: %w", err)
	}
	return k, nil
}

// keyNum is the key's number.
func (k *PrivateKey) keyNum() keyNum { return k.num }

// Public is the matching public key.
func (k *PrivateKey) Public() *PublicKey {
	return &PublicKey{num: k.num, key: k.key.Public().(ed25519.PublicKey)}
}

// Sign signs msg and returns base64("Ed" || keynum || signature): the
// 74-byte form that usign and signify verify, without comment or newline.
func (k *PrivateKey) Sign(msg []byte) string {
	raw := make([]byte, 0, signatureLen)
	raw = append(raw, pkAlg...)
	raw = append(raw, k.num[:]...)
	raw = append(raw, ed25519.Sign(k.key, msg)...)
	return base64.StdEncoding.EncodeToString(raw)
}

// keyNum is the key's number.
func (p *PublicKey) keyNum() keyNum { return p.num }

// String is the base64 line of the public key file: what a Gluon site
// configures as the node's config_pubkey.
func (p *PublicKey) String() string {
	return base64.StdEncoding.EncodeToString(p.raw())
}

func (p *PublicKey) raw() []byte {
	raw := make([]byte, 0, publicLen)
	raw = append(raw, pkAlg...)
	raw = append(raw, p.num[:]...)
	return append(raw, p.key...)
}

// Verify checks sig, the base64 signature (optionally preceded by an
// "untrusted comment:" line, as in a .sig file), against msg. Like usign it
// refuses a signature made with another key number.
func (p *PublicKey) Verify(msg []byte, sig string) error {
	raw, err := decodeBlock(sig, signatureLen, "signature")
	if err != nil {
		return err
	}
	if !bytes.Equal(raw[:2], pkAlg) {
		return fmt.Errorf("signature: algorithm %q, want %q", raw[:2], pkAlg)
	}
	if subtle.ConstantTimeCompare(raw[2:2+keyNumLen], p.num[:]) != 1 {
		return fmt.Errorf("%w: signed with key %x, this public key is %s", errBadSignature, raw[2:2+keyNumLen], p.num)
	}
	if !ed25519.Verify(p.key, msg, raw[2+keyNumLen:]) {
		return errBadSignature
	}
	return nil
}

// VerifyReply checks a Parker configuration reply the way a node does: the
// last line is the signature, everything before it (including the newline
// that ends the JSON) the signed message. It returns the message.
func (p *PublicKey) VerifyReply(reply []byte) ([]byte, error) {
	body := bytes.TrimSuffix(reply, []byte("\n"))
	cut := bytes.LastIndexByte(body, '\n')
	if cut < 0 {
		return nil, errors.New("reply: no newline between message and signature")
	}
	msg, sig := body[:cut+1], body[cut+1:]
	if err := p.Verify(msg, string(sig)); err != nil {
		return nil, err
	}
	return msg, nil
}

// parsePrivateKey reads a secret key: the contents of a signify secret key
// file, or its base64 line alone. Encrypted keys are refused.
func parsePrivateKey(data []byte) (*PrivateKey, error) {
	raw, err := decodeBlock(string(data), secretLen, "secret key")
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(raw[0:2], pkAlg) || !bytes.Equal(raw[2:4], kdfAlg) {
		return nil, fmt.Errorf("secret key: algorithms %q/%q, want %q/%q", raw[0:2], raw[2:4], pkAlg, kdfAlg)
	}
	if rounds := binary.BigEndian.Uint32(raw[4:8]); rounds != 0 {
		return nil, fmt.Errorf("secret key is encrypted with a passphrase (kdfrounds %d): not supported, "+
			"a broker signs unattended; create an unencrypted key (signify -G -n, or wgkex's key generator)", rounds)
	}
	checksum := raw[24:32]
	k := &PrivateKey{key: ed25519.PrivateKey(bytes.Clone(raw[40:]))}
	copy(k.num[:], raw[32:40])
	sum := sha512.Sum512(k.key)
	if subtle.ConstantTimeCompare(sum[:8], checksum) != 1 {
		return nil, errors.New("secret key: checksum mismatch (corrupt or truncated key)")
	}
	// The public half is stored beside the seed; a key whose halves
	// disagree would sign what its public key cannot verify.
	if derived := ed25519.NewKeyFromSeed(k.key.Seed()); !bytes.Equal(derived, k.key) {
		return nil, errors.New("secret key: public half does not match the seed")
	}
	return k, nil
}

// parsePublicKey reads a public key: the contents of a signify public key
// file, or its base64 line alone (as in a Gluon site.conf).
func parsePublicKey(data []byte) (*PublicKey, error) {
	raw, err := decodeBlock(string(data), publicLen, "public key")
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(raw[:2], pkAlg) {
		return nil, fmt.Errorf("public key: algorithm %q, want %q", raw[:2], pkAlg)
	}
	p := &PublicKey{key: ed25519.PublicKey(bytes.Clone(raw[2+keyNumLen:]))}
	copy(p.num[:], raw[2:2+keyNumLen])
	return p, nil
}

// ReadPrivateKey reads a secret key file.
func ReadPrivateKey(path string) (*PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read secret key: %w", err)
	}
	k, err := parsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// ReadPublicKey reads a public key file.
func ReadPublicKey(path string) (*PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read public key: %w", err)
	}
	p, err := parsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// marshalSecret is the secret key file, as `signify -G -n -c comment`
// writes it.
func (k *PrivateKey) marshalSecret(comment string, random io.Reader) ([]byte, error) {
	if random == nil {
		random = rand.Reader
	}
	raw := make([]byte, secretLen)
	copy(raw[0:2], pkAlg)
	copy(raw[2:4], kdfAlg)
	// kdfrounds stays 0; signify fills the salt even then.
	if _, err := io.ReadFull(random, raw[8:24]); err != nil {
		return nil, fmt.Errorf("secret key salt: %w", err)
	}
	sum := sha512.Sum512(k.key)
	copy(raw[24:32], sum[:8])
	copy(raw[32:40], k.num[:])
	copy(raw[40:], k.key)
	return encodeFile(comment+" secret key", raw)
}

// marshalPublic is the public key file, as signify writes it.
func (p *PublicKey) marshalPublic(comment string) ([]byte, error) {
	return encodeFile(comment+" public key", p.raw())
}

// signatureFile is a detached signature file for sig (as returned by Sign)
// the way signify writes one, so that `signify -V -x` reads it.
func signatureFile(sig, comment string) []byte {
	return []byte(commentPrefix + comment + "\n" + sig + "\n")
}

// WriteKeyPair generates a key pair and writes the secret key file (mode
// 0600) and the public key file (0644). Like signify it refuses to
// overwrite existing files. An empty comment means DefaultComment.
func WriteKeyPair(secretPath, publicPath, comment string) (*PrivateKey, error) {
	if comment == "" {
		comment = DefaultComment
	}
	if filepath.Clean(secretPath) == filepath.Clean(publicPath) {
		return nil, errors.New("secret and public key paths are the same file")
	}
	k, err := generateKey(nil)
	if err != nil {
		return nil, err
	}
	sec, err := k.marshalSecret(comment, nil)
	if err != nil {
		return nil, err
	}
	pub, err := k.Public().marshalPublic(comment)
	if err != nil {
		return nil, err
	}
	if err := writeNew(secretPath, sec, 0o600); err != nil {
		return nil, fmt.Errorf("write secret key: %w", err)
	}
	if err := writeNew(publicPath, pub, 0o644); err != nil {
		// Leave no secret key behind whose public half nobody has.
		_ = os.Remove(secretPath)
		return nil, fmt.Errorf("write public key: %w", err)
	}
	return k, nil
}

func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

func encodeFile(comment string, raw []byte) ([]byte, error) {
	if strings.ContainsAny(comment, "\r\n") {
		return nil, errors.New("comment must be one line")
	}
	return []byte(commentPrefix + comment + "\n" + base64.StdEncoding.EncodeToString(raw) + "\n"), nil
}

// decodeBlock takes the base64 line of a signify file: the line after an
// "untrusted comment:" line, or the only non-empty line when there is no
// comment. It insists on exactly want bytes.
func decodeBlock(text string, want int, what string) ([]byte, error) {
	lines := strings.Split(strings.TrimRight(text, "\r\n"), "\n")
	for i := range lines {
		lines[i] = strings.TrimRight(lines[i], "\r")
	}
	var b64 string
	switch {
	case len(lines) == 1:
		b64 = lines[0]
	case len(lines) == 2 && strings.HasPrefix(lines[0], commentPrefix):
		b64 = lines[1]
	case len(lines) == 2:
		return nil, fmt.Errorf("%s: first line must start with %q", what, commentPrefix)
	default:
		return nil, fmt.Errorf("%s: want a comment line and one base64 line, got %d lines", what, len(lines))
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
	if err != nil {
		return nil, fmt.Errorf("%s: invalid base64: %w", what, err)
	}
	if len(raw) != want {
		return nil, fmt.Errorf("%s: %d bytes, want %d", what, len(raw), want)
	}
	return raw, nil
}
