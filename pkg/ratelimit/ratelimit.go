// Package ratelimit refuses key exchange requests beyond a per-client and a
// global token bucket with 429 and Retry-After, keeping at most a bounded
// number of client buckets in memory.
//
// A client is one IPv4 address or one IPv6 /64 (a node's whole prefix), taken
// from the connection's peer, or from X-Forwarded-For / X-Real-IP when that
// peer is a configured trusted proxy.
package ratelimit

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Defaults. The arithmetic behind them: a Gluon node whose link is down
// posts once a minute, 0-39 s after the minute (docs/protocol.md §2.4).
//
// Per client: a venue of N nodes behind one IPv4 address or /64 sends at
// most N posts within about 40 s, all of which pass while
// N <= burst + 40 s × rate = 60 + 40 = 100; a minute later the bucket is
// full again. One address can inject at most 60 keys at once and one a
// second after that.
//
// Global: a site of 10 domains × 4,000 nodes re-registering at once sends
// 40,000 posts within about 40 s, 1,000/s; the bucket passes twice that
// rate and holds half the fleet as burst. 2,000 keys/s is below half of
// what one worker installs (4,200-5,550 keys/s measured, README), and a
// full burst of 20,000 keys is under 5 s of its work.
const (
	defaultPerClient      = 1.0 // requests per second per client
	defaultPerClientBurst = 60
	defaultGlobal         = 2000.0 // requests per second, all clients together
	defaultGlobalBurst    = 20000
	defaultMaxClients     = 100_000
)

// maxRetryAfter caps Retry-After for very slow configured rates.
const maxRetryAfter = 24 * time.Hour

