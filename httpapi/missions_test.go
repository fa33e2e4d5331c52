package httpapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/worker"
)

func TestStartMission(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog)

	t.Run("accepted", func(t *testing.T) {
		r := e.do("POST", "/api/missions", testkit.Request("m-accept"))
		var a acceptedBody
		r.wantJSON(t, http.StatusAccepted, &a)
		self := e.srv.URL + "/api/missions/m-accept"
		if loc := r.Header.Get("Location"); loc != self {
			t.Errorf("Location %q, want %q", loc, self)
		}
		want := acceptedBody{
			ID:                    "m-accept",
			StatusQueryGetURI:     self,
			SendEventPostURI:      self + "/events/{eventName}",
			TerminatePostURI:      self + "/terminate?reason={text}",
			SuspendPostURI:        self + "/suspend?reason={text}",
			ResumePostURI:         self + "/resume?reason={text}",
			PurgeHistoryDeleteURI: self,
		}
		if a != want {
			t.Errorf("accepted body\n got %+v\nwant %+v", a, want)
		}
	})

	t.Run("generated id", func(t *testing.T) {
		req := testkit.Request("")
		a := e.startMission(req)
		if _, err := uuid.Parse(a.ID); err != nil {
			t.Fatalf("generated id %q is not a UUID: %v", a.ID, err)
		}
		if !strings.HasSuffix(a.StatusQueryGetURI, "/api/missions/"+a.ID) {
			t.Errorf("statusQueryGetUri %q does not name %s", a.StatusQueryGetURI, a.ID)
		}
		s := e.status("/api/missions", a.ID, "")
		if s.InstanceID != a.ID || s.Name != "DeliveryMission" {
			t.Errorf("status of generated mission: %+v", s)
		}
	})

	t.Run("idempotent retry", func(t *testing.T) {
		req := testkit.Request("m-retry")
		first := e.startMission(req)
		second := e.startMission(req)
		if first != second || first.ID != "m-retry" {
			t.Errorf("retry answered %+v, first start %+v", second, first)
		}
	})

	t.Run("concurrent retries", func(t *testing.T) {
		body, _ := json.Marshal(testkit.Request("m-concurrent"))
		const n = 8
		codes := make([]int, n)
		ids := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := e.srv.Client().Post(e.srv.URL+"/api/missions", "application/json", bytes.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				defer res.Body.Close()
				var a acceptedBody
				_ = json.NewDecoder(res.Body).Decode(&a)
				codes[i], ids[i] = res.StatusCode, a.ID
			}()
		}
		wg.Wait()
		for i := range n {
			if codes[i] != http.StatusAccepted || ids[i] != "m-concurrent" {
				t.Errorf("concurrent start %d: %d, id %q; want 202 for m-concurrent", i, codes[i], ids[i])
			}
		}
	})

	t.Run("same id different request", func(t *testing.T) {
		req := testkit.Request("m-conflict")
		e.startMission(req)
		req.Package.WeightKg = 3
		p := e.do("POST", "/api/missions", req).wantProblem(t, http.StatusConflict)
		if !strings.Contains(p.Detail, "m-conflict") {
			t.Errorf("409 detail %q does not name the mission", p.Detail)
		}
	})

	t.Run("malformed JSON", func(t *testing.T) {
		e.do("POST", "/api/missions", raw(`{"pickup": {"lat": 1,`)).wantProblem(t, http.StatusBadRequest)
		e.do("POST", "/api/missions", raw(`{"missionId": "a"} {"missionId": "b"}`)).wantProblem(t, http.StatusBadRequest)
		p := e.do("POST", "/api/missions", raw(`{"pickup": "here"}`)).wantProblem(t, http.StatusBadRequest)
		if !strings.Contains(p.Detail, "pickup") {
			t.Errorf("type error detail %q does not name pickup", p.Detail)
		}
	})

	t.Run("unknown field", func(t *testing.T) {
		body, _ := json.Marshal(testkit.Request("m-unknown"))
		body = append(body[:len(body)-1], `,"priorityLevel":5}`...)
		p := e.do("POST", "/api/missions", raw(body)).wantProblem(t, http.StatusBadRequest)
		if !strings.Contains(p.Detail, "priorityLevel") {
			t.Errorf("detail %q does not name the unknown field", p.Detail)
		}
	})

	t.Run("invalid fields", func(t *testing.T) {
		req := testkit.Request("m-invalid")
		req.Pickup = nil
		req.Package.WeightKg = 0
		req.Package.Size = "huge"
		req.Deadline = time.Now().Add(-time.Hour).UTC()
		p := e.do("POST", "/api/missions", req).wantProblem(t, http.StatusBadRequest)
		got := p.fields()
		for _, f := range []string{"pickup", "package.weightKg", "package.size", "deadline"} {
			if !slices.Contains(got, f) {
				t.Errorf("errors %+v do not name %s", p.Errors, f)
			}
		}
		for _, fp := range p.Errors {
			if fp.Message == "" {
				t.Errorf("field problem %+v without a message", fp)
			}
		}
		// Nothing is half-applied: the invalid mission does not exist.
		e.do("GET", "/api/missions/m-invalid", nil).wantProblem(t, http.StatusNotFound)
	})

	t.Run("invalid startAt", func(t *testing.T) {
		e.do("POST", "/api/missions?startAt=tomorrow", testkit.Request("m-startat")).wantProblem(t, http.StatusBadRequest)
		e.do("GET", "/api/missions/m-startat", nil).wantProblem(t, http.StatusNotFound)
	})

	t.Run("unsupported media type", func(t *testing.T) {
		body, _ := json.Marshal(testkit.Request("m-text"))
		e.do("POST", "/api/missions", raw(body), "Content-Type", "text/plain").wantProblem(t, http.StatusUnsupportedMediaType)
		// A +json media type is JSON.
		e.do("POST", "/api/missions", raw(body), "Content-Type", "application/vnd.dronehub+json; charset=utf-8").wantJSON(t, http.StatusAccepted, nil)
	})

	t.Run("body too large", func(t *testing.T) {
		body := `{"missionId":"m-big","pad":"` + strings.Repeat("x", 64<<10) + `"}`
		e.do("POST", "/api/missions", raw(body)).wantProblem(t, http.StatusRequestEntityTooLarge)
	})

	t.Run("empty body", func(t *testing.T) {
		e.do("POST", "/api/missions", raw("")).wantProblem(t, http.StatusBadRequest)
		e.do("POST", "/api/missions", raw(" \n")).wantProblem(t, http.StatusBadRequest)
		e.do("POST", "/api/missions", nil).wantProblem(t, http.StatusBadRequest)
	})
}

func TestMissionStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog)
	req := testkit.Request("m-status")
	e.startMission(req)

	r := e.do("GET", "/api/missions/m-status", nil)
	var s statusBody
	r.wantJSON(t, http.StatusAccepted, &s)
	if r.Header.Get("Retry-After") == "" {
		t.Error("202 without Retry-After")
	}
	if loc := r.Header.Get("Location"); loc != e.srv.URL+"/api/missions/m-status" {
		t.Errorf("202 Location %q", loc)
	}
	if s.Name != "DeliveryMission" || s.InstanceID != "m-status" {
		t.Errorf("name %q, instanceId %q", s.Name, s.InstanceID)
	}
	if s.RuntimeStatus != "Pending" && s.RuntimeStatus != "Running" {
		t.Errorf("runtimeStatus %q right after start, want Pending or Running", s.RuntimeStatus)
	}
	if s.CreatedTime.IsZero() || time.Since(s.CreatedTime) > time.Minute {
		t.Errorf("createdTime %v", s.CreatedTime)
	}
	// The input is the client's request, without the worker's settings.
	var in domain.MissionRequest
	if err := json.Unmarshal(s.Input, &in); err != nil {
		t.Fatalf("input %s: %v", s.Input, err)
	}
	if !in.Equivalent(&req) {
		t.Errorf("input %s, want the mission request %+v", s.Input, req)
	}
	var fields map[string]json.RawMessage
	_ = json.Unmarshal(s.Input, &fields)
	if _, ok := fields["settings"]; ok {
		t.Errorf("input leaks the worker settings: %s", s.Input)
	}

	s = e.awaitDispatched("m-status")
	if s.RuntimeStatus != "Running" {
		t.Errorf("runtimeStatus %q after dispatch, want Running", s.RuntimeStatus)
	}
	ms := s.mission(t, false)
	if ms.MissionID != "m-status" || ms.DroneID == "" || ms.Route == nil {
		t.Errorf("customStatus %s: want mission id, drone and route", s.CustomStatus)
	}
	if string(s.Output) != "null" {
		t.Errorf("output %s while running, want null", s.Output)
	}
	if s.LastUpdatedTime.Before(s.CreatedTime) {
		t.Errorf("lastUpdatedTime %v before createdTime %v", s.LastUpdatedTime, s.CreatedTime)
	}

	t.Run("history", func(t *testing.T) {
		h := e.status("/api/missions", "m-status", "?showHistory=true")
		if len(h.History) == 0 {
			t.Fatal("showHistory=true gave no history")
		}
		// The first event of the execution is ExecutionStarted; durabletask-go's
		// OrchestratorStarted markers carry no execution information.
		var first historyEvent
		for _, ev := range h.History {
			if ev.EventType != "OrchestratorStarted" && ev.EventType != "OrchestratorCompleted" {
				first = ev
				break
			}
		}
		if first.EventType != "ExecutionStarted" || first.Name != "DeliveryMission" {
			t.Errorf("first history event %+v, want ExecutionStarted of DeliveryMission; history %+v", first, h.History)
		}
		t.Run("ExecutionStarted is history[0]", func(t *testing.T) {
			if h.History[0].EventType != "ExecutionStarted" {
				t.Errorf("history[0] %+v, want ExecutionStarted", h.History[0])
			}
			for _, ev := range h.History {
				if ev.EventType == "OrchestratorStarted" || ev.EventType == "OrchestratorCompleted" {
					t.Errorf("history shows replay marker %+v", ev)
				}
			}
		})
		if !slices.ContainsFunc(h.History, func(ev historyEvent) bool {
			return ev.EventType == "TaskScheduled" && ev.Name == "ReserveDrone"
		}) {
			t.Errorf("history lacks the ReserveDrone task: %+v", h.History)
		}
		if plain := e.status("/api/missions", "m-status", "?showHistory=false"); plain.History != nil {
			t.Errorf("showHistory=false returned history")
		}
		if plain := e.status("/api/missions", "m-status", ""); plain.History != nil {
			t.Errorf("no showHistory returned history")
		}
		e.do("GET", "/api/missions/m-status?showHistory=maybe", nil).wantProblem(t, http.StatusBadRequest)
	})

	t.Run("unknown", func(t *testing.T) {
		p := e.do("GET", "/api/missions/no-such-mission", nil).wantProblem(t, http.StatusNotFound)
		if !strings.Contains(p.Detail, "no-such-mission") {
			t.Errorf("404 detail %q does not name the id", p.Detail)
		}
	})

	t.Run("terminal", func(t *testing.T) {
		e.do("POST", "/api/missions/m-status/cancel", nil).wantEmpty(t, http.StatusAccepted)
		s := e.awaitStatus("/api/missions", "m-status", "Completed")
		r := e.do("GET", "/api/missions/m-status", nil)
		r.wantJSON(t, http.StatusOK, nil)
		if r.Header.Get("Retry-After") != "" || r.Header.Get("Location") != "" {
			t.Errorf("200 for a finished mission has Retry-After %q / Location %q", r.Header.Get("Retry-After"), r.Header.Get("Location"))
		}
		if out := s.mission(t, true); out.Phase != domain.PhaseCancelled {
			t.Errorf("output %s, want phase Cancelled", s.Output)
		}
		h := e.status("/api/missions", "m-status", "?showHistory=true")
		if last := h.History[len(h.History)-1]; !slices.ContainsFunc(h.History, func(ev historyEvent) bool {
			return ev.EventType == "ExecutionCompleted" && ev.Detail == "Completed"
		}) {
			t.Errorf("history of a finished mission lacks ExecutionCompleted; last event %+v", last)
		}
	})
}

