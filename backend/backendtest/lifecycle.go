package backendtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"google.golang.org/protobuf/proto"

	"github.com/dronehub/dronehub/taskhub"
)

// lifecycleCases drive the backend directly, one work item at a time.
func lifecycleCases() []testCase {
	return []testCase{
		{"GetWorkItem_EmptyHub_ErrNoWorkItems", testEmptyHub},
		{"WorkItemLifecycle", testWorkItemLifecycle},
		{"GetOrchestrationMetadata_UnknownInstance", testMetadataUnknownInstance},
		{"CreateOrchestrationInstance_DuplicateIDRejected", testDuplicateInstanceID},
		{"AbandonOrchestrationWorkItem_Redelivers", testAbandonOrchestrationWorkItem},
		{"AbandonActivityWorkItem_Redelivers", testAbandonActivityWorkItem},
		{"EventsArrivingDuringTurn_Survive", testEventsDuringTurn},
		{"DuplicateActivityResult_CompletesOnce", testDuplicateActivityResult},
		{"ActivitiesCompletingOutOfOrder", testOutOfOrderCompletion},
		{"EventRaisedBeforeInstanceExists_Delivered", testEventBeforeInstance},
		{"PurgeOrchestrationState", testPurge},
	}
}

// echoOrchestrator calls Echo with its input plus "!" and returns the result.
func echoOrchestrator(ctx *task.OrchestrationContext) (any, error) {
	var in string
	if err := ctx.GetInput(&in); err != nil {
		return nil, err
	}
	var out string
	if err := ctx.CallActivity("Echo", task.WithActivityInput(in+"!")).Await(&out); err != nil {
		return nil, err
	}
	return out, nil
}

// waitEventOrchestrator waits for event "e" without timeout and returns its
// payload.
func waitEventOrchestrator(ctx *task.OrchestrationContext) (any, error) {
	var v string
	if err := ctx.WaitForSingleEvent("e", -1).Await(&v); err != nil {
		return nil, err
	}
	return v, nil
}

func echoRegistry() *task.TaskRegistry {
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("EchoOrchestrator", echoOrchestrator)
	_ = r.AddOrchestratorN("WaitEvent", waitEventOrchestrator)
	_ = r.AddActivityN("Echo", echo)
	return r
}

// testEmptyHub: with nothing to do, both fetches return ErrNoWorkItems (a nil
// item with a nil error crashes durabletask-go's worker), and a fetch that
// waits for work gives up when its context ends.
func testEmptyHub(t *testing.T, ctx context.Context, be taskhub.Backend) {
	for _, fetch := range []struct {
		name string
		get  func(context.Context) (any, error)
	}{
		{"GetOrchestrationWorkItem", func(ctx context.Context) (any, error) { return be.GetOrchestrationWorkItem(ctx) }},
		{"GetActivityWorkItem", func(ctx context.Context) (any, error) { return be.GetActivityWorkItem(ctx) }},
	} {
		short, cancel := context.WithTimeout(ctx, noWorkWait)
		start := time.Now()
		item, err := fetch.get(short)
		cancel()
		requireNoWork(t, fetch.name, item, err)
		if took := time.Since(start); took > noWorkWait+2*time.Second {
			t.Errorf("%s on an empty hub took %s with a %s context", fetch.name, took, noWorkWait)
		}
	}
}

