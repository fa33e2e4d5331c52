package httpapi_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite" // to lock the worker's database from outside

	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/worker"
)

// Issue #7, items 2 and 9: bounded memory per request and in total, capped
// echoes, and storage calls with a deadline.

// fleetSnapshot is every drone's status, to show a request changed nothing.
func (e *env) fleetSnapshot() string {
	e.t.Helper()
	r := e.do("GET", "/api/drones", nil)
	if r.Code != http.StatusOK {
		e.t.Fatalf("GET /api/drones: %d %s", r.Code, r.Body)
	}
	return string(r.Body)
}

func metricValue(t *testing.T, e *env, series string) float64 {
	t.Helper()
	r := e.do("GET", "/metrics", nil)
	for _, line := range strings.Split(string(r.Body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return f
		}
	}
	return 0
}

func TestHardeningTelemetryEchoIsCapped(t *testing.T) {
	t.Parallel()
	// Decoding 4 MB under the race detector on a busy machine can take
	// longer than the default storage timeout; this test is about echoes.
	e := newEnv(t, func(c *worker.Config) { c.StorageTimeout = time.Minute })
	before := e.fleetSnapshot()

	body := hugeIDBatch(rssFrames, rssBodyBytes) // 1000 frames, each with a ~3.8 KB deviceId
	r := e.send("POST", "/api/telemetry", body, nil)
	var res ingestBody
	r.wantJSON(t, http.StatusOK, &res)
	if len(r.Body) > 1<<20 {
		t.Errorf("a %d-byte batch got a %d-byte answer; want the echo capped (under 1 MiB)", len(body), len(r.Body))
	}
	if res.Rejected != rssFrames || len(res.Frames) != rssFrames {
		t.Fatalf("rejected %d of %d verdicts, want all %d", res.Rejected, len(res.Frames), rssFrames)
	}
	for i, f := range res.Frames {
		if f.Index != i || f.Verdict != "rejected" || f.Seq == nil || *f.Seq != int64(i) {
			t.Fatalf("verdict %d: %+v", i, f)
		}
		if len(f.DeviceID) > 100+len("…") || !strings.HasPrefix(f.DeviceID, "ddd") || !strings.HasSuffix(f.DeviceID, "…") {
			t.Fatalf("verdict %d echoes a %d-byte deviceId %q…", i, len(f.DeviceID), f.DeviceID[:min(20, len(f.DeviceID))])
		}
		if len(f.Reason) > 512+len("…") || !strings.Contains(f.Reason, "deviceId") {
			t.Fatalf("verdict %d: %d-byte reason %q…", i, len(f.Reason), f.Reason[:min(80, len(f.Reason))])
		}
	}
	if after := e.fleetSnapshot(); after != before {
		t.Errorf("a batch of rejected frames changed the fleet:\nbefore %s\nafter  %s", before, after)
	}

	// Whole-request errors cap what they echo too.
	key := strings.Repeat("k", 10_000)
	for _, tc := range []struct{ path, body string }{
		{"/api/telemetry", `{"frames":[],"` + key + `":1}`},
		{"/api/missions", `{"` + key + `":1}`},
		{"/api/drones", `{"id":"` + key + `","home":{"lat":1,"lon":1}}`},
	} {
		r := e.send("POST", tc.path, []byte(tc.body), nil)
		p := r.wantProblem(t, http.StatusBadRequest)
		if len(r.Body) > 4096 || len(p.Detail) > 2048+len("…") {
			t.Errorf("POST %s with a 10 KB name: a %d-byte answer, detail %d bytes; want both capped", tc.path, len(r.Body), len(p.Detail))
		}
	}
	if after := e.fleetSnapshot(); after != before {
		t.Errorf("refused requests changed the fleet")
	}
	var list listBody
	e.do("GET", "/api/missions", nil).wantJSON(t, http.StatusOK, &list)
	if len(list.Instances) != 0 {
		t.Errorf("refused requests started missions: %v", list.ids())
	}
}

