package backendtest

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

// e2eCases run real orchestrations on durabletask-go's workers.
func e2eCases() []testCase {
	return []testCase{
		{"E2E_ActivityFanOutFanIn", testFanOutFanIn},
		{"E2E_DurableTimer_FiresNoEarlier", testDurableTimer},
		{"E2E_ScheduledStart_WaitsForStartTime", testScheduledStart},
		{"E2E_ContinueAsNew_KeepsOnlyLastExecution", testContinueAsNew},
		{"E2E_ContinueAsNew_StaleWatchdogTimerIgnored", testStaleWatchdogTimer},
		{"E2E_SubOrchestration", testSubOrchestration},
		{"E2E_Terminate_Recursive", testTerminate},
		{"E2E_SuspendResume", testSuspendResume},
		{"E2E_LargePayloads", testLargePayloads},
	}
}

// schedule starts an orchestration, failing the test on error.
func schedule(t *testing.T, ctx context.Context, c backend.TaskHubClient, name string, opts ...api.NewOrchestrationOptions) api.InstanceID {
	t.Helper()
	id, err := c.ScheduleNewOrchestration(ctx, name, opts...)
	if err != nil {
		t.Fatalf("schedule %s: %v", name, err)
	}
	return id
}

func testFanOutFanIn(t *testing.T, ctx context.Context, be taskhub.Backend) {
	const n = 20
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("FanOut", func(ctx *task.OrchestrationContext) (any, error) {
		tasks := make([]task.Task, n)
		for i := range tasks {
			tasks[i] = ctx.CallActivity("Square", task.WithActivityInput(i))
		}
		sum := 0
		for _, tk := range tasks {
			var sq int
			if err := tk.Await(&sq); err != nil {
				return nil, err
			}
			sum += sq
		}
		return sum, nil
	})
	_ = r.AddActivityN("Square", func(ctx task.ActivityContext) (any, error) {
		var i int
		if err := ctx.GetInput(&i); err != nil {
			return nil, err
		}
		return i * i, nil
	})
	startWorker(t, be, r)
	c := backend.NewTaskHubClient(be)
	id := schedule(t, ctx, c, "FanOut", api.WithInstanceID("fan-out"))
	want := 0
	for i := range n {
		want += i * i
	}
	requireCompleted(t, waitForCompletion(t, ctx, be, id), fmt.Sprint(want))
}

// testDurableTimer: a 1 s timer fires no earlier than its time.
func testDurableTimer(t *testing.T, ctx context.Context, be taskhub.Backend) {
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Timer", func(ctx *task.OrchestrationContext) (any, error) {
		start := ctx.CurrentTimeUtc
		if err := ctx.CreateTimer(time.Second).Await(nil); err != nil {
			return nil, err
		}
		return []time.Time{start, ctx.CurrentTimeUtc}, nil
	})
	startWorker(t, be, r)
	c := backend.NewTaskHubClient(be)
	scheduled := time.Now()
	id := schedule(t, ctx, c, "Timer", api.WithInstanceID("timer"))
	md := waitForCompletion(t, ctx, be, id)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("timer orchestration: %s", describe(md))
	}
	if elapsed := time.Since(scheduled); elapsed < time.Second {
		t.Errorf("a 1s timer completed %s after scheduling", elapsed)
	}
	var times []time.Time
	if err := json.Unmarshal([]byte(md.SerializedOutput), &times); err != nil || len(times) != 2 {
		t.Fatalf("output %q: %v", md.SerializedOutput, err)
	}
	if fired := times[1].Sub(times[0]); fired < time.Second {
		t.Errorf("the timer fired %s after it was created, before its 1s", fired)
	}
	h := history(t, ctx, be, id)
	created, fired := first(h, isTimerCreated), first(h, isTimerFired)
	if created == nil || fired == nil {
		t.Fatalf("history %s lacks TimerCreated/TimerFired", summary(h))
	}
	if fired.GetTimerFired().GetTimerId() != created.GetEventId() ||
		!fired.GetTimerFired().GetFireAt().AsTime().Equal(created.GetTimerCreated().GetFireAt().AsTime()) {
		t.Errorf("TimerFired %v does not match TimerCreated %v", fired, created)
	}
	if fireAt := created.GetTimerCreated().GetFireAt().AsTime(); times[1].Before(fireAt) {
		t.Errorf("the turn that saw the timer fire ran at %s, before its fire time %s", times[1], fireAt)
	}
}

