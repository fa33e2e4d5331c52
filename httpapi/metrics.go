package httpapi

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dronehub/dronehub/activities"
)

// metrics keeps the handler's counters and serves them in the Prometheus
// text format. It is deliberately small: the handful of series the API
// itself knows about, without pulling a metrics library into every importer.
type metrics struct {
	mu              sync.Mutex
	requests        map[[2]string]uint64 // (route, code) → count
	latencySum      map[string]float64
	latencyCount    map[string]uint64
	missionsStarted atomic.Uint64
	frames          [4]atomic.Uint64 // accepted, duplicate, stale, rejected
	rejected        [2]atomic.Uint64 // by rejectBusy, rejectStorage
	limiter         *limiter         // for the in-flight gauges; may be nil
}

// Reasons a request is turned away before its route runs.
const (
	rejectBusy    = iota // no room under MaxInFlight / MaxBodyMemory in time
	rejectStorage        // storage known to be down (breaker open)
)

func newMetrics() *metrics {
	return &metrics{requests: map[[2]string]uint64{}, latencySum: map[string]float64{}, latencyCount: map[string]uint64{}}
}

func (m *metrics) instrument(route string, next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec, ok := w.(*reqWriter)
		if !ok {
			rec = &reqWriter{ResponseWriter: w}
		}
		next(rec, r)
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		m.mu.Lock()
		m.requests[[2]string{route, strconv.Itoa(code)}]++
		m.latencySum[route] += time.Since(start).Seconds()
		m.latencyCount[route]++
		m.mu.Unlock()
	})
}

func (m *metrics) countFrames(r activities.IngestResult) {
	m.frames[0].Add(uint64(r.Accepted))
	m.frames[1].Add(uint64(r.Duplicates))
	m.frames[2].Add(uint64(r.Stale))
	m.frames[3].Add(uint64(r.Rejected))
}

// serve writes the metrics; storage holds the backend's request counts by
// kind, or nil when the backend does not count them.
func (m *metrics) serve(w http.ResponseWriter, storage map[string]int64) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	m.mu.Lock()
	keys := make([][2]string, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i][0] != keys[j][0] {
			return keys[i][0] < keys[j][0]
		}
		return keys[i][1] < keys[j][1]
	})
	fmt.Fprintln(w, "# HELP dronehub_http_requests_total HTTP requests by route and status code.")
	fmt.Fprintln(w, "# TYPE dronehub_http_requests_total counter")
	for _, k := range keys {
		fmt.Fprintf(w, "dronehub_http_requests_total{route=%q,code=%q} %d\n", k[0], k[1], m.requests[k])
	}
	routes := make([]string, 0, len(m.latencyCount))
	for r := range m.latencyCount {
		routes = append(routes, r)
	}
	sort.Strings(routes)
	fmt.Fprintln(w, "# HELP dronehub_http_request_duration_seconds Time spent serving HTTP requests.")
	fmt.Fprintln(w, "# TYPE dronehub_http_request_duration_seconds summary")
	for _, r := range routes {
		fmt.Fprintf(w, "dronehub_http_request_duration_seconds_sum{route=%q} %g\n", r, m.latencySum[r])
		fmt.Fprintf(w, "dronehub_http_request_duration_seconds_count{route=%q} %d\n", r, m.latencyCount[r])
	}
	m.mu.Unlock()
	fmt.Fprintln(w, "# HELP dronehub_missions_started_total Missions started over HTTP.")
	fmt.Fprintln(w, "# TYPE dronehub_missions_started_total counter")
	fmt.Fprintf(w, "dronehub_missions_started_total %d\n", m.missionsStarted.Load())
	fmt.Fprintln(w, "# HELP dronehub_telemetry_frames_total Telemetry frames by verdict.")
	fmt.Fprintln(w, "# TYPE dronehub_telemetry_frames_total counter")
	for i, v := range []string{"accepted", "duplicate", "stale", "rejected"} {
		fmt.Fprintf(w, "dronehub_telemetry_frames_total{verdict=%q} %d\n", v, m.frames[i].Load())
	}
	fmt.Fprintln(w, "# HELP dronehub_http_rejected_total Requests answered 503 before their route ran: busy (no room in time) or storage (storage known to be down).")
	fmt.Fprintln(w, "# TYPE dronehub_http_rejected_total counter")
	for i, v := range []string{"busy", "storage"} {
		fmt.Fprintf(w, "dronehub_http_rejected_total{reason=%q} %d\n", v, m.rejected[i].Load())
	}
	if m.limiter != nil {
		n, b := m.limiter.load()
		fmt.Fprintln(w, "# HELP dronehub_http_in_flight Requests being served (admission-controlled routes).")
		fmt.Fprintln(w, "# TYPE dronehub_http_in_flight gauge")
		fmt.Fprintf(w, "dronehub_http_in_flight %d\n", n)
		fmt.Fprintln(w, "# HELP dronehub_http_body_bytes_in_flight Request-body bytes reserved by the requests being served.")
		fmt.Fprintln(w, "# TYPE dronehub_http_body_bytes_in_flight gauge")
		fmt.Fprintf(w, "dronehub_http_body_bytes_in_flight %d\n", b)
	}
	if storage != nil {
		kinds := make([]string, 0, len(storage))
		for k := range storage {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		fmt.Fprintln(w, "# HELP dronehub_storage_requests_total Storage requests by operation kind, retries included (each is billed).")
		fmt.Fprintln(w, "# TYPE dronehub_storage_requests_total counter")
		for _, k := range kinds {
			fmt.Fprintf(w, "dronehub_storage_requests_total{kind=%q} %d\n", k, storage[k])
		}
	}
}
