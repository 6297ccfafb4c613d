// Package config loads wgkex.yaml (docs/protocol.md §1) and the environment into a
// typed Config. It is the only package that uses viper.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cast"
	"github.com/spf13/viper"
)

// EnvConfigFile names the environment variable that points at the config file.
const EnvConfigFile = "WGKEX_CONFIG_FILE"

// DefaultFile is read when neither --config nor WGKEX_CONFIG_FILE is given.
const DefaultFile = "/etc/wgkex.yaml"

// Defaults of the keys that have one.
const (
	defaultMQTTPort        = 1883
	defaultKeepalive       = 5 // seconds
	defaultListenHost      = "127.0.0.1"
	defaultListenPort      = 5000
	defaultEmbeddedListen  = "127.0.0.1:1883"
	defaultMetricsInterval = 60 * time.Second
	defaultCleanupInterval = time.Hour
	defaultPeerTimeout     = 3 * time.Hour
	defaultNewPeerGrace    = 10 * time.Minute
	defaultReceiveMaximum  = 16384
	defaultStateDir        = "/var/lib/wgkex"
	DefaultClientBroker    = "http://127.0.0.1:5000"
	defaultMaxConnections  = 4096
	defaultWorkerExpiry    = 10 * time.Minute
	defaultStickyTolerance = 10.0 // percent
)

// Gateway selection rules of the broker (broker.selection).
const (
	// selectionLeastLoaded hands out the candidate furthest below its
	// weighted share (docs/protocol.md §4), the original's rule.
	selectionLeastLoaded = "least_loaded"
	// SelectionSticky gives a node the same gateway on every request while
	// that gateway is online and within broker.sticky_tolerance of its share.
	SelectionSticky = "sticky"
)

// Rate limit defaults (see README "Rate limits" for the arithmetic): one
// address may register 60 keys at once and one a second after that; the
// whole broker 20,000 at once and 2,000 a second.
const (
	defaultRatePerClient      = 1.0
	defaultRatePerClientBurst = 60
	defaultRateGlobal         = 2000.0
	defaultRateGlobalBurst    = 20000
	defaultRateMaxClients     = 100000
)

// Config is the whole typed configuration.
type Config struct {
	// File is the config file that was read, "" when none was.
	File string

	Domains        []string
	DomainPrefixes []string
	// Workers maps a worker name to its weight (docs/protocol.md §4); workers not
	// listed weigh 1. Names are lower-cased: viper folds keys, and host names
	// are case-insensitive anyway. Use Weight to look one up.
	Workers      map[string]int
	ExternalName string
	LogLevel     string // "" unless log_level or WGKEX_DEBUG set it

	MQTT         MQTT
	BrokerListen Listen
	Broker       Broker
	Worker       Worker
	Client       Client

	// Notes are harmless findings worth a log line: ignored keys such as
	// logging_config, keys nobody reads.
	Notes []string
}

// MQTT is the bus connection, and the embedded server's settings.
type MQTT struct {
	// BrokerURLs are the MQTT servers (host name, IP or URL), tried in
	// order on every (re)connection; none runs the embedded server (broker).
	BrokerURLs []string
	Port       int
	Username   string
	Password   string
	Keepalive  int // seconds
	TLS        bool
	CAFile     string
	CertFile   string
	KeyFile    string
	// Listen is where the broker's embedded MQTT server listens.
	Listen string
	// Store is the embedded server's state file (sessions, queued keys,
	// retained messages); "" keeps them in memory only.
	Store string
	// PasswordFile (mosquitto_passwd format) gives each worker a user of
	// its own name on the embedded server, with rights on its own topics
	// only; Username stays the broker's user.
	PasswordFile string
}

// Listen is the broker's HTTP listener.
type Listen struct {
	Host string
	Port int
	// MaxConnections caps the connections served at once (0: no cap).
	MaxConnections int
	// TrustedProxies are addresses or CIDRs whose X-Forwarded-For or
	// X-Real-IP names the client (for rate limits and logs).
	TrustedProxies []string
}