// testWorkItemLifecycle walks one instance through every step: create →
// orchestration work item with ExecutionStarted → complete → activity work
// item → complete → orchestration work item with TaskCompleted → completed.
func testWorkItemLifecycle(t *testing.T, ctx context.Context, be taskhub.Backend) {
	d := newDriver(t, be, echoRegistry())
	c := backend.NewTaskHubClient(be)

	before := time.Now()
	id, err := c.ScheduleNewOrchestration(ctx, "EchoOrchestrator", api.WithInstanceID("lifecycle"), api.WithInput("hello"))
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	after := time.Now()
	if id != "lifecycle" {
		t.Fatalf("instance id %q, want lifecycle", id)
	}

	md := metadata(t, ctx, be, id)
	if md.RuntimeStatus != api.RUNTIME_STATUS_PENDING {
		t.Errorf("new instance: status %s, want Pending", taskhub.StatusName(md.RuntimeStatus))
	}
	if md.Name != "EchoOrchestrator" || md.InstanceID != id || md.SerializedInput != `"hello"` {
		t.Errorf("new instance metadata: name %q id %q input %q", md.Name, md.InstanceID, md.SerializedInput)
	}
	if md.CreatedAt.Before(before.Add(-time.Second)) || md.CreatedAt.After(after.Add(time.Second)) {
		t.Errorf("CreatedAt %s is not around the creation time %s", md.CreatedAt, before)
	}
	d.noAct(ctx)

	// Turn 1: the start event.
	wi := d.fetchOrch(ctx)
	if wi.InstanceID != id {
		t.Fatalf("work item for %q, want %q", wi.InstanceID, id)
	}
	started := first(wi.NewEvents, isStarted)
	if started == nil {
		t.Fatalf("first work item has no ExecutionStarted: %s", summary(wi.NewEvents))
	}
	es := started.GetExecutionStarted()
	if es.GetName() != "EchoOrchestrator" || es.GetInput().GetValue() != `"hello"` || es.GetOrchestrationInstance().GetInstanceId() != string(id) {
		t.Errorf("ExecutionStarted: name %q input %q instance %q", es.GetName(), es.GetInput().GetValue(), es.GetOrchestrationInstance().GetInstanceId())
	}
	d.noOrch(ctx) // the instance is locked while its work item is out
	d.runOrch(ctx, wi)

	md = metadata(t, ctx, be, id)
	if md.RuntimeStatus != api.RUNTIME_STATUS_RUNNING {
		t.Errorf("after the first turn: status %s, want Running", taskhub.StatusName(md.RuntimeStatus))
	}
	h := history(t, ctx, be, id)
	if count(h, isStarted) != 1 || count(h, isTaskScheduled) != 1 {
		t.Errorf("history after the first turn: %s, want one ExecutionStarted and one TaskScheduled", summary(h))
	}
	d.noOrch(ctx)

	// The activity.
	awi := d.fetchAct(ctx)
	ts := awi.NewEvent.GetTaskScheduled()
	if awi.InstanceID != id || ts == nil || ts.GetName() != "Echo" || ts.GetInput().GetValue() != `"hello!"` {
		t.Fatalf("activity work item: instance %q event %v", awi.InstanceID, awi.NewEvent)
	}
	d.noAct(ctx) // locked while out
	d.runAct(ctx, awi)

	// Turn 2: the activity's result.
	wi = d.fetchOrch(ctx)
	tcEvent := first(wi.NewEvents, isTaskCompleted)
	if wi.InstanceID != id || tcEvent == nil {
		t.Fatalf("second work item for %q: %s, want TaskCompleted for %q", wi.InstanceID, summary(wi.NewEvents), id)
	}
	tc := tcEvent.GetTaskCompleted()
	if tc.GetTaskScheduledId() != awi.NewEvent.GetEventId() || tc.GetResult().GetValue() != `"hello!"` {
		t.Errorf("TaskCompleted: scheduled id %d result %q, want %d %q", tc.GetTaskScheduledId(), tc.GetResult().GetValue(), awi.NewEvent.GetEventId(), `"hello!"`)
	}
	d.runOrch(ctx, wi)

	requireCompleted(t, metadata(t, ctx, be, id), `"hello!"`)
	h = history(t, ctx, be, id)
	if count(h, isCompleted) != 1 || count(h, isTaskCompleted) != 1 {
		t.Errorf("final history: %s", summary(h))
	}
	d.noOrch(ctx)
	d.noAct(ctx)
}

func testMetadataUnknownInstance(t *testing.T, ctx context.Context, be taskhub.Backend) {
	md, err := be.GetOrchestrationMetadata(ctx, "no-such-instance")
	if !errors.Is(err, api.ErrInstanceNotFound) {
		t.Fatalf("GetOrchestrationMetadata(unknown) = %v, %v; want an error wrapping api.ErrInstanceNotFound", md, err)
	}
	_, err = backend.NewTaskHubClient(be).FetchOrchestrationMetadata(ctx, "no-such-instance")
	if !errors.Is(err, api.ErrInstanceNotFound) {
		t.Fatalf("FetchOrchestrationMetadata(unknown) = %v; want an error wrapping api.ErrInstanceNotFound", err)
	}
}