// TestMissionFlown flies a mission to completion with telemetry posted to
// the API, as a drone gateway would.
func TestMissionFlown(t *testing.T) {
	t.Parallel()
	// The flight ends the mission; a long watchdog keeps a loaded machine's
	// slow requests from failing it as "drone lost" on the way.
	e := newEnv(t, longWatchdog)
	e.startMission(testkit.Request("m-flown"))
	testkit.AwaitDispatched(t, e.w, "m-flown")
	ms := e.status("/api/missions", "m-flown", "").mission(t, false)

	sink := simulator.SinkFunc(func(_ context.Context, frames []domain.Frame) error {
		var res ingestBody
		e.do("POST", "/api/telemetry", map[string]any{"frames": frames}).wantJSON(t, http.StatusOK, &res)
		if res.Accepted != len(frames) {
			return fmt.Errorf("batch %+v: not every frame accepted", res)
		}
		return nil
	})
	if err := simulator.Fly(context.Background(), sink, 0, testkit.Flight(t, e.w, ms, simulator.FaultNone, 0)); err != nil {
		t.Fatal(err)
	}
	s := e.awaitStatus("/api/missions", "m-flown", "Completed")
	out := s.mission(t, true)
	if out.Phase != domain.PhaseCompleted || out.ProgressPct != 100 || len(out.Compensations) != 0 {
		t.Errorf("output %s: want phase Completed, 100%% progress, no compensation", s.Output)
	}
	if cs := s.mission(t, false); cs.Phase != domain.PhaseCompleted {
		t.Errorf("customStatus phase %q, want Completed", cs.Phase)
	}

	// Operations on an ended mission are gone, not missing.
	e.do("POST", "/api/missions/m-flown/events/ping", raw(`{}`)).wantProblem(t, http.StatusGone)
	e.do("POST", "/api/missions/m-flown/terminate", nil).wantProblem(t, http.StatusGone)
	e.do("POST", "/api/missions/m-flown/cancel", nil).wantProblem(t, http.StatusGone)
}

