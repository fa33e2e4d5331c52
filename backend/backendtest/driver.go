package backendtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dronehub/dronehub/taskhub"
)

// driver plays durabletask-go's workers one step at a time, so a case can
// assert on every work item the backend hands out. It does what
// backend.NewOrchestrationWorker and backend.NewActivityTaskWorker do for one
// work item, with the real task executor.
type driver struct {
	t    *testing.T
	be   taskhub.Backend
	exec backend.Executor
}

func newDriver(t *testing.T, be taskhub.Backend, r *task.TaskRegistry) *driver {
	return &driver{t: t, be: be, exec: task.NewTaskExecutor(r)}
}

// fetchOrch returns the next orchestration work item, failing the test if
// none arrives within workWait.
func (d *driver) fetchOrch(ctx context.Context) *backend.OrchestrationWorkItem {
	d.t.Helper()
	wi, ok := d.tryOrch(ctx, workWait)
	if !ok {
		d.t.Fatalf("no orchestration work item within %s", workWait)
	}
	return wi
}

// noOrch asserts that no orchestration work item is available.
func (d *driver) noOrch(ctx context.Context) {
	d.t.Helper()
	if wi, ok := d.tryOrch(ctx, noWorkWait); ok {
		d.t.Fatalf("GetOrchestrationWorkItem: got a work item for %s with %s, want none", wi.InstanceID, summary(wi.NewEvents))
	}
}

// tryOrch waits up to wait for an orchestration work item. A backend may
// block inside GetOrchestrationWorkItem until work exists or return
// ErrNoWorkItems at once; either way it is asked again until wait is over.
func (d *driver) tryOrch(ctx context.Context, wait time.Duration) (*backend.OrchestrationWorkItem, bool) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		wi, err := d.be.GetOrchestrationWorkItem(ctx)
		switch {
		case errors.Is(err, backend.ErrNoWorkItems):
			if !pause(ctx) {
				return nil, false
			}
			continue
		case err != nil && ctx.Err() != nil:
			// Our deadline ended the fetch mid-way, as it ends the worker's.
			return nil, false
		case err != nil:
			d.t.Fatalf("GetOrchestrationWorkItem: %v", err)
		case wi == nil:
			d.t.Fatalf("GetOrchestrationWorkItem returned a nil work item and a nil error")
		}
		return wi, true
	}
}

// fetchAct returns the next activity work item, failing the test if none
// arrives within workWait.
func (d *driver) fetchAct(ctx context.Context) *backend.ActivityWorkItem {
	d.t.Helper()
	wi, ok := d.tryAct(ctx, workWait)
	if !ok {
		d.t.Fatalf("no activity work item within %s", workWait)
	}
	return wi
}

// noAct asserts that no activity work item is available.
func (d *driver) noAct(ctx context.Context) {
	d.t.Helper()
	if wi, ok := d.tryAct(ctx, noWorkWait); ok {
		d.t.Fatalf("GetActivityWorkItem: got work item %s, want none", wi)
	}
}

// tryAct waits up to wait for an activity work item, like tryOrch.
func (d *driver) tryAct(ctx context.Context, wait time.Duration) (*backend.ActivityWorkItem, bool) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		wi, err := d.be.GetActivityWorkItem(ctx)
		switch {
		case errors.Is(err, backend.ErrNoWorkItems):
			if !pause(ctx) {
				return nil, false
			}
			continue
		case err != nil && ctx.Err() != nil:
			// Our deadline ended the fetch mid-way, as it ends the worker's.
			return nil, false
		case err != nil:
			d.t.Fatalf("GetActivityWorkItem: %v", err)
		case wi == nil:
			d.t.Fatalf("GetActivityWorkItem returned a nil work item and a nil error")
		}
		return wi, true
	}
}

