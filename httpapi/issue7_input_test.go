package httpapi_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/internal/testkit"
)

// Issue #7, item 8: each malformed input gets a precise 400 naming the
// field, or the right semantic answer.
func TestIssue7InputAnswers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog)

	body := func(t *testing.T, id string) string {
		b, err := json.Marshal(testkit.Request(id))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	t.Run("trailing brace", func(t *testing.T) {
		p := e.on(t).do("POST", "/api/missions", raw(body(t, "m-trail")+"}")).wantProblem(t, http.StatusBadRequest)
		if !strings.Contains(p.Detail, "unexpected data after the JSON object") {
			t.Errorf("detail %q: want the trailing data named", p.Detail)
		}
		e.on(t).do("GET", "/api/missions/m-trail", nil).wantProblem(t, http.StatusNotFound)
	})

	t.Run("trailing brace in a telemetry batch", func(t *testing.T) {
		p := e.on(t).do("POST", "/api/telemetry", raw(`{"frames": []}}`)).wantProblem(t, http.StatusBadRequest)
		if !strings.Contains(p.Detail, "unexpected data after the JSON object") {
			t.Errorf("detail %q", p.Detail)
		}
	})

	t.Run("number out of range", func(t *testing.T) {
		b := strings.Replace(body(t, "m-big"), `"weightKg":1.5`, `"weightKg":1e400`, 1)
		p := e.on(t).do("POST", "/api/missions", raw(b)).wantProblem(t, http.StatusBadRequest)
		if !strings.Contains(p.Detail, `"package.weightKg": 1e400 is out of range`) || strings.Contains(p.Detail, "got number") {
			t.Errorf("detail %q: want the field and the range named", p.Detail)
		}
	})

	t.Run("same deadline with another offset is a retry", func(t *testing.T) {
		req := testkit.Request("m-offset")
		e.on(t).startMission(req)
		// From req itself: a second testkit.Request may fall in the next
		// second and carry another deadline.
		raw0, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		b := string(raw0)
		utc := req.Deadline.UTC().Format(time.RFC3339)
		plus1 := req.Deadline.In(time.FixedZone("", 3600)).Format(time.RFC3339)
		if !strings.Contains(b, utc) || !strings.HasSuffix(plus1, "+01:00") {
			t.Fatalf("setup: %s, %s", b, plus1)
		}
		b = strings.Replace(b, utc, plus1, 1)
		e.on(t).do("POST", "/api/missions", raw(b)).wantJSON(t, http.StatusAccepted, nil)
		// A different deadline is still a conflict.
		later := req.Deadline.Add(time.Minute).UTC().Format(time.RFC3339)
		e.on(t).do("POST", "/api/missions", raw(strings.Replace(string(raw0), utc, later, 1))).wantProblem(t, http.StatusConflict)
	})

	t.Run("startAt after the deadline", func(t *testing.T) {
		req := testkit.Request("m-late-start")
		at := req.Deadline.Add(time.Hour).UTC().Format(time.RFC3339)
		p := e.on(t).do("POST", "/api/missions?startAt="+at, req).wantProblem(t, http.StatusBadRequest)
		if got := p.fields(); len(got) != 1 || got[0] != "startAt" {
			t.Errorf("fields %v, want [startAt]; detail %q", got, p.Detail)
		}
		e.on(t).do("GET", "/api/missions/m-late-start", nil).wantProblem(t, http.StatusNotFound)
	})

	t.Run("foreign continuation token", func(t *testing.T) {
		tok := base64.RawURLEncoding.EncodeToString([]byte(`{"c":"2030-01-01","i":"zzz"}`))
		p := e.on(t).do("GET", "/api/missions?continuationToken="+tok, nil).wantProblem(t, http.StatusBadRequest)
		if !strings.Contains(p.Detail, "continuationToken") {
			t.Errorf("detail %q: want continuationToken named", p.Detail)
		}
	})

	t.Run("broken percent-encoding", func(t *testing.T) {
		p := e.on(t).do("GET", "/api/missions?continuationToken=%ZZ", nil).wantProblem(t, http.StatusBadRequest)
		if !strings.Contains(p.Detail, "continuationToken") || !strings.Contains(p.Detail, "%ZZ") {
			t.Errorf("detail %q: want continuationToken and %%ZZ named", p.Detail)
		}
	})

	t.Run("real continuation tokens still page", func(t *testing.T) {
		e.on(t).startMission(testkit.Request("m-page-1"))
		e.on(t).startMission(testkit.Request("m-page-2"))
		var first, second listBody
		e.on(t).do("GET", "/api/missions?instanceIdPrefix=m-page-&top=1", nil).wantJSON(t, http.StatusOK, &first)
		if first.ContinuationToken == "" || len(first.Instances) != 1 {
			t.Fatalf("first page %+v", first)
		}
		e.on(t).do("GET", "/api/missions?instanceIdPrefix=m-page-&top=1&continuationToken="+first.ContinuationToken, nil).wantJSON(t, http.StatusOK, &second)
		if len(second.Instances) != 1 || second.Instances[0].InstanceID == first.Instances[0].InstanceID {
			t.Fatalf("second page %+v after %+v", second, first)
		}
	})

	for _, tc := range []struct{ seq, want string }{
		{"1.5", "whole number"},
		{"1e30", "whole number"},
		{"99999999999999999999", "out of range"},
	} {
		t.Run("seq "+tc.seq, func(t *testing.T) {
			var res ingestBody
			e.on(t).do("POST", "/api/telemetry", raw(`{"frames":[{"deviceId":"drone-1","seq":`+tc.seq+`,"timestamp":"2026-11-22T10:00:00Z","battery":0.5}]}`)).wantJSON(t, http.StatusOK, &res)
			if len(res.Frames) != 1 {
				t.Fatalf("verdicts %+v", res)
			}
			v := res.Frames[0]
			if v.Verdict != "rejected" || v.Seq != nil || !strings.Contains(v.Reason, `"seq"`) || !strings.Contains(v.Reason, tc.want) {
				t.Errorf("verdict %+v (seq %v): want rejected, no seq, reason naming seq and %q", v, v.Seq, tc.want)
			}
		})
	}
}