// testScheduledStart: api.WithStartTime 2 s ahead keeps the instance Pending
// until then; it starts no earlier than the time.
func testScheduledStart(t *testing.T, ctx context.Context, be taskhub.Backend) {
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Now", func(ctx *task.OrchestrationContext) (any, error) {
		return ctx.CurrentTimeUtc, nil
	})
	startWorker(t, be, r)
	c := backend.NewTaskHubClient(be)
	startAt := time.Now().Add(2 * time.Second)
	id := schedule(t, ctx, c, "Now", api.WithInstanceID("scheduled"), api.WithStartTime(startAt))

	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	polls := 0
	for time.Until(startAt) > 50*time.Millisecond {
		if md := metadata(t, ctx, be, id); md.RuntimeStatus != api.RUNTIME_STATUS_PENDING {
			t.Fatalf("%s before the scheduled start time (%s early): %s", id, time.Until(startAt), describe(md))
		}
		polls++
		<-tick.C
	}
	if polls == 0 {
		t.Fatalf("never observed the instance before its start time")
	}

	md := waitForCompletion(t, ctx, be, id)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("scheduled orchestration: %s", describe(md))
	}
	var ranAt time.Time
	if err := json.Unmarshal([]byte(md.SerializedOutput), &ranAt); err != nil {
		t.Fatalf("output %q: %v", md.SerializedOutput, err)
	}
	if ranAt.Before(startAt) {
		t.Errorf("started at %s, %s before its scheduled start %s", ranAt, startAt.Sub(ranAt), startAt)
	}
	if late := ranAt.Sub(startAt); late > 5*time.Second {
		t.Errorf("started %s after its scheduled start", late)
	}
}

// testContinueAsNew: an orchestration that continues as new 5 times ends
// with the right output, and its history holds only the last execution.
func testContinueAsNew(t *testing.T, ctx context.Context, be taskhub.Backend) {
	var calls atomic.Int32
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Counter", func(ctx *task.OrchestrationContext) (any, error) {
		var n int
		if err := ctx.GetInput(&n); err != nil {
			return nil, err
		}
		var next int
		if err := ctx.CallActivity("Inc", task.WithActivityInput(n)).Await(&next); err != nil {
			return nil, err
		}
		if next <= 5 {
			ctx.ContinueAsNew(next)
			return nil, nil
		}
		return next, nil
	})
	_ = r.AddActivityN("Inc", func(ctx task.ActivityContext) (any, error) {
		calls.Add(1)
		var n int
		if err := ctx.GetInput(&n); err != nil {
			return nil, err
		}
		return n + 1, nil
	})
	startWorker(t, be, r)
	c := backend.NewTaskHubClient(be)
	// Executions run with inputs 0..5: five continue-as-new, then 6 is returned.
	id := schedule(t, ctx, c, "Counter", api.WithInstanceID("counter"), api.WithInput(0))
	md := waitForCompletion(t, ctx, be, id)
	requireCompleted(t, md, "6")
	if md.SerializedInput != "5" {
		t.Errorf("input %q, want the last execution's input 5", md.SerializedInput)
	}
	if n := calls.Load(); n < 6 {
		t.Errorf("Inc ran %d times, want at least 6", n)
	}
	h := history(t, ctx, be, id)
	starts := 0
	for _, e := range h {
		if es := e.GetExecutionStarted(); es != nil {
			starts++
			if es.GetInput().GetValue() != "5" {
				t.Errorf("history holds an execution with input %q", es.GetInput().GetValue())
			}
		}
	}
	if starts != 1 || count(h, isTaskScheduled) != 1 || count(h, isTaskCompleted) != 1 || count(h, isCompleted) != 1 {
		t.Errorf("history %s: want exactly the last execution (one start, one task, one completion)", summary(h))
	}
}

// spyBackend reports every orchestration work item it hands out.
type spyBackend struct {
	taskhub.Backend
	onOrchestrationWorkItem func(*backend.OrchestrationWorkItem)
}

func (s *spyBackend) GetOrchestrationWorkItem(ctx context.Context) (*backend.OrchestrationWorkItem, error) {
	wi, err := s.Backend.GetOrchestrationWorkItem(ctx)
	if err == nil && wi != nil {
		s.onOrchestrationWorkItem(wi)
	}
	return wi, err
}