func TestListMissions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog, func(c *worker.Config) {
		c.SeedDrones = 8
		c.Register = registerEcho
	})
	ids := []string{"red-0", "blue-0", "red-1", "blue-1", "red-2", "blue-2", "red-3"}
	for _, id := range ids {
		e.startMission(testkit.Request(id))
	}
	// Another orchestrator's instance is not a mission.
	e.do("POST", "/api/orchestrations/Echo?instanceId=red-echo", raw(`"x"`)).wantJSON(t, http.StatusAccepted, nil)

	list := func(query string, hdr ...string) (listBody, response) {
		t.Helper()
		r := e.do("GET", "/api/missions"+query, nil, hdr...)
		var l listBody
		r.wantJSON(t, http.StatusOK, &l)
		if got := r.Header.Get("x-ms-continuation-token"); got != l.ContinuationToken {
			t.Errorf("x-ms-continuation-token %q, body continuationToken %q", got, l.ContinuationToken)
		}
		return l, r
	}
	sorted := func(s []string) []string {
		s = slices.Clone(s)
		sort.Strings(s)
		return s
	}

	t.Run("pages", func(t *testing.T) {
		var seen []string
		var sizes []int
		token := ""
		for page := 0; ; page++ {
			if page > 5 {
				t.Fatalf("more pages than expected: %v", seen)
			}
			var l listBody
			switch {
			case token == "":
				l, _ = list("?top=3")
			case page%2 == 1:
				l, _ = list("?top=3&continuationToken=" + url.QueryEscape(token))
			default:
				l, _ = list("?top=3", "x-ms-continuation-token", token)
			}
			sizes = append(sizes, len(l.Instances))
			seen = append(seen, l.ids()...)
			for _, s := range l.Instances {
				if s.Name != "DeliveryMission" {
					t.Errorf("listing has a %s instance %s", s.Name, s.InstanceID)
				}
			}
			token = l.ContinuationToken
			if token == "" {
				break
			}
		}
		if !slices.Equal(sorted(seen), sorted(ids)) {
			t.Errorf("pages listed %v, want each of %v once", seen, ids)
		}
		if !slices.Equal(sizes, []int{3, 3, 1}) {
			t.Errorf("page sizes %v, want [3 3 1]", sizes)
		}
		// Listing is oldest first.
		if !slices.Equal(seen, ids) {
			t.Errorf("listing order %v, want creation order %v", seen, ids)
		}
	})

	t.Run("instanceIdPrefix", func(t *testing.T) {
		l, _ := list("?instanceIdPrefix=red-")
		if got := l.ids(); !slices.Equal(got, []string{"red-0", "red-1", "red-2", "red-3"}) {
			t.Errorf("prefix red-: %v", got)
		}
		l, _ = list("?instanceIdPrefix=blue-&top=2")
		if got := l.ids(); !slices.Equal(got, []string{"blue-0", "blue-1"}) || l.ContinuationToken == "" {
			t.Errorf("prefix blue-, top 2: %v, token %q", got, l.ContinuationToken)
		}
		l, _ = list("?instanceIdPrefix=blue-&top=2&continuationToken=" + url.QueryEscape(l.ContinuationToken))
		if got := l.ids(); !slices.Equal(got, []string{"blue-2"}) || l.ContinuationToken != "" {
			t.Errorf("prefix blue-, second page: %v, token %q", got, l.ContinuationToken)
		}
		if l, _ = list("?instanceIdPrefix=green-"); len(l.Instances) != 0 {
			t.Errorf("prefix green-: %v", l.ids())
		}
	})

	t.Run("createdTime", func(t *testing.T) {
		all, _ := list("")
		if len(all.Instances) != len(ids) {
			t.Fatalf("listing %v", all.ids())
		}
		pivot := all.Instances[3].CreatedTime.Format(time.RFC3339Nano)
		from, _ := list("?createdTimeFrom=" + url.QueryEscape(pivot))
		if got := from.ids(); !slices.Equal(got, ids[3:]) {
			t.Errorf("createdTimeFrom=%s (inclusive): %v, want %v", pivot, got, ids[3:])
		}
		to, _ := list("?createdTimeTo=" + url.QueryEscape(pivot))
		if got := to.ids(); !slices.Equal(got, ids[:3]) {
			t.Errorf("createdTimeTo=%s (exclusive): %v, want %v", pivot, got, ids[:3])
		}
		end := all.Instances[5].CreatedTime.Format(time.RFC3339Nano)
		both, _ := list("?createdTimeFrom=" + url.QueryEscape(pivot) + "&createdTimeTo=" + url.QueryEscape(end))
		if got := both.ids(); !slices.Equal(got, ids[3:5]) {
			t.Errorf("createdTime [%s, %s): %v, want %v", pivot, end, got, ids[3:5])
		}
		future, _ := list("?createdTimeFrom=" + time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
		if len(future.Instances) != 0 {
			t.Errorf("created in the future: %v", future.ids())
		}
	})

	t.Run("runtimeStatus", func(t *testing.T) {
		for _, id := range []string{"red-0", "blue-1"} {
			e.do("POST", "/api/missions/"+id+"/terminate", nil).wantEmpty(t, http.StatusAccepted)
		}
		for _, id := range []string{"red-0", "blue-1"} {
			e.awaitStatus("/api/missions", id, "Terminated")
		}
		l, _ := list("?runtimeStatus=Terminated")
		if got := l.ids(); !slices.Equal(got, []string{"red-0", "blue-1"}) {
			t.Errorf("runtimeStatus=Terminated: %v", got)
		}
		for _, s := range l.Instances {
			if s.RuntimeStatus != "Terminated" {
				t.Errorf("%s listed with runtimeStatus %s", s.InstanceID, s.RuntimeStatus)
			}
		}
		want := []string{"blue-0", "red-1", "red-2", "blue-2", "red-3"}
		l, _ = list("?runtimeStatus=Running,Pending")
		if got := l.ids(); !slices.Equal(got, want) {
			t.Errorf("runtimeStatus=Running,Pending: %v, want %v", got, want)
		}
		l, _ = list("?runtimeStatus=terminated&instanceIdPrefix=blue-")
		if got := l.ids(); !slices.Equal(got, []string{"blue-1"}) {
			t.Errorf("terminated blue missions: %v", got)
		}
		if l, _ = list("?runtimeStatus=Failed"); len(l.Instances) != 0 {
			t.Errorf("runtimeStatus=Failed: %v", l.ids())
		}
	})

	t.Run("bad queries", func(t *testing.T) {
		for _, q := range []string{
			"?top=0", "?top=5000", "?top=x", "?top=-1",
			"?runtimeStatus=Sleeping", "?runtimeStatus=Running,Sleeping",
			"?continuationToken=garbage", "?continuationToken=" + url.QueryEscape(base64.RawURLEncoding.EncodeToString([]byte(`{"created":"x"}`))),
			"?createdTimeFrom=yesterday", "?createdTimeTo=2026-13-01",
		} {
			p := e.do("GET", "/api/missions"+q, nil).wantProblem(t, http.StatusBadRequest)
			if p.Detail == "" {
				t.Errorf("%s: empty detail", q)
			}
		}
		e.do("GET", "/api/missions", nil, "x-ms-continuation-token", "garbage").wantProblem(t, http.StatusBadRequest)
		// The bounds themselves are fine.
		for _, q := range []string{"?top=1", "?top=1000"} {
			l, _ := list(q)
			if q == "?top=1" && (len(l.Instances) != 1 || l.ContinuationToken == "") {
				t.Errorf("%s: %d instances, token %q", q, len(l.Instances), l.ContinuationToken)
			}
			if q == "?top=1000" && (len(l.Instances) != len(ids) || l.ContinuationToken != "") {
				t.Errorf("%s: %d instances, token %q", q, len(l.Instances), l.ContinuationToken)
			}
		}
	})
}

