package backendtest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

// unstartedCases cover instances acted on before their scheduled start.
func unstartedCases() []testCase {
	return []testCase{
		{"E2E_TerminateBeforeScheduledStart", testTerminateBeforeScheduledStart},
	}
}

// testTerminateBeforeScheduledStart: a terminate that reaches an instance
// whose start time lies ahead ends it at once, Terminated with the
// terminate's output, and its orchestrator never runs — not when the
// terminate arrives, not when the start time comes, not after a purge. A
// second terminate changes nothing; the id, purged, starts a new instance
// normally.
//
//   - "hour" starts in an hour: Terminated within settleTimeout, so the
//     terminate did not wait for the start;
//   - "soon" starts 5 s ahead: still Terminated, never run, once its start
//     time has passed;
//   - "purged" starts 5 s ahead and is purged right after its terminate:
//     its start time passes and it does not come back;
//   - "marker", scheduled after both, runs normally: once it has completed,
//     the earlier starts have come due.
func testTerminateBeforeScheduledStart(t *testing.T, ctx context.Context, be taskhub.Backend) {
	var mu sync.Mutex
	runs := map[string]int{} // orchestrator calls by input
	ran := func(in string) int {
		mu.Lock()
		defer mu.Unlock()
		return runs[in]
	}
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Later", func(ctx *task.OrchestrationContext) (any, error) {
		var in string
		if err := ctx.GetInput(&in); err != nil {
			return nil, err
		}
		mu.Lock()
		runs[in]++
		mu.Unlock()
		return "ran " + in, nil
	})
	startWorker(t, be, r)
	c := backend.NewTaskHubClient(be)
	terminate := func(id api.InstanceID, reason string) {
		t.Helper()
		if err := c.TerminateOrchestration(ctx, id, api.WithOutput(reason)); err != nil {
			t.Fatalf("terminate %s: %v", id, err)
		}
	}
	requireTerminated := func(id api.InstanceID, input, reason string) {
		t.Helper()
		md := metadata(t, ctx, be, id)
		if md.RuntimeStatus != api.RUNTIME_STATUS_TERMINATED || md.SerializedOutput != `"`+reason+`"` {
			t.Fatalf("%s: %s, want Terminated with output %q", id, describe(md), `"`+reason+`"`)
		}
		if md.Name != "Later" || md.SerializedInput != `"`+input+`"` {
			t.Errorf("%s: name %q input %q, want the created instance's (Later, %q)", id, md.Name, md.SerializedInput, `"`+input+`"`)
		}
		h := history(t, ctx, be, id)
		start, done := first(h, isStarted), first(h, isCompleted)
		if count(h, isStarted) != 1 || count(h, isCompleted) != 1 || start.GetExecutionStarted().GetInput().GetValue() != `"`+input+`"` ||
			done.GetExecutionCompleted().GetOrchestrationStatus() != api.RUNTIME_STATUS_TERMINATED ||
			done.GetExecutionCompleted().GetResult().GetValue() != `"`+reason+`"` {
			t.Errorf("%s: history %s, want its start and one ExecutionCompleted (Terminated, %q)", id, summary(h), reason)
		}
		for _, e := range h {
			if e.GetTaskScheduled() != nil || e.GetTimerCreated() != nil || e.GetEventRaised() != nil ||
				e.GetSubOrchestrationInstanceCreated() != nil || e.GetEventSent() != nil {
				t.Errorf("%s: history %s holds the work of an orchestrator that never ran", id, summary(h))
				break
			}
		}
		if n := ran(input); n != 0 {
			t.Errorf("%s: the orchestrator ran %d times; it was terminated before its start time", id, n)
		}
	}

	hour := schedule(t, ctx, c, "Later", api.WithInstanceID("later-hour"), api.WithInput("hour"), api.WithStartTime(time.Now().Add(time.Hour)))
	if md := metadata(t, ctx, be, hour); md.RuntimeStatus != api.RUNTIME_STATUS_PENDING {
		t.Fatalf("%s before its start time: %s, want Pending", hour, describe(md))
	}
	terminate(hour, "cancelled early")
	waitForStatus(t, ctx, be, hour, api.RUNTIME_STATUS_TERMINATED)
	requireTerminated(hour, "hour", "cancelled early")
	terminate(hour, "terminated twice") // an event for an ended instance

	startAt := time.Now().Add(5 * time.Second)
	soon := schedule(t, ctx, c, "Later", api.WithInstanceID("later-soon"), api.WithInput("soon"), api.WithStartTime(startAt))
	purged := schedule(t, ctx, c, "Later", api.WithInstanceID("later-purged"), api.WithInput("purged"), api.WithStartTime(startAt))
	terminate(soon, "not needed")
	terminate(purged, "not needed either")
	waitForStatus(t, ctx, be, soon, api.RUNTIME_STATUS_TERMINATED)
	waitForStatus(t, ctx, be, purged, api.RUNTIME_STATUS_TERMINATED)
	if late := time.Since(startAt); late >= 0 {
		t.Fatalf("the terminates took until %s after the start time they had to beat", late)
	}
	if err := c.PurgeOrchestrationState(ctx, purged); err != nil {
		t.Fatalf("purge %s: %v", purged, err)
	}
	marker := schedule(t, ctx, c, "Later", api.WithInstanceID("later-marker"), api.WithInput("marker"), api.WithStartTime(startAt.Add(time.Second)))
	requireCompleted(t, waitForCompletion(t, ctx, be, marker), `"ran marker"`)
	if time.Now().Before(startAt) {
		t.Fatalf("%s completed before its start time", marker)
	}

	requireTerminated(soon, "soon", "not needed")
	if _, err := be.GetOrchestrationMetadata(ctx, purged); !errors.Is(err, api.ErrInstanceNotFound) {
		t.Errorf("%s, purged before its start time: %v after the start time, want api.ErrInstanceNotFound", purged, err)
	}
	if n := ran("purged"); n != 0 {
		t.Errorf("%s: the orchestrator ran %d times after its instance was terminated and purged", purged, n)
	}
	requireTerminated(hour, "hour", "cancelled early")

	// The ids start new instances normally.
	if err := c.PurgeOrchestrationState(ctx, hour); err != nil {
		t.Fatalf("purge %s: %v", hour, err)
	}
	for _, id := range []api.InstanceID{hour, purged} {
		schedule(t, ctx, c, "Later", api.WithInstanceID(id), api.WithInput("again "+string(id)))
	}
	for _, id := range []api.InstanceID{hour, purged} {
		requireCompleted(t, waitForCompletion(t, ctx, be, id), `"ran again `+string(id)+`"`)
	}
	if h, s, p := ran("hour"), ran("soon"), ran("purged"); h+s+p != 0 {
		t.Errorf("the terminated executions ran (hour %d, soon %d, purged %d times)", h, s, p)
	}
}
