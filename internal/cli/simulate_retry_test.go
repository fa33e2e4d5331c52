package cli

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dronehub/dronehub/internal/testkit"
)

// Issue #7, item 10: simulate keeps flying through refused connections,
// 503 (storage outage), 429 and dropped connections (a worker restart),
// failing over between the --url workers and resending batches.
func TestSimulateRetriesAndFailsOver(t *testing.T) {
	t.Parallel()
	cfg := testkit.Config(t)
	// Six failures in a row for one batch back off for seconds; the test's
	// usual 3 s watchdog would declare the drone lost meanwhile.
	cfg.Mission.Watchdog = time.Minute
	w := testkit.Start(t, cfg)
	worker := httptest.NewServer(w.Handler())
	t.Cleanup(worker.Close)
	target, _ := url.Parse(worker.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)

	var posts, refused503, refused429, dropped atomic.Int64
	flaky := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/api/telemetry" {
			switch n := posts.Add(1); {
			case n >= 3 && n <= 5:
				refused503.Add(1)
				rw.Header().Set("Content-Type", "application/problem+json")
				rw.WriteHeader(http.StatusServiceUnavailable)
				rw.Write([]byte(`{"status":503,"title":"Service Unavailable","detail":"storage is unavailable"}`))
				return
			case n == 6:
				refused429.Add(1)
				rw.WriteHeader(http.StatusTooManyRequests)
				return
			case n == 7 || n == 8:
				// The worker goes away mid-request.
				dropped.Add(1)
				conn, _, err := rw.(http.Hijacker).Hijack()
				if err == nil {
					conn.Close()
				}
				return
			}
		}
		proxy.ServeHTTP(rw, r)
	}))
	t.Cleanup(flaky.Close)
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close() // connections to it are refused

	code, out, errOut := run(t, map[string]string{"DRONEHUB_URL": downURL + "," + flaky.URL},
		"simulate", "--missions", "1", "--fps", "50", "--speed", "40")
	if code != 0 || !strings.Contains(out, "Completed") {
		t.Fatalf("simulate: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if refused503.Load() != 3 || refused429.Load() != 1 || dropped.Load() != 2 {
		t.Errorf("faults injected: 503 %d, 429 %d, dropped %d; the flight ended too early to test them", refused503.Load(), refused429.Load(), dropped.Load())
	}
	if !strings.Contains(errOut, "retrying") || !strings.Contains(errOut, "requests resent") {
		t.Errorf("stderr does not report the retries: %q", errOut)
	}
}
