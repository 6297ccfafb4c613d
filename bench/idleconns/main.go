// Command idleconns holds many idle HTTP connections open against a server:
// each sends the start of a request header and then nothing, and dials again
// when the server hangs up, until the hold time is over. With -pid it samples
// that process's memory (VmRSS, VmHWM) and open file descriptors meanwhile,
// which is how bench/idleconns.sh measures what idle connections cost the
// broker.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:5000", "server address")
	n := flag.Int("n", 1000, "connections to hold")
	hold := flag.Duration("hold", 20*time.Second, "how long to hold them")
	pid := flag.Int("pid", 0, "process whose memory and descriptors to sample (0: none)")
	flag.Parse()

	var dialed, dialErrs, hangups atomic.Int64
	deadline := time.Now().Add(*hold)
	partial := []byte("POST /api/v2/wg/key/exchange HTTP/1.1\r\nHost: broker\r\nUser-Agent: idleconns\r\n")
	var wg sync.WaitGroup
	for range *n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 512)
			for time.Now().Before(deadline) {
				c, err := net.DialTimeout("tcp", *addr, time.Until(deadline))
				if err != nil {
					if dialErrs.Add(1) <= 3 {
						fmt.Fprintln(os.Stderr, "dial:", err)
					}
					time.Sleep(100 * time.Millisecond)
					continue
				}
				dialed.Add(1)
				c.SetDeadline(deadline)
				if _, err := c.Write(partial); err == nil {
					// Wait for the server to hang up (or the hold to end).
					_, err = io.ReadFull(c, buf)
					if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
						hangups.Add(1)
					}
				}
				c.Close()
			}
		}()
	}

	var maxRSS, hwm, maxFDs int64
	if *pid > 0 {
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		tick := time.NewTicker(250 * time.Millisecond)
	sample:
		for {
			select {
			case <-done:
				break sample
			case <-tick.C:
				rss, h := memory(*pid)
				maxRSS, hwm = max(maxRSS, rss), max(hwm, h)
				if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", *pid)); err == nil {
					maxFDs = max(maxFDs, int64(len(ents)))
				}
			}
		}
		tick.Stop()
	}
	wg.Wait()
	fmt.Printf("conns=%d hold=%s dials=%d dial_errors=%d server_hangups=%d", *n, *hold, dialed.Load(), dialErrs.Load(), hangups.Load())
	if *pid > 0 {
		fmt.Printf(" max_rss_kib=%d vm_hwm_kib=%d max_fds=%d", maxRSS, hwm, maxFDs)
	}
	fmt.Println()
}

// memory reads VmRSS and VmHWM (KiB) from /proc/<pid>/status.
func memory(pid int) (rss, hwm int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	return rss, hwm
}