// holdSlot starts a POST /api/telemetry whose body never ends: the request
// is admitted and holds its place (and, sent chunked, its route's whole body
// reservation) until finish sends the rest. finish returns the answer.
func (e *env) holdSlot() (finish func(body string) response) {
	e.t.Helper()
	pr, pw := io.Pipe()
	req, err := http.NewRequest("POST", e.srv.URL+"/api/telemetry", pr)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	done := make(chan response, 1)
	go func() {
		res, err := e.srv.Client().Do(req)
		if err != nil {
			done <- response{Code: -1, Body: []byte(err.Error())}
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		done <- response{Code: res.StatusCode, Header: res.Header, Body: b}
	}()
	if _, err := pw.Write([]byte(`{"frames": [`)); err != nil {
		e.t.Fatal(err)
	}
	testkit.Eventually(e.t, 10*time.Second, "the held request to be admitted", func() bool {
		return metricValue(e.t, e, "dronehub_http_in_flight") == 1
	})
	e.t.Cleanup(func() { pw.Close() })
	return func(rest string) response {
		_, _ = pw.Write([]byte(rest))
		pw.Close()
		select {
		case r := <-done:
			return r
		case <-time.After(30 * time.Second):
			e.t.Fatal("the held request got no answer")
			return response{}
		}
	}
}

func wantBusy(t *testing.T, r response, took time.Duration) {
	t.Helper()
	p := r.wantProblem(t, http.StatusServiceUnavailable)
	if r.Header.Get("Retry-After") != "1" || !strings.Contains(p.Detail, "busy") {
		t.Errorf("busy answer: Retry-After %q, detail %q", r.Header.Get("Retry-After"), p.Detail)
	}
	if took > 5*time.Second {
		t.Errorf("busy answer after %s; want it within the queue wait (half the storage timeout)", took)
	}
}

func keyFrameJSON(drone string, seq int) string {
	return fmt.Sprintf(`{"deviceId":%q,"seq":%d,"timestamp":%q,"battery":0.9,"flightMode":"ready","isKeyFrame":true,`+
		`"position":{"lat":47.6401,"lon":-122.1298,"alt":0},"health":{"gyrometerOk":true,"accelerometerOk":true,"magnetometerOk":true}}`,
		drone, seq, time.Now().UTC().Format(time.RFC3339Nano))
}

func TestHardeningInFlightLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog, func(c *worker.Config) {
		c.MaxInFlight = 1
		c.StorageTimeout = time.Second // waits for room up to 0.5 s
	})
	before := e.fleetSnapshot()
	finish := e.holdSlot()

	t0 := time.Now()
	r := e.send("POST", "/api/missions", missionJSON(t, "m-busy"), nil)
	wantBusy(t, r, time.Since(t0))
	t0 = time.Now()
	wantBusy(t, e.do("GET", "/api/fleet", nil), time.Since(t0))
	// Health and metrics are never turned away.
	e.do("GET", "/healthz", nil).wantJSON(t, http.StatusOK, nil)
	if got := metricValue(t, e, `dronehub_http_rejected_total{reason="busy"}`); got != 2 {
		t.Errorf("dronehub_http_rejected_total{reason=\"busy\"} = %g, want 2", got)
	}

	held := finish(keyFrameJSON("drone-1", 1) + `]}`)
	var res ingestBody
	held.wantJSON(t, http.StatusOK, &res)
	if res.Accepted != 1 {
		t.Errorf("the held batch: %s", held.Body)
	}
	// The refused start stored nothing; the same request now goes through.
	e.do("GET", "/api/missions/m-busy", nil).wantProblem(t, http.StatusNotFound)
	if after := e.fleetSnapshot(); after == before {
		t.Errorf("the held batch was not applied")
	}
	e.startMission(testkit.Request("m-busy"))
}

func TestHardeningBodyMemoryLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog, func(c *worker.Config) {
		c.MaxBodyMemory = 64 << 10 // one mission body; a chunked telemetry post takes it all
		c.StorageTimeout = time.Second
	})
	finish := e.holdSlot()
	t0 := time.Now()
	wantBusy(t, e.send("POST", "/api/missions", missionJSON(t, "m-mem"), nil), time.Since(t0))
	// A request without a body still fits beside it... unless it would jump
	// the queue; with nobody waiting it goes through.
	e.do("GET", "/api/fleet", nil).wantJSON(t, http.StatusOK, nil)
	finish(`]}`).wantJSON(t, http.StatusOK, nil)
	e.do("GET", "/api/missions/m-mem", nil).wantProblem(t, http.StatusNotFound)
	e.startMission(testkit.Request("m-mem"))
}

