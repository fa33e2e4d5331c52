package backendtest

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

// deadLetterCases check which deliveries count towards the dead-letter limit
// and that a dead letter reaches its workflow (see taskhub/deadletter.go).
func deadLetterCases(cfg config) []testCase {
	return []testCase{
		{"DeadLetter_ActivityAbandonsNeverCount", testActivityAbandonsNeverCount},
		{"DeadLetter_OnlyFailedExecutionsCount", func(t *testing.T, ctx context.Context, be taskhub.Backend) {
			testOnlyFailedExecutionsCount(t, ctx, be, cfg)
		}},
		{"E2E_DeadLetteredSubOrchestration_ParentCompensates", func(t *testing.T, ctx context.Context, be taskhub.Backend) {
			testDeadLetteredSubOrchestration(t, ctx, be, cfg)
		}},
		{"DeadLetter_Activity_TaskFailsRetriesAndCompensates", testDeadLetteredActivity},
		{"DeadLetter_ReplayOfStaleMessageDropped", testReplayStale},
	}
}

func requireLimit(t *testing.T, cfg config) int {
	t.Helper()
	if cfg.maxDequeueCount == 0 {
		t.Skip("the factory did not declare its dead-letter limit: pass backendtest.MaxDequeueCount")
	}
	return cfg.maxDequeueCount
}

// lettersOf returns the dead letters of instance id, or nil if be has no
// dead-letter queue.
func lettersOf(t *testing.T, ctx context.Context, be taskhub.Backend, id api.InstanceID) []taskhub.DeadLetter {
	t.Helper()
	dl, ok := be.(taskhub.DeadLetterer)
	if !ok {
		return nil
	}
	all, err := dl.DeadLetters(ctx)
	if err != nil {
		t.Fatalf("DeadLetters: %v", err)
	}
	var out []taskhub.DeadLetter
	for _, l := range all {
		if l.InstanceID == string(id) {
			out = append(out, l)
		}
	}
	return out
}

// requireDeadLetterFailure asserts fd is a dead letter's failure that says
// why (it contains reason).
func requireDeadLetterFailure(t *testing.T, what string, fd *backend.TaskFailureDetails, reason string) {
	t.Helper()
	if fd == nil || fd.GetErrorType() != taskhub.DeadLetterErrorType || !strings.Contains(fd.GetErrorMessage(), "dead-lettered") {
		t.Fatalf("%s: failure details %v, want ErrorType %q and a message saying it was dead-lettered", what, fd, taskhub.DeadLetterErrorType)
	}
	if !strings.Contains(fd.GetErrorMessage(), reason) {
		t.Errorf("%s: failure message %q does not say why (%q)", what, fd.GetErrorMessage(), reason)
	}
}

// testActivityAbandonsNeverCount abandons an activity work item more often
// than any dead-letter limit: it is delivered every time, never set aside,
// and completes when it is finally run.
func testActivityAbandonsNeverCount(t *testing.T, ctx context.Context, be taskhub.Backend) {
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Abandoned", func(ctx *task.OrchestrationContext) (any, error) {
		var out string
		err := ctx.CallActivity("Later").Await(&out)
		return out, err
	})
	_ = r.AddActivityN("Later", func(task.ActivityContext) (any, error) { return "ran", nil })
	d := newDriver(t, be, r)
	c := backend.NewTaskHubClient(be)
	id := schedule(t, ctx, c, "Abandoned", api.WithInstanceID("abandoned-activity"))
	d.runOrch(ctx, d.fetchOrch(ctx))

	const abandons = 12 // above the default limit of 10
	for i := range abandons {
		wi, ok := d.tryAct(ctx, settleTimeout)
		if !ok {
			t.Fatalf("the activity was not delivered again after %d abandons (dead letters: %+v)", i, lettersOf(t, ctx, be, id))
		}
		if err := be.AbandonActivityWorkItem(ctx, wi); err != nil {
			t.Fatalf("abandon %d: %v", i+1, err)
		}
	}
	if letters := lettersOf(t, ctx, be, id); len(letters) != 0 {
		t.Fatalf("an abandoned activity was dead-lettered: %+v", letters)
	}
	d.runUntil(ctx, func() bool { return metadata(t, ctx, be, id).IsComplete() })
	requireCompleted(t, metadata(t, ctx, be, id), `"ran"`)
}

