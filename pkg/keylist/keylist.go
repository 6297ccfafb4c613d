// Package keylist reads operator-maintained lists of WireGuard public keys
// (block lists, allow lists, keys exempt from cleanup) from YAML files and
// keeps them current while the process runs (see Watcher).
//
// A list file has one of these forms:
//
//	# a mapping with a list under "keys"; an entry is a key or a key with a reason
//	keys:
//	  - key: "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="
//	    reason: "stolen router, ticket 1234"
//	  - "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
//
//	# the same list written as a plain top-level sequence
//	- "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
//
//	# allow lists only: a list per domain (entries as above)
//	domains:
//	  ffmuc_welt:
//	    - "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
//
// An empty file (or one holding only comments) is an empty list. As an
// allow list, a domain under "domains" admits only its own keys, any other
// domain the top-level keys when the file has any list there, and everyone
// otherwise (List.Allowed). Anchors and aliases (&welt, *welt) may share a
// list between domains. Every key must pass wgkex.ValidKey; a bad key, a
// duplicate, an unknown field or a YAML syntax error makes the whole file
// invalid, and the error names the file and the line of every problem.
package keylist

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/freifunkMUC/wgkex/internal/text"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// maxFileSize bounds what is read: a list of 100 000 keys with reasons is a
// few MB; anything much larger is the wrong file.
const maxFileSize = 16 << 20

// maxProblems bounds how many problems one error lists.
const maxProblems = 10

// entry is one listed key.
type entry struct {
	Key    string
	Reason string // "" when the file gives none
	line   int
}

// List is an immutable snapshot of a list file. The nil *List is an empty
// list with no restriction: it contains no key and allows every key.
type List struct {
	// top is the list under "keys" or the top-level sequence; nil when the
	// file has none.
	top map[string]entry
	// domains holds the per-domain lists of an allow list.
	domains map[string]map[string]entry
}

// contains reports whether key is in the top-level list (block and keep
// lists).
func (l *List) contains(key string) bool {
	_, ok := l.lookup(key)
	return ok
}

// lookup returns key's entry in the top-level list.
func (l *List) lookup(key string) (entry, bool) {
	if l == nil {
		return entry{}, false
	}
	e, ok := l.top[key]
	return e, ok
}

// allowed applies the list as an allow list: a domain listed under "domains"
// admits only the keys of its own list (none when that list is empty); any
// other domain admits the keys of the top-level list when the file has one,
// and every key when it has none. So a file with only "domains:" restricts
// just the domains it names.
func (l *List) allowed(domain, key string) bool {
	if l == nil {
		return true
	}
	if d, ok := l.domains[domain]; ok {
		_, ok := d[key]
		return ok
	}
	if l.top == nil {
		return true
	}
	_, ok := l.top[key]
	return ok
}

// Len is the number of entries, top-level and per-domain together.
func (l *List) Len() int {
	if l == nil {
		return 0
	}
	n := len(l.top)
	for _, d := range l.domains {
		n += len(d)
	}
	return n
}

// Domains lists the domains that have their own list, sorted. The command
// should warn about names it does not serve: a misspelt domain leaves the
// real one unrestricted.
func (l *List) Domains() []string {
	if l == nil {
		return nil
	}
	out := make([]string, 0, len(l.domains))
	for d := range l.domains {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

// allKeys is the set of keys listed anywhere in l.
func (l *List) allKeys() map[string]struct{} {
	set := make(map[string]struct{}, l.Len())
	if l == nil {
		return set
	}
	for k := range l.top {
		set[k] = struct{}{}
	}
	for _, d := range l.domains {
		for k := range d {
			set[k] = struct{}{}
		}
	}
	return set
}

// load reads and parses one list file. perDomain admits the "domains" form
// (allow lists). It suits one-off checks such as `wgkex config check`; a
// running command uses Start.
func load(file string, perDomain bool) (*List, error) {
	data, err := readFile(file)
	if err != nil {
		return nil, err
	}
	return parse(file, data, perDomain)
}

func readFile(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s: over %d MiB, not a key list", file, maxFileSize>>20)
	}
	return data, nil
}

// parse turns the contents of file into a List, or names every problem.
func parse(file string, data []byte, perDomain bool) (*List, error) {
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &List{}, nil // empty, or only comments
		}
		return nil, fmt.Errorf("invalid key list %s: %s", file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, fmt.Errorf("invalid key list %s: %s", file, strings.TrimPrefix(err.Error(), "yaml: "))
		}
		return nil, fmt.Errorf("invalid key list %s: line %d: a second YAML document; a list file holds one", file, extra.Line)
	}
	p := &parser{perDomain: perDomain}
	l := p.root(&doc)
	if len(p.problems) > 0 {
		msg := p.problems
		if len(msg) > maxProblems {
			msg = append(msg[:maxProblems:maxProblems], fmt.Sprintf("and %d more", len(p.problems)-maxProblems))
		}
		return nil, fmt.Errorf("invalid key list %s: %s", file, strings.Join(msg, "; "))
	}
	return l, nil
}