// Broker holds the settings only the broker reads.
type Broker struct {
	// Name is the broker's name on the bus (wireguard-broker/<name>/status);
	// "" means the host name.
	Name string
	// Selection is "least_loaded" (also "") or SelectionSticky.
	Selection string
	// StickyTolerance (percent) is how far above its weighted share a
	// gateway may be and still keep getting its sticky nodes.
	StickyTolerance float64
	// KnownWorkersOnly ignores (and counts) state from worker names not in
	// workers:. Load makes it default to true when workers: lists any.
	KnownWorkersOnly bool
	// WorkerExpiry is how long an unlisted worker that is offline or has
	// no data is remembered after its last message.
	WorkerExpiry time.Duration
	// BlocklistFile lists keys the broker refuses (403); "" means none.
	BlocklistFile string
	// AllowlistFile, when set, lists the keys accepted per domain.
	AllowlistFile string
	RateLimit     RateLimit
}

// RateLimit configures the broker's token buckets on the key exchange
// endpoints. A rate of 0 turns that bucket off.
type RateLimit struct {
	PerClient      float64 // requests per second per address (IPv6: per /64)
	PerClientBurst int
	Global         float64 // requests per second, all clients together
	GlobalBurst    int
	MaxClients     int // client buckets kept in memory
}

// Addr is host:port, IPv6-safe.
func (l Listen) Addr() string { return net.JoinHostPort(l.Host, strconv.Itoa(l.Port)) }

// Worker holds the settings only the worker reads.
type Worker struct {
	Name            string // "" means the host name
	MetricsInterval time.Duration
	CleanupInterval time.Duration
	PeerTimeout     time.Duration
	NewPeerGrace    time.Duration
	MetricsListen   string
	// ReceiveMaximum is how many key messages the MQTT server may send
	// ahead of the worker's acknowledgements (1-65535; Load fills in
	// 16384).
	ReceiveMaximum int
	// StateDir holds the journal of keys acknowledged but not installed yet.
	StateDir string
}

// Client holds the settings only the client reads.
type Client struct {
	BrokerURL string
}

// Weight is the configured weight of worker, 1 when it is not listed.
func (c *Config) Weight(worker string) int {
	if w, ok := c.Workers[strings.ToLower(worker)]; ok {
		return w
	}
	return 1
}

// Embedded reports whether the broker should run its own MQTT server.
func (c *Config) Embedded() bool { return len(c.MQTT.BrokerURLs) == 0 }

// ServerURLs are the MQTT servers to connect to, in the order they are
// tried: each broker_url with broker_port and the scheme tls selects, or
// as given when it is a URL. With the embedded server it is the server's
// own listen address. The scheme alone decides whether a connection is
// TLS (see TLSScheme): tls: true with a plain-text scheme, or with the
// embedded server, is an error rather than a silently plain connection.
// The error names every bad entry, and with several its place in the list.
func (c *Config) ServerURLs() ([]*url.URL, error) {
	if ps := c.MQTT.tlsConflicts(); len(ps) > 0 {
		return nil, errors.New(joinProblems(ps))
	}
	if c.Embedded() {
		host, port, err := net.SplitHostPort(c.MQTT.Listen)
		if err != nil {
			return nil, fmt.Errorf("mqtt.listen %q: %w", c.MQTT.Listen, err)
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		return []*url.URL{{Scheme: "mqtt", Host: net.JoinHostPort(host, port)}}, nil
	}
	urls, ps := c.MQTT.serverURLs()
	if len(ps) > 0 {
		return nil, errors.New(joinProblems(ps))
	}
	return urls, nil
}

// serverURLs parses broker_url, one problem per bad or repeated entry.
func (m MQTT) serverURLs() ([]*url.URL, []Problem) {
	var (
		urls []*url.URL
		ps   []Problem
		seen = map[string]int{}
	)
	for i, raw := range m.BrokerURLs {
		u, err := m.serverURL(raw)
		if err == nil {
			if first, ok := seen[u.String()]; ok {
				err = fmt.Errorf("%s is already item %d", u.Redacted(), first)
			} else {
				seen[u.String()] = i + 1
			}
		}
		if err != nil {
			ps = append(ps, Problem{Key: "mqtt.broker_url", Msg: m.brokerURLItem(i) + err.Error()})
			continue
		}
		urls = append(urls, u)
	}
	return urls, ps
}

// brokerURLItem names entry i of broker_url in a message: nothing when
// the key holds one server, as it always did, else its place in the list
// (counted from 1, as the config's other list messages count).
func (m MQTT) brokerURLItem(i int) string {
	if len(m.BrokerURLs) == 1 {
		return ""
	}
	return fmt.Sprintf("item %d: ", i+1)
}

// serverURL is one broker_url entry as a URL (see ServerURLs).
func (m MQTT) serverURL(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("empty")
	}
	if strings.Contains(raw, "://") {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, err
		}
		switch u.Scheme {
		case "mqtt", "tcp", "tls", "mqtts", "ssl", "ws", "wss":
		default:
			return nil, fmt.Errorf("unsupported scheme %q (want mqtt, tls, ws or wss)", u.Scheme)
		}
		if u.Port() == "" {
			u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(m.Port))
		}
		return u, nil
	}
	scheme := "mqtt"
	if m.TLS {
		scheme = "tls"
	}
	host := strings.Trim(raw, "[]")
	return &url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(m.Port))}, nil
}

