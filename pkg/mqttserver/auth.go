package mqttserver

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/pbkdf2"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// Rules are the topic filters a role may publish to (Write) and read or
// subscribe to (Read).
type Rules struct {
	Write, Read []string
}

// parkerPrefix: parker (v3) uses the same topics under this prefix, with the
// same rights.
const parkerPrefix = "parker/"

// BrokerRules are the broker user's rights: it publishes keys and its own
// status and reads what workers and other brokers publish.
func BrokerRules() Rules {
	return withParker(Rules{
		Write: []string{"wireguard/#", "wireguard-broker/#"},
		Read:  []string{"wireguard-worker/#", "wireguard-metrics/#", "wireguard-broker/#"},
	})
}

// WorkerRules are the rights of the worker called name (its MQTT user
// name): it speaks only for itself and reads keys. name may be a
// Mosquitto pattern such as %u.
func WorkerRules(name string) Rules {
	return withParker(Rules{
		Write: []string{"wireguard-worker/" + name + "/#", "wireguard-metrics/+/" + name + "/#"},
		// Its own status and data: a worker re-announces when they are overwritten.
		Read: []string{"wireguard/#", "wireguard-worker/" + name + "/#"},
	})
}

func withParker(r Rules) Rules {
	for _, f := range r.Write {
		r.Write = append(r.Write, parkerPrefix+f)
	}
	for _, f := range r.Read {
		r.Read = append(r.Read, parkerPrefix+f)
	}
	return r
}

// allows reports whether one of filters covers topic, which may itself be
// a filter (a subscription): then every topic it matches must be covered.
func allows(filters []string, topic string) bool {
	// A shared subscription names its group first; the rest is the filter.
	if rest, ok := strings.CutPrefix(topic, "$share/"); ok {
		_, topic, ok = strings.Cut(rest, "/")
		if !ok {
			return false
		}
	}
	for _, f := range filters {
		if covers(f, topic) {
			return true
		}
	}
	return false
}

// covers reports whether every topic that filter sub matches also matches
// filter f (for a plain topic: whether f matches it).
func covers(f, sub string) bool {
	fl, sl := strings.Split(f, "/"), strings.Split(sub, "/")
	for i, lvl := range fl {
		if lvl == "#" {
			return true // also covers the parent level, as in MQTT
		}
		if i >= len(sl) {
			return false
		}
		switch {
		case lvl == "+":
			if sl[i] == "#" {
				return false
			}
		case lvl != sl[i]:
			return false
		}
	}
	return len(fl) == len(sl)
}

// authHook checks credentials and topic rights. With no credentials at all
// it admits everyone (loopback only; config validation sees to that). With
// only a user name and password every client shares them and has every
// right, as before roles existed. With a password file each client has a
// role: the broker user, or the worker named like its user (docs/protocol.md
// §3.5).
type authHook struct {
	mochi.HookBase
	user, pass []byte
	users      map[string]passwordHash // nil: no password file, no roles
	log        *slog.Logger
}

func newAuthHook(o Options) (*authHook, error) {
	h := &authHook{user: []byte(o.Username), pass: []byte(o.Password), log: o.Logger}
	if o.PasswordFile == "" {
		return h, nil
	}
	if o.Username == "" {
		// The broker's own client logs in as Username: without it the
		// server would admit workers only.
		return nil, fmt.Errorf("password file %s: no broker user (mqtt.username)", o.PasswordFile)
	}
	users, err := readPasswordFile(o.PasswordFile)
	if err != nil {
		return nil, err
	}
	for name := range users {
		if name != o.Username && !wgkex.ValidName(name) {
			return nil, fmt.Errorf("password file %s: user %q cannot be a worker name (1-253 bytes, no /, +, #, control characters)", o.PasswordFile, name)
		}
	}
	if o.Password == "" && users[o.Username] == nil {
		return nil, fmt.Errorf("password file %s: the broker user %q has no password (set mqtt.password or add it to the file)", o.PasswordFile, o.Username)
	}
	h.users = users
	return h, nil
}

func (h *authHook) ID() string { return "wgkex-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (h *authHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	if h.users == nil {
		if len(h.user) == 0 && len(h.pass) == 0 {
			return true
		}
		userOK := subtle.ConstantTimeCompare(pk.Connect.Username, h.user)
		passOK := subtle.ConstantTimeCompare(pk.Connect.Password, h.pass)
		return userOK&passOK == 1
	}
	if !h.passwordOK(string(pk.Connect.Username), pk.Connect.Password) {
		return false
	}
	// A will is published on the client's behalf later, unchecked by
	// mochi, which cannot drop it then either: refuse the connection now.
	// (Mosquitto admits the client and drops the will when it is due.)
	if pk.Connect.WillFlag && !allows(h.rules(pk.Connect.Username).Write, pk.Connect.WillTopic) {
		h.log.Warn("MQTT client refused: its will names a topic it may not publish to",
			"user", string(pk.Connect.Username), "topic", pk.Connect.WillTopic)
		return false
	}
	return true
}

