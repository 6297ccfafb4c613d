package keylist

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// key returns a distinct valid public key for i.
func key(i int) string {
	var b [32]byte
	b[0], b[1], b[31] = byte(i), byte(i>>8), 0xa5
	return base64.StdEncoding.EncodeToString(b[:])
}

func mustParse(t *testing.T, src string, perDomain bool) *List {
	t.Helper()
	l, err := parse("list.yaml", []byte(src), perDomain)
	if err != nil {
		t.Fatalf("parse:\n%s\nerror: %v", src, err)
	}
	return l
}

func TestParseForms(t *testing.T) {
	k1, k2, k3 := key(1), key(2), key(3)

	t.Run("mapping with reasons", func(t *testing.T) {
		l := mustParse(t, `
keys:
  - key: "`+k1+`"
    reason: "stolen router, ticket 1234"
  - "`+k2+`"   # plain entry
  - key: `+k3+`
`, false)
		if l.Len() != 3 || !l.contains(k1) || !l.contains(k2) || !l.contains(k3) || l.contains(key(4)) {
			t.Fatalf("got %d entries: %+v", l.Len(), l.top)
		}
		if e, _ := l.lookup(k1); e.Reason != "stolen router, ticket 1234" || e.Key != k1 {
			t.Errorf("entry of k1 = %+v", e)
		}
		if e, _ := l.lookup(k2); e.Reason != "" {
			t.Errorf("plain entry has reason %q", e.Reason)
		}
	})

	t.Run("plain top-level list", func(t *testing.T) {
		l := mustParse(t, "- "+k1+"\n- '"+k2+"'\n- {key: "+k3+", reason: test}\n", false)
		if l.Len() != 3 || !l.contains(k2) {
			t.Fatalf("got %+v", l.top)
		}
		if e, _ := l.lookup(k3); e.Reason != "test" {
			t.Errorf("reason = %q", e.Reason)
		}
	})

	for name, src := range map[string]string{
		"empty file":    "",
		"only comments": "# nobody blocked yet\n\n",
		"null document": "~\n",
		"null keys":     "keys:\n",
		"empty list":    "keys: []\n",
	} {
		t.Run(name, func(t *testing.T) {
			l := mustParse(t, src, false)
			if l.Len() != 0 || l.contains(k1) {
				t.Fatalf("want an empty list, got %+v", l.top)
			}
		})
	}
}

func TestAllowList(t *testing.T) {
	k1, k2, k3 := key(1), key(2), key(3)
	l := mustParse(t, `
domains:
  ffmuc_welt:
    - key: "`+k1+`"
      reason: "office"
    - "`+k2+`"
  ffmuc_nord: &shared
    - "`+k3+`"
  ffmuc_sued: *shared
  ffmuc_closed: []
`, true)
	cases := []struct {
		domain, key string
		want        bool
	}{
		{"ffmuc_welt", k1, true},
		{"ffmuc_welt", k2, true},
		{"ffmuc_welt", k3, false},
		{"ffmuc_nord", k3, true},
		{"ffmuc_nord", k1, false},
		{"ffmuc_sued", k3, true}, // via the alias
		{"ffmuc_sued", k2, false},
		{"ffmuc_closed", k1, false},
		{"ffmuc_other", k1, true}, // not listed: unrestricted
		{"ffmuc_other", key(9), true},
	}
	for _, c := range cases {
		if got := l.allowed(c.domain, c.key); got != c.want {
			t.Errorf("Allowed(%s, key %s) = %v, want %v", c.domain, c.key[:6], got, c.want)
		}
	}
	if got := strings.Join(l.Domains(), ","); got != "ffmuc_closed,ffmuc_nord,ffmuc_sued,ffmuc_welt" {
		t.Errorf("Domains() = %s", got)
	}
	if l.Len() != 4 {
		t.Errorf("Len() = %d, want 4", l.Len())
	}
	if l.contains(k1) {
		t.Error("per-domain keys leaked into the top-level list")
	}

	// A top-level list restricts every domain not listed under domains.
	l = mustParse(t, "keys: ["+k1+"]\ndomains: {ffmuc_welt: ["+k2+"]}\n", true)
	for _, c := range []struct {
		domain, key string
		want        bool
	}{
		{"ffmuc_welt", k2, true}, {"ffmuc_welt", k1, false},
		{"ffmuc_nord", k1, true}, {"ffmuc_nord", k2, false},
	} {
		if got := l.allowed(c.domain, c.key); got != c.want {
			t.Errorf("with keys: Allowed(%s, %s) = %v, want %v", c.domain, c.key[:6], got, c.want)
		}
	}

	// Empty allow list: no restriction. The nil list neither.
	if !mustParse(t, "# nothing\n", true).allowed("ffmuc_welt", k1) || !(*List)(nil).allowed("x", k1) {
		t.Error("an empty allow list restricts")
	}
	if (*List)(nil).contains(k1) || (*List)(nil).Len() != 0 {
		t.Error("the nil list is not empty")
	}
}