// TestHardeningOversizedBodyIsRefusedUnread sends the headers of a 5 MB
// telemetry post and no body: the answer is 413 at once, and the server
// closes the connection instead of reading 5 MB.
func TestHardeningOversizedBodyIsRefusedUnread(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	before := e.fleetSnapshot()
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "POST /api/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", 5<<20)
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	r := response{Code: res.StatusCode, Header: res.Header, Body: b}
	r.wantProblem(t, http.StatusRequestEntityTooLarge)
	if !res.Close {
		t.Errorf("413 without closing the connection")
	}
	if after := e.fleetSnapshot(); after != before {
		t.Errorf("the refused post changed the fleet")
	}
}

var lockedDB = regexp.MustCompile(`storage is unavailable`)

// TestHardeningStorageDeadline holds the SQLite write lock from outside, so
// every write the worker tries waits (busy_timeout is 10 s, and the SQLite
// driver does not stop waiting when its context ends). Each request must
// still answer 503 within about the storage timeout, and the API recovers
// by itself once the lock is gone. Nothing the refused requests asked for
// is stored. (Reads still work, so storage is slow rather than down: the
// worker keeps trying each request instead of refusing them at once; the
// Azurite outage test covers that.)
func TestHardeningStorageDeadline(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "hub.db")
	e := newEnv(t, longWatchdog, func(c *worker.Config) {
		c.Storage = path
		c.StorageTimeout = time.Second
	})
	e.startMission(testkit.Request("m-before"))
	e.awaitDispatched("m-before") // drone-1 is now reserved; nothing else changes it
	droneOne := func() string { return string(e.do("GET", "/api/drones/drone-1/status", nil).Body) }
	before := droneOne()

	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	lock, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	locked := true
	unlock := func() {
		if locked {
			locked = false
			if _, err := lock.ExecContext(ctx, "ROLLBACK"); err != nil {
				t.Error(err)
			}
		}
	}
	defer unlock()

	for i := range 4 {
		id := fmt.Sprintf("m-locked-%d", i)
		t0 := time.Now()
		r := e.send("POST", "/api/missions", missionJSON(t, id), nil)
		took := time.Since(t0)
		p := r.wantProblem(t, http.StatusServiceUnavailable)
		if r.Header.Get("Retry-After") == "" || !lockedDB.MatchString(p.Detail) {
			t.Errorf("start %d: Retry-After %q, detail %q; want Retry-After and \"storage is unavailable\"", i, r.Header.Get("Retry-After"), p.Detail)
		}
		if took > 3*time.Second {
			t.Errorf("start %d answered after %s; want about the 1 s storage timeout", i, took)
		}
	}
	t0 := time.Now()
	p := e.send("POST", "/api/telemetry", []byte(`{"frames":[`+keyFrameJSON("drone-1", 7)+`]}`), nil).wantProblem(t, http.StatusServiceUnavailable)
	if took := time.Since(t0); took > 3*time.Second || !lockedDB.MatchString(p.Detail) {
		t.Errorf("telemetry during the outage: %s, %q", took, p.Detail)
	}

	unlock()
	testkit.Eventually(t, 20*time.Second, "the API to recover by itself", func() bool {
		return e.send("POST", "/api/missions", missionJSON(t, "m-after"), nil).Code == http.StatusAccepted
	})
	for i := range 4 {
		e.do("GET", fmt.Sprintf("/api/missions/m-locked-%d", i), nil).wantProblem(t, http.StatusNotFound)
	}
	if after := droneOne(); after != before {
		t.Errorf("refused telemetry changed drone-1:\nbefore %s\nafter  %s", before, after)
	}
	var list listBody
	e.do("GET", "/api/missions", nil).wantJSON(t, http.StatusOK, &list)
	if ids := strings.Join(list.ids(), ","); ids != "m-before,m-after" {
		t.Errorf("missions %s, want m-before,m-after", ids)
	}
}