// testOnlyFailedExecutionsCount: an orchestration work item handed back
// unprocessed, cut off at shutdown (its work context cancelled) or abandoned
// after a failed Complete is redelivered without counting; one whose
// execution failed (state loaded, abandoned without a Complete) counts, and
// at the limit the instance ends Failed with the dead letter's reason.
func testOnlyFailedExecutionsCount(t *testing.T, ctx context.Context, be taskhub.Backend, cfg config) {
	limit := requireLimit(t, cfg)
	d := newDriver(t, be, echoRegistry())
	c := backend.NewTaskHubClient(be)
	id := schedule(t, ctx, c, "EchoOrchestrator", api.WithInstanceID("counted"), api.WithInput("c"))
	fetch := func(what string) *backend.OrchestrationWorkItem {
		t.Helper()
		wi, ok := d.tryOrch(ctx, settleTimeout)
		if !ok {
			t.Fatalf("%s: no work item within %s (status %s, dead letters %+v)", what, settleTimeout,
				describe(metadata(t, ctx, be, id)), lettersOf(t, ctx, be, id))
		}
		return wi
	}
	abandon := func(wi *backend.OrchestrationWorkItem) {
		t.Helper()
		if err := be.AbandonOrchestrationWorkItem(ctx, wi); err != nil {
			t.Fatalf("AbandonOrchestrationWorkItem: %v", err)
		}
	}
	load := func(ctx context.Context, wi *backend.OrchestrationWorkItem) {
		t.Helper()
		state, err := be.GetOrchestrationRuntimeState(ctx, wi)
		if err != nil {
			t.Fatalf("GetOrchestrationRuntimeState: %v", err)
		}
		wi.State = state
	}
	notFailed := func(after string) {
		t.Helper()
		if md := metadata(t, ctx, be, id); md.RuntimeStatus != api.RUNTIME_STATUS_PENDING {
			t.Fatalf("after %s: %s, want still Pending", after, describe(md))
		}
		if letters := lettersOf(t, ctx, be, id); len(letters) != 0 {
			t.Fatalf("after %s: dead-lettered %+v", after, letters)
		}
	}

	for range limit + 1 {
		abandon(fetch("hand-back"))
	}
	notFailed("hand-backs of unprocessed work items")

	for range limit + 1 {
		wi := fetch("cut off")
		work, cancel := context.WithCancel(ctx)
		load(work, wi)
		cancel() // the shutdown deadline cut the work off
		abandon(wi)
	}
	notFailed("work items cut off at shutdown")

	for range limit + 1 {
		wi := fetch("failed complete")
		load(ctx, wi)
		done, cancel := context.WithCancel(ctx)
		cancel()
		if err := be.CompleteOrchestrationWorkItem(done, wi); err == nil {
			t.Fatalf("CompleteOrchestrationWorkItem with a cancelled context succeeded")
		}
		abandon(wi)
	}
	notFailed("abandons after failed completes")

	for i := 1; i <= limit; i++ {
		wi := fetch("failed execution")
		if first(wi.NewEvents, isStarted) == nil {
			t.Fatalf("delivery %d: %s, want the ExecutionStarted", i, summary(wi.NewEvents))
		}
		load(ctx, wi)
		abandon(wi) // the executor failed
		if i < limit {
			notFailed("a failed execution below the limit")
		}
	}
	md := waitForStatus(t, ctx, be, id, api.RUNTIME_STATUS_FAILED)
	reason := "dead-lettered"
	if _, ok := be.(taskhub.DeadLetterer); ok {
		letters := lettersOf(t, ctx, be, id)
		if len(letters) != 1 || letters[0].EventType != "ExecutionStarted" || letters[0].DequeueCount != limit || letters[0].Reason == "" {
			t.Fatalf("dead letters %+v: want the ExecutionStarted, with %d failed deliveries and a reason", letters, limit)
		}
		reason = letters[0].Reason
	}
	requireDeadLetterFailure(t, "the dead-lettered instance", md.FailureDetails, reason)
	h := history(t, ctx, be, id)
	if count(h, isStarted) != 1 || count(h, isCompleted) != 1 || count(h, isTaskScheduled) != 0 {
		t.Errorf("history %s: want the start and the failure, and no orchestrator turn", summary(h))
	}
	d.noOrch(ctx)
	d.noAct(ctx)

	if dl, ok := be.(taskhub.DeadLetterer); ok {
		letters := lettersOf(t, ctx, be, id)
		if err := dl.ReplayDeadLetter(ctx, letters[0].ID); !errors.Is(err, taskhub.ErrDeadLetterStale) {
			t.Errorf("replaying the start of an instance that ended: %v, want taskhub.ErrDeadLetterStale", err)
		}
		if left := lettersOf(t, ctx, be, id); len(left) != 0 {
			t.Errorf("dead letters after a stale replay: %+v, want it dropped", left)
		}
		d.noOrch(ctx)
	}
}

