package wgkex

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/freifunkMUC/wgkex/internal/text"
)

// Topic filters the broker and worker subscribe to (docs/protocol.md §3).
const (
	FilterMetrics      = "wireguard-metrics/#"
	FilterWorkerStatus = "wireguard-worker/+/status"
	FilterWorkerData   = "wireguard-worker/+/+/data"
	FilterBrokerStatus = "wireguard-broker/+/status"
)

// Status payloads.
const (
	StatusOnline  = "1"
	StatusOffline = "0"
)

// MetricConnectedPeers is the metric name workers publish per domain.
const MetricConnectedPeers = "connected_peers"

// KeyTopic is where the broker publishes a key for domain.
func KeyTopic(domain string) string { return "wireguard/" + domain + "/all" }

// KeyFilter is what a worker subscribes to for domain.
func KeyFilter(domain string) string { return "wireguard/" + domain + "/+" }

// StatusTopic carries a worker's online status (and its will message).
func StatusTopic(worker string) string { return "wireguard-worker/" + worker + "/status" }

// BrokerStatusTopic carries a broker's online status (and its will
// message), so that brokers sharing a bus know how many they are.
func BrokerStatusTopic(broker string) string { return "wireguard-broker/" + broker + "/status" }

// DataTopic carries a worker's interface data for domain.
func DataTopic(worker, domain string) string {
	return "wireguard-worker/" + worker + "/" + domain + "/data"
}

// ConnectedPeersTopic carries a worker's connected peer count for domain.
func ConnectedPeersTopic(domain, worker string) string {
	return "wireguard-metrics/" + domain + "/" + worker + "/" + MetricConnectedPeers
}

// TopicKind says which message a topic carries.
type TopicKind int

// Kinds of topics.
const (
	TopicUnknown TopicKind = iota
	TopicKey
	TopicStatus
	TopicData
	TopicMetric
	TopicBrokerStatus
)

// Topic is a parsed wgkex topic.
type Topic struct {
	Kind   TopicKind
	Domain string // TopicKey, TopicData, TopicMetric
	Worker string // TopicStatus, TopicData, TopicMetric
	Metric string // TopicMetric
	Broker string // TopicBrokerStatus
}

// errUnknownTopic is returned for topics outside the wgkex scheme.
var errUnknownTopic = errors.New("not a wgkex topic")

// ParseTopic splits a received topic into its parts and checks each name.
func ParseTopic(topic string) (Topic, error) {
	parts := strings.Split(topic, "/")
	var t Topic
	switch {
	case len(parts) == 3 && parts[0] == "wireguard":
		t = Topic{Kind: TopicKey, Domain: parts[1]}
	case len(parts) == 3 && parts[0] == "wireguard-worker" && parts[2] == "status":
		t = Topic{Kind: TopicStatus, Worker: parts[1]}
	case len(parts) == 4 && parts[0] == "wireguard-worker" && parts[3] == "data":
		t = Topic{Kind: TopicData, Worker: parts[1], Domain: parts[2]}
	case len(parts) == 4 && parts[0] == "wireguard-metrics":
		t = Topic{Kind: TopicMetric, Domain: parts[1], Worker: parts[2], Metric: parts[3]}
	case len(parts) == 3 && parts[0] == "wireguard-broker" && parts[2] == "status":
		if !ValidName(parts[1]) {
			return Topic{}, fmt.Errorf("topic %q: invalid broker name", text.Truncate(topic, 128))
		}
		return Topic{Kind: TopicBrokerStatus, Broker: parts[1]}, nil
	default:
		return Topic{}, fmt.Errorf("%w: %q", errUnknownTopic, text.Truncate(topic, 128))
	}
	if t.Domain != "" || t.Kind == TopicKey || t.Kind == TopicData || t.Kind == TopicMetric {
		if !ValidName(t.Domain) {
			return Topic{}, fmt.Errorf("topic %q: invalid domain", text.Truncate(topic, 128))
		}
	}
	if t.Kind != TopicKey && !ValidName(t.Worker) {
		return Topic{}, fmt.Errorf("topic %q: invalid worker name", text.Truncate(topic, 128))
	}
	return t, nil
}

// ParseStatus parses a worker or broker status payload: "1" online, "0"
// offline.
func ParseStatus(payload []byte) (online bool, err error) {
	switch strings.TrimSpace(string(payload)) {
	case StatusOnline:
		return true, nil
	case StatusOffline:
		return false, nil
	}
	return false, fmt.Errorf("invalid status payload %q: want 0 or 1", text.Truncate(string(payload), 32))
}

// ParseConnectedPeers parses a connected_peers payload: a decimal integer,
// -1 meaning the worker no longer serves the domain.
func ParseConnectedPeers(payload []byte) (int, error) {
	s := strings.TrimSpace(string(payload))
	n, err := strconv.Atoi(s)
	if err != nil || n < -1 {
		return 0, fmt.Errorf("invalid connected_peers payload %q: want an integer >= -1", text.Truncate(s, 32))
	}
	return n, nil
}

// WorkerData is the retained message a worker publishes per domain.
type WorkerData struct {
	ExternalAddress string `json:"ExternalAddress"`
	Port            int    `json:"Port"`
	PublicKey       string `json:"PublicKey"`
	LinkAddress     string `json:"LinkAddress"`
}

// ParseWorkerData decodes and validates a data payload.
func ParseWorkerData(payload []byte) (WorkerData, error) {
	var d WorkerData
	if err := json.Unmarshal(payload, &d); err != nil {
		return WorkerData{}, fmt.Errorf("invalid worker data: %w", err)
	}
	return d, d.Validate()
}

// Validate checks every field of d.
func (d WorkerData) Validate() error {
	var errs []error
	if d.ExternalAddress == "" || len(d.ExternalAddress) > 253 || strings.ContainsAny(d.ExternalAddress, " \t\r\n/") {
		errs = append(errs, fmt.Errorf("invalid ExternalAddress %q", text.Truncate(d.ExternalAddress, 64)))
	}
	if d.Port < 1 || d.Port > 65535 {
		errs = append(errs, fmt.Errorf("invalid Port %d", d.Port))
	}
	if !ValidKey(d.PublicKey) {
		errs = append(errs, fmt.Errorf("invalid PublicKey %q", text.Truncate(d.PublicKey, 64)))
	}
	if d.LinkAddress == "" || len(d.LinkAddress) > 64 || !isIPv6Text(d.LinkAddress) {
		errs = append(errs, fmt.Errorf("invalid LinkAddress %q", text.Truncate(d.LinkAddress, 64)))
	}
	return errors.Join(errs...)
}