func TestRaiseEvent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog)
	e.startMission(testkit.Request("m-events"))

	e.do("POST", "/api/missions/m-events/events/operatorNote", raw(`{"note":"gate code 1234"}`)).wantEmpty(t, http.StatusAccepted)
	e.do("POST", "/api/missions/m-events/events/operatorNote", nil).wantEmpty(t, http.StatusAccepted)
	e.do("POST", "/api/missions/no-such-mission/events/operatorNote", raw(`{}`)).wantProblem(t, http.StatusNotFound)
	e.do("POST", "/api/missions/m-events/events/operatorNote", raw(`{"note":`)).wantProblem(t, http.StatusBadRequest)
	e.do("POST", "/api/missions/m-events/events/operatorNote", raw(`{}`), "Content-Type", "text/plain").wantProblem(t, http.StatusUnsupportedMediaType)
	e.do("POST", "/api/missions/m-events/events/"+strings.Repeat("n", 101), raw(`{}`)).wantProblem(t, http.StatusBadRequest)
	e.do("POST", "/api/missions/m-events/events/big", raw(`"`+strings.Repeat("x", 256<<10)+`"`)).wantProblem(t, http.StatusRequestEntityTooLarge)

	testkit.Eventually(t, 15*time.Second, "the raised event in the history", func() bool {
		h := e.status("/api/missions", "m-events", "?showHistory=true")
		return slices.ContainsFunc(h.History, func(ev historyEvent) bool {
			return ev.EventType == "EventRaised" && ev.Name == "operatorNote"
		})
	})

	e.do("POST", "/api/missions/m-events/cancel", nil).wantEmpty(t, http.StatusAccepted)
	e.awaitStatus("/api/missions", "m-events", "Completed")
	p := e.do("POST", "/api/missions/m-events/events/operatorNote", raw(`{}`)).wantProblem(t, http.StatusGone)
	if !strings.Contains(p.Detail, "m-events") {
		t.Errorf("410 detail %q does not name the mission", p.Detail)
	}
}

