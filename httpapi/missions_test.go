package httpapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/azurite"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/orchestrations"
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
	e.awaitDispatched("m-events")
	before := e.stored("/api/missions", "m-events")

	// DeliveryMission declares no public event: every name is refused,
	// after the checks of the request itself.
	p := e.do("POST", "/api/missions/m-events/events/operatorNote", raw(`{"note":"gate code 1234"}`)).wantProblem(t, http.StatusForbidden)
	if !strings.Contains(p.Detail, "operatorNote") || !strings.Contains(p.Detail, "/cancel") {
		t.Errorf("403 detail %q: want the event name and the cancel route", p.Detail)
	}
	e.do("POST", "/api/missions/m-events/events/operatorNote", nil).wantProblem(t, http.StatusForbidden)
	e.do("POST", "/api/missions/no-such-mission/events/operatorNote", raw(`{}`)).wantProblem(t, http.StatusNotFound)
	e.do("POST", "/api/missions/m-events/events/operatorNote", raw(`{"note":`)).wantProblem(t, http.StatusBadRequest)
	e.do("POST", "/api/missions/m-events/events/operatorNote", raw(`{}`), "Content-Type", "text/plain").wantProblem(t, http.StatusUnsupportedMediaType)
	e.do("POST", "/api/missions/m-events/events/"+strings.Repeat("n", 101), raw(`{}`)).wantProblem(t, http.StatusBadRequest)
	e.do("POST", "/api/missions/m-events/events/note%0A", raw(`{}`)).wantProblem(t, http.StatusBadRequest)
	e.do("POST", "/api/missions/m-events/events/big", raw(`"`+strings.Repeat("x", 256<<10)+`"`)).wantProblem(t, http.StatusRequestEntityTooLarge)
	if after := e.stored("/api/missions", "m-events"); after != before {
		t.Errorf("refused events changed the mission:\n before %s\n after  %s", before, after)
	}

	e.do("POST", "/api/missions/m-events/cancel", nil).wantEmpty(t, http.StatusAccepted)
	e.awaitStatus("/api/missions", "m-events", "Completed")
	p = e.do("POST", "/api/missions/m-events/events/operatorNote", raw(`{}`)).wantProblem(t, http.StatusGone)
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

// The checks of issue #7 run on both backends: each sends the request
// through the HTTP API, checks the answer and, when the request is refused,
// that nothing stored changed.

// onBackends runs f as parallel subtests "sqlite" and "azurestorage", each
// on a worker of its own (the second on an Azurite started for the test)
// behind a real HTTP server.
func onBackends(t *testing.T, f func(t *testing.T, e *env), mods ...func(*worker.Config)) {
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		f(t, newEnv(t, mods...))
	})
	t.Run("azurestorage", func(t *testing.T) {
		t.Parallel()
		srv := azurite.Start(t, azurite.Options{})
		f(t, newEnv(t, append(slices.Clone(mods), func(c *worker.Config) {
			c.Storage, c.HubName = srv.ConnectionString(), testkit.HubName()
		})...))
	})
}

// on returns e for subtest t.
func (e *env) on(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

// stored is what an instance has stored: status, input, custom status,
// output, last update and history.
func (e *env) stored(base, id string) string {
	e.t.Helper()
	s := e.status(base, id, "?showHistory=true")
	var b strings.Builder
	fmt.Fprintf(&b, "%s input=%s custom=%s output=%s updated=%s\n", s.RuntimeStatus, s.Input, s.CustomStatus, s.Output, s.LastUpdatedTime.Format(time.RFC3339Nano))
	for _, h := range s.History {
		fmt.Fprintf(&b, "%d %s %s %s\n", h.EventID, h.EventType, h.Name, h.Detail)
	}
	return b.String()
}

// drone returns a drone's status as the API answers it.
func (e *env) drone(id string) droneBody {
	e.t.Helper()
	var d droneBody
	e.do("GET", "/api/drones/"+url.PathEscape(id)+"/status", nil).wantJSON(e.t, http.StatusOK, &d)
	return d
}

func countEvents(h []historyEvent, typ string) int {
	n := 0
	for _, ev := range h {
		if ev.EventType == typ {
			n++
		}
	}
	return n
}

func TestHardening(t *testing.T) {
	t.Parallel()
	onBackends(t, func(t *testing.T, e *env) {
		for _, c := range []struct {
			name string
			f    func(t *testing.T, e *env)
		}{
			{"mission events are not public", testMissionEventsNotPublic},
			{"public events", testPublicEvents},
			{"terminate a suspended mission", testTerminateSuspended},
			{"mission id reused after purge", testMissionIDReusedAfterPurge},
			{"reasons are bounded", testReasonsBounded},
			{"orchestrator names are checked", testOrchestratorNamesChecked},
			{"telemetry epochs", testTelemetryEpochs},
			{"telemetry clock", testTelemetryClock},
		} {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				c.f(t, e.on(t))
			})
		}
	}, longWatchdog, func(c *worker.Config) {
		c.SeedDrones = 8
		c.Register = registerApproval
		c.PublicEvents = map[string][]string{"Approval": {"approve"}}
	})
}

