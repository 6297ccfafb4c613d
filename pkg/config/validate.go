package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// problems collects what is wrong, each tied to its key.
type problems []Problem

func (ps *problems) add(key, format string, args ...any) {
	*ps = append(*ps, Problem{Key: key, Msg: fmt.Sprintf(format, args...)})
}

// Validate checks the meaning of every key and returns all problems at once
// as an *Error, each naming its key.
func (c *Config) Validate() error {
	if probs := c.problems(); len(probs) > 0 {
		return &Error{File: c.File, Problems: probs}
	}
	return nil
}

// problems checks one config section after the other.
func (c *Config) problems() []Problem {
	var ps problems
	c.checkDomains(&ps)
	c.checkWorkers(&ps)
	c.checkMQTT(&ps)
	c.checkBrokerListen(&ps)
	c.checkBroker(&ps)
	c.checkWorker(&ps)
	c.checkLogLevel(&ps)
	return ps
}

// checkDomains: domains and domain_prefixes, and the interface names they
// give (docs/protocol.md §1).
func (c *Config) checkDomains(ps *problems) {
	if len(c.Domains) == 0 {
		ps.add("domains", "empty: list at least one domain")
	}
	if len(c.DomainPrefixes) == 0 {
		ps.add("domain_prefixes", "empty: list the prefixes stripped from domains (e.g. ffmuc_)")
	}
	seenDomain := map[string]bool{}
	owner := map[string]string{} // interface name -> domain
	for _, d := range c.Domains {
		if seenDomain[d] {
			ps.add("domains", "%q is listed twice", d)
			continue
		}
		seenDomain[d] = true
		if !wgkex.ValidName(d) {
			ps.add("domains", "%q is not a valid domain name (no '/', '+', '#' or control characters)", d)
			continue
		}
		if len(c.DomainPrefixes) == 0 {
			continue
		}
		ifs, err := wgkex.InterfacesFor(d, c.DomainPrefixes)
		if err != nil {
			ps.add("domains", "%v", err)
			continue
		}
		if other, ok := owner[ifs.WireGuard]; ok {
			ps.add("domains", "%q and %q both give interfaces %s/%s", other, d, ifs.WireGuard, ifs.VXLAN)
			continue
		}
		owner[ifs.WireGuard] = d
	}
}

// checkWorkers: the broker's workers.<name>.weight map.
func (c *Config) checkWorkers(ps *problems) {
	for _, n := range c.workerNames() {
		if w := c.Workers[n]; w <= 0 {
			ps.add("workers."+n+".weight", "must be a positive integer, got %d", w)
		}
		if !wgkex.ValidName(n) {
			ps.add("workers."+n, "not a valid worker name")
		}
	}
}