func testDuplicateInstanceID(t *testing.T, ctx context.Context, be taskhub.Backend) {
	c := backend.NewTaskHubClient(be)
	if _, err := c.ScheduleNewOrchestration(ctx, "EchoOrchestrator", api.WithInstanceID("dup"), api.WithInput("a")); err != nil {
		t.Fatalf("schedule: %v", err)
	}
	_, err := c.ScheduleNewOrchestration(ctx, "EchoOrchestrator", api.WithInstanceID("dup"), api.WithInput("b"))
	if !errors.Is(err, api.ErrDuplicateInstance) {
		t.Fatalf("second schedule with the same id: %v, want an error wrapping api.ErrDuplicateInstance", err)
	}
	if md := metadata(t, ctx, be, "dup"); md.SerializedInput != `"a"` {
		t.Errorf("input %s after the rejected duplicate, want the first %q", md.SerializedInput, `"a"`)
	}
}

func testAbandonOrchestrationWorkItem(t *testing.T, ctx context.Context, be taskhub.Backend) {
	d := newDriver(t, be, echoRegistry())
	c := backend.NewTaskHubClient(be)
	id, err := c.ScheduleNewOrchestration(ctx, "EchoOrchestrator", api.WithInstanceID("abandon-orch"), api.WithInput("x"))
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}

	wi := d.fetchOrch(ctx)
	if err := be.AbandonOrchestrationWorkItem(ctx, wi); err != nil {
		t.Fatalf("AbandonOrchestrationWorkItem: %v", err)
	}
	if md := metadata(t, ctx, be, id); md.RuntimeStatus != api.RUNTIME_STATUS_PENDING {
		t.Errorf("after abandon: status %s, want Pending", taskhub.StatusName(md.RuntimeStatus))
	}
	if h := history(t, ctx, be, id); len(h) != 0 {
		t.Errorf("after abandon: history %s, want empty", summary(h))
	}

	again := d.fetchOrch(ctx)
	if again.InstanceID != id || first(again.NewEvents, isStarted) == nil {
		t.Fatalf("redelivered work item for %q: %s, want ExecutionStarted for %q", again.InstanceID, summary(again.NewEvents), id)
	}
	if len(again.NewEvents) != len(wi.NewEvents) {
		t.Errorf("redelivered %d events, first delivery had %d", len(again.NewEvents), len(wi.NewEvents))
	}
	d.runOrch(ctx, again)
	d.runUntil(ctx, func() bool { return metadata(t, ctx, be, id).IsComplete() })
	requireCompleted(t, metadata(t, ctx, be, id), `"x!"`)
}

func testAbandonActivityWorkItem(t *testing.T, ctx context.Context, be taskhub.Backend) {
	d := newDriver(t, be, echoRegistry())
	c := backend.NewTaskHubClient(be)
	id, err := c.ScheduleNewOrchestration(ctx, "EchoOrchestrator", api.WithInstanceID("abandon-act"), api.WithInput("y"))
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	d.runOrch(ctx, d.fetchOrch(ctx))

	awi := d.fetchAct(ctx)
	if err := be.AbandonActivityWorkItem(ctx, awi); err != nil {
		t.Fatalf("AbandonActivityWorkItem: %v", err)
	}
	again := d.fetchAct(ctx)
	if again.InstanceID != id || again.NewEvent.GetEventId() != awi.NewEvent.GetEventId() ||
		again.NewEvent.GetTaskScheduled().GetName() != "Echo" ||
		again.NewEvent.GetTaskScheduled().GetInput().GetValue() != awi.NewEvent.GetTaskScheduled().GetInput().GetValue() {
		t.Fatalf("redelivered activity: instance %q event %v, want task %d of %q", again.InstanceID, again.NewEvent, awi.NewEvent.GetEventId(), id)
	}
	d.noOrch(ctx) // abandoning sends nothing to the orchestration
	d.runAct(ctx, again)
	d.runUntil(ctx, func() bool { return metadata(t, ctx, be, id).IsComplete() })
	requireCompleted(t, metadata(t, ctx, be, id), `"y!"`)
}