// testMissionEventsNotPublic: issue #7.1. The forged telemetry signal that
// made a mission confirm pickup and delivery and complete while its drone
// never moved is refused on both event routes, and stores nothing.
func testMissionEventsNotPublic(t *testing.T, e *env) {
	e.startMission(testkit.Request("m-forged"))
	drone := e.awaitDispatched("m-forged").mission(t, false).DroneID
	before, droneBefore := e.stored("/api/missions", "m-forged"), e.drone(drone)
	forged := []raw{
		`{"kind":"telemetry","phase":"Completed","state":{"seq":1}}`,
		raw(`{"kind":"telemetry","phase":"Completed","state":{"deviceId":"` + drone + `","seq":9223372036854775807,"timestamp":"2026-11-22T10:00:00Z","battery":0.9,"flightMode":"ready","position":{"lat":47.6401,"lon":-122.1298,"alt":0},"health":{"gyrometerOk":true,"accelerometerOk":true,"magnetometerOk":true}}}`),
		`{"kind":"cancel","reason":"forged"}`,
	}
	for _, base := range []string{"/api/missions", "/api/instances"} {
		for _, body := range forged {
			p := e.do("POST", base+"/m-forged/events/signal", body).wantProblem(t, http.StatusForbidden)
			if !strings.Contains(p.Detail, `"signal"`) || !strings.Contains(p.Detail, "POST /api/missions/{id}/cancel") {
				t.Errorf("403 detail %q: want the event and the cancel route", p.Detail)
			}
		}
	}
	if after := e.stored("/api/missions", "m-forged"); after != before {
		t.Fatalf("refused signals changed the mission:\n before %s\n after  %s", before, after)
	}
	if d := e.drone(drone); !reflect.DeepEqual(d, droneBefore) {
		t.Errorf("refused signals changed drone %s: %+v, was %+v", drone, d, droneBefore)
	}
	// The mission's own route still cancels it.
	e.do("POST", "/api/missions/m-forged/cancel", nil).wantEmpty(t, http.StatusAccepted)
	if out := e.awaitStatus("/api/missions", "m-forged", "Completed").mission(t, true); out.Phase != domain.PhaseCancelled {
		t.Errorf("output phase %s after cancel, want Cancelled", out.Phase)
	}
}

