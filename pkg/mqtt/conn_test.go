package mqtt

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
)

// Packets written concurrently in pieces (as paho does) arrive whole, and
// Close delivers what was still queued.
func TestCoalescingConnKeepsPacketsWhole(t *testing.T) {
	client, server := net.Pipe()
	cc := newCoalescingConn(client)
	const writers, each = 8, 200
	got := make(chan map[uint32]int, 1)
	go func() {
		seen := map[uint32]int{}
		hdr := make([]byte, 8)
		for {
			if _, err := io.ReadFull(server, hdr); err != nil {
				got <- seen
				return
			}
			id, n := binary.BigEndian.Uint32(hdr), binary.BigEndian.Uint32(hdr[4:])
			body := make([]byte, n)
			if _, err := io.ReadFull(server, body); err != nil {
				t.Errorf("short body: %v", err)
				got <- seen
				return
			}
			if !bytes.Equal(body, bytes.Repeat([]byte{byte(id)}, int(n))) {
				t.Errorf("packet %d corrupted", id)
			}
			seen[id]++
		}
	}()
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				n := 1 + (w*31+i)%300
				hdr := make([]byte, 8)
				binary.BigEndian.PutUint32(hdr, uint32(w))
				binary.BigEndian.PutUint32(hdr[4:], uint32(n))
				cc.Lock()
				cc.Write(hdr[:4]) // header in two pieces, then the body
				cc.Write(hdr[4:])
				cc.Write(bytes.Repeat([]byte{byte(w)}, n))
				cc.Unlock()
			}
		}(w)
	}
	wg.Wait()
	cc.Close()
	seen := <-got
	for w := 0; w < writers; w++ {
		if seen[uint32(w)] != each {
			t.Errorf("writer %d: %d packets arrived, want %d", w, seen[uint32(w)], each)
		}
	}
	cc.Lock()
	if _, err := cc.Write([]byte("x")); err == nil {
		t.Error("write after close succeeded")
	}
	cc.Unlock()
}