// testStaleWatchdogTimer is the stale-timer guard. Execution 1 waits for an
// event with a 2 s timeout (a timer with id 0), gets the event at once and
// continues as new; execution 2 calls an activity, also with id 0, that is
// still running when the old timer fires. durabletask-go matches TimerFired
// by id alone, so without the guard the activity's task would complete with
// the timer's empty result. The activity's real result must come back.
func testStaleWatchdogTimer(t *testing.T, ctx context.Context, be taskhub.Backend) {
	const id = api.InstanceID("watchdog")
	staleDelivered := make(chan struct{})
	var once sync.Once
	spy := &spyBackend{Backend: be, onOrchestrationWorkItem: func(wi *backend.OrchestrationWorkItem) {
		if wi.InstanceID == id && first(wi.NewEvents, isTimerFired) != nil {
			once.Do(func() { close(staleDelivered) })
		}
	}}
	release := make(chan struct{})
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Watchdog", func(ctx *task.OrchestrationContext) (any, error) {
		var generation int
		if err := ctx.GetInput(&generation); err != nil {
			return nil, err
		}
		if generation == 0 {
			var v string
			if err := ctx.WaitForSingleEvent("e", 2*time.Second).Await(&v); err != nil {
				return "watchdog expired", nil
			}
			ctx.ContinueAsNew(1)
			return nil, nil
		}
		var out string
		if err := ctx.CallActivity("Slow").Await(&out); err != nil {
			return nil, err
		}
		return out, nil
	})
	_ = r.AddActivityN("Slow", func(ctx task.ActivityContext) (any, error) {
		select {
		case <-release:
			return "real", nil
		case <-ctx.Context().Done():
			return nil, ctx.Context().Err()
		}
	})
	startWorker(t, spy, r)
	c := backend.NewTaskHubClient(spy)
	schedule(t, ctx, c, "Watchdog", api.WithInstanceID(id), api.WithInput(0))

	// Raise the event only once the watchdog timer exists, so that the first
	// execution really leaves a timer behind.
	var fireAt time.Time
	eventually(t, settleTimeout, func() bool {
		if e := first(history(t, ctx, be, id), isTimerCreated); e != nil {
			fireAt = e.GetTimerCreated().GetFireAt().AsTime()
			return true
		}
		return false
	}, "the watchdog timer to be created")
	if err := c.RaiseEvent(ctx, id, "e", api.WithEventPayload("ping")); err != nil {
		t.Fatalf("raise: %v", err)
	}

	// Keep the activity running until the old timer has been delivered to the
	// new execution. A backend that drops stale timers before handing out work
	// items never delivers it: give up waiting well after its fire time.
	select {
	case <-staleDelivered:
	case <-time.After(time.Until(fireAt) + 2*time.Second):
		t.Logf("the stale timer was never handed out in a work item (dropped by the backend)")
	}
	close(release)

	md := waitForCompletion(t, ctx, be, id)
	requireCompleted(t, md, `"real"`)
	if time.Now().Before(fireAt) {
		t.Fatalf("finished before the old timer's fire time %s: the case proved nothing", fireAt)
	}
	h := history(t, ctx, be, id)
	if n := count(h, isTimerFired); n != 0 {
		t.Errorf("the new execution's history holds %d TimerFired events from the old one: %s", n, summary(h))
	}
	if count(h, isStarted) != 1 || first(h, isStarted).GetExecutionStarted().GetInput().GetValue() != "1" {
		t.Errorf("history %s: want only the second execution", summary(h))
	}
}

func testSubOrchestration(t *testing.T, ctx context.Context, be taskhub.Backend) {
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Parent", func(ctx *task.OrchestrationContext) (any, error) {
		var in, out string
		if err := ctx.GetInput(&in); err != nil {
			return nil, err
		}
		err := ctx.CallSubOrchestrator("Child",
			task.WithSubOrchestratorInput(in),
			task.WithSubOrchestrationInstanceID(string(ctx.ID)+"-child")).Await(&out)
		if err != nil {
			return nil, err
		}
		return "parent(" + out + ")", nil
	})
	_ = r.AddOrchestratorN("Child", func(ctx *task.OrchestrationContext) (any, error) {
		var in, out string
		if err := ctx.GetInput(&in); err != nil {
			return nil, err
		}
		if err := ctx.CallActivity("Echo", task.WithActivityInput(in)).Await(&out); err != nil {
			return nil, err
		}
		return "child(" + out + ")", nil
	})
	_ = r.AddActivityN("Echo", echo)
	startWorker(t, be, r)
	c := backend.NewTaskHubClient(be)
	id := schedule(t, ctx, c, "Parent", api.WithInstanceID("parent"), api.WithInput("x"))
	requireCompleted(t, waitForCompletion(t, ctx, be, id), `"parent(child(x))"`)

	child := metadata(t, ctx, be, "parent-child")
	requireCompleted(t, child, `"child(x)"`)
	if child.Name != "Child" || child.SerializedInput != `"x"` {
		t.Errorf("child metadata: name %q input %q", child.Name, child.SerializedInput)
	}

	// Purging the parent through the client purges its child too.
	if err := c.PurgeOrchestrationState(ctx, id); err != nil {
		t.Fatalf("purge: %v", err)
	}
	for _, gone := range []api.InstanceID{id, "parent-child"} {
		if _, err := be.GetOrchestrationMetadata(ctx, gone); err == nil {
			t.Errorf("%s still exists after a recursive purge", gone)
		}
	}
}