func TestParseErrors(t *testing.T) {
	k1 := key(1)
	bad := strings.Replace(k1, "=", "A", 1)
	cases := []struct {
		name, src string
		perDomain bool
		want      []string // substrings of the error
	}{
		{"bad key", "keys:\n  - " + k1 + "\n  - not-a-key\n", false,
			[]string{"list.yaml", `line 3: invalid key "not-a-key": want 44 characters of base64`}},
		{"bad key in mapping entry", "keys:\n  - key: " + bad + "\n    reason: x\n", false,
			[]string{"line 2: invalid key"}},
		{"non-canonical key", "- " + k1[:42] + "B=\n", false, []string{"line 1: invalid key"}},
		{"duplicate", "- " + k1 + "\n- key: " + k1 + "\n  reason: again\n", false,
			[]string{`line 2: duplicate key "` + k1 + `" (first at line 1)`}},
		{"bad YAML", "keys:\n  - " + k1 + "\n - [unclosed\n", false, []string{"invalid key list list.yaml: line 2: did not find expected key"}},
		{"unknown field", "keys: []\nkeyz: []\n", false, []string{`line 2: unknown field "keyz" (want keys)`}},
		{"unknown entry field", "- key: " + k1 + "\n  comment: x\n", false, []string{`line 2: unknown field "comment" in an entry`}},
		{"entry without key", "- reason: lonely\n", false, []string{"line 1: entry without key"}},
		{"empty entry", "keys:\n  -\n", false, []string{"line 2: empty entry"}},
		{"nested list", "- [" + k1 + "]\n", false, []string{"line 1: want a key, or a mapping"}},
		{"scalar document", "hello\n", false, []string{"line 1: want a list of keys"}},
		{"keys not a list", "keys: " + k1 + "\n", false, []string{"line 1: keys: want a list of keys"}},
		{"keys twice", "keys: []\nkeys: []\n", false, []string{`line 2: "keys" given twice (first at line 1)`}},
		{"domains in a block list", "domains: {ffmuc_welt: []}\n", false,
			[]string{"line 1: per-domain lists are only read from an allow list"}},
		{"domain twice", "domains:\n  ffmuc_welt: []\n  ffmuc_welt: []\n", true,
			[]string{`line 3: domain "ffmuc_welt" listed twice (first at line 2)`}},
		{"bad domain name", "domains:\n  \"a/b\": []\n", true, []string{`line 2: invalid domain name "a/b"`}},
		{"bad key in a domain", "domains:\n  ffmuc_welt:\n    - x\n", true, []string{"line 3: invalid key"}},
		{"second document", "- " + k1 + "\n---\n- " + k1 + "\n", false, []string{"line 2: a second YAML document"}},
		{"all problems named", "- x\n- y\n- " + k1 + "\n- " + k1 + "\n", false,
			[]string{`line 1: invalid key "x"`, `line 2: invalid key "y"`, "line 4: duplicate key"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, err := parse("list.yaml", []byte(c.src), c.perDomain)
			if err == nil {
				t.Fatalf("accepted:\n%s\nas %+v", c.src, l)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
		})
	}

	// Many problems: the first few, and a count of the rest.
	var b strings.Builder
	for i := 0; i < 25; i++ {
		b.WriteString("- bad\n")
	}
	_, err := parse("list.yaml", []byte(b.String()), false)
	if err == nil || !strings.Contains(err.Error(), "and 15 more") || strings.Count(err.Error(), `invalid key "bad"`) != maxProblems {
		t.Errorf("error for 25 bad keys: %v", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "blocklist.yaml")
	if err := os.WriteFile(f, []byte("- "+key(1)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := load(f, false)
	if err != nil || !l.contains(key(1)) {
		t.Fatalf("Load = %v, %v", l, err)
	}
	if _, err := load(filepath.Join(dir, "absent.yaml"), false); err == nil || !strings.Contains(err.Error(), "absent.yaml") {
		t.Errorf("Load of a missing file: %v", err)
	}
	big := make([]byte, maxFileSize+1)
	if err := os.WriteFile(f, big, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := load(f, false); err == nil || !strings.Contains(err.Error(), "not a key list") {
		t.Errorf("Load of a huge file: %v", err)
	}
}