// failingExecutor fails every execution of the orchestrator named fail, as
// an executor does when an orchestrator has a bug (dronehub's worker turns
// an orchestrator's panic into such an error).
type failingExecutor struct {
	backend.Executor
	fail     string
	failures atomic.Int32
}

func (e *failingExecutor) ExecuteOrchestrator(ctx context.Context, id api.InstanceID, old, new []*backend.HistoryEvent) (*backend.ExecutionResults, error) {
	for _, ev := range append(old, new...) {
		if es := ev.GetExecutionStarted(); es != nil && es.GetName() == e.fail {
			e.failures.Add(1)
			return nil, errors.New("injected executor failure")
		}
	}
	return e.Executor.ExecuteOrchestrator(ctx, id, old, new)
}

// testDeadLetteredSubOrchestration: a sub-orchestration whose executions
// keep failing is dead-lettered and ends Failed; its parent sees the failure
// and compensates.
func testDeadLetteredSubOrchestration(t *testing.T, ctx context.Context, be taskhub.Backend, cfg config) {
	limit := requireLimit(t, cfg)
	var undos atomic.Int32
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Saga", func(ctx *task.OrchestrationContext) (any, error) {
		err := ctx.CallSubOrchestrator("Poison", task.WithSubOrchestrationInstanceID(string(ctx.ID)+"-child")).Await(nil)
		if err == nil {
			return "no failure", nil
		}
		var undone string
		if err := ctx.CallActivity("Undo", task.WithActivityInput(err.Error())).Await(&undone); err != nil {
			return nil, err
		}
		return "compensated: " + undone, nil
	})
	_ = r.AddOrchestratorN("Poison", func(ctx *task.OrchestrationContext) (any, error) { return "never", nil })
	_ = r.AddActivityN("Undo", func(ctx task.ActivityContext) (any, error) {
		undos.Add(1)
		var why string
		err := ctx.GetInput(&why)
		return why, err
	})
	exec := &failingExecutor{Executor: task.NewTaskExecutor(r), fail: "Poison"}
	startWorkerWith(t, be, exec)
	c := backend.NewTaskHubClient(be)
	id := schedule(t, ctx, c, "Saga", api.WithInstanceID("saga"))
	const child = api.InstanceID("saga-child")

	var md *api.OrchestrationMetadata
	eventually(t, 2*settleTimeout, func() bool {
		md = metadata(t, ctx, be, id)
		return md.IsComplete()
	}, "the parent of the dead-lettered child to finish")
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || !strings.HasPrefix(md.SerializedOutput, `"compensated: `) ||
		!strings.Contains(md.SerializedOutput, "dead-lettered") {
		t.Fatalf("parent: %s, want Completed with a compensation that names the dead letter", describe(md))
	}
	if n := undos.Load(); n != 1 {
		t.Errorf("the compensation ran %d times, want once", n)
	}
	cmd := metadata(t, ctx, be, child)
	if cmd.RuntimeStatus != api.RUNTIME_STATUS_FAILED {
		t.Fatalf("child: %s, want Failed", describe(cmd))
	}
	reason := "dead-lettered"
	if letters := lettersOf(t, ctx, be, child); len(letters) > 0 {
		reason = letters[0].Reason
	} else if _, ok := be.(taskhub.DeadLetterer); ok {
		t.Errorf("no dead letter for the child")
	}
	requireDeadLetterFailure(t, "the dead-lettered child", cmd.FailureDetails, reason)
	if n := exec.failures.Load(); int(n) != limit {
		t.Errorf("the child's executions failed %d times, want %d (the limit)", n, limit)
	}
}

