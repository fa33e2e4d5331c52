package httpapi_test

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/worker"
)

// The wire types below are written from the contract (PRODUCT.md, HTTP API)
// rather than borrowed from package httpapi, so a renamed JSON field fails
// the tests instead of silently changing both sides.

type acceptedBody struct {
	ID                    string `json:"id"`
	StatusQueryGetURI     string `json:"statusQueryGetUri"`
	SendEventPostURI      string `json:"sendEventPostUri"`
	TerminatePostURI      string `json:"terminatePostUri"`
	SuspendPostURI        string `json:"suspendPostUri"`
	ResumePostURI         string `json:"resumePostUri"`
	PurgeHistoryDeleteURI string `json:"purgeHistoryDeleteUri"`
}

type historyEvent struct {
	EventID   int32     `json:"eventId"`
	EventType string    `json:"eventType"`
	Timestamp time.Time `json:"timestamp"`
	Name      string    `json:"name"`
	Detail    string    `json:"detail"`
}

type statusBody struct {
	Name            string          `json:"name"`
	InstanceID      string          `json:"instanceId"`
	RuntimeStatus   string          `json:"runtimeStatus"`
	Input           json.RawMessage `json:"input"`
	CustomStatus    json.RawMessage `json:"customStatus"`
	Output          json.RawMessage `json:"output"`
	CreatedTime     time.Time       `json:"createdTime"`
	LastUpdatedTime time.Time       `json:"lastUpdatedTime"`
	FailureDetails  json.RawMessage `json:"failureDetails"`
	History         []historyEvent  `json:"history"`
}

// mission decodes a mission status's customStatus (or output when out).
func (s statusBody) mission(t *testing.T, out bool) domain.MissionStatus {
	t.Helper()
	raw := s.CustomStatus
	if out {
		raw = s.Output
	}
	var ms domain.MissionStatus
	if len(raw) == 0 || string(raw) == "null" {
		return ms
	}
	if err := json.Unmarshal(raw, &ms); err != nil {
		t.Fatalf("decode mission status %s: %v", raw, err)
	}
	return ms
}

type listBody struct {
	Instances         []statusBody `json:"instances"`
	ContinuationToken string       `json:"continuationToken"`
}

func (l listBody) ids() []string {
	out := make([]string, len(l.Instances))
	for i, s := range l.Instances {
		out[i] = s.InstanceID
	}
	return out
}

type fieldProblem struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

type problemBody struct {
	Type   string         `json:"type"`
	Title  string         `json:"title"`
	Status int            `json:"status"`
	Detail string         `json:"detail"`
	Errors []fieldProblem `json:"errors"`
}

func (p problemBody) fields() []string {
	out := make([]string, len(p.Errors))
	for i, e := range p.Errors {
		out[i] = e.Field
	}
	return out
}

type frameVerdict struct {
	Index    int    `json:"index"`
	DeviceID string `json:"deviceId"`
	Seq      *int64 `json:"seq"`
	Verdict  string `json:"verdict"`
	Reason   string `json:"reason"`
}

type ingestBody struct {
	Accepted   int            `json:"accepted"`
	Duplicates int            `json:"duplicates"`
	Stale      int            `json:"stale"`
	Rejected   int            `json:"rejected"`
	Signals    int            `json:"signals"`
	Frames     []frameVerdict `json:"frames"`
}

type droneBody struct {
	DroneID      string             `json:"droneId"`
	Home         domain.LatLon      `json:"home"`
	MissionID    string             `json:"missionId"`
	State        *domain.DroneState `json:"state"`
	Health       string             `json:"health"`
	Frames       int64              `json:"frames"`
	LastSignalAt *time.Time         `json:"lastSignalAt"`
}

// env is one test's worker behind a real HTTP server.
type env struct {
	t   *testing.T
	w   *worker.Worker
	srv *httptest.Server
	// key, when set, is sent as "Authorization: Bearer key".
	key string
}

// newEnv starts a worker on a fresh SQLite file with cfg adjusted by mods
// and serves its handler. Both stop when the test ends.
func newEnv(t *testing.T, mods ...func(*worker.Config)) *env {
	t.Helper()
	cfg := testkit.Config(t)
	for _, m := range mods {
		m(&cfg)
	}
	w := testkit.Start(t, cfg)
	srv := httptest.NewServer(w.Handler())
	t.Cleanup(srv.Close)
	return &env{t: t, w: w, srv: srv}
}

// longWatchdog keeps missions that get no telemetry running for the whole
// test instead of failing them as "drone lost" after 3 s.
func longWatchdog(c *worker.Config) { c.Mission.Watchdog = 2 * time.Minute }

type response struct {
	Code   int
	Header http.Header
	Body   []byte
}