func TestTerminate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog)
	e.startMission(testkit.Request("m-term"))
	e.awaitDispatched("m-term")

	e.do("POST", "/api/missions/m-term/terminate?reason="+url.QueryEscape("operator stop"), nil).wantEmpty(t, http.StatusAccepted)
	s := e.awaitStatus("/api/missions", "m-term", "Terminated")
	var out string
	if err := json.Unmarshal(s.Output, &out); err != nil || out != "operator stop" {
		t.Errorf("output %s, want the reason \"operator stop\"", s.Output)
	}
	e.do("POST", "/api/missions/m-term/terminate", nil).wantProblem(t, http.StatusGone)
	e.do("POST", "/api/missions/no-such-mission/terminate", nil).wantProblem(t, http.StatusNotFound)
}

func TestSuspendResume(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog)
	e.startMission(testkit.Request("m-pause"))
	e.awaitDispatched("m-pause")

	e.do("POST", "/api/missions/m-pause/suspend?reason=weather", nil).wantEmpty(t, http.StatusAccepted)
	e.awaitStatus("/api/missions", "m-pause", "Suspended")
	e.do("POST", "/api/missions/m-pause/resume?reason=clear", nil).wantEmpty(t, http.StatusAccepted)
	e.awaitStatus("/api/missions", "m-pause", "Running")
	h := e.status("/api/missions", "m-pause", "?showHistory=true")
	for _, typ := range []string{"ExecutionSuspended", "ExecutionResumed"} {
		if !slices.ContainsFunc(h.History, func(ev historyEvent) bool { return ev.EventType == typ }) {
			t.Errorf("history lacks %s", typ)
		}
	}

	for _, op := range []string{"suspend", "resume"} {
		e.do("POST", "/api/missions/no-such-mission/"+op, nil).wantProblem(t, http.StatusNotFound)
	}
	e.do("POST", "/api/missions/m-pause/terminate", nil).wantEmpty(t, http.StatusAccepted)
	e.awaitStatus("/api/missions", "m-pause", "Terminated")
	for _, op := range []string{"suspend", "resume"} {
		e.do("POST", "/api/missions/m-pause/"+op, nil).wantProblem(t, http.StatusGone)
	}
}