// testDeadLetteredActivity sets aside an activity work item: its task fails
// with a DeadLettered failure at once, so a retry policy schedules it again
// and an orchestration without one compensates. Replaying the dead letter
// afterwards is refused as stale: its task has been answered.
func testDeadLetteredActivity(t *testing.T, ctx context.Context, be taskhub.Backend) {
	adl, ok := be.(taskhub.ActivityDeadLetterer)
	if !ok {
		t.Skip("backend cannot dead-letter an activity work item (taskhub.ActivityDeadLetterer)")
	}
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Retrying", func(ctx *task.OrchestrationContext) (any, error) {
		var out string
		err := ctx.CallActivity("Flaky", task.WithActivityRetryPolicy(&task.RetryPolicy{
			MaxAttempts: 2, InitialRetryInterval: 10 * time.Millisecond, BackoffCoefficient: 1,
		})).Await(&out)
		return out, err
	})
	_ = r.AddOrchestratorN("Compensating", func(ctx *task.OrchestrationContext) (any, error) {
		var out string
		err := ctx.CallActivity("Flaky").Await(&out)
		if err == nil {
			return out, nil
		}
		if err := ctx.CallActivity("Undo", task.WithActivityInput(err.Error())).Await(&out); err != nil {
			return nil, err
		}
		return "compensated: " + out, nil
	})
	_ = r.AddActivityN("Flaky", func(task.ActivityContext) (any, error) { return "recovered", nil })
	_ = r.AddActivityN("Undo", func(ctx task.ActivityContext) (any, error) {
		var why string
		err := ctx.GetInput(&why)
		return why, err
	})
	d := newDriver(t, be, r)
	c := backend.NewTaskHubClient(be)
	const reason = "test: a poison activity"

	// deadLetterFirst dead-letters the instance's first activity.
	deadLetterFirst := func(id api.InstanceID) {
		t.Helper()
		d.runOrch(ctx, d.fetchOrch(ctx))
		wi := d.fetchAct(ctx)
		if wi.InstanceID != id || wi.NewEvent.GetTaskScheduled().GetName() != "Flaky" {
			t.Fatalf("activity work item %v, want Flaky of %s", wi, id)
		}
		if err := adl.DeadLetterActivityWorkItem(ctx, wi, reason); err != nil {
			t.Fatalf("DeadLetterActivityWorkItem: %v", err)
		}
		d.noAct(ctx)
		if err := adl.DeadLetterActivityWorkItem(ctx, wi, reason); !errors.Is(err, backend.ErrWorkItemLockLost) {
			t.Errorf("dead-lettering the same work item again: %v, want backend.ErrWorkItemLockLost", err)
		}
		wake := d.fetchOrch(ctx)
		tf := first(wake.NewEvents, func(e *backend.HistoryEvent) bool { return e.GetTaskFailed() != nil })
		if tf == nil || tf.GetTaskFailed().GetTaskScheduledId() != wi.NewEvent.GetEventId() {
			t.Fatalf("the orchestration's next work item holds %s, want a TaskFailed for task %d", summary(wake.NewEvents), wi.NewEvent.GetEventId())
		}
		requireDeadLetterFailure(t, "the dead-lettered activity's task", tf.GetTaskFailed().GetFailureDetails(), reason)
		d.runOrch(ctx, wake)
	}

	retried := schedule(t, ctx, c, "Retrying", api.WithInstanceID("dl-retried"))
	deadLetterFirst(retried)
	d.runUntil(ctx, func() bool { return metadata(t, ctx, be, retried).IsComplete() })
	requireCompleted(t, metadata(t, ctx, be, retried), `"recovered"`)
	if h := history(t, ctx, be, retried); count(h, isTaskScheduled) != 2 || count(h, isTaskCompleted) != 1 {
		t.Errorf("history %s: want the dead-lettered attempt and the retry", summary(h))
	}

	compensated := schedule(t, ctx, c, "Compensating", api.WithInstanceID("dl-compensated"))
	deadLetterFirst(compensated)
	d.runUntil(ctx, func() bool { return metadata(t, ctx, be, compensated).IsComplete() })
	md := metadata(t, ctx, be, compensated)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || !strings.Contains(md.SerializedOutput, "compensated: ") ||
		!strings.Contains(md.SerializedOutput, reason) {
		t.Fatalf("%s: %s, want Completed after compensating for the dead letter", compensated, describe(md))
	}

	dl, ok := be.(taskhub.DeadLetterer)
	if !ok {
		return
	}
	letters := lettersOf(t, ctx, be, retried)
	if len(letters) != 1 || letters[0].EventType != "TaskScheduled" || !strings.Contains(letters[0].Reason, reason) {
		t.Fatalf("dead letters of %s: %+v, want its TaskScheduled with the reason", retried, letters)
	}
	if in, ok := be.(taskhub.Inspector); ok {
		if info, err := in.HubInfo(ctx); err != nil || info.DeadLetters != 2 {
			t.Errorf("HubInfo: %d dead letters, %v; want 2", info.DeadLetters, err)
		}
	}
	if err := dl.ReplayDeadLetter(ctx, letters[0].ID); !errors.Is(err, taskhub.ErrDeadLetterStale) {
		t.Errorf("replaying an activity whose task was answered: %v, want taskhub.ErrDeadLetterStale", err)
	}
	d.noAct(ctx)
	if left := lettersOf(t, ctx, be, retried); len(left) != 0 {
		t.Errorf("dead letters after a stale replay: %+v, want it dropped", left)
	}
}

