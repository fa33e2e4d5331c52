package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/httpapi"
)

// maxReported bounds the per-mission problems printed; the rest are counted.
// maxTraces bounds the missions whose signals are traced.
const (
	maxReported = 25
	maxTraces   = 3
)

// verify checks every mission once all have ended: each reached a terminal
// state; a mission without a fault completed its delivery and scheduled
// each step exactly once; a faulted one failed after pickup, scheduled the
// steps up to pickup once, never the later ones, and ran each compensation
// exactly once with status compensated; and every drone was freed.
func verify(t *testing.T, ctx context.Context, d *driver) {
	t.Helper()
	var (
		mu       sync.Mutex
		problems []string
		outcomes = map[string]int{}
		retried  atomic.Int64 // activity attempts that failed and were retried
		traces   atomic.Int64 // signal traces printed
	)
	report := func(m *mission, format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		problems = append(problems, fmt.Sprintf("%s (drone %s, fault %t): %s", m.id, orDash(m.drone), m.fault, fmt.Sprintf(format, args...)))
	}

	work := make(chan *mission)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				outcome := verifyMission(ctx, d, m, &retried, &traces, func(format string, args ...any) { report(m, format, args...) })
				mu.Lock()
				outcomes[outcome]++
				mu.Unlock()
			}
		}()
	}
	for _, m := range d.ms {
		work <- m
	}
	close(work)
	wg.Wait()

	// Every drone is free again, whichever way its missions ended.
	var fleet struct {
		Drones []httpapi.DroneStatus `json:"drones"`
	}
	if _, _, err := d.c.call(ctx, http.MethodGet, "/api/drones", nil, &fleet, http.StatusOK); err != nil {
		problems = append(problems, fmt.Sprintf("fleet: GET /api/drones: %v", err))
	}
	bound := 0
	for _, ds := range fleet.Drones {
		if ds.MissionID != "" {
			bound++
			problems = append(problems, fmt.Sprintf("fleet: drone %s is still bound to mission %s after every mission ended (%s)",
				ds.DroneID, ds.MissionID, missionEnd(ctx, d, ds.MissionID)))
		}
	}

	t.Logf("outcomes: %v; %d failed activity attempts retried; %d drones, %d still bound", outcomes, retried.Load(), len(fleet.Drones), bound)
	if len(problems) == 0 {
		return
	}
	sort.Strings(problems)
	shown := problems
	if len(shown) > maxReported {
		shown = shown[:maxReported]
	}
	t.Errorf("%d problems with %d of %d missions and the fleet:\n  %s%s\n%s", len(problems), countMissions(problems), len(d.ms),
		strings.Join(shown, "\n  "), more(len(problems)-len(shown)), d.c.failureReport(problemMissions(problems)))
}