func (h *authHook) passwordOK(user string, pass []byte) bool {
	if user == "" {
		return false
	}
	if user == string(h.user) && len(h.pass) > 0 &&
		subtle.ConstantTimeCompare(pass, h.pass) == 1 {
		return true
	}
	stored, ok := h.users[user]
	if !ok {
		// Same work for an unknown user, so timing does not tell which exist.
		unknownUser.verify(pass)
		return false
	}
	return stored.verify(pass)
}

func (h *authHook) rules(user []byte) Rules {
	if len(user) > 0 && string(user) == string(h.user) {
		return BrokerRules()
	}
	return WorkerRules(string(user))
}

func (h *authHook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	if h.users == nil {
		return true
	}
	r := h.rules(cl.Properties.Username)
	if write {
		return allows(r.Write, topic)
	}
	return allows(r.Read, topic)
}

// passwordHash is one entry of a mosquitto_passwd file.
type passwordHash interface {
	verify(password []byte) bool
}

// sha512PBKDF2 is mosquitto's $7$ entry: PBKDF2-HMAC-SHA512.
type sha512PBKDF2 struct {
	iterations int
	salt, hash []byte
}

func (p *sha512PBKDF2) verify(password []byte) bool {
	got, err := pbkdf2.Key(sha512.New, string(password), p.salt, p.iterations, len(p.hash))
	return err == nil && subtle.ConstantTimeCompare(got, p.hash) == 1
}

// saltedSHA512 is mosquitto's $6$ entry: SHA-512 of password then salt.
type saltedSHA512 struct {
	salt, hash []byte
}

func (p *saltedSHA512) verify(password []byte) bool {
	d := sha512.New()
	d.Write(password)
	d.Write(p.salt)
	return subtle.ConstantTimeCompare(d.Sum(nil), p.hash) == 1
}

// unknownUser costs what a default mosquitto_passwd entry costs.
var unknownUser passwordHash = &sha512PBKDF2{iterations: 101, salt: make([]byte, 12), hash: make([]byte, sha512.Size)}

// maxIterations bounds the work a (mistaken) entry can cost per login.
const maxIterations = 1_000_000

// readPasswordFile reads a password file in mosquitto_passwd(1) format:
// "user:hash" lines, hashes $7$ (sha512-pbkdf2, the default) or $6$
// (sha512). Blank lines and lines starting with # are skipped.
func readPasswordFile(path string) (map[string]passwordHash, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("password file: %w", err)
	}
	users := map[string]passwordHash{}
	lines := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; lines.Scan(); n++ {
		line := strings.TrimSpace(lines.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("password file %s line %d: want user:hash", path, n)
		}
		p, err := parseHash(hash)
		if err != nil {
			return nil, fmt.Errorf("password file %s line %d (user %q): %w", path, n, user, err)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("password file %s line %d: user %q listed twice", path, n, user)
		}
		users[user] = p
	}
	if err := lines.Err(); err != nil {
		return nil, fmt.Errorf("password file %s: %w", path, err)
	}
	return users, nil
}

var errHash = errors.New("not a mosquitto_passwd hash ($7$ or $6$); a plain text password? run mosquitto_passwd -U on the file")

func parseHash(s string) (passwordHash, error) {
	parts := strings.Split(s, "$")
	b64 := base64.StdEncoding.DecodeString
	switch {
	case len(parts) == 5 && parts[0] == "" && parts[1] == "7":
		iter, err := strconv.Atoi(parts[2])
		if err != nil || iter < 1 || iter > maxIterations {
			return nil, fmt.Errorf("$7$ hash: iterations %q: want 1 to %d", parts[2], maxIterations)
		}
		salt, err1 := b64(parts[3])
		hash, err2 := b64(parts[4])
		if err := cmp.Or(err1, err2); err != nil || len(hash) == 0 {
			return nil, fmt.Errorf("$7$ hash: bad base64 or empty: %v", err)
		}
		return &sha512PBKDF2{iterations: iter, salt: salt, hash: hash}, nil
	case len(parts) == 4 && parts[0] == "" && parts[1] == "6":
		salt, err1 := b64(parts[2])
		hash, err2 := b64(parts[3])
		if err := cmp.Or(err1, err2); err != nil || len(hash) != sha512.Size {
			return nil, fmt.Errorf("$6$ hash: bad base64 or not %d bytes: %v", sha512.Size, err)
		}
		return &saltedSHA512{salt: salt, hash: hash}, nil
	}
	return nil, errHash
}
