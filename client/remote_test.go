package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/internal/testkit"
)

// faulty is a proxy in front of a real worker that answers the first
// requests matching a route with the faults it is given, in order, then
// passes requests through.
type faulty struct {
	srv    *httptest.Server
	proxy  *httputil.ReverseProxy
	mu     sync.Mutex
	faults map[string][]http.HandlerFunc // by "METHOD path prefix"
	seen   map[string]int
}

func newFaulty(t *testing.T, workerURL string) *faulty {
	target, err := url.Parse(workerURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	f := &faulty{proxy: proxy, faults: map[string][]http.HandlerFunc{}, seen: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fault := f.next(r); fault != nil {
			fault(w, r)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *faulty) on(route string, faults ...http.HandlerFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults[route] = append(f.faults[route], faults...)
}

func (f *faulty) next(r *http.Request) http.HandlerFunc {
	f.mu.Lock()
	defer f.mu.Unlock()
	for route, list := range f.faults {
		method, prefix, _ := strings.Cut(route, " ")
		if r.Method != method || !strings.HasPrefix(r.URL.Path, prefix) {
			continue
		}
		f.seen[route]++
		if len(list) == 0 {
			return nil
		}
		f.faults[route] = list[1:]
		return list[0]
	}
	return nil
}

func (f *faulty) requests(route string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen[route]
}

// answer is a fault: a problem answer with the status, detail and
// Retry-After (when not "").
func answer(status int, detail, retryAfter string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": http.StatusText(status), "status": status, "detail": detail})
	}
}

// lost is a fault: the request reaches the worker, and the client gets
// the fault's answer instead of the worker's.
func (f *faulty) lost(fault http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f.proxy.ServeHTTP(httptest.NewRecorder(), r)
		fault(w, r)
	}
}

// hangUp is a fault: the connection drops without an answer.
func hangUp(w http.ResponseWriter, r *http.Request) {
	if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
		conn.Close()
	}
}