// raw marks a request body sent byte for byte.
type raw string

// do sends a request. body is nil (no body), a raw, or a value sent as
// JSON. hdr holds header name/value pairs; a JSON body gets
// "Content-Type: application/json" unless hdr sets one.
func (e *env) do(method, path string, body any, hdr ...string) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case raw:
		rd = strings.NewReader(string(b))
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			e.t.Fatalf("encode request body: %v", err)
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatalf("new request %s %s: %v", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if e.key != "" {
		req.Header.Set("Authorization", "Bearer "+e.key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{Code: res.StatusCode, Header: res.Header, Body: b}
}

func mediaType(h http.Header) string {
	mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	return mt
}

// wantJSON asserts the status code and a JSON body and decodes it into v
// (when v is not nil).
func (r response) wantJSON(t *testing.T, code int, v any) {
	t.Helper()
	if r.Code != code {
		t.Fatalf("status %d, want %d; body %s", r.Code, code, r.Body)
	}
	if mt := mediaType(r.Header); mt != "application/json" {
		t.Fatalf("Content-Type %q, want application/json; body %s", r.Header.Get("Content-Type"), r.Body)
	}
	if v != nil {
		if err := json.Unmarshal(r.Body, v); err != nil {
			t.Fatalf("decode body %s: %v", r.Body, err)
		}
	}
}

// wantProblem asserts an RFC 9457 problem with the status code and returns it.
func (r response) wantProblem(t *testing.T, code int) problemBody {
	t.Helper()
	if r.Code != code {
		t.Fatalf("status %d, want %d; body %s", r.Code, code, r.Body)
	}
	if mt := mediaType(r.Header); mt != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json; body %s", r.Header.Get("Content-Type"), r.Body)
	}
	var p problemBody
	if err := json.Unmarshal(r.Body, &p); err != nil {
		t.Fatalf("decode problem %s: %v", r.Body, err)
	}
	if p.Status != code || p.Title != http.StatusText(code) || p.Detail == "" {
		t.Errorf("problem %+v: want status %d, title %q and a detail", p, code, http.StatusText(code))
	}
	return p
}

// wantEmpty asserts a status code with no body (the 202s of operations).
func (r response) wantEmpty(t *testing.T, code int) {
	t.Helper()
	if r.Code != code {
		t.Fatalf("status %d, want %d; body %s", r.Code, code, r.Body)
	}
}

// startMission posts req and returns the accepted body, asserting 202.
func (e *env) startMission(req any) acceptedBody {
	e.t.Helper()
	var a acceptedBody
	e.do("POST", "/api/missions", req).wantJSON(e.t, http.StatusAccepted, &a)
	if a.ID == "" {
		e.t.Fatalf("accepted body without id: %+v", a)
	}
	return a
}

// status fetches an instance under base ("/api/missions" or
// "/api/instances") and asserts 200 or 202 to match its runtime status.
func (e *env) status(base, id, query string) statusBody {
	e.t.Helper()
	r := e.do("GET", base+"/"+url.PathEscape(id)+query, nil)
	var s statusBody
	switch r.Code {
	case http.StatusOK, http.StatusAccepted:
		r.wantJSON(e.t, r.Code, &s)
	default:
		e.t.Fatalf("GET %s/%s: status %d; body %s", base, id, r.Code, r.Body)
	}
	wantCode := http.StatusAccepted
	if terminalStatus(s.RuntimeStatus) {
		wantCode = http.StatusOK
	}
	if r.Code != wantCode {
		e.t.Fatalf("GET %s/%s: status %d for runtimeStatus %s, want %d", base, id, r.Code, s.RuntimeStatus, wantCode)
	}
	if r.Code == http.StatusAccepted && r.Header.Get("Retry-After") == "" {
		e.t.Errorf("GET %s/%s: 202 without Retry-After", base, id)
	}
	return s
}

func terminalStatus(s string) bool {
	return slices.Contains([]string{"Completed", "Failed", "Terminated", "Canceled"}, s)
}

// awaitStatus polls until the instance reaches runtime status want.
func (e *env) awaitStatus(base, id, want string) statusBody {
	e.t.Helper()
	var s statusBody
	testkit.Eventually(e.t, 15*time.Second, id+" to be "+want, func() bool {
		s = e.status(base, id, "")
		return s.RuntimeStatus == want
	})
	return s
}

// awaitDispatched polls until a mission's drone is headed to pickup.
func (e *env) awaitDispatched(id string) statusBody {
	e.t.Helper()
	var s statusBody
	testkit.Eventually(e.t, 15*time.Second, "mission "+id+" to dispatch", func() bool {
		s = e.status("/api/missions", id, "")
		return s.mission(e.t, false).Phase == domain.PhaseHeadedToPickup
	})
	return s
}
