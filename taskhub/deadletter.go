package taskhub

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Dead letters reach their workflow. What every backend does when it sets a
// message aside:
//
//   - an activity's message (its TaskScheduled): the task is answered with a
//     TaskFailed whose failure is DeadLetterFailure, in the same step, so the
//     orchestration's retry policy or compensation runs;
//   - an orchestration's own messages (the work item whose executions kept
//     failing): the instance's execution ends Failed with DeadLetterFailure
//     as its failure details (FailExecution), which also tells a parent
//     orchestration that its sub-orchestration failed.
//
// A delivery counts towards a backend's dead-letter limit only when its
// execution failed: an orchestration work item whose runtime state was
// loaded (GetOrchestrationRuntimeState) on a context that is still live and
// that is then abandoned without a CompleteOrchestrationWorkItem having been
// tried. An abandon after a failed Complete, a hand-back at shutdown (no
// state loaded, or the work context cancelled) and a lock expiry do not
// count, and activity abandons never count: an activity's error is its
// result, so an abandoned activity was never the activity's fault.

// DeadLetterErrorType is the ErrorType of the failure details a dead letter
// delivers to its workflow.
const DeadLetterErrorType = "DeadLettered"

// ErrDeadLetterStale is wrapped by ReplayDeadLetter's error when the message
// can no longer reach the execution it was sent to: the instance is gone or
// was recreated (another execution id), the execution has ended, or the
// activity's task has been answered already (a dead-lettered activity's task
// is answered with a DeadLettered failure when it is set aside).
var ErrDeadLetterStale = errors.New("dead letter is stale: the execution it belongs to is gone")

// DeadLetterFailure returns the failure details that tell a workflow one of
// its messages was dead-lettered. what names the message ("activity
// ReserveDrone (task 3)", "orchestration work item [ExecutionStarted]") and
// reason says why it was set aside. The failure is retriable: a retry
// policy may schedule the activity again.
//
// The message reads:
//
//	dead-lettered: <what> of instance "<id>": <reason>
func DeadLetterFailure(id api.InstanceID, what, reason string) *dtbackend.TaskFailureDetails {
	return &dtbackend.TaskFailureDetails{
		ErrorType:    DeadLetterErrorType,
		ErrorMessage: fmt.Sprintf("dead-lettered: %s of instance %q: %s", what, id, reason),
	}
}

// ActivityDeadLetterFailure is DeadLetterFailure for an activity message,
// given its TaskScheduled event.
func ActivityDeadLetterFailure(id api.InstanceID, scheduled *dtbackend.HistoryEvent, reason string) *dtbackend.TaskFailureDetails {
	return DeadLetterFailure(id, fmt.Sprintf("activity %s (task %d)", scheduled.GetTaskScheduled().GetName(), scheduled.GetEventId()), reason)
}

// OrchestrationDeadLetterFailure is DeadLetterFailure for the events of an
// orchestration work item.
func OrchestrationDeadLetterFailure(id api.InstanceID, events []*dtbackend.HistoryEvent, reason string) *dtbackend.TaskFailureDetails {
	kinds := make([]string, len(events))
	for i, e := range events {
		kinds[i] = EventType(e)
	}
	return DeadLetterFailure(id, "orchestration work item ["+strings.Join(kinds, " ")+"]", reason)
}

// IsDeadLetterFailure reports whether fd was built by DeadLetterFailure.
func IsDeadLetterFailure(fd *dtbackend.TaskFailureDetails) bool {
	return fd != nil && fd.GetErrorType() == DeadLetterErrorType
}

// NewTaskFailedEvent returns the event that answers the task scheduled with
// event id taskScheduledID with the failure fd.
func NewTaskFailedEvent(taskScheduledID int32, fd *dtbackend.TaskFailureDetails) *dtbackend.HistoryEvent {
	return newEvent("taskFailed", func(m protoreflect.Message) {
		setField(m, "taskScheduledId", protoreflect.ValueOfInt32(taskScheduledID))
		setField(m, "failureDetails", protoreflect.ValueOfMessage(fd.ProtoReflect()))
	})
}

// NewOrchestratorStartedEvent returns the event that opens an orchestration
// turn; its timestamp is the turn's current time.
func NewOrchestratorStartedEvent() *dtbackend.HistoryEvent {
	return newEvent("orchestratorStarted", func(protoreflect.Message) {})
}

// FailExecution ends the execution in state as Failed with fd, as if its
// orchestrator had returned an error in a new turn: it appends an
// OrchestratorStarted and an ExecutionCompleted event to state's new events
// and, for a sub-orchestration, queues the SubOrchestrationInstanceFailed
// message for its parent (state.PendingMessages). Commit state as a work
// item's state is committed.
func FailExecution(state *dtbackend.OrchestrationRuntimeState, fd *dtbackend.TaskFailureDetails) error {
	return EndExecution(state, api.RUNTIME_STATUS_FAILED, nil, fd)
}

