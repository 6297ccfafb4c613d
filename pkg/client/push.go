// Package client does what a mesh node does: register its WireGuard key
// with a broker and set up the WireGuard peer and VXLAN link to the gateway
// the broker chose.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/freifunkMUC/wgkex/internal/text"
	"github.com/freifunkMUC/wgkex/pkg/wgkex"
)

// Result is a broker's answer.
type Result struct {
	API      string          // "v2" or "v1": the shape of the answer
	Endpoint *wgkex.Endpoint // v2 answers only
	Message  string          // v1 answers (and v2 answers of older brokers)
	Raw      []byte
}

// PushOptions say where and what to push.
type PushOptions struct {
	Broker    string // base URL, e.g. http://127.0.0.1:5000
	Domain    string
	PublicKey string
	API       string // "v2" (default; falls back to v1 when v2 is not there) or "v1"
	Timeout   time.Duration
	Retries   int // extra tries on network errors and 5xx, with backoff
	UserAgent string
}

// httpError is a refusal by the broker.
type httpError struct {
	Status  int
	Message string
}

func (e *httpError) Error() string {
	return fmt.Sprintf("broker answered %d: %s", e.Status, e.Message)
}

// Push registers the key. It retries network errors and 5xx answers with
// exponential backoff; a 4xx answer is final.
func Push(ctx context.Context, o PushOptions) (*Result, error) {
	if !wgkex.ValidKey(o.PublicKey) {
		return nil, fmt.Errorf("invalid public key %q", o.PublicKey)
	}
	if o.Domain == "" {
		return nil, errors.New("no domain given")
	}
	if o.API == "" {
		o.API = "v2"
	}
	if o.API != "v1" && o.API != "v2" {
		return nil, fmt.Errorf("unknown API %q (want v1 or v2)", o.API)
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	body, _ := json.Marshal(map[string]string{"domain": o.Domain, "public_key": o.PublicKey})
	hc := &http.Client{Timeout: o.Timeout}
	api := o.API
	backoff := time.Second
	for attempt := 0; ; attempt++ {
		res, err := pushOnce(ctx, hc, o, api, body)
		var he *httpError
		switch {
		case err == nil:
			return res, nil
		case errors.As(err, &he) && he.Status == http.StatusNotFound && api == "v2" && o.API == "v2":
			api = "v1" // an old broker without v2
			continue
		case errors.As(err, &he) && he.Status < 500:
			return nil, err
		case attempt >= o.Retries || ctx.Err() != nil:
			return nil, err
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func pushOnce(ctx context.Context, hc *http.Client, o PushOptions, api string, body []byte) (*Result, error) {
	url := strings.TrimRight(o.Broker, "/") + "/api/" + api + "/wg/key/exchange"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if o.UserAgent != "" {
		req.Header.Set("User-Agent", o.UserAgent)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("post to %s: %w", url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("read answer of %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		msg := strings.TrimSpace(string(raw))
		if json.Unmarshal(raw, &e) == nil && e.Error.Message != "" {
			msg = e.Error.Message
		}
		return nil, &httpError{Status: resp.StatusCode, Message: text.Truncate(msg, 300)}
	}
	res, err := parseAnswer(api, raw)
	if err != nil {
		return nil, fmt.Errorf("answer of %s: %w", url, err)
	}
	return res, nil
}

// parseAnswer reads the shapes brokers have sent: a v2 answer
// {"Endpoint": {...}} (older Go brokers added "Message": "OK"; ours no
// longer does, see docs/protocol.md §2), and a v1 answer {"Message": "OK"},
// also from a v2 URL of a broker that has no gateway data to give.
func parseAnswer(api string, raw []byte) (*Result, error) {
	var reply struct {
		Endpoint *wgkex.Endpoint `json:"Endpoint"`
		Message  string          `json:"Message"`
	}
	if err := json.Unmarshal(raw, &reply); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	res := &Result{API: api, Endpoint: reply.Endpoint, Message: reply.Message, Raw: raw}
	if api == "v1" || reply.Endpoint == nil {
		if reply.Message != "OK" {
			return nil, fmt.Errorf("neither a gateway (Endpoint) nor \"Message\": \"OK\" in %s", text.Truncate(string(raw), 200))
		}
		res.API, res.Endpoint = "v1", nil
		return res, nil
	}
	if err := validEndpoint(reply.Endpoint); err != nil {
		return nil, err
	}
	return res, nil
}

// validEndpoint checks what a Gluon node needs of a gateway: Address, Port,
// PublicKey and AllowedIPs[0].
func validEndpoint(e *wgkex.Endpoint) error {
	switch {
	case e.Address == "":
		return errors.New("Endpoint.Address is empty")
	case e.Port == "":
		return errors.New("Endpoint.Port is empty")
	case len(e.AllowedIPs) == 0 || e.AllowedIPs[0] == "":
		return errors.New("Endpoint.AllowedIPs is empty")
	case !wgkex.ValidKey(e.PublicKey):
		return fmt.Errorf("Endpoint.PublicKey %q is not a WireGuard key", text.Truncate(e.PublicKey, 64))
	}
	return nil
}
