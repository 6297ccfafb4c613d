package wgkex

// Bodies of the key exchange API (docs/protocol.md §2).

// ExchangeRequest is what a node posts to /api/v1 and /api/v2.
type ExchangeRequest struct {
	Domain    string `json:"domain"`
	PublicKey string `json:"public_key"`
}

// Endpoint is the gateway a v2 reply names. Gluon reads Address, Port,
// PublicKey and AllowedIPs[0]; LinkAddress repeats AllowedIPs[0], as the
// original's documentation shows it.
type Endpoint struct {
	Address     string   `json:"Address"`
	Port        string   `json:"Port"`
	AllowedIPs  []string `json:"AllowedIPs"`
	PublicKey   string   `json:"PublicKey"`
	LinkAddress string   `json:"LinkAddress"`
}

// ReplyV2 is the whole v2 reply. It must carry nothing else: deployed
// Gluon nodes take any reply with "Message": "OK" for a v1 reply and then
// ignore the Endpoint.
type ReplyV2 struct {
	Endpoint Endpoint `json:"Endpoint"`
}

// ReplyV1 is the v1 reply, {"Message": "OK"}.
type ReplyV1 struct {
	Message string `json:"Message"`
}
