package httpapi_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/worker"
)

const apiKey = "0123456789abcdef-key"

func TestAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *worker.Config) { c.APIKeys = []string{"another-key-0123456789", apiKey} })

	for _, path := range []string{"/api/missions", "/api/drones", "/api/fleet", "/api/no-such-route"} {
		r := e.do("GET", path, nil)
		r.wantProblem(t, http.StatusUnauthorized)
		if wa := r.Header.Get("WWW-Authenticate"); !strings.HasPrefix(wa, "Bearer") {
			t.Errorf("GET %s: WWW-Authenticate %q, want a Bearer challenge", path, wa)
		}
	}
	for _, auth := range []string{"Bearer wrong-key-0123456789", "Bearer " + apiKey + "x", "Bearer ", "Basic " + apiKey, apiKey} {
		e.do("GET", "/api/missions", nil, "Authorization", auth).wantProblem(t, http.StatusUnauthorized)
	}
	// Refused requests do nothing.
	e.do("POST", "/api/missions", testkit.Request("m-noauth")).wantProblem(t, http.StatusUnauthorized)

	e.do("GET", "/api/missions", nil, "Authorization", "Bearer "+apiKey).wantJSON(t, http.StatusOK, nil)
	e.do("GET", "/api/missions", nil, "Authorization", "bearer "+apiKey).wantJSON(t, http.StatusOK, nil)
	e.do("GET", "/api/fleet", nil, "Authorization", "Bearer another-key-0123456789").wantJSON(t, http.StatusOK, nil)

	// Unclean paths are redirected to the clean one, never served without a key.
	for _, path := range []string{"//api/missions", "/./api/missions", "/api/./missions"} {
		if r := e.do("POST", path, testkit.Request("m-unclean")); r.Code != http.StatusUnauthorized {
			t.Errorf("POST %s without a key: %d %s", path, r.Code, r.Body)
		}
	}

	e.key = apiKey
	e.do("GET", "/api/missions/m-unclean", nil).wantProblem(t, http.StatusNotFound)
	e.do("GET", "/api/missions/m-noauth", nil).wantProblem(t, http.StatusNotFound)
	e.startMission(testkit.Request("m-auth"))
	e.status("/api/missions", "m-auth", "")

	// Health and metrics stay open.
	e.key = ""
	e.do("GET", "/healthz", nil).wantJSON(t, http.StatusOK, nil)
	e.do("GET", "/readyz", nil).wantJSON(t, http.StatusOK, nil)
	if r := e.do("GET", "/metrics", nil); r.Code != http.StatusOK {
		t.Errorf("/metrics without a key: %d", r.Code)
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var body map[string]string
	e.do("GET", "/healthz", nil).wantJSON(t, http.StatusOK, &body)
	if body["status"] != "ok" {
		t.Errorf("/healthz body %v", body)
	}
	testkit.Eventually(t, 10*time.Second, "/readyz to answer 200", func() bool {
		return e.do("GET", "/readyz", nil).Code == http.StatusOK
	})
	e.do("GET", "/readyz", nil).wantJSON(t, http.StatusOK, &body)
	if body["status"] != "ready" {
		t.Errorf("/readyz body %v", body)
	}
}

func TestReadyzBeforeStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w, err := worker.New(ctx, testkit.Config(t))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(w.Handler())
	t.Cleanup(func() {
		srv.Close()
		testkit.Stop(t, w)
	})
	e := &env{t: t, w: w, srv: srv}

	e.do("GET", "/healthz", nil).wantJSON(t, http.StatusOK, nil)
	r := e.do("GET", "/readyz", nil)
	r.wantProblem(t, http.StatusServiceUnavailable)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "/readyz to answer 200 after Start", func() bool {
		return e.do("GET", "/readyz", nil).Code == http.StatusOK
	})
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.do("GET", "/healthz", nil)
	e.do("GET", "/api/missions/no-such-mission", nil)
	e.startMission(testkit.Request("m-metrics"))
	e.do("POST", "/api/telemetry", batch(keyFrame("drone-1", 1), keyFrame("drone-1", 1)))

	r := e.do("GET", "/metrics", nil)
	if r.Code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", r.Code, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/metrics Content-Type %q, want text/plain", ct)
	}
	text := string(r.Body)
	for _, want := range []string{
		"# TYPE dronehub_http_requests_total counter",
		`dronehub_http_requests_total{code="200",route="GET /healthz"} 1`,
		`dronehub_http_requests_total{code="404",route="GET /api/missions/{id}"} 1`,
		`dronehub_http_requests_total{code="202",route="POST /api/missions"} 1`,
		`dronehub_http_request_duration_seconds_count{code="200",route="POST /api/telemetry"} 1`,
		"dronehub_missions_started_total 1",
		`dronehub_telemetry_frames_total{verdict="accepted"} 1`,
		`dronehub_telemetry_frames_total{verdict="duplicate"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, text)
		}
	}
}

func TestRouting(t *testing.T) {
	t.Parallel()
	e := newEnv(t)

	// "/" leads to the dashboard the worker mounts (issue #9); see
	// dashboard.TestPagesArePublicFeedNeedsTheKey.
	for _, path := range []string{"/nope", "/api/nope", "/api/missions/a/b/c", "/api/drones/drone-1"} {
		p := e.do("GET", path, nil).wantProblem(t, http.StatusNotFound)
		if !strings.Contains(p.Detail, path) {
			t.Errorf("GET %s: 404 detail %q does not name the path", path, p.Detail)
		}
	}
	for _, tc := range []struct {
		method, path string
		allow        []string
	}{
		{"PUT", "/api/missions", []string{"GET", "POST"}},
		{"DELETE", "/api/missions", []string{"GET", "POST"}},
		{"PATCH", "/api/missions/m-1", []string{"GET", "DELETE"}},
		{"GET", "/api/missions/m-1/terminate", []string{"POST"}},
		{"GET", "/api/telemetry", []string{"POST"}},
		{"POST", "/healthz", []string{"GET"}},
	} {
		r := e.do(tc.method, tc.path, raw(`{}`))
		r.wantProblem(t, http.StatusMethodNotAllowed)
		allow := strings.Split(r.Header.Get("Allow"), ", ")
		for _, m := range tc.allow {
			if !containsFold(allow, m) {
				t.Errorf("%s %s: Allow %q lacks %s", tc.method, tc.path, r.Header.Get("Allow"), m)
			}
		}
		if containsFold(allow, tc.method) {
			t.Errorf("%s %s: Allow %q includes the refused method", tc.method, tc.path, r.Header.Get("Allow"))
		}
	}
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(strings.TrimSpace(v), s) {
			return true
		}
	}
	return false
}
