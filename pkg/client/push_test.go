package client

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const key = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="

const v2Reply = `{"Endpoint":{"Address":"gw04.ext.ffmuc.net","Port":"40011","AllowedIPs":["fe80::27c:16ff:fec0:6c74"],` +
	`"PublicKey":"o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=","LinkAddress":"fe80::27c:16ff:fec0:6c74"}}`

// TestParseAnswer covers every shape of answer brokers have sent: ours, the
// original's, older Go brokers' v2 with "Message", and v1.
func TestParseAnswer(t *testing.T) {
	withMessage := strings.TrimSuffix(v2Reply, "}") + `,"Message":"OK"}`
	python := `{"Endpoint": {"Address": "gw04.ext.ffmuc.net", "Port": "40011", "AllowedIPs": ["fe80::27c:16ff:fec0:6c74"], "PublicKey": "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="}}`
	for _, tc := range []struct {
		name, api, raw string
		wantAPI        string
		wantErr        string
	}{
		{"v2", "v2", v2Reply, "v2", ""},
		{"original v2 without LinkAddress", "v2", python, "v2", ""},
		{"older Go broker v2 with Message", "v2", withMessage, "v2", ""},
		{"v1", "v1", `{"Message":"OK"}`, "v1", ""},
		{"v1 shape from a v2 URL", "v2", `{"Message":"OK"}`, "v1", ""},
		{"not JSON", "v2", `<html>`, "", "not JSON"},
		{"empty object", "v2", `{}`, "", "neither a gateway"},
		{"no address", "v2", strings.Replace(v2Reply, "gw04.ext.ffmuc.net", "", 1), "", "Endpoint.Address is empty"},
		{"no AllowedIPs", "v2", strings.Replace(v2Reply, `["fe80::27c:16ff:fec0:6c74"]`, `[]`, 1), "", "AllowedIPs is empty"},
		{"bad key", "v2", strings.Replace(v2Reply, "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=", "nope", 1), "", "not a WireGuard key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := parseAnswer(tc.api, []byte(tc.raw))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || res.API != tc.wantAPI {
				t.Fatalf("%+v, %v; want API %s", res, err, tc.wantAPI)
			}
			if tc.wantAPI == "v2" && (res.Endpoint == nil || res.Endpoint.Address != "gw04.ext.ffmuc.net") {
				t.Errorf("Endpoint %+v", res.Endpoint)
			}
		})
	}
}

func TestPushV2(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path != "/api/v2/wg/key/exchange" || r.Method != "POST" || !strings.Contains(string(body), key) {
			t.Errorf("request %s %s %s", r.Method, r.URL.Path, body)
		}
		io.WriteString(w, v2Reply)
	}))
	defer srv.Close()
	res, err := Push(context.Background(), PushOptions{Broker: srv.URL + "/", Domain: "ffmuc_welt", PublicKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if res.API != "v2" || res.Endpoint.Address != "gw04.ext.ffmuc.net" || res.Endpoint.Port != "40011" || res.Endpoint.AllowedIPs[0] != "fe80::27c:16ff:fec0:6c74" {
		t.Errorf("result %+v %+v", res, res.Endpoint)
	}
}

func TestPushFallsBackToV1(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "v2") {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, `{"Message":"OK"}`)
	}))
	defer srv.Close()
	res, err := Push(context.Background(), PushOptions{Broker: srv.URL, Domain: "ffmuc_welt", PublicKey: key})
	if err != nil || res.API != "v1" || res.Message != "OK" || res.Endpoint != nil {
		t.Fatalf("%+v %v", res, err)
	}
}

func TestPushErrors(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(400)
		io.WriteString(w, `{"error":{"message":"unknown domain \"x\""}}`)
	}))
	defer srv.Close()
	_, err := Push(context.Background(), PushOptions{Broker: srv.URL, Domain: "x", PublicKey: key, Retries: 3})
	var he *httpError
	if !errors.As(err, &he) || he.Status != 400 || he.Message != `unknown domain "x"` || calls.Load() != 1 {
		t.Fatalf("err %v, %d calls (a 4xx must not be retried)", err, calls.Load())
	}
	if _, err := Push(context.Background(), PushOptions{Broker: srv.URL, Domain: "x", PublicKey: "bad"}); err == nil {
		t.Error("bad key sent")
	}
	if _, err := Push(context.Background(), PushOptions{Broker: srv.URL, Domain: "x", PublicKey: key, API: "v3"}); err == nil {
		t.Error("v3 accepted")
	}
}

func TestPushRetriesNetworkErrors(t *testing.T) {
	// Nothing listens at first; the server comes up during the backoff.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	go func() {
		time.Sleep(300 * time.Millisecond)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return
		}
		http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, v2Reply) }))
	}()
	res, err := Push(context.Background(), PushOptions{Broker: "http://" + addr, Domain: "d", PublicKey: key, Retries: 3, Timeout: time.Second})
	if err != nil || res.Endpoint == nil {
		t.Fatalf("%v", err)
	}
	_, err = Push(context.Background(), PushOptions{Broker: "http://127.0.0.1:1", Domain: "d", PublicKey: key, Retries: 0})
	if err == nil {
		t.Fatal("no error without a broker")
	}
}

func TestPushRejectsIncompleteV2(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"Endpoint":{"Address":"gw"},"Message":"OK"}`)
	}))
	defer srv.Close()
	if _, err := Push(context.Background(), PushOptions{Broker: srv.URL, Domain: "d", PublicKey: key}); err == nil {
		t.Fatal("incomplete endpoint accepted")
	}
}
