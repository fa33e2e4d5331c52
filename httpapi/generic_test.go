package httpapi_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/worker"
)

// registerEcho adds Echo, a user orchestrator that returns its input.
func registerEcho(r *task.TaskRegistry) error {
	return r.AddOrchestratorN("Echo", func(ctx *task.OrchestrationContext) (any, error) {
		var s string
		_ = ctx.GetInput(&s)
		return s, nil
	})
}

func TestGenericInstances(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog, func(c *worker.Config) { c.Register = registerEcho })

	t.Run("start and finish", func(t *testing.T) {
		r := e.do("POST", "/api/orchestrations/Echo?instanceId=echo-1", raw(`"hello, drone"`))
		var a acceptedBody
		r.wantJSON(t, http.StatusAccepted, &a)
		self := e.srv.URL + "/api/instances/echo-1"
		if a.ID != "echo-1" || a.StatusQueryGetURI != self || r.Header.Get("Location") != self {
			t.Errorf("accepted %+v, Location %q; want id echo-1 at %s", a, r.Header.Get("Location"), self)
		}
		s := e.awaitStatus("/api/instances", "echo-1", "Completed")
		if s.Name != "Echo" || s.InstanceID != "echo-1" {
			t.Errorf("name %q, instanceId %q", s.Name, s.InstanceID)
		}
		if string(s.Input) != `"hello, drone"` || string(s.Output) != `"hello, drone"` {
			t.Errorf("input %s, output %s; want both \"hello, drone\"", s.Input, s.Output)
		}
		r = e.do("GET", "/api/instances/echo-1", nil)
		r.wantJSON(t, http.StatusOK, nil)

		h := e.status("/api/instances", "echo-1", "?showHistory=true")
		if !slices.ContainsFunc(h.History, func(ev historyEvent) bool {
			return ev.EventType == "ExecutionStarted" && ev.Name == "Echo"
		}) {
			t.Errorf("history lacks ExecutionStarted of Echo: %+v", h.History)
		}
	})

	t.Run("generated id and no input", func(t *testing.T) {
		var a acceptedBody
		e.do("POST", "/api/orchestrations/Echo", nil).wantJSON(t, http.StatusAccepted, &a)
		s := e.awaitStatus("/api/instances", a.ID, "Completed")
		if string(s.Input) != "null" || string(s.Output) != `""` {
			t.Errorf("input %s, output %s; want null and \"\"", s.Input, s.Output)
		}
	})

	t.Run("bad starts", func(t *testing.T) {
		e.do("POST", "/api/orchestrations/Echo?instanceId=echo-1", raw(`"again"`)).wantProblem(t, http.StatusConflict)
		e.do("POST", "/api/orchestrations/Echo?instanceId=echo-bad-json", raw(`{"a":`)).wantProblem(t, http.StatusBadRequest)
		e.do("POST", "/api/orchestrations/Echo?instanceId="+url.QueryEscape("bad id!"), raw(`"x"`)).wantProblem(t, http.StatusBadRequest)
		e.do("POST", "/api/orchestrations/Echo?instanceId=echo-when&startAt=soon", raw(`"x"`)).wantProblem(t, http.StatusBadRequest)
		e.do("POST", "/api/orchestrations/Echo?instanceId=echo-text", raw(`"x"`), "Content-Type", "text/plain").wantProblem(t, http.StatusUnsupportedMediaType)
		for _, id := range []string{"echo-bad-json", "echo-when", "echo-text"} {
			e.do("GET", "/api/instances/"+id, nil).wantProblem(t, http.StatusNotFound)
		}
	})

	t.Run("scopes", func(t *testing.T) {
		e.startMission(testkit.Request("m-generic"))
		// A mission is an instance too.
		s := e.status("/api/instances", "m-generic", "")
		if s.Name != "DeliveryMission" || s.InstanceID != "m-generic" {
			t.Errorf("mission under /api/instances: %+v", s)
		}
		// Another orchestrator's instance is not a mission, for every mission route.
		e.do("GET", "/api/missions/echo-1", nil).wantProblem(t, http.StatusNotFound)
		e.do("DELETE", "/api/missions/echo-1", nil).wantProblem(t, http.StatusNotFound)
		e.do("POST", "/api/missions/echo-1/terminate", nil).wantProblem(t, http.StatusNotFound)
		e.do("POST", "/api/missions/echo-1/events/x", nil).wantProblem(t, http.StatusNotFound)
		e.do("GET", "/api/instances/no-such-instance", nil).wantProblem(t, http.StatusNotFound)

		var l listBody
		e.do("GET", "/api/instances?instanceIdPrefix=echo-1", nil).wantJSON(t, http.StatusOK, &l)
		if got := l.ids(); !slices.Equal(got, []string{"echo-1"}) {
			t.Errorf("generic listing with prefix echo-1: %v", got)
		}
		e.do("GET", "/api/instances?instanceIdPrefix=m-generic", nil).wantJSON(t, http.StatusOK, &l)
		if got := l.ids(); !slices.Equal(got, []string{"m-generic"}) {
			t.Errorf("generic listing with prefix m-generic: %v", got)
		}
		e.do("GET", "/api/instances?top=0", nil).wantProblem(t, http.StatusBadRequest)

		// Management works on the generic routes as well.
		e.do("POST", "/api/instances/m-generic/terminate?reason=done", nil).wantEmpty(t, http.StatusAccepted)
		e.awaitStatus("/api/instances", "m-generic", "Terminated")
		e.do("POST", "/api/instances/m-generic/suspend", nil).wantProblem(t, http.StatusGone)
		e.do("DELETE", "/api/instances/echo-1", nil).wantJSON(t, http.StatusOK, nil)
		e.do("GET", "/api/instances/echo-1", nil).wantProblem(t, http.StatusNotFound)
	})

	t.Run("id taken by the other scope", func(t *testing.T) {
		e.do("POST", "/api/orchestrations/Echo?instanceId=echo-taken", raw(`"x"`)).wantJSON(t, http.StatusAccepted, nil)
		e.do("POST", "/api/missions", testkit.Request("echo-taken")).wantProblem(t, http.StatusConflict)
		e.startMission(testkit.Request("m-taken"))
		e.do("POST", "/api/orchestrations/Echo?instanceId=m-taken", raw(`"x"`)).wantProblem(t, http.StatusConflict)
		if s := e.status("/api/instances", "echo-taken", ""); s.Name != "Echo" {
			t.Errorf("echo-taken became a %s", s.Name)
		}
	})

	t.Run("unregistered orchestrator", func(t *testing.T) {
		p := e.do("POST", "/api/orchestrations/NoSuchOrchestrator?instanceId=nosuch-1", raw(`1`)).wantProblem(t, http.StatusNotFound)
		if !strings.Contains(p.Detail, "NoSuchOrchestrator") {
			t.Errorf("404 detail %q does not name the orchestrator", p.Detail)
		}
		e.do("GET", "/api/instances/nosuch-1", nil).wantProblem(t, http.StatusNotFound)
	})

	t.Run("startAt", func(t *testing.T) {
		startAt := time.Now().Add(2 * time.Second).UTC()
		e.do("POST", "/api/orchestrations/Echo?instanceId=echo-later&startAt="+url.QueryEscape(startAt.Format(time.RFC3339Nano)), raw(`"later"`)).
			wantJSON(t, http.StatusAccepted, nil)
		pending := 0
		var s statusBody
		testkit.Eventually(t, 15*time.Second, "echo-later to complete", func() bool {
			s = e.status("/api/instances", "echo-later", "")
			if time.Now().Before(startAt) {
				// Seen before the start time: it must not have started.
				if s.RuntimeStatus != "Pending" {
					t.Fatalf("runtimeStatus %q before startAt %s, want Pending", s.RuntimeStatus, startAt.Format(time.RFC3339Nano))
				}
				pending++
			}
			return s.RuntimeStatus == "Completed"
		})
		if pending == 0 {
			// Only a badly overloaded machine gets here: the first poll came
			// after startAt. The completion time below still catches an
			// early start.
			t.Log("no poll answered before startAt")
		}
		if string(s.Output) != `"later"` {
			t.Errorf("output %s", s.Output)
		}
		if s.LastUpdatedTime.Before(startAt) {
			t.Errorf("completed at %s, before startAt %s", s.LastUpdatedTime.Format(time.RFC3339Nano), startAt.Format(time.RFC3339Nano))
		}
	})
}