// problemMissions lists the missions named by problems, in order.
func problemMissions(problems []string) []string {
	var ids []string
	seen := map[string]bool{}
	for _, p := range problems {
		if strings.HasPrefix(p, "fleet:") {
			continue
		}
		id := strings.SplitN(p, " ", 2)[0]
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return ids
}

func countMissions(problems []string) int {
	seen := map[string]bool{}
	for _, p := range problems {
		if !strings.HasPrefix(p, "fleet:") {
			seen[strings.SplitN(p, " ", 2)[0]] = true
		}
	}
	return len(seen)
}

func more(n int) string {
	if n <= 0 {
		return ""
	}
	return fmt.Sprintf("\n  … and %d more problems", n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// verifyMission checks one mission and returns its outcome for the summary.
func verifyMission(ctx context.Context, d *driver, m *mission, retried, traces *atomic.Int64, fail func(string, ...any)) string {
	if m.err != nil {
		fail("driver: %v", m.err)
	}
	st, err := d.status(ctx, m, true)
	if err != nil {
		fail("GET with history: %v", err)
		return "unreadable"
	}
	traced := false
	trace := func() {
		if !traced && traces.Add(1) <= maxTraces {
			traced = true
			fail("signals in history order: %s", signalTrace(ctx, d.c, m.id))
		}
	}
	if st.RuntimeStatus != "Completed" {
		trace()
		fail("runtime status %s, want Completed (failure details %+v, custom status %s)", st.RuntimeStatus, st.FailureDetails, truncate(st.CustomStatus, 300))
		return "runtime " + st.RuntimeStatus
	}
	var out domain.MissionStatus
	if err := json.Unmarshal(st.Output, &out); err != nil {
		fail("decode output %s: %v", truncate(st.Output, 300), err)
		return "bad output"
	}
	outcome := string(out.Phase)
	if out.Failure != "" {
		outcome += ": " + failureKind(out.Failure)
	}

	// The mission awaits one activity at a time (steps, then compensations
	// in turn), so a TaskFailed belongs to the latest TaskScheduled.
	scheduled, failed := map[string]int{}, map[string]int{}
	var kinds, taskFailures []string
	last := ""
	for _, e := range st.History {
		switch e.EventType {
		case "TaskScheduled":
			scheduled[e.Name]++
			last = e.Name
		case "TaskFailed":
			failed[last]++
			taskFailures = append(taskFailures, last+": "+e.Detail)
		}
		kinds = append(kinds, e.EventType)
	}
	if len(kinds) < 2 || kinds[0] != "ExecutionStarted" || kinds[len(kinds)-1] != "ExecutionCompleted" {
		fail("history is not one whole execution: %s; it begins %s", summarize(kinds), head(st.History, 4))
	}
	expect := func(activity string, want int) {
		got := scheduled[activity]
		if d.p.retriesAllowed && want > 0 {
			// A step that failed (storage down) is scheduled again by the
			// mission's retry policy: once per recorded failure, no more.
			want += failed[activity]
		}
		if got != want {
			fail("%s scheduled %d times, want %d (TaskScheduled by name: %v; TaskFailed: %q)", activity, got, want, scheduled, taskFailures)
		}
	}
	if !d.p.retriesAllowed && len(taskFailures) > 0 {
		fail("activities failed: %q", taskFailures)
	}
	for _, n := range failed {
		retried.Add(int64(n))
	}

	if !m.fault {
		if out.Phase != domain.PhaseCompleted || out.Failure != "" || len(out.Compensations) > 0 {
			trace()
			fail("output phase %s, failure %q, compensations %v; want Completed without failure or compensation", out.Phase, out.Failure, out.Compensations)
		}
		for _, s := range missionSteps {
			expect(s, 1)
		}
		for _, a := range compensationSteps {
			expect(a, 0)
		}
	} else {
		if out.Phase != domain.PhaseFailed || !strings.Contains(out.Failure, "fault: gyrometer") {
			trace()
			fail("output phase %s, failure %q; want Failed with the drone's gyrometer fault", out.Phase, out.Failure)
		}
		for _, s := range stepsBeforeFault {
			expect(s, 1)
		}
		for _, s := range stepsAfterFault {
			expect(s, 0)
		}
		for _, a := range compensationSteps {
			expect(a, 1)
		}
		got := map[string]int{}
		for _, c := range out.Compensations {
			got[c.Step]++
			if _, ok := compensationSteps[c.Step]; !ok {
				fail("unexpected compensation %+v", c)
			}
			if c.Status != "compensated" {
				fail("compensation %s has status %q (error %q), want compensated", c.Step, c.Status, c.Error)
			}
		}
		for step := range compensationSteps {
			if got[step] != 1 {
				fail("compensation %s appears %d times in the output, want once (compensations %+v)", step, got[step], out.Compensations)
			}
		}
	}

	return outcome
}

// missionEnd describes how a mission ended, for a drone left bound to it.
func missionEnd(ctx context.Context, d *driver, id string) string {
	var st httpapi.Status
	if _, _, err := d.c.call(ctx, http.MethodGet, "/api/missions/"+url.PathEscape(id), nil, &st, http.StatusOK, http.StatusAccepted); err != nil {
		return err.Error()
	}
	var out domain.MissionStatus
	_ = json.Unmarshal(st.Output, &out)
	return fmt.Sprintf("mission %s is %s, phase %s, drone in its output %s", id, st.RuntimeStatus, out.Phase, orDash(out.DroneID))
}

// failureKind shortens a failure reason for the outcome summary.
func failureKind(reason string) string {
	switch {
	case strings.Contains(reason, "fault:"):
		return "drone fault"
	case strings.Contains(reason, "lost"):
		return "drone lost"
	case strings.Contains(reason, "deadline"):
		return "deadline"
	}
	if i := strings.Index(reason, " failed"); i > 0 {
		return reason[:i] + " failed"
	}
	return reason
}

// head describes the first n history events.
func head(h []httpapi.HistoryEvent, n int) string {
	var parts []string
	for i, e := range h {
		if i == n {
			break
		}
		p := fmt.Sprintf("#%d %s", e.EventID, e.EventType)
		if e.Name != "" {
			p += " " + e.Name
		}
		if e.Detail != "" {
			p += " (" + e.Detail + ")"
		}
		parts = append(parts, p+" at "+e.Timestamp.UTC().Format("15:04:05.000"))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// summarize compresses a list of event types: "A B B B C" → "A B×3 C".
func summarize(kinds []string) string {
	var b strings.Builder
	for i := 0; i < len(kinds); {
		j := i
		for j < len(kinds) && kinds[j] == kinds[i] {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(kinds[i])
		if j-i > 1 {
			fmt.Fprintf(&b, "×%d", j-i)
		}
		i = j
	}
	return b.String()
}