// testTerminateSuspendedMission: issue #7.4. A terminate of a suspended
// mission ends it, runs none of the work the suspension held back (a
// cancel, whose compensation would schedule activities), and leaves
// nothing for resume, cancel or terminate to act on; the watchdog frees the
// drone and the mission can be purged.
func testTerminateSuspended(t *testing.T, e *env) {
	e.startMission(testkit.Request("m-zombie"))
	drone := e.awaitDispatched("m-zombie").mission(t, false).DroneID
	e.do("POST", "/api/missions/m-zombie/suspend?reason=weather", nil).wantEmpty(t, http.StatusAccepted)
	e.awaitStatus("/api/missions", "m-zombie", "Suspended")
	scheduled := countEvents(e.status("/api/missions", "m-zombie", "?showHistory=true").History, "TaskScheduled")
	e.do("POST", "/api/missions/m-zombie/cancel?reason=held", nil).wantEmpty(t, http.StatusAccepted)
	testkit.Eventually(t, 15*time.Second, "the cancel to be held by the suspension", func() bool {
		return countEvents(e.status("/api/missions", "m-zombie", "?showHistory=true").History, "EventRaised") == 1
	})

	e.do("POST", "/api/missions/m-zombie/terminate?reason="+url.QueryEscape("operator stop"), nil).wantEmpty(t, http.StatusAccepted)
	s := e.awaitStatus("/api/missions", "m-zombie", "Terminated")
	if string(s.Output) != `"operator stop"` {
		t.Errorf("output %s, want the reason", s.Output)
	}
	h := e.status("/api/missions", "m-zombie", "?showHistory=true").History
	var types []string
	for _, ev := range h {
		types = append(types, ev.EventType)
	}
	if n := countEvents(h, "ExecutionTerminated"); n != 1 || countEvents(h, "TaskScheduled") != scheduled ||
		!slices.ContainsFunc(h, func(ev historyEvent) bool { return ev.EventType == "ExecutionCompleted" && ev.Detail == "Terminated" }) {
		t.Errorf("history %v: want one termination, its completion, and no task scheduled after the suspension", types)
	}
	if cs := s.mission(t, false); cs.Phase != domain.PhaseHeadedToPickup || len(cs.Compensations) != 0 {
		t.Errorf("custom status phase %s, compensations %v: the held cancel must not have run", cs.Phase, cs.Compensations)
	}

	before := e.stored("/api/missions", "m-zombie")
	for _, op := range []string{"resume", "cancel", "terminate", "suspend"} {
		e.do("POST", "/api/missions/m-zombie/"+op, nil).wantProblem(t, http.StatusGone)
	}
	e.do("POST", "/api/instances/m-zombie/terminate", nil).wantProblem(t, http.StatusGone)
	if after := e.stored("/api/missions", "m-zombie"); after != before {
		t.Fatalf("operations on the terminated mission changed it:\n before %s\n after  %s", before, after)
	}

	// The worker's watchdog frees the drone of an ended mission once the
	// drone is silent for its period: run a scan with a clock past it.
	if d := e.drone(drone); d.MissionID != "m-zombie" {
		t.Fatalf("drone %s on mission %q before the watchdog ran, want m-zombie", drone, d.MissionID)
	}
	later := func() time.Time { return time.Now().Add(3 * time.Minute) }
	wd := activities.NewWatchdog(e.w.Fleet(), e.w.Client(), activities.WatchdogOptions{Silence: 2 * time.Minute, Now: later, Logger: testkit.Logger()})
	if err := wd.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := e.drone(drone); d.MissionID != "" {
		t.Errorf("drone %s still on mission %q after a watchdog scan", drone, d.MissionID)
	}
	e.do("DELETE", "/api/missions/m-zombie", nil).wantJSON(t, http.StatusOK, nil)
	e.do("GET", "/api/missions/m-zombie", nil).wantProblem(t, http.StatusNotFound)
}

// testMissionIDReusedAfterPurge: issue #7.6. A mission fails on a drone
// fault and is purged; a new mission under the same id must not inherit the
// old one's effects (its reservation of the faulted drone above all) and
// must dispatch a fit drone.
func testMissionIDReusedAfterPurge(t *testing.T, e *env) {
	ctx := context.Background()
	req := testkit.Request("m-reuse")
	req.DroneID = "drone-8"
	e.startMission(req)
	e.awaitDispatched("m-reuse")
	fault := keyFrame("drone-8", e.drone("drone-8").Frames+1)
	fault["health"] = map[string]bool{"gyrometerOk": false, "accelerometerOk": true, "magnetometerOk": true}
	var res ingestBody
	e.do("POST", "/api/telemetry", batch(fault)).wantJSON(t, http.StatusOK, &res)
	if res.Accepted != 1 {
		t.Fatalf("fault frame: %+v", res)
	}
	old := e.awaitStatus("/api/missions", "m-reuse", "Completed").mission(t, true)
	if old.Phase != domain.PhaseFailed || !strings.Contains(old.Failure, "fault: gyrometer") {
		t.Fatalf("first mission phase %s (%s), want Failed on the fault", old.Phase, old.Failure)
	}
	oldKey := activities.EffectKey("m-reuse", orchestrations.Run(old.Timeline[0].At))
	oldEffects, err := e.w.Fleet().Effects(ctx, oldKey)
	if err != nil || len(oldEffects) == 0 {
		t.Fatalf("effects of the first mission under %s: %v, %v", oldKey, oldEffects, err)
	}
	e.do("DELETE", "/api/missions/m-reuse", nil).wantJSON(t, http.StatusOK, nil)

	req.DroneID = "" // any fit drone
	e.startMission(req)
	s := e.awaitDispatched("m-reuse")
	cur := s.mission(t, false)
	if cur.DroneID == "drone-8" || cur.DroneID == "" || cur.Failure != "" || s.RuntimeStatus != "Running" {
		t.Fatalf("reused id: drone %q, failure %q, status %s; want a fit drone other than the faulted drone-8", cur.DroneID, cur.Failure, s.RuntimeStatus)
	}
	newKey := activities.EffectKey("m-reuse", orchestrations.Run(cur.Timeline[0].At))
	newEffects, err := e.w.Fleet().Effects(ctx, newKey)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, ef := range newEffects {
		kinds = append(kinds, ef.Kind)
	}
	if want := []string{activities.EffectAccepted, activities.EffectReserved, activities.EffectDispatched}; newKey == oldKey || !slices.Equal(kinds, want) {
		t.Errorf("new mission's effects under %s: %v, want %v (old key %s)", newKey, kinds, want, oldKey)
	}
	if again, _ := e.w.Fleet().Effects(ctx, oldKey); !reflect.DeepEqual(again, oldEffects) {
		t.Errorf("the first mission's effects changed: %+v, were %+v", again, oldEffects)
	}
	if d := e.drone("drone-8"); d.MissionID != "" {
		t.Errorf("faulted drone-8 is on mission %q", d.MissionID)
	}
	e.do("POST", "/api/missions/m-reuse/cancel", nil).wantEmpty(t, http.StatusAccepted)
	e.awaitStatus("/api/missions", "m-reuse", "Completed")
}