func TestRemoteRetriesHonouringRetryAfter(t *testing.T) {
	t.Parallel()
	cfg := testkit.Config(t)
	register(&cfg)
	w := testkit.Start(t, cfg)
	proxy := newFaulty(t, serve(t, w))
	ctx := testContext(t)
	var retried atomic.Int64
	// Without keep-alives: net/http itself repeats a GET whose reused
	// connection drops, which would hide a fault from the client.
	plain := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	c, err := client.Dial(proxy.srv.URL, client.Options{HTTPClient: plain, OnRetry: func(error) { retried.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}

	// A read survives a storage outage (503, Retry-After: 1), load shedding
	// (429) and a dropped connection; the client waits as long as it was
	// asked to.
	proxy.on("GET /api/fleet", answer(503, "storage is unavailable: the task hub storage did not answer", "1"), answer(429, "slow down", ""), hangUp)
	start := time.Now()
	sum, err := c.Fleet(ctx)
	if err != nil || sum.Drones != 3 {
		t.Fatalf("fleet through the faults: %+v, %v", sum, err)
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("answered after %s: the 503's Retry-After of 1 s was not honoured", took)
	}
	if n := proxy.requests("GET /api/fleet"); n != 4 || retried.Load() != 3 {
		t.Errorf("%d requests, %d retries; want 4 and 3", n, retried.Load())
	}

	// A mission start is repeated after its answer was lost: the client
	// chose its id, so it is started once.
	req := testkit.Request("retried-start")
	proxy.on("POST /api/missions", proxy.lost(answer(503, "storage is unavailable: the task hub storage did not answer", "")))
	if m, err := c.StartMission(ctx, req); err != nil || m.ID() != req.MissionID {
		t.Fatalf("start through a 503: %v, %v", m, err)
	}
	noID := testkit.Request("")
	proxy.on("POST /api/missions", proxy.lost(hangUp))
	m, err := c.StartMission(ctx, noID)
	if err != nil || m.ID() == "" {
		t.Fatalf("start without an id through a dropped connection: %v, %v", m, err)
	}
	n := 0
	for _, err := range client.Items(c.Missions(ctx, client.ListOptions{})) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 2 {
		t.Errorf("%d missions started, want 2", n)
	}

	// What may have been done already is not repeated: an event raised
	// twice would be seen twice. The busy 503 comes before anything is done.
	h, err := c.StartOrchestration(ctx, approvalName, approvalIn{Item: "x"}, client.WithID("retry-approval"))
	if err != nil {
		t.Fatal(err)
	}
	proxy.on("POST /api/instances/retry-approval/events/", answer(503, "storage is unavailable: the task hub storage did not answer", "1"))
	if err := h.RaiseEvent(ctx, "approve", "ana"); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("event through a storage 503: %v, want ErrUnavailable at once", err)
	}
	var ae *client.APIError
	if err := h.RaiseEvent(ctx, "approve", "ana"); err != nil {
		t.Fatal(err)
	}
	if got := proxy.requests("POST /api/instances/retry-approval/events/"); got != 2 {
		t.Errorf("%d event requests, want 2: the refused one was repeated", got)
	}
	proxy.on("POST /api/orchestrations/", answer(503, "the server is busy: too many requests in flight; retry after 1 s", "1"))
	if _, err := c.StartOrchestration(ctx, echoName, 1); err != nil {
		t.Errorf("start through a busy 503: %v", err)
	}
	out, err := (client.Orchestration[approvalIn, approvalOut]{Name: approvalName}).Attach(c, h.ID()).Result(ctx)
	if err != nil || out.By != "ana" {
		t.Errorf("approval %+v, %v", out, err)
	}

	// A Retry-After longer than MaxBackoff is cut to it; attempts are
	// bounded.
	short, err := client.Dial(proxy.srv.URL, client.Options{Retry: client.RetryPolicy{MaxAttempts: 2, MaxBackoff: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	proxy.on("GET /api/drones", answer(503, "storage is unavailable", "3600"), answer(503, "storage is unavailable", "3600"))
	start = time.Now()
	_, err = short.Drones(ctx)
	if !errors.As(err, &ae) || ae.StatusCode != 503 || ae.RetryAfter != time.Hour || !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("after two 503s: %v, want the last one's *APIError", err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("gave up after %s: Retry-After was not capped", took)
	}
}

func TestRemoteFailsOver(t *testing.T) {
	t.Parallel()
	w := testkit.Start(t, testkit.Config(t))
	live := serve(t, w)
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close() // connections to it are refused
	ctx := testContext(t)

	var retried atomic.Int64
	c, err := client.Dial(downURL, client.Options{FailoverURLs: []string{live}, OnRetry: func(error) { retried.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := c.Drones(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if retried.Load() != 1 {
		t.Errorf("%d retries, want 1: the requests after the first go to the worker that answered", retried.Load())
	}

	// Without a worker that answers, the error says which one it tried.
	c, err = client.Dial(downURL, client.Options{Retry: client.RetryPolicy{MaxAttempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Fleet(ctx)
	var ue *client.UnreachableError
	if !errors.As(err, &ue) || ue.URL != downURL || !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("an unreachable worker: %v, want an *UnreachableError naming %s", err, downURL)
	}
}

func TestRemoteNeedsTheAPIKey(t *testing.T) {
	t.Parallel()
	cfg := testkit.Config(t)
	cfg.APIKeys = []string{apiKey}
	w := testkit.Start(t, cfg)
	base := serve(t, w)
	ctx := testContext(t)
	for _, key := range []string{"", "wrong-key-0123456789"} {
		c, err := client.Dial(base, client.Options{APIKey: key})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Fleet(ctx)
		wantAPIError(t, "key "+key, err, http.StatusUnauthorized, client.ErrUnauthorized)
	}
	c, err := client.Dial(base+"/", client.Options{APIKey: apiKey}) // a trailing slash is fine
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.StartMission(ctx, testkit.Request("keyed"))
	if err != nil {
		t.Fatal(err)
	}
	if l := m.Links(); l.StatusQueryGetURI != base+"/api/missions/keyed" || l.PurgeHistoryDeleteURI != l.StatusQueryGetURI ||
		l.TerminatePostURI != base+"/api/missions/keyed/terminate?reason={text}" {
		t.Errorf("links %+v: want absolute URLs under %s", l, base)
	}
}

func TestDialRefusesWhatIsNotABaseURL(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"", "127.0.0.1:8080", "ftp://host", "http://", "http://host/?q=1", "http://host/#x"} {
		if _, err := client.Dial(u, client.Options{}); err == nil {
			t.Errorf("Dial(%q) succeeded", u)
		}
	}
	if _, err := client.Dial("http://127.0.0.1:8080", client.Options{FailoverURLs: []string{"nope"}}); err == nil {
		t.Error("a bad fail-over URL was accepted")
	}
	if _, err := client.Dial("https://drones.example.com/dronehub/", client.Options{}); err != nil {
		t.Errorf("a base URL with a path prefix: %v", err)
	}
}

func TestRemoteContextEndsRetries(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		answer(503, "storage is unavailable", "")(w, r)
	}))
	t.Cleanup(srv.Close)
	c, err := client.Dial(srv.URL, client.Options{Retry: client.RetryPolicy{MaxAttempts: -1, MaxBackoff: 100 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err = c.Drones(ctx)
	if !errors.Is(err, client.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("retrying until the context ends: %v, want the last answer and the context's error", err)
	}
	if hits.Load() < 2 {
		t.Errorf("%d requests: want the request repeated", hits.Load())
	}
}