// EndExecution ends the execution in state with status (Failed or
// Terminated), output and fd, like FailExecution. state must hold the
// execution's start event and must not have ended.
func EndExecution(state *dtbackend.OrchestrationRuntimeState, status api.OrchestrationStatus, output *wrapperspb.StringValue, fd *dtbackend.TaskFailureDetails) error {
	if !state.IsValid() || state.RuntimeStatus() == api.RUNTIME_STATUS_PENDING {
		return fmt.Errorf("taskhub: instance %s has no start event to end", state.InstanceID())
	}
	if state.IsCompleted() {
		return fmt.Errorf("taskhub: instance %s has already ended", state.InstanceID())
	}
	if err := state.AddEvent(NewOrchestratorStartedEvent()); err != nil {
		return err
	}
	if state.RuntimeStatus() == api.RUNTIME_STATUS_SUSPENDED {
		// A suspended execution would still read as Suspended once ended.
		if err := state.AddEvent(newEvent("executionResumed", func(protoreflect.Message) {})); err != nil {
			return err
		}
	}
	// ApplyActions takes durabletask-go's internal action type; build one
	// CompleteOrchestration action through protobuf reflection on the
	// response type the public ExecutionResults carries.
	resp := (&dtbackend.ExecutionResults{}).Response
	m := resp.ProtoReflect().Type().New()
	list := m.Mutable(m.Descriptor().Fields().ByName("actions")).List()
	action := list.NewElement()
	am := action.Message()
	setField(am, "id", protoreflect.ValueOfInt32(-1))
	co := am.Mutable(am.Descriptor().Fields().ByName("completeOrchestration")).Message()
	setField(co, "orchestrationStatus", protoreflect.ValueOfEnum(protoreflect.EnumNumber(status)))
	if output != nil {
		setField(co, "result", protoreflect.ValueOfMessage(output.ProtoReflect()))
	}
	if fd != nil {
		setField(co, "failureDetails", protoreflect.ValueOfMessage(fd.ProtoReflect()))
	}
	list.Append(action)
	resp = as(resp, m.Interface())
	_, err := state.ApplyActions(resp.GetActions(), nil)
	return err
}

// as converts v to the type of its first argument.
func as[T any](_ T, v any) T { return v.(T) }

// newEvent builds a history event of the given kind (the HistoryEvent oneof
// field name); durabletask-go's event constructors are internal.
func newEvent(kind string, fill func(protoreflect.Message)) *dtbackend.HistoryEvent {
	e := &dtbackend.HistoryEvent{EventId: -1, Timestamp: timestamppb.Now()}
	m := e.ProtoReflect()
	fd := m.Descriptor().Fields().ByName(protoreflect.Name(kind))
	sub := m.NewField(fd)
	fill(sub.Message())
	m.Set(fd, sub)
	return e
}

func setField(m protoreflect.Message, name string, v protoreflect.Value) {
	m.Set(m.Descriptor().Fields().ByName(protoreflect.Name(name)), v)
}

// NewSubOrchestrationFailedEvent returns the answer that tells a parent its
// sub-orchestration (scheduled with event id taskScheduledID) failed with fd.
func NewSubOrchestrationFailedEvent(taskScheduledID int32, fd *dtbackend.TaskFailureDetails) *dtbackend.HistoryEvent {
	return newEvent("subOrchestrationInstanceFailed", func(m protoreflect.Message) {
		setField(m, "taskScheduledId", protoreflect.ValueOfInt32(taskScheduledID))
		setField(m, "failureDetails", protoreflect.ValueOfMessage(fd.ProtoReflect()))
	})
}

// NewExecutionStartedEvent returns the start of execution execID of
// instance id running orchestrator name with input, at time at.
func NewExecutionStartedEvent(id api.InstanceID, execID, name, input string, at time.Time) *dtbackend.HistoryEvent {
	e := newEvent("executionStarted", func(m protoreflect.Message) {
		setField(m, "name", protoreflect.ValueOfString(name))
		setField(m, "input", protoreflect.ValueOfMessage(wrapperspb.String(input).ProtoReflect()))
		oi := m.NewField(m.Descriptor().Fields().ByName("orchestrationInstance")).Message()
		setField(oi, "instanceId", protoreflect.ValueOfString(string(id)))
		setField(oi, "executionId", protoreflect.ValueOfMessage(wrapperspb.String(execID).ProtoReflect()))
		setField(m, "orchestrationInstance", protoreflect.ValueOfMessage(oi))
	})
	if !at.IsZero() {
		e.Timestamp = timestamppb.New(at)
	}
	return e
}

// NewEventRaisedEvent returns the event a client's RaiseEvent(name) with
// the raw payload sends, as durabletask-go's client builds it.
func NewEventRaisedEvent(name, payload string) *dtbackend.HistoryEvent {
	return newEvent("eventRaised", func(m protoreflect.Message) {
		setField(m, "name", protoreflect.ValueOfString(name))
		setField(m, "input", protoreflect.ValueOfMessage(wrapperspb.String(payload).ProtoReflect()))
	})
}