// testReasonsBounded: issue #7.7. A reason is stored in the history, and a
// terminate's becomes the output: too long, or not printable text, is a
// 400 that changes nothing.
func testReasonsBounded(t *testing.T, e *env) {
	e.startMission(testkit.Request("m-reason"))
	e.awaitDispatched("m-reason")
	before := e.stored("/api/missions", "m-reason")
	for _, rs := range []string{strings.Repeat("x", 100<<10), strings.Repeat("é", 1001), "stop\x00now", "line\nbreak", "\xff"} {
		for _, path := range []string{"/api/missions/m-reason/terminate", "/api/missions/m-reason/suspend", "/api/missions/m-reason/resume",
			"/api/missions/m-reason/cancel", "/api/instances/m-reason/terminate"} {
			p := e.do("POST", path+"?reason="+url.QueryEscape(rs), nil).wantProblem(t, http.StatusBadRequest)
			if !strings.Contains(p.Detail, "reason") || len(p.Detail) > 200 {
				t.Errorf("%s: 400 detail %q: want a short message about the reason", path, p.Detail)
			}
		}
	}
	if after := e.stored("/api/missions", "m-reason"); after != before {
		t.Fatalf("refused reasons changed the mission:\n before %s\n after  %s", before, after)
	}
	longest := strings.Repeat("é", 1000)
	e.do("POST", "/api/missions/m-reason/terminate?reason="+url.QueryEscape(longest), nil).wantEmpty(t, http.StatusAccepted)
	s := e.awaitStatus("/api/missions", "m-reason", "Terminated")
	var out string
	if err := json.Unmarshal(s.Output, &out); err != nil || out != longest {
		t.Errorf("output %.40s…: want the 1000-character reason", s.Output)
	}
}

// framesAt builds a key frame for drone with an explicit boot, seq and time.
func frameAt(drone string, boot, seq int64, at time.Time) map[string]any {
	f := keyFrame(drone, seq)
	f["timestamp"] = at.UTC().Format(time.RFC3339Nano)
	if boot != 0 {
		f["boot"] = boot
	}
	return f
}