// TestGenericStartRefusesMissions: a mission started on the generic route
// would skip the request's validation and the worker's settings.
func TestGenericStartRefusesMissions(t *testing.T) {
	t.Parallel()
	w := testkit.Start(t, testkit.Config(t))
	srv := httptest.NewServer(w.Handler())
	t.Cleanup(srv.Close)
	resp, err := http.Post(srv.URL+"/api/orchestrations/DeliveryMission", "application/json", strings.NewReader(`{"request":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "POST /api/missions") {
		t.Fatalf("HTTP %d %s: want 400 pointing to POST /api/missions", resp.StatusCode, body)
	}
}

// registerApproval adds Echo and Approval, a user orchestrator that waits
// for its "approve" event (declared public) and returns the payload.
func registerApproval(r *task.TaskRegistry) error {
	if err := registerEcho(r); err != nil {
		return err
	}
	return r.AddOrchestratorN("Approval", func(ctx *task.OrchestrationContext) (any, error) {
		var s string
		if err := ctx.WaitForSingleEvent("approve", -1).Await(&s); err != nil {
			return nil, err
		}
		return s, nil
	})
}

// testPublicEvents: issue #7.1, generalised. An orchestrator's instances
// take the events it declares public over HTTP, and only those.
func testPublicEvents(t *testing.T, e *env) {
	e.do("POST", "/api/orchestrations/Approval?instanceId=appr-1", nil).wantJSON(t, http.StatusAccepted, nil)
	e.awaitStatus("/api/instances", "appr-1", "Running")
	before := e.stored("/api/instances", "appr-1")
	p := e.do("POST", "/api/instances/appr-1/events/reject", raw(`"no"`)).wantProblem(t, http.StatusForbidden)
	if !strings.Contains(p.Detail, `"reject"`) || !strings.Contains(p.Detail, "public events: approve") {
		t.Errorf("403 detail %q: want the event and the public ones", p.Detail)
	}
	e.do("POST", "/api/instances/appr-1/events/ap%01prove", raw(`"no"`)).wantProblem(t, http.StatusBadRequest)
	if after := e.stored("/api/instances", "appr-1"); after != before {
		t.Fatalf("refused events changed the instance:\n before %s\n after  %s", before, after)
	}
	e.do("POST", "/api/instances/appr-1/events/approve", raw(`"yes"`)).wantEmpty(t, http.StatusAccepted)
	if s := e.awaitStatus("/api/instances", "appr-1", "Completed"); string(s.Output) != `"yes"` {
		t.Errorf("output %s, want the approve payload", s.Output)
	}
}

// testOrchestratorNamesChecked: issue #7.7. A start names an orchestrator
// this worker registered, in a bounded printable name; anything else is
// refused and creates nothing.
func testOrchestratorNamesChecked(t *testing.T, e *env) {
	// Sibling cases run in parallel on the same worker and create and
	// purge their own instances, so "created nothing" is checked on what
	// these starts could create: an instance with one of their names.
	refused := map[string]int{
		strings.Repeat("N", 20000): http.StatusBadRequest,
		"Echo%01":                  http.StatusBadRequest,
		"Echo%0A":                  http.StatusBadRequest,
		"%FF":                      http.StatusBadRequest,
		"NoSuchOrchestrator":       http.StatusNotFound,
		"echo":                     http.StatusNotFound,
	}
	list := func() []string {
		var l listBody
		e.do("GET", "/api/instances?top=1000", nil).wantJSON(t, http.StatusOK, &l)
		var out []string
		for _, s := range l.Instances {
			if s.InstanceID == "named-1" || strings.HasPrefix(s.Name, "NNNN") ||
				s.Name == "NoSuchOrchestrator" || s.Name == "echo" || !utf8.ValidString(s.Name) || strings.ContainsFunc(s.Name, unicode.IsControl) {
				out = append(out, s.InstanceID)
			}
		}
		return out
	}
	before := list()
	for name, code := range refused {
		p := e.do("POST", "/api/orchestrations/"+name+"?instanceId=named-1", raw(`"x"`)).wantProblem(t, code)
		if len(p.Detail) > 400 {
			t.Errorf("%.20s: detail of %d bytes", name, len(p.Detail))
		}
	}
	e.do("GET", "/api/instances/named-1", nil).wantProblem(t, http.StatusNotFound)
	if after := list(); !slices.Equal(after, before) {
		t.Errorf("refused starts created instances: %v, were %v", after, before)
	}
}

// TestPublicEventsConfig: public events are declared for registered
// orchestrators only, and never for DeliveryMission.
func TestPublicEventsConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		public map[string][]string
		want   string
	}{
		{map[string][]string{"Nope": {"x"}}, `"Nope", which is not registered`},
		{map[string][]string{"DeliveryMission": {"signal"}}, "DeliveryMission has no public events"},
		{map[string][]string{"Approval": {"bad\nname"}}, "control character"},
		{map[string][]string{"Approval": {strings.Repeat("e", 101)}}, "at most 100"},
	} {
		cfg := testkit.Config(t)
		cfg.Register, cfg.PublicEvents = registerApproval, tc.public
		_, err := worker.New(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("PublicEvents %v: error %v, want one mentioning %q", tc.public, err, tc.want)
		}
	}
}
