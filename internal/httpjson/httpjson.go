// Package httpjson writes JSON responses the way every wgkex HTTP handler
// does: a complete body with its length, and errors in one envelope.
package httpjson

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// ErrorBody is the error envelope of docs/protocol.md §2.
type ErrorBody struct {
	Error struct {
		Message string `json:"message"`
	} `json:"error"`
}

// Error writes {"error":{"message":msg}} with code.
func Error(w http.ResponseWriter, code int, msg string) {
	var e ErrorBody
	e.Error.Message = msg
	Write(w, code, e)
}

// Write marshals v before writing anything, so that a value that cannot be
// encoded becomes a 500 instead of a half-written 200.
func Write(w http.ResponseWriter, code int, v any) {
	buf, err := json.Marshal(v)
	if err != nil {
		code, buf = http.StatusInternalServerError, []byte(`{"error":{"message":"internal error"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(buf)+1))
	w.WriteHeader(code)
	w.Write(append(buf, '\n'))
}
