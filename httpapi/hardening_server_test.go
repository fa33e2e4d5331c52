package httpapi_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dronehub/dronehub/internal/testkit"
)

// Issue #7, item 2: the worker's server had no write timeout (connections
// that never read their answers stayed open) and the default 1 MB header
// limit. worker.Server is the server `dronehub worker` runs.

// serveWorker serves w.Server() on a loopback port and reports each
// connection's close.
func serveWorker(t *testing.T, writeTimeout time.Duration) (addr string, closedConns func() int) {
	t.Helper()
	cfg := testkit.Config(t)
	cfg.WriteTimeout = writeTimeout
	w := testkit.Start(t, cfg)
	srv := w.Server()
	var mu sync.Mutex
	closed := 0
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateClosed || s == http.StateHijacked {
			mu.Lock()
			closed++
			mu.Unlock()
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), func() int {
		mu.Lock()
		defer mu.Unlock()
		return closed
	}
}

func TestHardeningClientsThatDoNotReadAreCutOff(t *testing.T) {
	t.Parallel()
	const writeTimeout = 2 * time.Second
	addr, closedConns := serveWorker(t, writeTimeout)

	// Each connection pipelines /metrics requests (a few KB each) and never
	// reads: the answers fill the socket buffers and the server's writes
	// block until the write timeout ends them.
	const conns, requests = 10, 2500
	req := "GET /metrics HTTP/1.1\r\nHost: " + addr + "\r\n\r\n"
	var clients []net.Conn
	for range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.(*net.TCPConn).SetReadBuffer(4096)
		clients = append(clients, c)
		go func() {
			for range requests {
				if _, err := io.WriteString(c, req); err != nil {
					return // the server gave up on us
				}
			}
		}()
	}
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
	})
	start := time.Now()
	testkit.Eventually(t, 60*time.Second, "the server to close every connection that does not read", func() bool {
		return closedConns() >= conns
	})
	t.Logf("%d non-reading connections closed by the server after %s (write timeout %s)", conns, time.Since(start).Round(time.Millisecond), writeTimeout)
}

func TestHardeningHeaderLimit(t *testing.T) {
	t.Parallel()
	addr, _ := serveWorker(t, 0)
	for _, tc := range []struct {
		size int
		want int
	}{
		{8 << 10, http.StatusOK},
		{100 << 10, http.StatusRequestHeaderFieldsTooLarge},
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		go func() {
			fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nX-Big: %s\r\n\r\n", addr, strings.Repeat("b", tc.size))
		}()
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%d-byte header: %v", tc.size, err)
		}
		res.Body.Close()
		c.Close()
		if res.StatusCode != tc.want {
			t.Errorf("%d-byte header: %d, want %d", tc.size, res.StatusCode, tc.want)
		}
	}
}