// testTelemetryEpochs: issue #7.5. Reboots (with and without a boot count),
// a wrapped counter and forged jumps never lock a drone out; a refused or
// stale frame changes nothing.
func testTelemetryEpochs(t *testing.T, e *env) {
	const drone = "tele-epochs"
	e.do("POST", "/api/drones", map[string]any{"id": drone, "home": map[string]float64{"lat": 47.6401, "lon": -122.1298}}).wantJSON(t, http.StatusCreated, nil)
	t0 := time.Now().Add(-time.Hour)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	const maxSeq = 1<<53 - 1
	steps := []struct {
		what             string
		frame            map[string]any
		verdict          string
		boot, epoch, seq int64 // the stored state after the step
	}{
		{"first frame", frameAt(drone, 0, 1, at(0)), "accepted", 0, 0, 1},
		{"next frame", frameAt(drone, 0, 2, at(1)), "accepted", 0, 0, 2},
		{"reboot with a boot count", frameAt(drone, 1, 1, at(2)), "accepted", 1, 1, 1},
		{"late frame of the old boot", frameAt(drone, 0, 3, at(1.5)), "stale", 1, 1, 1},
		{"seq beyond 2^53-1", frameAt(drone, 1, math.MaxInt64, at(3)), "rejected", 1, 1, 1},
		{"forged jump with an old timestamp", frameAt(drone, 1, 5000, at(1)), "stale", 1, 1, 1},
		{"forged jump 1 -> 2000", frameAt(drone, 1, 2000, at(3)), "accepted", 1, 2, 2000},
		{"the real seq 2 after the jump", frameAt(drone, 1, 2, at(4)), "accepted", 1, 3, 2},
		{"the real seq 3", frameAt(drone, 1, 3, at(5)), "accepted", 1, 3, 3},
		{"redelivered seq 2", frameAt(drone, 1, 2, at(4)), "duplicate", 1, 3, 3},
		{"long run", frameAt(drone, 1, 1500, at(6)), "accepted", 1, 4, 1500},
		{"reboot to seq 1 without a boot count", frameAt(drone, 1, 1, at(7)), "accepted", 1, 5, 1},
		{"near the end of the counter", frameAt(drone, 1, maxSeq-1, at(8)), "accepted", 1, 6, maxSeq - 1},
		{"last seq", frameAt(drone, 1, maxSeq, at(9)), "accepted", 1, 6, maxSeq},
		{"wrapped to 0", frameAt(drone, 1, 0, at(10)), "accepted", 1, 7, 0},
		{"wrapped, stale", frameAt(drone, 1, maxSeq, at(9)), "stale", 1, 7, 0},
		{"negative boot", frameAt(drone, -1, 1, at(11)), "rejected", 1, 7, 0},
	}
	for _, st := range steps {
		before := e.drone(drone)
		var res ingestBody
		e.do("POST", "/api/telemetry", batch(st.frame)).wantJSON(t, http.StatusOK, &res)
		d := e.drone(drone)
		if v := res.Frames[0]; v.Verdict != st.verdict {
			t.Fatalf("%s: verdict %s (%s), want %s", st.what, v.Verdict, v.Reason, st.verdict)
		}
		if s := d.State; s == nil || s.Boot != st.boot || s.Epoch != st.epoch || s.Seq != st.seq {
			t.Fatalf("%s: stored state %+v, want boot %d, epoch %d, seq %d", st.what, s, st.boot, st.epoch, st.seq)
		}
		if st.verdict != "accepted" && !reflect.DeepEqual(d, before) {
			t.Fatalf("%s: a %s frame changed the drone: %+v, was %+v", st.what, st.verdict, d, before)
		}
	}
}

// testTelemetryClock: issue #7.5. Timestamps before 2000 or far ahead of
// the worker's clock are rejected and change nothing.
func testTelemetryClock(t *testing.T, e *env) {
	const drone = "tele-clock"
	e.do("POST", "/api/drones", map[string]any{"id": drone, "home": map[string]float64{"lat": 47.6401, "lon": -122.1298}}).wantJSON(t, http.StatusCreated, nil)
	var res ingestBody
	e.do("POST", "/api/telemetry", batch(
		frameAt(drone, 0, 1, time.Date(1999, 12, 31, 23, 59, 59, 0, time.UTC)),
		frameAt(drone, 0, 2, time.Now().Add(time.Hour)),
		frameAt(drone, 0, 3, time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)),
	)).wantJSON(t, http.StatusOK, &res)
	for i, v := range res.Frames {
		if v.Verdict != "rejected" || !strings.Contains(v.Reason, "timestamp") {
			t.Errorf("frame %d: %s (%s), want rejected for its timestamp", i, v.Verdict, v.Reason)
		}
	}
	if d := e.drone(drone); d.State != nil || d.Frames != 0 {
		t.Fatalf("rejected frames changed the drone: %+v", d)
	}
	e.do("POST", "/api/telemetry", batch(frameAt(drone, 0, 4, time.Now().Add(time.Minute)))).wantJSON(t, http.StatusOK, &res)
	if v := res.Frames[0]; v.Verdict != "accepted" {
		t.Errorf("a frame a minute ahead: %s (%s), want accepted", v.Verdict, v.Reason)
	}
}