func joinProblems(ps []Problem) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, "; ")
}

// Problem is one thing wrong with the configuration, tied to its key.
type Problem struct {
	Key string
	Msg string
}

func (p Problem) String() string { return p.Key + ": " + p.Msg }

// Error lists every problem found at once.
type Error struct {
	File     string
	Problems []Problem
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("invalid configuration")
	if e.File != "" {
		b.WriteString(" in " + e.File)
	}
	for i, p := range e.Problems {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// key spellings: viper keys (with "::" nesting, so that worker host names
// may contain dots) and the environment variables that set them. The
// WGKEX_ names follow docs/protocol.md §1; the others are the Python release's
// container variables.
type keySpec struct {
	key  string
	env  []string
	name string // as operators write it
}

var keys = []keySpec{
	{"domains", []string{"WGKEX_DOMAINS"}, "domains"},
	{"domain_prefixes", []string{"WGKEX_DOMAIN_PREFIXES"}, "domain_prefixes"},
	{"externalname", []string{"WGKEX_EXTERNALNAME", "WGKEX_EXTERNAL_NAME"}, "externalName"},
	{"log_level", []string{"WGKEX_LOG_LEVEL", "WGKEX_DEBUG"}, "log_level"},
	{"mqtt::broker_url", []string{"WGKEX_MQTT_BROKER_URL", "MQTT_BROKER_URL"}, "mqtt.broker_url"},
	{"mqtt::broker_port", []string{"WGKEX_MQTT_BROKER_PORT", "MQTT_BROKER_PORT"}, "mqtt.broker_port"},
	{"mqtt::username", []string{"WGKEX_MQTT_USERNAME", "MQTT_USERNAME"}, "mqtt.username"},
	{"mqtt::password", []string{"WGKEX_MQTT_PASSWORD", "MQTT_PASSWORD"}, "mqtt.password"},
	{"mqtt::keepalive", []string{"WGKEX_MQTT_KEEPALIVE", "MQTT_KEEPALIVE"}, "mqtt.keepalive"},
	{"mqtt::tls", []string{"WGKEX_MQTT_TLS", "MQTT_TLS"}, "mqtt.tls"},
	{"mqtt::ca_file", []string{"WGKEX_MQTT_CA_FILE"}, "mqtt.ca_file"},
	{"mqtt::cert_file", []string{"WGKEX_MQTT_CERT_FILE"}, "mqtt.cert_file"},
	{"mqtt::key_file", []string{"WGKEX_MQTT_KEY_FILE"}, "mqtt.key_file"},
	{"mqtt::listen", []string{"WGKEX_MQTT_LISTEN"}, "mqtt.listen"},
	{"mqtt::store", []string{"WGKEX_MQTT_STORE"}, "mqtt.store"},
	{"mqtt::password_file", []string{"WGKEX_MQTT_PASSWORD_FILE"}, "mqtt.password_file"},
	{"broker_listen::host", []string{"WGKEX_BROKER_LISTEN_HOST"}, "broker_listen.host"},
	{"broker_listen::port", []string{"WGKEX_BROKER_LISTEN_PORT"}, "broker_listen.port"},
	{"broker_listen::max_connections", []string{"WGKEX_BROKER_LISTEN_MAX_CONNECTIONS"}, "broker_listen.max_connections"},
	{"broker_listen::trusted_proxies", []string{"WGKEX_BROKER_LISTEN_TRUSTED_PROXIES"}, "broker_listen.trusted_proxies"},
	{"broker::name", []string{"WGKEX_BROKER_NAME"}, "broker.name"},
	{"broker::selection", []string{"WGKEX_BROKER_SELECTION"}, "broker.selection"},
	{"broker::sticky_tolerance", []string{"WGKEX_BROKER_STICKY_TOLERANCE"}, "broker.sticky_tolerance"},
	{"broker::known_workers_only", []string{"WGKEX_BROKER_KNOWN_WORKERS_ONLY"}, "broker.known_workers_only"},
	{"broker::worker_expiry", []string{"WGKEX_BROKER_WORKER_EXPIRY"}, "broker.worker_expiry"},
	{"broker::blocklist_file", []string{"WGKEX_BROKER_BLOCKLIST_FILE"}, "broker.blocklist_file"},
	{"broker::allowlist_file", []string{"WGKEX_BROKER_ALLOWLIST_FILE"}, "broker.allowlist_file"},
	{"broker::rate_limit::per_client", []string{"WGKEX_BROKER_RATE_LIMIT_PER_CLIENT"}, "broker.rate_limit.per_client"},
	{"broker::rate_limit::per_client_burst", []string{"WGKEX_BROKER_RATE_LIMIT_PER_CLIENT_BURST"}, "broker.rate_limit.per_client_burst"},
	{"broker::rate_limit::global", []string{"WGKEX_BROKER_RATE_LIMIT_GLOBAL"}, "broker.rate_limit.global"},
	{"broker::rate_limit::global_burst", []string{"WGKEX_BROKER_RATE_LIMIT_GLOBAL_BURST"}, "broker.rate_limit.global_burst"},
	{"broker::rate_limit::max_clients", []string{"WGKEX_BROKER_RATE_LIMIT_MAX_CLIENTS"}, "broker.rate_limit.max_clients"},
	{"worker::name", []string{"WGKEX_WORKER_NAME"}, "worker.name"},
	{"worker::metrics_interval", []string{"WGKEX_WORKER_METRICS_INTERVAL"}, "worker.metrics_interval"},
	{"worker::cleanup_interval", []string{"WGKEX_WORKER_CLEANUP_INTERVAL"}, "worker.cleanup_interval"},
	{"worker::peer_timeout", []string{"WGKEX_WORKER_PEER_TIMEOUT"}, "worker.peer_timeout"},
	{"worker::new_peer_grace", []string{"WGKEX_WORKER_NEW_PEER_GRACE"}, "worker.new_peer_grace"},
	{"worker::metrics_listen", []string{"WGKEX_WORKER_METRICS_LISTEN"}, "worker.metrics_listen"},
	{"worker::receive_maximum", []string{"WGKEX_WORKER_RECEIVE_MAXIMUM"}, "worker.receive_maximum"},
	{"worker::state_dir", []string{"WGKEX_WORKER_STATE_DIR"}, "worker.state_dir"},
	{"client::broker_url", []string{"WGKEX_CLIENT_BROKER_URL"}, "client.broker_url"},
}

// Load reads the config file and the environment. file is the --config flag
// ("" to fall back to $WGKEX_CONFIG_FILE, then /etc/wgkex.yaml). A file named
// explicitly must exist; a missing default file leaves only the environment.
// Load reports keys of the wrong type, and then, so that one run names every
// wrong key, what Validate finds in the other keys. Without type problems it
// leaves Validate to the caller, who may first apply command-line flags.
func Load(file string) (*Config, error) {
	explicit := true
	if file == "" {
		file = os.Getenv(EnvConfigFile)
	}
	if file == "" {
		file, explicit = DefaultFile, false
	}

	v := viper.NewWithOptions(viper.KeyDelimiter("::"))
	v.SetConfigType("yaml")
	for _, k := range keys {
		if err := v.BindEnv(append([]string{k.key}, k.env...)...); err != nil {
			return nil, fmt.Errorf("bind environment for %s: %w", k.name, err)
		}
	}

	cfg := &Config{}
	f, err := os.Open(file)
	switch {
	case err == nil:
		defer f.Close()
		if err := v.ReadConfig(f); err != nil {
			return nil, &Error{File: file, Problems: []Problem{{Key: "(file)", Msg: "not valid YAML: " + err.Error()}}}
		}
		cfg.File = file
	case !explicit && errors.Is(err, os.ErrNotExist):
		// No file: environment and defaults only.
	default:
		return nil, fmt.Errorf("read config: %w", err)
	}

	p := &parser{v: v}
	cfg.Domains = p.list("domains")
	cfg.DomainPrefixes = p.list("domain_prefixes")
	cfg.ExternalName = p.str("externalname")
	cfg.LogLevel = p.str("log_level")
	cfg.Workers = p.workers()
	cfg.MQTT = MQTT{
		BrokerURLs:   p.list("mqtt::broker_url"),
		Port:         p.integer("mqtt::broker_port", defaultMQTTPort),
		Username:     p.str("mqtt::username"),
		Password:     p.str("mqtt::password"),
		Keepalive:    p.integer("mqtt::keepalive", defaultKeepalive),
		TLS:          p.boolean("mqtt::tls"),
		CAFile:       p.str("mqtt::ca_file"),
		CertFile:     p.str("mqtt::cert_file"),
		KeyFile:      p.str("mqtt::key_file"),
		Listen:       p.strOr("mqtt::listen", defaultEmbeddedListen),
		Store:        p.str("mqtt::store"),
		PasswordFile: p.str("mqtt::password_file"),
	}
	cfg.BrokerListen = Listen{
		Host:           p.strOr("broker_listen::host", defaultListenHost),
		Port:           p.integer("broker_listen::port", defaultListenPort),
		MaxConnections: p.integer("broker_listen::max_connections", defaultMaxConnections),
		TrustedProxies: p.list("broker_listen::trusted_proxies"),
	}
	cfg.Broker = Broker{
		Name:             p.str("broker::name"),
		Selection:        strings.ToLower(p.strOr("broker::selection", selectionLeastLoaded)),
		StickyTolerance:  p.float("broker::sticky_tolerance", defaultStickyTolerance),
		KnownWorkersOnly: p.booleanOr("broker::known_workers_only", len(cfg.Workers) > 0),
		WorkerExpiry:     p.duration("broker::worker_expiry", defaultWorkerExpiry),
		BlocklistFile:    p.str("broker::blocklist_file"),
		AllowlistFile:    p.str("broker::allowlist_file"),
		RateLimit: RateLimit{
			PerClient:      p.float("broker::rate_limit::per_client", defaultRatePerClient),
			PerClientBurst: p.integer("broker::rate_limit::per_client_burst", defaultRatePerClientBurst),
			Global:         p.float("broker::rate_limit::global", defaultRateGlobal),
			GlobalBurst:    p.integer("broker::rate_limit::global_burst", defaultRateGlobalBurst),
			MaxClients:     p.integer("broker::rate_limit::max_clients", defaultRateMaxClients),
		},
	}
	cfg.Worker = Worker{
		Name:            p.str("worker::name"),
		MetricsInterval: p.duration("worker::metrics_interval", defaultMetricsInterval),
		CleanupInterval: p.duration("worker::cleanup_interval", defaultCleanupInterval),
		PeerTimeout:     p.duration("worker::peer_timeout", defaultPeerTimeout),
		NewPeerGrace:    p.duration("worker::new_peer_grace", defaultNewPeerGrace),
		MetricsListen:   p.str("worker::metrics_listen"),
		ReceiveMaximum:  p.integer("worker::receive_maximum", defaultReceiveMaximum),
		StateDir:        p.strOr("worker::state_dir", defaultStateDir),
	}
	cfg.Client = Client{BrokerURL: p.strOr("client::broker_url", DefaultClientBroker)}

	if v.IsSet("logging_config") {
		cfg.Notes = append(cfg.Notes, pythonLogLevel(v, cfg))
	}
	cfg.Notes = append(cfg.Notes, unknownKeys(v)...)
	if len(p.problems) > 0 {
		return nil, &Error{File: cfg.File, Problems: withValidation(cfg, p.problems)}
	}
	return cfg, nil
}

// pythonLogLevel takes the root level of a Python logging_config as the
// log level when log_level does not set one, so that a migrated config
// that asked for WARNING does not log every request at info. Formatters
// and handlers have no meaning here. It returns the note to log.
func pythonLogLevel(v *viper.Viper, cfg *Config) string {
	const ignored = "logging_config (Python logging): formatters and handlers are ignored; use --log-format"
	raw, ok := v.Get("logging_config::root::level").(string)
	level := strings.TrimSpace(raw)
	switch {
	case !ok || level == "":
		return ignored
	case cfg.LogLevel != "":
		return ignored + fmt.Sprintf("; its root level %s is overridden by log_level %s", level, cfg.LogLevel)
	}
	if _, err := ParseLogLevel(level); err != nil {
		return ignored + fmt.Sprintf("; its root level %q is not a level wgkex knows, so it is ignored too", level)
	}
	cfg.LogLevel = level
	return ignored + "; its root level " + level + " is used as the log level"
}

// withValidation adds Validate's problems to the type problems of a Config
// whose wrongly typed keys hold their defaults, leaving out the keys already
// named (a list of the wrong type would otherwise also be "empty").
func withValidation(cfg *Config, typeProblems []Problem) []Problem {
	named := map[string]bool{}
	for _, p := range typeProblems {
		named[p.Key] = true
	}
	all := typeProblems
	for _, p := range cfg.problems() {
		if !named[p.Key] {
			all = append(all, p)
		}
	}
	return all
}

func unknownKeys(v *viper.Viper) []string {
	known := map[string]bool{"logging_config": true, "workers": true}
	for _, k := range keys {
		known[strings.SplitN(k.key, "::", 2)[0]] = true
		known[k.key] = true
	}
	var notes []string
	for _, k := range v.AllKeys() {
		top := strings.SplitN(k, "::", 2)[0]
		if known[k] || top == "logging_config" || top == "workers" {
			continue
		}
		notes = append(notes, fmt.Sprintf("unknown key %q is ignored", strings.ReplaceAll(k, "::", ".")))
	}
	sort.Strings(notes)
	return notes
}

// parser reads typed values and collects every type problem.
type parser struct {
	v        *viper.Viper
	problems []Problem
}

func (p *parser) fail(key, format string, args ...any) {
	p.problems = append(p.problems, Problem{Key: displayName(key), Msg: fmt.Sprintf(format, args...)})
}

func displayName(key string) string {
	for _, k := range keys {
		if k.key == key {
			return k.name
		}
	}
	return strings.ReplaceAll(key, "::", ".")
}

func (p *parser) str(key string) string { return p.strOr(key, "") }

func (p *parser) strOr(key, def string) string {
	raw := p.v.Get(key)
	if raw == nil {
		return def
	}
	switch raw.(type) {
	case map[string]any, []any:
		p.fail(key, "want a single value, got %T", raw)
		return def
	}
	s, err := cast.ToStringE(raw)
	if err != nil {
		p.fail(key, "want a string: %v", err)
		return def
	}
	if s = strings.TrimSpace(s); s == "" {
		return def
	}
	return s
}

func (p *parser) integer(key string, def int) int {
	raw := p.v.Get(key)
	if raw == nil || raw == "" {
		return def
	}
	if s, ok := raw.(string); ok {
		raw = strings.TrimSpace(s)
	}
	n, err := cast.ToIntE(raw)
	if err != nil {
		p.fail(key, "want an integer, got %q", fmt.Sprint(raw))
		return def
	}
	return n
}

func (p *parser) boolean(key string) bool { return p.booleanOr(key, false) }

func (p *parser) booleanOr(key string, def bool) bool {
	raw := p.v.Get(key)
	if raw == nil || raw == "" {
		return def
	}
	if s, ok := raw.(string); ok {
		raw = strings.ToLower(strings.TrimSpace(s)) // Python's "False"/"True"
	}
	b, err := cast.ToBoolE(raw)
	if err != nil {
		p.fail(key, "want true or false, got %q", fmt.Sprint(raw))
		return def
	}
	return b
}

func (p *parser) float(key string, def float64) float64 {
	raw := p.v.Get(key)
	if raw == nil || raw == "" {
		return def
	}
	if s, ok := raw.(string); ok {
		raw = strings.TrimSpace(s)
	}
	f, err := cast.ToFloat64E(raw)
	if err != nil {
		p.fail(key, "want a number, got %q", fmt.Sprint(raw))
		return def
	}
	return f
}

// duration accepts Go durations ("90s", "1h") and plain numbers of seconds.
func (p *parser) duration(key string, def time.Duration) time.Duration {
	raw := p.v.Get(key)
	if raw == nil || raw == "" {
		return def
	}
	switch x := raw.(type) {
	case int, int64, float64:
		secs, _ := cast.ToFloat64E(x)
		return time.Duration(secs * float64(time.Second))
	case string:
		s := strings.TrimSpace(x)
		if secs, err := strconv.ParseFloat(s, 64); err == nil {
			return time.Duration(secs * float64(time.Second))
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			p.fail(key, "want a duration such as 90s or 1h, got %q", s)
			return def
		}
		return d
	}
	p.fail(key, "want a duration such as 90s or 1h, got %v", raw)
	return def
}

// list accepts a YAML list, or a comma/space-separated string (environment).
func (p *parser) list(key string) []string {
	raw := p.v.Get(key)
	var items []string
	switch x := raw.(type) {
	case nil:
		return nil
	case string:
		items = strings.FieldsFunc(x, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
	case []any:
		for i, e := range x {
			switch e.(type) {
			case map[string]any, []any, nil:
				p.fail(key, "item %d: want a string, got %v", i+1, e)
				continue
			}
			items = append(items, strings.TrimSpace(cast.ToString(e)))
		}
	case []string:
		items = x
	default:
		p.fail(key, "want a list of strings, got %v", raw)
	}
	return items
}

func (p *parser) workers() map[string]int {
	raw := p.v.Get("workers")
	out := map[string]int{}
	if raw == nil {
		return out
	}
	m, ok := raw.(map[string]any)
	if !ok {
		p.fail("workers", "want a map of worker names to {weight: N}, got %v", raw)
		return out
	}
	for name, w := range m {
		key := "workers." + name + ".weight"
		weight := 1
		switch x := w.(type) {
		case nil:
		case map[string]any:
			if rw, ok := x["weight"]; ok && rw != nil && rw != "" {
				n, err := cast.ToIntE(rw)
				if err != nil {
					p.problems = append(p.problems, Problem{Key: key, Msg: fmt.Sprintf("want an integer, got %v", rw)})
					continue
				}
				weight = n
			}
		default:
			p.problems = append(p.problems, Problem{Key: "workers." + name, Msg: fmt.Sprintf("want {weight: N}, got %v", w)})
			continue
		}
		out[strings.ToLower(name)] = weight
	}
	return out
}
