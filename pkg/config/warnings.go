package config

import (
	"net/netip"
	"net/url"
	"strings"
)

// ExternalAddress is the address the worker named name hands to nodes as the
// v2 Address (docs/protocol.md §2): externalName, else the worker's name.
func (c *Config) ExternalAddress(name string) string {
	if c.ExternalName != "" {
		return c.ExternalName
	}
	return name
}

// whyDNSName is why a node needs a DNS name for its gateway (docs/protocol.md §2).
const whyDNSName = "deployed Gluon nodes resolve the v2 Address with busybox nslookup, which cannot use an IP literal " +
	"(it does a reverse lookup and prints no Address: line), so those nodes get no gateway; " +
	"use a DNS name whose DNS server answers NODATA (not an error) for the record type (A or AAAA) it lacks"

// Warnings lists what is valid but probably wrong, for the worker named
// workerName (resolved as the worker resolves it: --name, worker.name, host
// name). Call it on a validated Config.
//
// The workers: entries are worker names, not addresses: one is handed to
// nodes only by a worker that has no externalName. This file can tell that
// only when it has no externalName itself, so only then are IP literals
// among them flagged.
func (c *Config) Warnings(workerName string) []Problem {
	var ws problems
	switch ext := c.ExternalAddress(workerName); {
	case !isIPLiteral(ext):
	case c.ExternalName != "":
		ws.add("externalName", "%q is an IP literal: %s", ext, whyDNSName)
	default:
		ws.add("externalName", "not set, so the worker advertises its name %q, an IP literal: %s", ext, whyDNSName)
	}
	if c.ExternalName == "" {
		for _, n := range c.workerNames() {
			if isIPLiteral(n) && n != strings.ToLower(workerName) {
				ws.add("workers."+n, "an IP literal: a worker of that name without externalName hands it to nodes as its Address, "+
					"which deployed Gluon nodes cannot resolve (busybox nslookup); give that worker externalName: <DNS name>")
			}
		}
	}
	urls, err := c.ServerURLs()
	if err == nil && !anyTLS(urls) {
		for _, f := range []struct{ key, path string }{{"mqtt.ca_file", c.MQTT.CAFile}, {"mqtt.cert_file", c.MQTT.CertFile}} {
			if f.path != "" {
				ws.add(f.key, "set, but the MQTT connection (%s) is plain text, so it is not used: "+
					"use a TLS scheme (tls://, wss://) or a bare host with mqtt.tls: true", redactedList(urls))
			}
		}
	}
	if err == nil && anyTLS(urls) {
		for i, u := range urls {
			if !TLSScheme(u.Scheme) {
				ws.add("mqtt.broker_url", "item %d, %s, is plain text while the others use TLS: "+
					"a failover to it sends credentials and keys unencrypted", i+1, u.Redacted())
			}
		}
	}
	return ws
}

// isIPLiteral reports whether s is an IP address rather than a name, with or
// without brackets.
func isIPLiteral(s string) bool {
	_, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	return err == nil
}

func anyTLS(urls []*url.URL) bool {
	for _, u := range urls {
		if TLSScheme(u.Scheme) {
			return true
		}
	}
	return false
}

func redactedList(urls []*url.URL) string {
	s := make([]string, len(urls))
	for i, u := range urls {
		s[i] = u.Redacted()
	}
	return strings.Join(s, ", ")
}
