// Command ceiling is the yardstick of the broker benchmark: a bare net/http
// server that reads the same request body and answers a fixed JSON reply, so
// the broker's figures can be read as a share of what this machine's HTTP
// stack does under the same load at the same moment.
package main

import (
	"flag"
	"io"
	"log"
	"net/http"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:5099", "listen address")
	flag.Parse()
	reply := []byte(`{"Message":"OK"}` + "\n")
	log.Fatal(http.ListenAndServe(*addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(reply)
	})))
}