// testEventsDuringTurn raises an event while the instance's work item is
// out: completing that work item must not consume it.
func testEventsDuringTurn(t *testing.T, ctx context.Context, be taskhub.Backend) {
	d := newDriver(t, be, echoRegistry())
	c := backend.NewTaskHubClient(be)
	id, err := c.ScheduleNewOrchestration(ctx, "WaitEvent", api.WithInstanceID("during-turn"))
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	wi := d.fetchOrch(ctx)
	if err := c.RaiseEvent(ctx, id, "e", api.WithEventPayload("late")); err != nil {
		t.Fatalf("raise: %v", err)
	}
	d.noOrch(ctx) // still locked
	d.runOrch(ctx, wi)
	if md := metadata(t, ctx, be, id); md.RuntimeStatus != api.RUNTIME_STATUS_RUNNING {
		t.Fatalf("after the first turn: %s, want Running", describe(md))
	}

	wi = d.fetchOrch(ctx)
	if raised := first(wi.NewEvents, isEventRaised); raised == nil || raised.GetEventRaised().GetName() != "e" {
		t.Fatalf("the event raised during the first turn was not delivered after it: %s", summary(wi.NewEvents))
	}
	d.runOrch(ctx, wi)
	requireCompleted(t, metadata(t, ctx, be, id), `"late"`)
}

// testDuplicateActivityResult delivers the same activity result twice (and
// once more after the instance finished): execution is at-least-once, so the
// orchestration must still complete exactly once with the right output.
func testDuplicateActivityResult(t *testing.T, ctx context.Context, be taskhub.Backend) {
	d := newDriver(t, be, echoRegistry())
	c := backend.NewTaskHubClient(be)
	id, err := c.ScheduleNewOrchestration(ctx, "EchoOrchestrator", api.WithInstanceID("duplicate"), api.WithInput("once"))
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	d.runOrch(ctx, d.fetchOrch(ctx))
	awi := d.fetchAct(ctx)
	d.runAct(ctx, awi)
	if err := be.AddNewOrchestrationEvent(ctx, id, proto.Clone(awi.Result).(*backend.HistoryEvent)); err != nil {
		t.Fatalf("deliver the result again: %v", err)
	}

	d.runUntil(ctx, func() bool { return metadata(t, ctx, be, id).IsComplete() })
	requireCompleted(t, metadata(t, ctx, be, id), `"once!"`)

	if err := be.AddNewOrchestrationEvent(ctx, id, proto.Clone(awi.Result).(*backend.HistoryEvent)); err != nil {
		t.Fatalf("deliver the result after completion: %v", err)
	}
	d.runIdle(ctx)
	requireCompleted(t, metadata(t, ctx, be, id), `"once!"`)
	h := history(t, ctx, be, id)
	if n := count(h, isCompleted); n != 1 {
		t.Errorf("history has %d ExecutionCompleted events, want 1: %s", n, summary(h))
	}
	d.noAct(ctx)
}

// testOutOfOrderCompletion runs two activities and completes the second
// before the first.
func testOutOfOrderCompletion(t *testing.T, ctx context.Context, be taskhub.Backend) {
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Pair", func(ctx *task.OrchestrationContext) (any, error) {
		t1 := ctx.CallActivity("Echo", task.WithActivityInput("first"))
		t2 := ctx.CallActivity("Echo", task.WithActivityInput("second"))
		var a, b string
		if err := t1.Await(&a); err != nil {
			return nil, err
		}
		if err := t2.Await(&b); err != nil {
			return nil, err
		}
		return []string{a, b}, nil
	})
	_ = r.AddActivityN("Echo", echo)
	d := newDriver(t, be, r)
	c := backend.NewTaskHubClient(be)
	id, err := c.ScheduleNewOrchestration(ctx, "Pair", api.WithInstanceID("pair"))
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	d.runOrch(ctx, d.fetchOrch(ctx))

	x, y := d.fetchAct(ctx), d.fetchAct(ctx)
	if x.NewEvent.GetEventId() > y.NewEvent.GetEventId() {
		x, y = y, x
	}
	if x.NewEvent.GetEventId() == y.NewEvent.GetEventId() {
		t.Fatalf("both activity work items are task %d", x.NewEvent.GetEventId())
	}
	d.execAct(ctx, x)
	d.execAct(ctx, y)

	// The second activity finishes first: the orchestration keeps waiting.
	d.completeAct(ctx, y)
	d.runOrch(ctx, d.fetchOrch(ctx))
	if md := metadata(t, ctx, be, id); md.RuntimeStatus != api.RUNTIME_STATUS_RUNNING {
		t.Fatalf("after only the second activity finished: %s, want Running", describe(md))
	}
	d.completeAct(ctx, x)
	d.runOrch(ctx, d.fetchOrch(ctx))
	requireCompleted(t, metadata(t, ctx, be, id), `["first","second"]`)
}