func (c *Config) workerNames() []string {
	names := make([]string, 0, len(c.Workers))
	for n := range c.Workers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// checkMQTT: the bus connection, its TLS settings and the embedded server.
func (c *Config) checkMQTT(ps *problems) {
	m := c.MQTT
	if conflicts := m.tlsConflicts(); len(conflicts) > 0 {
		*ps = append(*ps, conflicts...)
	} else {
		_, bad := m.serverURLs()
		*ps = append(*ps, bad...)
	}
	if m.Port < 1 || m.Port > 65535 {
		ps.add("mqtt.broker_port", "must be 1-65535, got %d", m.Port)
	}
	if m.Keepalive < 0 || m.Keepalive > 65535 {
		ps.add("mqtt.keepalive", "must be 0-65535 seconds, got %d", m.Keepalive)
	}
	for _, f := range []struct{ key, path string }{
		{"mqtt.ca_file", m.CAFile}, {"mqtt.cert_file", m.CertFile}, {"mqtt.key_file", m.KeyFile},
	} {
		if f.path == "" {
			continue
		}
		if fh, err := os.Open(f.path); err != nil {
			ps.add(f.key, "cannot read: %v", err)
		} else {
			fh.Close()
		}
	}
	if (m.CertFile == "") != (m.KeyFile == "") {
		ps.add("mqtt.cert_file", "mqtt.cert_file and mqtt.key_file go together")
	}
	if c.Embedded() {
		host, port, err := net.SplitHostPort(m.Listen)
		if err != nil {
			ps.add("mqtt.listen", "want host:port, got %q", m.Listen)
		} else {
			if !validPort(port) {
				ps.add("mqtt.listen", "bad port %q", port)
			}
			if !isLoopback(host) && (m.Username == "" || (m.Password == "" && m.PasswordFile == "")) {
				ps.add("mqtt.listen", "the embedded MQTT server listens beyond loopback (%s): set mqtt.username and mqtt.password", m.Listen)
			}
		}
		if m.PasswordFile != "" && m.Username == "" {
			ps.add("mqtt.password_file", "needs mqtt.username: the broker's own user on the embedded server")
		}
		if m.PasswordFile != "" {
			if fh, err := os.Open(m.PasswordFile); err != nil {
				ps.add("mqtt.password_file", "cannot read: %v", err)
			} else {
				fh.Close()
			}
		}
		return
	}
	for _, k := range []struct{ key, val string }{{"mqtt.store", m.Store}, {"mqtt.password_file", m.PasswordFile}} {
		if k.val != "" {
			ps.add(k.key, "set, but mqtt.broker_url names an external MQTT server; this key is for the broker's embedded server (use the server's own persistence and password_file/acl_file, see wgkex config mosquitto-acl)")
		}
	}
}

// tlsSchemeFor maps the schemes that carry MQTT in clear text to their TLS
// counterparts (as pkg/mqtt and autopaho dial them).
var tlsSchemeFor = map[string]string{"mqtt": "tls", "tcp": "tls", "ws": "wss"}

// TLSScheme reports whether a server URL scheme (as ServerURL gives it) is
// dialled with TLS.
func TLSScheme(scheme string) bool {
	switch strings.ToLower(scheme) {
	case "tls", "mqtts", "ssl", "wss":
		return true
	}
	return false
}

// tlsConflicts are the problems of asking for TLS (mqtt.tls) where a
// connection would be plain text: a plain URL scheme wins over the tls flag
// when dialling, and the embedded server has no TLS listener. Without this
// check tls: true would silently send the credentials in clear text.
func (m MQTT) tlsConflicts() []Problem {
	if !m.TLS {
		return nil
	}
	if len(m.BrokerURLs) == 0 {
		return []Problem{{Key: "mqtt.tls", Msg: "true, but mqtt.broker_url is empty and the embedded MQTT server " +
			"speaks plain TCP only: set mqtt.broker_url to an MQTT server with TLS, or mqtt.tls: false for the embedded one"}}
	}
	var ps []Problem
	for i, raw := range m.BrokerURLs {
		if !strings.Contains(raw, "://") {
			continue // a bare host: serverURL gives it the tls scheme
		}
		u, err := url.Parse(raw)
		if err != nil {
			continue // serverURL reports it
		}
		safe, plain := tlsSchemeFor[u.Scheme]
		if !plain {
			continue
		}
		orig := u.Redacted()
		u.Scheme = safe
		item := ""
		if len(m.BrokerURLs) > 1 {
			item = fmt.Sprintf(" item %d", i+1)
		}
		ps = append(ps, Problem{Key: "mqtt.tls", Msg: fmt.Sprintf("true, but mqtt.broker_url%s %s is plain text: use %s instead "+
			"(TLS schemes: tls://, mqtts://, ssl://, wss://), or a bare host name, which then gets TLS", item, orig, u.Redacted())})
	}
	return ps
}

// checkBrokerListen: the broker's HTTP listen address.
func (c *Config) checkBrokerListen(ps *problems) {
	if c.BrokerListen.Port < 1 || c.BrokerListen.Port > 65535 {
		ps.add("broker_listen.port", "must be 1-65535, got %d", c.BrokerListen.Port)
	}
	if strings.ContainsAny(c.BrokerListen.Host, " /") {
		ps.add("broker_listen.host", "not a host name or address: %q", c.BrokerListen.Host)
	}
	if c.BrokerListen.MaxConnections < 0 {
		ps.add("broker_listen.max_connections", "must be 0 (no cap) or more, got %d", c.BrokerListen.MaxConnections)
	}
	for _, p := range c.BrokerListen.TrustedProxies {
		if _, err := netip.ParsePrefix(p); err == nil {
			continue
		}
		if _, err := netip.ParseAddr(p); err != nil {
			ps.add("broker_listen.trusted_proxies", "%q is neither an address nor a CIDR prefix", p)
		}
	}
}

// checkBroker: the broker section.
func (c *Config) checkBroker(ps *problems) {
	b := c.Broker
	if b.Name != "" && !wgkex.ValidName(b.Name) {
		ps.add("broker.name", "%q cannot stand in an MQTT topic (1-253 bytes, no '/', '+', '#' or control characters)", b.Name)
	}
	switch b.Selection {
	case "", selectionLeastLoaded, SelectionSticky: // "": a Config not from Load, least_loaded
	default:
		ps.add("broker.selection", "want %s or %s, got %q", selectionLeastLoaded, SelectionSticky, b.Selection)
	}
	if b.StickyTolerance < 0 || math.IsNaN(b.StickyTolerance) || math.IsInf(b.StickyTolerance, 0) {
		ps.add("broker.sticky_tolerance", "want a percentage of 0 or more, got %v", b.StickyTolerance)
	}
	if b.KnownWorkersOnly && len(c.Workers) == 0 {
		ps.add("broker.known_workers_only", "true, but workers: lists no worker, so every gateway would be ignored")
	}
	if b.WorkerExpiry < 0 {
		ps.add("broker.worker_expiry", "must be positive, got %v", b.WorkerExpiry)
	}
	r := b.RateLimit
	for _, f := range []struct {
		key string
		val float64
	}{
		{"broker.rate_limit.per_client", r.PerClient},
		{"broker.rate_limit.global", r.Global},
	} {
		if f.val < 0 {
			ps.add(f.key, "must be 0 (off) or a positive rate per second, got %v", f.val)
		}
	}
	for _, f := range []struct {
		key  string
		val  int
		rate float64
	}{
		{"broker.rate_limit.per_client_burst", r.PerClientBurst, r.PerClient},
		{"broker.rate_limit.global_burst", r.GlobalBurst, r.Global},
	} {
		if f.rate > 0 && f.val < 1 {
			ps.add(f.key, "must be at least 1 while the rate is on, got %d", f.val)
		}
	}
	if r.MaxClients < 0 {
		ps.add("broker.rate_limit.max_clients", "must be at least 1, got %d", r.MaxClients)
	}
}

// checkWorker: externalName and the worker section.
func (c *Config) checkWorker(ps *problems) {
	if c.ExternalName != "" && strings.ContainsAny(c.ExternalName, " /\t") {
		ps.add("externalName", "not a host name or address: %q", c.ExternalName)
	}
	w := c.Worker
	if w.Name != "" && !wgkex.ValidName(w.Name) {
		ps.add("worker.name", "%q cannot stand in an MQTT topic (no '/', '+', '#')", w.Name)
	}
	for _, d := range []struct {
		key string
		val int64
	}{
		{"worker.metrics_interval", int64(w.MetricsInterval)},
		{"worker.cleanup_interval", int64(w.CleanupInterval)},
		{"worker.peer_timeout", int64(w.PeerTimeout)},
	} {
		if d.val <= 0 {
			ps.add(d.key, "must be positive")
		}
	}
	if w.NewPeerGrace < 0 {
		ps.add("worker.new_peer_grace", "must not be negative")
	}
	if w.MetricsListen != "" {
		if _, port, err := net.SplitHostPort(w.MetricsListen); err != nil || !validPort(port) {
			ps.add("worker.metrics_listen", "want host:port, got %q", w.MetricsListen)
		}
	}
	if w.ReceiveMaximum < 0 || w.ReceiveMaximum > 65535 {
		ps.add("worker.receive_maximum", "must be 1-65535 (0: the default, %d), got %d", defaultReceiveMaximum, w.ReceiveMaximum)
	}
	if w.StateDir != "" && !filepath.IsAbs(w.StateDir) {
		ps.add("worker.state_dir", "want an absolute path, got %q", w.StateDir)
	}
}

func (c *Config) checkLogLevel(ps *problems) {
	if c.LogLevel == "" {
		return
	}
	if _, err := ParseLogLevel(c.LogLevel); err != nil {
		ps.add("log_level", "%v", err)
	}
}

// Interfaces names the interfaces of every configured domain. Call it on a
// validated Config.
func (c *Config) Interfaces() map[string]wgkex.Interfaces {
	out := make(map[string]wgkex.Interfaces, len(c.Domains))
	for _, d := range c.Domains {
		if ifs, err := wgkex.InterfacesFor(d, c.DomainPrefixes); err == nil {
			out[d] = ifs
		}
	}
	return out
}

func validPort(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 0 && n <= 65535
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}
