package eventually

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestWithin(t *testing.T) {
	var n atomic.Int32
	if !Within(10*time.Second, func() bool { return n.Add(1) == 5 }) {
		t.Fatal("condition true on the fifth check not seen")
	}
	if Within(20*time.Millisecond, func() bool { return false }) {
		t.Fatal("false condition reported true")
	}
}
