package config

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// Validate checks the meaning of every key and returns all problems at once
// as an *Error, each naming its key.
func (c *Config) Validate() error {
	var probs []Problem
	add := func(key, format string, args ...any) {
		probs = append(probs, Problem{Key: key, Msg: fmt.Sprintf(format, args...)})
	}

	if len(c.Domains) == 0 {
		add("domains", "empty: list at least one domain")
	}
	if len(c.DomainPrefixes) == 0 {
		add("domain_prefixes", "empty: list the prefixes stripped from domains (e.g. ffmuc_)")
	}
	seenDomain := map[string]bool{}
	owner := map[string]string{} // interface name -> domain
	for _, d := range c.Domains {
		if seenDomain[d] {
			add("domains", "%q is listed twice", d)
			continue
		}
		seenDomain[d] = true
		if !wgkex.ValidName(d) {
			add("domains", "%q is not a valid domain name (no '/', '+', '#' or control characters)", d)
			continue
		}
		if len(c.DomainPrefixes) == 0 {
			continue
		}
		ifs, err := wgkex.InterfacesFor(d, c.DomainPrefixes)
		if err != nil {
			add("domains", "%v", err)
			continue
		}
		if other, ok := owner[ifs.WireGuard]; ok {
			add("domains", "%q and %q both give interfaces %s/%s", other, d, ifs.WireGuard, ifs.VXLAN)
			continue
		}
		owner[ifs.WireGuard] = d
	}

	names := make([]string, 0, len(c.Workers))
	for n := range c.Workers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if w := c.Workers[n]; w <= 0 {
			add("workers."+n+".weight", "must be a positive integer, got %d", w)
		}
		if !wgkex.ValidName(n) {
			add("workers."+n, "not a valid worker name")
		}
	}

	if c.MQTT.BrokerURL != "" {
		if _, err := c.ServerURL(); err != nil {
			add("mqtt.broker_url", "%v", err)
		}
	}
	if c.MQTT.Port < 1 || c.MQTT.Port > 65535 {
		add("mqtt.broker_port", "must be 1-65535, got %d", c.MQTT.Port)
	}
	if c.MQTT.Keepalive < 0 || c.MQTT.Keepalive > 65535 {
		add("mqtt.keepalive", "must be 0-65535 seconds, got %d", c.MQTT.Keepalive)
	}
	for _, f := range []struct{ key, path string }{
		{"mqtt.ca_file", c.MQTT.CAFile}, {"mqtt.cert_file", c.MQTT.CertFile}, {"mqtt.key_file", c.MQTT.KeyFile},
	} {
		if f.path == "" {
			continue
		}
		if fh, err := os.Open(f.path); err != nil {
			add(f.key, "cannot read: %v", err)
		} else {
			fh.Close()
		}
	}
	if (c.MQTT.CertFile == "") != (c.MQTT.KeyFile == "") {
		add("mqtt.cert_file", "mqtt.cert_file and mqtt.key_file go together")
	}
	if c.Embedded() {
		host, port, err := net.SplitHostPort(c.MQTT.Listen)
		if err != nil {
			add("mqtt.listen", "want host:port, got %q", c.MQTT.Listen)
		} else {
			if !validPort(port) {
				add("mqtt.listen", "bad port %q", port)
			}
			if !isLoopback(host) && (c.MQTT.Username == "" || c.MQTT.Password == "") {
				add("mqtt.listen", "the embedded MQTT server listens beyond loopback (%s): set mqtt.username and mqtt.password", c.MQTT.Listen)
			}
		}
	}

	if c.BrokerListen.Port < 1 || c.BrokerListen.Port > 65535 {
		add("broker_listen.port", "must be 1-65535, got %d", c.BrokerListen.Port)
	}
	if strings.ContainsAny(c.BrokerListen.Host, " /") {
		add("broker_listen.host", "not a host name or address: %q", c.BrokerListen.Host)
	}

	if c.ExternalName != "" && strings.ContainsAny(c.ExternalName, " /\t") {
		add("externalName", "not a host name or address: %q", c.ExternalName)
	}
	if c.Worker.Name != "" && !wgkex.ValidName(c.Worker.Name) {
		add("worker.name", "%q cannot stand in an MQTT topic (no '/', '+', '#')", c.Worker.Name)
	}
	for _, d := range []struct {
		key string
		val int64
	}{
		{"worker.metrics_interval", int64(c.Worker.MetricsInterval)},
		{"worker.cleanup_interval", int64(c.Worker.CleanupInterval)},
		{"worker.peer_timeout", int64(c.Worker.PeerTimeout)},
	} {
		if d.val <= 0 {
			add(d.key, "must be positive")
		}
	}
	if c.Worker.NewPeerGrace < 0 {
		add("worker.new_peer_grace", "must not be negative")
	}
	if c.Worker.MetricsListen != "" {
		if _, port, err := net.SplitHostPort(c.Worker.MetricsListen); err != nil || !validPort(port) {
			add("worker.metrics_listen", "want host:port, got %q", c.Worker.MetricsListen)
		}
	}
	if c.LogLevel != "" {
		if _, err := ParseLogLevel(c.LogLevel); err != nil {
			add("log_level", "%v", err)
		}
	}

	if len(probs) > 0 {
		return &Error{File: c.File, Problems: probs}
	}
	return nil
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

// HasDomain reports whether domain is configured.
func (c *Config) HasDomain(domain string) bool {
	for _, d := range c.Domains {
		if d == domain {
			return true
		}
	}
	return false
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