// Issue #7, item 3: the generic routes show a mission's input as the
// client's request too, never the worker's settings.
func TestIssue7InstancesRouteHidesMissionSettings(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog)
	e.startMission(testkit.Request("m-hidden"))
	check := func(where string, input json.RawMessage) {
		t.Helper()
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(input, &fields); err != nil {
			t.Fatalf("%s: input %s: %v", where, input, err)
		}
		if _, ok := fields["settings"]; ok {
			t.Errorf("%s leaks the worker settings: %s", where, input)
		}
		if _, ok := fields["pickup"]; !ok {
			t.Errorf("%s: input %s is not the mission request", where, input)
		}
	}
	check("GET /api/instances/m-hidden", e.status("/api/instances", "m-hidden", "").Input)
	var page listBody
	e.do("GET", "/api/instances?instanceIdPrefix=m-hidden", nil).wantJSON(t, http.StatusOK, &page)
	if len(page.Instances) != 1 {
		t.Fatalf("list: %+v", page)
	}
	check("GET /api/instances (list)", page.Instances[0].Input)
}

// Issue #7, item 8: a retried start is checked against the original's
// startAt too (as an instant), not just its body.
func TestIssue7StartAtOnRetry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog)
	req := testkit.Request("m-startat")
	at := time.Now().Add(30 * time.Minute).UTC().Truncate(time.Second)
	q := "?startAt=" + at.Format(time.RFC3339)
	e.do("POST", "/api/missions"+q, req).wantJSON(t, http.StatusAccepted, nil)
	e.do("POST", "/api/missions"+q, req).wantJSON(t, http.StatusAccepted, nil)
	sameInstant := strings.ReplaceAll(at.In(time.FixedZone("", -7200)).Format(time.RFC3339), "+", "%2B")
	e.do("POST", "/api/missions?startAt="+sameInstant, req).wantJSON(t, http.StatusAccepted, nil)
	for _, other := range []string{"?startAt=" + at.Add(time.Minute).Format(time.RFC3339), ""} {
		p := e.do("POST", "/api/missions"+other, req).wantProblem(t, http.StatusConflict)
		if got := p.fields(); len(got) != 1 || got[0] != "startAt" || !strings.Contains(p.Detail, at.Format(time.RFC3339)) {
			t.Errorf("retry with %q: fields %v, detail %q: want startAt named with the original time", other, got, p.Detail)
		}
	}
	now := testkit.Request("m-startnow")
	e.startMission(now)
	p := e.do("POST", "/api/missions"+q, now).wantProblem(t, http.StatusConflict)
	if got := p.fields(); len(got) != 1 || got[0] != "startAt" {
		t.Errorf("startAt added on a retry: fields %v, detail %q", got, p.Detail)
	}
	e.do("POST", "/api/missions", now).wantJSON(t, http.StatusAccepted, nil)
}
