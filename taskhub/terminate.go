package taskhub

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Terminating a suspended instance does nothing in durabletask-go v0.6.0:
// the executor processes the ExecutionTerminated event but returns no
// actions while the instance is suspended, and the runtime state ranks
// "suspended" above completion. The instance stays Suspended with the
// termination in its history; a resume later replays the events it held
// back and may run on. Two wrappers, which every backend shares through the
// worker, make a termination end the instance whatever its state:
//
//   - TerminateBackend adds an ExecutionResumed event right after an
//     ExecutionTerminated that reaches a suspended instance, so that the
//     instance's runtime status is derived as Terminated;
//   - TerminateExecutor answers a work item that holds a termination with
//     the termination alone: it replays the history up to the termination,
//     without the events a suspension still held back, and keeps only the
//     completion the termination produces. No user code runs past the
//     termination, so nothing it would schedule reaches the task hub.
//
// Build the orchestration worker on both.

// TerminateBackend wraps be for TerminateExecutor (see above).
func TerminateBackend(be dtbackend.Backend) dtbackend.Backend { return terminateBackend{be} }

type terminateBackend struct{ dtbackend.Backend }

// GetOrchestrationRuntimeState implements backend.Backend.
func (b terminateBackend) GetOrchestrationRuntimeState(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) (*dtbackend.OrchestrationRuntimeState, error) {
	state, err := b.Backend.GetOrchestrationRuntimeState(ctx, wi)
	if err != nil {
		return nil, err
	}
	wi.NewEvents = ResumeTerminated(state.OldEvents(), wi.NewEvents)
	return state, nil
}

// ResumeTerminated returns newEvents with an ExecutionResumed event after
// each ExecutionTerminated that finds the instance suspended, given its
// history.
func ResumeTerminated(history, newEvents []*dtbackend.HistoryEvent) []*dtbackend.HistoryEvent {
	suspended := false
	for _, e := range history {
		suspended = suspendedAfter(suspended, e)
	}
	var out []*dtbackend.HistoryEvent
	for i, e := range newEvents {
		if et := e.GetExecutionTerminated(); et != nil && suspended {
			if out == nil {
				out = append(make([]*dtbackend.HistoryEvent, 0, len(newEvents)+1), newEvents[:i]...)
			}
			out = append(out, e, resumedEvent(et.GetInput().GetValue()))
			suspended = false
			continue
		}
		suspended = suspendedAfter(suspended, e)
		if out != nil {
			out = append(out, e)
		}
	}
	if out == nil {
		return newEvents
	}
	return out
}

func suspendedAfter(suspended bool, e *dtbackend.HistoryEvent) bool {
	switch {
	case e.GetExecutionSuspended() != nil:
		return true
	case e.GetExecutionResumed() != nil:
		return false
	}
	return suspended
}

// resumedEvent builds an ExecutionResumed event. durabletask-go keeps its
// event constructors internal, so it is decoded from its JSON form.
func resumedEvent(terminateReason string) *dtbackend.HistoryEvent {
	reason, _ := json.Marshal("resumed to terminate: " + terminateReason)
	e := &dtbackend.HistoryEvent{}
	if err := protojson.Unmarshal([]byte(fmt.Sprintf(`{"eventId":-1,"executionResumed":{"input":%s}}`, reason)), e); err != nil {
		panic(fmt.Sprintf("taskhub: build ExecutionResumed event: %v", err)) // a fixed message: covered by tests
	}
	e.Timestamp = timestamppb.Now()
	return e
}

// TerminateExecutor wraps ex for TerminateBackend (see above).
func TerminateExecutor(ex dtbackend.Executor) dtbackend.Executor { return terminateExecutor{ex} }

type terminateExecutor struct{ dtbackend.Executor }

// ExecuteOrchestrator implements backend.Executor.
func (e terminateExecutor) ExecuteOrchestrator(ctx context.Context, id api.InstanceID, oldEvents, newEvents []*dtbackend.HistoryEvent) (*dtbackend.ExecutionResults, error) {
	past, recent, ok := terminationView(oldEvents, newEvents)
	if !ok {
		return e.Executor.ExecuteOrchestrator(ctx, id, oldEvents, newEvents)
	}
	res, err := e.Executor.ExecuteOrchestrator(ctx, id, past, recent)
	if err != nil {
		return nil, err
	}
	for i, a := range res.Response.GetActions() {
		if co := a.GetCompleteOrchestration(); co != nil && co.GetOrchestrationStatus() == api.RUNTIME_STATUS_TERMINATED {
			res.Response.Actions = res.Response.Actions[i : i+1]
			return res, nil
		}
	}
	// Not expected: durabletask-go completes an instance on every
	// ExecutionTerminated it processes unsuspended. Fall back to its own
	// handling rather than lose the work item.
	return e.Executor.ExecuteOrchestrator(ctx, id, oldEvents, newEvents)
}

// terminationView returns the history up to the first ExecutionTerminated
// of a running or suspended instance, without the events a suspension in
// force at that point holds back (they were never processed), followed by
// the termination. ok is false when there is no such termination.
func terminationView(oldEvents, newEvents []*dtbackend.HistoryEvent) (past, recent []*dtbackend.HistoryEvent, ok bool) {
	t, suspendedAt := -1, -1
	at := func(i int) *dtbackend.HistoryEvent {
		if i < len(oldEvents) {
			return oldEvents[i]
		}
		return newEvents[i-len(oldEvents)]
	}
	for i := 0; i < len(oldEvents)+len(newEvents); i++ {
		e := at(i)
		switch {
		case e.GetExecutionCompleted() != nil:
			return nil, nil, false // ended already: nothing to terminate
		case e.GetExecutionTerminated() != nil:
			t = i
		case e.GetExecutionSuspended() != nil:
			if suspendedAt < 0 {
				suspendedAt = i
			}
		case e.GetExecutionResumed() != nil:
			suspendedAt = -1
		}
		if t >= 0 {
			break
		}
	}
	if t < 0 {
		return nil, nil, false
	}
	keep := t
	if suspendedAt >= 0 {
		keep = suspendedAt
	}
	for i := 0; i < keep; i++ {
		if i < len(oldEvents) {
			past = append(past, at(i))
		} else {
			recent = append(recent, at(i))
		}
	}
	return past, append(recent, at(t)), true
}