func testTerminate(t *testing.T, ctx context.Context, be taskhub.Backend) {
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Forever", func(ctx *task.OrchestrationContext) (any, error) {
		return nil, ctx.WaitForSingleEvent("never", -1).Await(nil)
	})
	_ = r.AddOrchestratorN("ForeverParent", func(ctx *task.OrchestrationContext) (any, error) {
		return nil, ctx.CallSubOrchestrator("Forever", task.WithSubOrchestrationInstanceID(string(ctx.ID)+"-child")).Await(nil)
	})
	startWorker(t, be, r)
	c := backend.NewTaskHubClient(be)
	id := schedule(t, ctx, c, "ForeverParent", api.WithInstanceID("terminate"))
	const child = api.InstanceID("terminate-child")
	waitForStatus(t, ctx, be, id, api.RUNTIME_STATUS_RUNNING)
	waitForStatus(t, ctx, be, child, api.RUNTIME_STATUS_RUNNING)

	if err := c.TerminateOrchestration(ctx, id, api.WithOutput("stopped")); err != nil {
		t.Fatalf("terminate: %v", err)
	}
	md := waitForCompletion(t, ctx, be, id)
	if md.RuntimeStatus != api.RUNTIME_STATUS_TERMINATED || md.SerializedOutput != `"stopped"` {
		t.Fatalf("terminated instance: %s, want Terminated with output %q", describe(md), `"stopped"`)
	}
	if md := waitForCompletion(t, ctx, be, child); md.RuntimeStatus != api.RUNTIME_STATUS_TERMINATED {
		t.Errorf("child after a recursive terminate: %s, want Terminated", describe(md))
	}
	h := history(t, ctx, be, id)
	if count(h, isCompleted) != 1 {
		t.Errorf("history %s: want one ExecutionCompleted", summary(h))
	}
}

func testSuspendResume(t *testing.T, ctx context.Context, be taskhub.Backend) {
	startWorker(t, be, echoRegistry())
	c := backend.NewTaskHubClient(be)
	id := schedule(t, ctx, c, "WaitEvent", api.WithInstanceID("suspend"))
	waitForStatus(t, ctx, be, id, api.RUNTIME_STATUS_RUNNING)

	if err := c.SuspendOrchestration(ctx, id, "pause"); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	waitForStatus(t, ctx, be, id, api.RUNTIME_STATUS_SUSPENDED)

	// An event that arrives while suspended is taken in but not acted on.
	if err := c.RaiseEvent(ctx, id, "e", api.WithEventPayload("after resume")); err != nil {
		t.Fatalf("raise: %v", err)
	}
	eventually(t, settleTimeout, func() bool {
		return first(history(t, ctx, be, id), isEventRaised) != nil
	}, "the event raised while suspended to reach the history")
	if md := metadata(t, ctx, be, id); md.RuntimeStatus != api.RUNTIME_STATUS_SUSPENDED {
		t.Fatalf("after an event while suspended: %s, want Suspended", describe(md))
	}

	if err := c.ResumeOrchestration(ctx, id, "go on"); err != nil {
		t.Fatalf("resume: %v", err)
	}
	requireCompleted(t, waitForCompletion(t, ctx, be, id), `"after resume"`)
}

// testLargePayloads round-trips a 200 KB input and output.
func testLargePayloads(t *testing.T, ctx context.Context, be taskhub.Backend) {
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Big", func(ctx *task.OrchestrationContext) (any, error) {
		var in, out string
		if err := ctx.GetInput(&in); err != nil {
			return nil, err
		}
		if err := ctx.CallActivity("Reverse", task.WithActivityInput(in)).Await(&out); err != nil {
			return nil, err
		}
		return out, nil
	})
	_ = r.AddActivityN("Reverse", func(ctx task.ActivityContext) (any, error) {
		var s string
		if err := ctx.GetInput(&s); err != nil {
			return nil, err
		}
		return reverse(s), nil
	})
	startWorker(t, be, r)
	c := backend.NewTaskHubClient(be)
	payload := randomText(200 * 1024)
	id := schedule(t, ctx, c, "Big", api.WithInstanceID("large"), api.WithInput(payload))
	md := waitForCompletion(t, ctx, be, id)
	want, _ := json.Marshal(reverse(payload))
	requireCompleted(t, md, string(want))
	if in, _ := json.Marshal(payload); md.SerializedInput != string(in) {
		t.Errorf("input came back as %s", abbreviate(md.SerializedInput))
	}
}

// randomText returns n deterministic pseudo-random letters: incompressible
// enough that a backend cannot squeeze it under its size limits by accident.
func randomText(n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	rng := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[rng.IntN(len(letters))]
	}
	return string(b)
}

func reverse(s string) string {
	b := []byte(s)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}