// pause waits one polling period and reports whether ctx is still live.
func pause(ctx context.Context) bool {
	t := time.NewTimer(pollEvery)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// runOrch executes an orchestration work item and completes it, as the
// orchestration worker does: load the state, drop the item if the instance
// has finished, otherwise append an OrchestratorStarted and the new events,
// run the orchestrator (again after each continue-as-new), apply its actions
// and commit.
func (d *driver) runOrch(ctx context.Context, wi *backend.OrchestrationWorkItem) {
	d.t.Helper()
	state, err := d.be.GetOrchestrationRuntimeState(ctx, wi)
	if err != nil {
		d.t.Fatalf("GetOrchestrationRuntimeState(%s): %v", wi.InstanceID, err)
	}
	wi.State = state
	if !state.IsCompleted() {
		_ = state.AddEvent(orchestratorStarted())
		added := 0
		// wi.NewEvents is read after GetOrchestrationRuntimeState on purpose:
		// a backend may filter it there (stale timers).
		for _, e := range wi.NewEvents {
			if state.AddEvent(e) == nil {
				added++
			}
		}
		for round := 0; added > 0; round++ {
			res, err := d.exec.ExecuteOrchestrator(ctx, wi.InstanceID, state.OldEvents(), state.NewEvents())
			if err != nil {
				d.t.Fatalf("execute orchestrator %s: %v", wi.InstanceID, err)
			}
			continued, err := state.ApplyActions(res.Response.Actions, nil)
			if err != nil {
				d.t.Fatalf("apply actions of %s: %v", wi.InstanceID, err)
			}
			state.CustomStatus = res.Response.CustomStatus
			if !continued {
				break
			}
			if round == 20 {
				d.t.Fatalf("%s: continue-as-new tight loop", wi.InstanceID)
			}
		}
	}
	if err := d.be.CompleteOrchestrationWorkItem(ctx, wi); err != nil {
		d.t.Fatalf("CompleteOrchestrationWorkItem(%s): %v", wi.InstanceID, err)
	}
}

// execAct runs an activity work item's activity and stores its result in the
// work item, without completing it.
func (d *driver) execAct(ctx context.Context, wi *backend.ActivityWorkItem) {
	d.t.Helper()
	res, err := d.exec.ExecuteActivity(ctx, wi.InstanceID, wi.NewEvent)
	if err != nil {
		d.t.Fatalf("execute activity %s: %v", wi, err)
	}
	wi.Result = res
}

// completeAct completes an executed activity work item.
func (d *driver) completeAct(ctx context.Context, wi *backend.ActivityWorkItem) {
	d.t.Helper()
	if err := d.be.CompleteActivityWorkItem(ctx, wi); err != nil {
		d.t.Fatalf("CompleteActivityWorkItem(%s): %v", wi, err)
	}
}

// runAct executes and completes an activity work item.
func (d *driver) runAct(ctx context.Context, wi *backend.ActivityWorkItem) {
	d.t.Helper()
	d.execAct(ctx, wi)
	d.completeAct(ctx, wi)
}

// runUntil processes orchestration and activity work items until done
// reports true, failing the test after settleTimeout.
func (d *driver) runUntil(ctx context.Context, done func() bool) {
	d.t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for !done() {
		if time.Now().After(deadline) {
			d.t.Fatalf("work did not settle within %s", settleTimeout)
		}
		if wi, ok := d.tryOrch(ctx, 50*time.Millisecond); ok {
			d.runOrch(ctx, wi)
		}
		if wi, ok := d.tryAct(ctx, 50*time.Millisecond); ok {
			d.runAct(ctx, wi)
		}
	}
}

// runIdle processes work items until neither kind shows up for noWorkWait.
func (d *driver) runIdle(ctx context.Context) {
	d.t.Helper()
	for i := 0; ; i++ {
		if i > 1000 {
			d.t.Fatalf("work never ran out")
		}
		progressed := false
		if wi, ok := d.tryOrch(ctx, noWorkWait); ok {
			d.runOrch(ctx, wi)
			progressed = true
		}
		if wi, ok := d.tryAct(ctx, noWorkWait); ok {
			d.runAct(ctx, wi)
			progressed = true
		}
		if !progressed {
			return
		}
	}
}

// orchestratorStarted builds the OrchestratorStarted event the worker adds at
// the start of every turn; it carries the orchestration's current time.
// durabletask-go's event constructors are internal, so the event is built
// through protobuf reflection on the public HistoryEvent type.
func orchestratorStarted() *backend.HistoryEvent {
	e := &backend.HistoryEvent{EventId: -1, Timestamp: timestamppb.Now()}
	m := e.ProtoReflect()
	fd := m.Descriptor().Fields().ByName(protoreflect.Name("orchestratorStarted"))
	m.Set(fd, m.NewField(fd))
	return e
}