func TestCancelMission(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog)
	e.startMission(testkit.Request("m-cancel"))
	drone := e.awaitDispatched("m-cancel").mission(t, false).DroneID

	e.do("POST", "/api/missions/m-cancel/cancel?reason="+url.QueryEscape("customer changed their mind"), nil).wantEmpty(t, http.StatusAccepted)
	s := e.awaitStatus("/api/missions", "m-cancel", "Completed")
	out := s.mission(t, true)
	if out.Phase != domain.PhaseCancelled || out.Failure != "customer changed their mind" {
		t.Errorf("output phase %q, failure %q; want Cancelled with the reason", out.Phase, out.Failure)
	}
	var steps []string
	for _, c := range out.Compensations {
		steps = append(steps, c.Step)
		if c.Status != "compensated" {
			t.Errorf("compensation %+v did not succeed", c)
		}
	}
	// Undone in reverse order of the steps that completed.
	if want := []string{"recall-drone", "release-drone", "notify-customer"}; !slices.Equal(steps, want) {
		t.Errorf("compensations %v, want %v", steps, want)
	}
	// The drone is free again.
	var d droneBody
	e.do("GET", "/api/drones/"+drone+"/status", nil).wantJSON(t, http.StatusOK, &d)
	if d.MissionID != "" {
		t.Errorf("drone %s still on mission %q after cancel", drone, d.MissionID)
	}

	e.do("POST", "/api/missions/m-cancel/cancel", nil).wantProblem(t, http.StatusGone)
	e.do("POST", "/api/missions/no-such-mission/cancel", nil).wantProblem(t, http.StatusNotFound)
	// cancel is a mission route only.
	e.do("POST", "/api/instances/m-cancel/cancel", nil).wantProblem(t, http.StatusNotFound)
}

func TestPurgeMission(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog)
	e.startMission(testkit.Request("m-purge"))

	p := e.do("DELETE", "/api/missions/m-purge", nil).wantProblem(t, http.StatusConflict)
	if !strings.Contains(p.Detail, "m-purge") {
		t.Errorf("409 detail %q does not name the mission", p.Detail)
	}
	e.status("/api/missions", "m-purge", "") // still there

	e.do("POST", "/api/missions/m-purge/terminate", nil).wantEmpty(t, http.StatusAccepted)
	e.awaitStatus("/api/missions", "m-purge", "Terminated")
	var res struct {
		InstancesDeleted *int `json:"instancesDeleted"`
	}
	e.do("DELETE", "/api/missions/m-purge", nil).wantJSON(t, http.StatusOK, &res)
	if res.InstancesDeleted == nil || *res.InstancesDeleted != 1 {
		t.Errorf("purge body: instancesDeleted %v, want 1", res.InstancesDeleted)
	}
	e.do("GET", "/api/missions/m-purge", nil).wantProblem(t, http.StatusNotFound)
	e.do("DELETE", "/api/missions/m-purge", nil).wantProblem(t, http.StatusNotFound)
	e.do("DELETE", "/api/missions/no-such-mission", nil).wantProblem(t, http.StatusNotFound)
	// The id is free for a new mission.
	e.startMission(testkit.Request("m-purge"))
}