// testEventBeforeInstance raises an event for an instance that does not exist
// yet; it is delivered once the instance is created.
func testEventBeforeInstance(t *testing.T, ctx context.Context, be taskhub.Backend) {
	d := newDriver(t, be, echoRegistry())
	c := backend.NewTaskHubClient(be)
	if err := c.RaiseEvent(ctx, "early", "e", api.WithEventPayload("early bird")); err != nil {
		t.Fatalf("raise before the instance exists: %v", err)
	}
	d.noOrch(ctx) // nothing to run until the instance exists

	id, err := c.ScheduleNewOrchestration(ctx, "WaitEvent", api.WithInstanceID("early"))
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	d.runUntil(ctx, func() bool { return metadata(t, ctx, be, id).IsComplete() })
	requireCompleted(t, metadata(t, ctx, be, id), `"early bird"`)
}

func testPurge(t *testing.T, ctx context.Context, be taskhub.Backend) {
	d := newDriver(t, be, echoRegistry())
	c := backend.NewTaskHubClient(be)

	done, err := c.ScheduleNewOrchestration(ctx, "EchoOrchestrator", api.WithInstanceID("purge-done"), api.WithInput("p"))
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	d.runUntil(ctx, func() bool { return metadata(t, ctx, be, done).IsComplete() })
	running, err := c.ScheduleNewOrchestration(ctx, "WaitEvent", api.WithInstanceID("purge-running"))
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	d.runUntil(ctx, func() bool { return metadata(t, ctx, be, running).RuntimeStatus == api.RUNTIME_STATUS_RUNNING })

	if err := c.PurgeOrchestrationState(ctx, done); err != nil {
		t.Fatalf("purge a completed instance: %v", err)
	}
	if _, err := be.GetOrchestrationMetadata(ctx, done); !errors.Is(err, api.ErrInstanceNotFound) {
		t.Errorf("metadata of a purged instance: %v, want api.ErrInstanceNotFound", err)
	}
	if h := history(t, ctx, be, done); len(h) != 0 {
		t.Errorf("history of a purged instance: %s, want empty", summary(h))
	}
	if err := be.PurgeOrchestrationState(ctx, done); !errors.Is(err, api.ErrInstanceNotFound) {
		t.Errorf("purge twice: %v, want api.ErrInstanceNotFound", err)
	}

	if err := c.PurgeOrchestrationState(ctx, running); !errors.Is(err, api.ErrNotCompleted) {
		t.Errorf("client purge of a running instance: %v, want api.ErrNotCompleted", err)
	}
	if err := be.PurgeOrchestrationState(ctx, running); !errors.Is(err, api.ErrNotCompleted) {
		t.Errorf("backend purge of a running instance: %v, want api.ErrNotCompleted", err)
	}
	if md := metadata(t, ctx, be, running); md.RuntimeStatus != api.RUNTIME_STATUS_RUNNING {
		t.Errorf("running instance after a refused purge: %s", describe(md))
	}
	if err := be.PurgeOrchestrationState(ctx, "no-such-instance"); !errors.Is(err, api.ErrInstanceNotFound) {
		t.Errorf("purge of an unknown instance: %v, want api.ErrInstanceNotFound", err)
	}
}