// testReplayStale: an activity is dead-lettered, its instance ends, is
// purged and recreated under the same id. Replaying the old dead letter must
// not reach the new execution: it is dropped and reported stale.
func testReplayStale(t *testing.T, ctx context.Context, be taskhub.Backend) {
	adl, ok1 := be.(taskhub.ActivityDeadLetterer)
	dl, ok2 := be.(taskhub.DeadLetterer)
	if !ok1 || !ok2 {
		t.Skip("backend lacks taskhub.DeadLetterer or taskhub.ActivityDeadLetterer")
	}
	d := newDriver(t, be, echoRegistry())
	c := backend.NewTaskHubClient(be)
	const id = api.InstanceID("recreated")
	schedule(t, ctx, c, "EchoOrchestrator", api.WithInstanceID(id), api.WithInput("old"))
	d.runOrch(ctx, d.fetchOrch(ctx))
	if err := adl.DeadLetterActivityWorkItem(ctx, d.fetchAct(ctx), "test: set aside"); err != nil {
		t.Fatalf("DeadLetterActivityWorkItem: %v", err)
	}
	d.runUntil(ctx, func() bool { return metadata(t, ctx, be, id).IsComplete() })
	if md := metadata(t, ctx, be, id); md.RuntimeStatus != api.RUNTIME_STATUS_FAILED {
		t.Fatalf("after its only activity was dead-lettered: %s, want Failed", describe(md))
	}
	if err := c.PurgeOrchestrationState(ctx, id); err != nil {
		t.Fatalf("purge: %v", err)
	}
	schedule(t, ctx, c, "EchoOrchestrator", api.WithInstanceID(id), api.WithInput("new"))
	d.runOrch(ctx, d.fetchOrch(ctx)) // the new execution schedules its activity

	letters := lettersOf(t, ctx, be, id)
	if len(letters) != 1 {
		t.Fatalf("dead letters of %s: %+v, want the old execution's activity", id, letters)
	}
	err := dl.ReplayDeadLetter(ctx, letters[0].ID)
	if !errors.Is(err, taskhub.ErrDeadLetterStale) {
		t.Fatalf("replaying the old execution's activity into the new one: %v, want taskhub.ErrDeadLetterStale", err)
	}
	if left := lettersOf(t, ctx, be, id); len(left) != 0 {
		t.Errorf("dead letters after a stale replay: %+v, want it dropped", left)
	}
	wi := d.fetchAct(ctx)
	if got := wi.NewEvent.GetTaskScheduled().GetInput().GetValue(); got != `"new!"` {
		t.Fatalf("activity work item with input %s, want only the new execution's %q", got, `"new!"`)
	}
	d.runAct(ctx, wi)
	d.noAct(ctx)
	d.runUntil(ctx, func() bool { return metadata(t, ctx, be, id).IsComplete() })
	requireCompleted(t, metadata(t, ctx, be, id), `"new!"`)
	if h := history(t, ctx, be, id); count(h, isTaskScheduled) != 1 || count(h, isTaskCompleted) != 1 {
		t.Errorf("history of the new execution %s: want one task, completed once", summary(h))
	}
}