// Config configures a Limiter. For the rates, bursts and MaxClients, 0 means
// the default and a negative rate turns that bucket off.
type Config struct {
	PerClient      float64 // sustained requests per second per client
	PerClientBurst int     // requests a client may send at once
	Global         float64 // sustained requests per second of all clients
	GlobalBurst    int
	// MaxClients bounds the client buckets kept; beyond it the least
	// recently seen client is forgotten (and starts over with a full bucket).
	MaxClients int
	// TrustedProxies are the peers whose X-Forwarded-For and X-Real-IP
	// headers name the client (see ParseTrustedProxies). Every other peer
	// is the client itself, whatever it sends.
	TrustedProxies []netip.Prefix
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Limiter decides which requests pass. Create it with New; it is safe for
// concurrent use and starts no goroutines.
type Limiter struct {
	perClient rate.Limit // 0: off
	clients   *table     // nil when the per-client bucket is off
	global    *rate.Limiter
	trusted   []netip.Prefix
	now       func() time.Time

	refusedClient atomic.Uint64
	refusedGlobal atomic.Uint64
}

// New checks cfg and makes a Limiter.
func New(cfg Config) (*Limiter, error) {
	var errs []error
	perClient, clientBurst, err := bucket("PerClient", cfg.PerClient, cfg.PerClientBurst, defaultPerClient, defaultPerClientBurst)
	errs = append(errs, err)
	global, globalBurst, err := bucket("Global", cfg.Global, cfg.GlobalBurst, defaultGlobal, defaultGlobalBurst)
	errs = append(errs, err)
	if cfg.MaxClients < 0 {
		errs = append(errs, fmt.Errorf("MaxClients must not be negative, got %d", cfg.MaxClients))
	}
	for _, p := range cfg.TrustedProxies {
		if !p.IsValid() {
			errs = append(errs, errors.New("TrustedProxies holds an invalid prefix"))
			break
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("rate limit: %w", err)
	}
	if cfg.MaxClients == 0 {
		cfg.MaxClients = defaultMaxClients
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Limiter{perClient: perClient, now: cfg.Now}
	for _, p := range cfg.TrustedProxies {
		l.trusted = append(l.trusted, normalizePrefix(p))
	}
	if perClient > 0 {
		l.clients = newTable(perClient, clientBurst, cfg.MaxClients)
	}
	if global > 0 {
		l.global = rate.NewLimiter(global, globalBurst)
	}
	return l, nil
}

// bucket applies the defaults to one rate and burst and checks them.
func bucket(name string, r float64, burst int, defRate float64, defBurst int) (rate.Limit, int, error) {
	switch {
	case r < 0:
		return 0, 0, nil
	case r == 0:
		r = defRate
	case math.IsInf(r, 0) || math.IsNaN(r):
		return 0, 0, fmt.Errorf("%s must be a finite number of requests per second, got %v", name, r)
	}
	if burst == 0 {
		burst = defBurst
	}
	if burst < 0 {
		return 0, 0, fmt.Errorf("%sBurst must be at least 1, got %d", name, burst)
	}
	return rate.Limit(r), burst, nil
}

// stats are counts for metrics.
type stats struct {
	Clients       int    // client buckets kept now
	Evicted       uint64 // buckets forgotten before they had refilled (MaxClients reached)
	RefusedClient uint64 // requests refused by a client's bucket
	RefusedGlobal uint64 // requests refused by the global bucket
}

// stats reports the current counts.
func (l *Limiter) stats() stats {
	s := stats{RefusedClient: l.refusedClient.Load(), RefusedGlobal: l.refusedGlobal.Load()}
	if l.clients != nil {
		s.Clients, s.Evicted = l.clients.len(), l.clients.evicted.Load()
	}
	return s
}

// Wrap passes the requests within the limits on to next and answers the
// others itself with 429.
func (l *Limiter) Wrap(next http.Handler) http.Handler {
	if l.clients == nil && l.global == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := l.admit(l.clientAddr(r), l.now())
		if v.by == nobody {
			next.ServeHTTP(w, r)
			return
		}
		refuse(w, v)
	})
}

type refuser int

const (
	nobody refuser = iota
	byClient
	byGlobal
)

// verdict is the decision on one request: who refused it and how long
// until the bucket holds a token again.
type verdict struct {
	by   refuser
	wait time.Duration
}

// admit takes one token from the client's bucket and one from the global
// bucket, or none: a request the global bucket refuses costs the client
// nothing, and one the client's bucket refuses costs the others nothing.
func (l *Limiter) admit(addr netip.Addr, now time.Time) verdict {
	if l.clients == nil {
		return l.admitGlobal(now)
	}
	s, e := l.clients.lock(keyOf(addr), now)
	defer s.mu.Unlock()
	// The shard lock covers every use of this bucket, so the token seen
	// here is still there below.
	if tokens := e.bucket.TokensAt(now); tokens < 1 {
		l.refusedClient.Add(1)
		return verdict{by: byClient, wait: waitFor(tokens, l.perClient)}
	}
	if v := l.admitGlobal(now); v.by != nobody {
		return v
	}
	e.bucket.AllowN(now, 1)
	return verdict{}
}

func (l *Limiter) admitGlobal(now time.Time) verdict {
	if l.global == nil || l.global.AllowN(now, 1) {
		return verdict{}
	}
	l.refusedGlobal.Add(1)
	return verdict{by: byGlobal, wait: waitFor(l.global.TokensAt(now), l.global.Limit())}
}

// waitFor is how long a bucket holding tokens (< 1) needs to refill to one
// token: the delay rate.Limiter.ReserveN would report.
func waitFor(tokens float64, r rate.Limit) time.Duration {
	d := (1 - tokens) / float64(r) * float64(time.Second)
	if d > float64(maxRetryAfter) || math.IsNaN(d) {
		return maxRetryAfter
	}
	return time.Duration(d)
}

// retryAfter is the Retry-After value for wait: whole seconds, rounded up,
// at least 1.
func retryAfter(wait time.Duration) int {
	s := int((wait + time.Second - 1) / time.Second)
	return max(s, 1)
}

func refuse(w http.ResponseWriter, v verdict) {
	secs := retryAfter(v.wait)
	var body struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if v.by == byGlobal {
		body.Error.Message = fmt.Sprintf("the broker is busy (too many requests from all clients), retry after %d s", secs)
	} else {
		body.Error.Message = fmt.Sprintf("too many requests from your address, retry after %d s", secs)
	}
	buf, _ := json.Marshal(body) // a struct of one string cannot fail
	buf = append(buf, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(buf)))
	h.Set("Retry-After", strconv.Itoa(secs))
	w.WriteHeader(http.StatusTooManyRequests)
	w.Write(buf)
}