type parser struct {
	perDomain bool
	problems  []string
}

func (p *parser) addf(n *yaml.Node, format string, args ...any) {
	p.problems = append(p.problems, fmt.Sprintf("line %d: ", n.Line)+fmt.Sprintf(format, args...))
}

// deref follows an alias (*name) to the node it names, so that operators
// may share one list between domains with an anchor.
func deref(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

func (p *parser) root(doc *yaml.Node) *List {
	l := &List{}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return l
	}
	n := deref(doc.Content[0])
	switch {
	case isNull(n):
		return l
	case n.Kind == yaml.SequenceNode:
		l.top = p.entries(n, "the list")
		return l
	case n.Kind != yaml.MappingNode:
		p.addf(n, "want a list of keys, or a mapping with %s", p.fields())
		return l
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		if first, dup := seen[k.Value]; dup {
			p.addf(k, "%q given twice (first at line %d)", k.Value, first)
			continue
		}
		seen[k.Value] = k.Line
		switch {
		case k.Value == "keys":
			l.top = p.entries(v, "keys")
		case k.Value == "domains" && p.perDomain:
			l.domains = p.domainLists(v)
		case k.Value == "domains":
			p.addf(k, "per-domain lists are only read from an allow list")
		default:
			p.addf(k, "unknown field %q (want %s)", k.Value, p.fields())
		}
	}
	return l
}

func (p *parser) fields() string {
	if p.perDomain {
		return "keys or domains"
	}
	return "keys"
}

func (p *parser) domainLists(n *yaml.Node) map[string]map[string]entry {
	out := map[string]map[string]entry{}
	if isNull(n) {
		return out
	}
	if n.Kind != yaml.MappingNode {
		p.addf(n, "domains: want a mapping of domain names to lists of keys")
		return out
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		name := k.Value
		if first, dup := seen[name]; dup {
			p.addf(k, "domain %q listed twice (first at line %d)", text.Truncate(name, 64), first)
			continue
		}
		seen[name] = k.Line
		if k.Kind != yaml.ScalarNode || !wgkex.ValidName(name) {
			p.addf(k, "invalid domain name %q", text.Truncate(name, 64))
			continue
		}
		out[name] = p.entries(v, "domain "+name)
	}
	return out
}

// entries reads a sequence of entries; null (a field with nothing after
// the colon) is an empty list. The result is never nil, so that a written
// but empty list still counts as present (see List.Allowed).
func (p *parser) entries(n *yaml.Node, what string) map[string]entry {
	out := map[string]entry{}
	if isNull(n) {
		return out
	}
	if n.Kind != yaml.SequenceNode {
		p.addf(n, "%s: want a list of keys", what)
		return out
	}
	for _, item := range n.Content {
		e, ok := p.entry(deref(item))
		if !ok {
			continue
		}
		if first, dup := out[e.Key]; dup {
			p.addf(item, "duplicate key %q (first at line %d)", e.Key, first.line)
			continue
		}
		out[e.Key] = e
	}
	return out
}

func (p *parser) entry(n *yaml.Node) (entry, bool) {
	e := entry{line: n.Line}
	switch n.Kind {
	case yaml.ScalarNode:
		if isNull(n) {
			p.addf(n, "empty entry")
			return e, false
		}
		e.Key = n.Value
	case yaml.MappingNode:
		var hasKey bool
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], deref(n.Content[i+1])
			switch k.Value {
			case "key":
				if v.Kind != yaml.ScalarNode || isNull(v) {
					p.addf(v, "key: want the key as text")
					return e, false
				}
				e.Key, hasKey = v.Value, true
			case "reason":
				if v.Kind != yaml.ScalarNode {
					p.addf(v, "reason: want text")
					return e, false
				}
				if !isNull(v) {
					e.Reason = v.Value
				}
			default:
				p.addf(k, "unknown field %q in an entry (want key, reason)", text.Truncate(k.Value, 64))
				return e, false
			}
		}
		if !hasKey {
			p.addf(n, "entry without key")
			return e, false
		}
	default:
		p.addf(n, "want a key, or a mapping with key and reason")
		return e, false
	}
	if !wgkex.ValidKey(e.Key) {
		p.addf(n, "invalid key %q: want 44 characters of base64 (a WireGuard public key)", text.Truncate(e.Key, 64))
		return e, false
	}
	return e, true
}
