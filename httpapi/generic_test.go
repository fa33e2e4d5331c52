package httpapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

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
		e.do("POST", "/api/orchestrations/NoSuchOrchestrator?instanceId=nosuch-1", raw(`1`)).wantJSON(t, http.StatusAccepted, nil)
		s := e.awaitStatus("/api/instances", "nosuch-1", "Failed")
		var fd struct {
			ErrorType    string `json:"errorType"`
			ErrorMessage string `json:"errorMessage"`
		}
		if err := json.Unmarshal(s.FailureDetails, &fd); err != nil || !strings.Contains(fd.ErrorMessage, "NoSuchOrchestrator") {
			t.Errorf("failureDetails %s: want a message naming the orchestrator (%v)", s.FailureDetails, err)
		}
		if string(s.Input) != "1" || s.Name != "NoSuchOrchestrator" {
			t.Errorf("failed instance: name %q, input %s", s.Name, s.Input)
		}
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
