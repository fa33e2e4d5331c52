package taskhub_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/dronehub/dronehub/taskhub"
)

func TestDeadLetterFailure(t *testing.T) {
	fd := taskhub.ActivityDeadLetterFailure("m-1", taskScheduled(3, "ReserveDrone"), "its execution failed 10 times (limit 10)")
	if fd.GetErrorType() != taskhub.DeadLetterErrorType || fd.GetIsNonRetriable() {
		t.Errorf("failure %v: want type %q, retriable", fd, taskhub.DeadLetterErrorType)
	}
	want := `dead-lettered: activity ReserveDrone (task 3) of instance "m-1": its execution failed 10 times (limit 10)`
	if fd.GetErrorMessage() != want {
		t.Errorf("message %q, want %q", fd.GetErrorMessage(), want)
	}
	if !taskhub.IsDeadLetterFailure(fd) || taskhub.IsDeadLetterFailure(&dtbackend.TaskFailureDetails{ErrorType: "x"}) || taskhub.IsDeadLetterFailure(nil) {
		t.Error("IsDeadLetterFailure misjudges")
	}
	ofd := taskhub.OrchestrationDeadLetterFailure("m-2", []*dtbackend.HistoryEvent{executionStarted(nil), eventRaised("e")}, "why")
	if !strings.HasPrefix(ofd.GetErrorMessage(), `dead-lettered: orchestration work item [ExecutionStarted EventRaised] of instance "m-2": why`) {
		t.Errorf("orchestration failure message %q", ofd.GetErrorMessage())
	}

	e := taskhub.NewTaskFailedEvent(3, fd)
	if tf := e.GetTaskFailed(); tf == nil || tf.GetTaskScheduledId() != 3 || tf.GetFailureDetails().GetErrorMessage() != want || e.GetTimestamp() == nil {
		t.Errorf("TaskFailed event %v", e)
	}
	if !errors.Is(errors.Join(errors.New("x"), taskhub.ErrDeadLetterStale), taskhub.ErrDeadLetterStale) {
		t.Error("ErrDeadLetterStale does not match itself")
	}
}

// childStarted is the start event of a sub-orchestration of "parent",
// scheduled as the parent's task 7.
func childStarted() *dtbackend.HistoryEvent {
	e := executionStarted(nil)
	es := e.ProtoReflect().Get(e.ProtoReflect().Descriptor().Fields().ByName("executionStarted")).Message()
	pfd := es.Descriptor().Fields().ByName("parentInstance")
	parent := es.NewField(pfd).Message()
	parent.Set(parent.Descriptor().Fields().ByName("taskScheduledId"), protoreflect.ValueOfInt32(7))
	ofd := parent.Descriptor().Fields().ByName("orchestrationInstance")
	oi := parent.NewField(ofd).Message()
	oi.Set(oi.Descriptor().Fields().ByName("instanceId"), protoreflect.ValueOfString("parent"))
	parent.Set(ofd, protoreflect.ValueOfMessage(oi))
	es.Set(pfd, protoreflect.ValueOfMessage(parent))
	return e
}

func TestFailExecution(t *testing.T) {
	fd := taskhub.DeadLetterFailure("child", "orchestration work item [ExecutionStarted]", "why")
	state := dtbackend.NewOrchestrationRuntimeState("child", []*dtbackend.HistoryEvent{childStarted()})
	if err := taskhub.FailExecution(state, fd); err != nil {
		t.Fatal(err)
	}
	if state.RuntimeStatus() != api.RUNTIME_STATUS_FAILED || !state.IsCompleted() {
		t.Fatalf("status %v, want Failed", state.RuntimeStatus())
	}
	if got, err := state.FailureDetails(); err != nil || got.GetErrorType() != taskhub.DeadLetterErrorType {
		t.Fatalf("failure details %v, %v", got, err)
	}
	if n := len(state.NewEvents()); n != 2 || state.NewEvents()[0].GetOrchestratorStarted() == nil || state.NewEvents()[1].GetExecutionCompleted() == nil {
		t.Fatalf("new events %v, want OrchestratorStarted and ExecutionCompleted", state.NewEvents())
	}
	msgs := state.PendingMessages()
	if len(msgs) != 1 || msgs[0].TargetInstanceID != "parent" {
		t.Fatalf("messages %+v, want one to the parent", msgs)
	}
	if sf := msgs[0].HistoryEvent.GetSubOrchestrationInstanceFailed(); sf == nil || sf.GetTaskScheduledId() != 7 || sf.GetFailureDetails().GetErrorType() != taskhub.DeadLetterErrorType {
		t.Fatalf("message to the parent %v, want SubOrchestrationInstanceFailed for task 7", msgs[0].HistoryEvent)
	}
	if err := taskhub.FailExecution(state, fd); err == nil {
		t.Error("an ended execution was ended again")
	}
	if err := taskhub.FailExecution(dtbackend.NewOrchestrationRuntimeState("none", nil), fd); err == nil {
		t.Error("an execution without a start was ended")
	}

	suspended := dtbackend.NewOrchestrationRuntimeState("s", []*dtbackend.HistoryEvent{executionStarted(nil), event(-1, "executionSuspended", nil)})
	if err := taskhub.FailExecution(suspended, fd); err != nil || suspended.RuntimeStatus() != api.RUNTIME_STATUS_FAILED {
		t.Fatalf("suspended execution: %v, status %v; want Failed", err, suspended.RuntimeStatus())
	}

	term := dtbackend.NewOrchestrationRuntimeState("t", nil)
	_ = term.AddEvent(executionStarted(nil))
	if err := taskhub.EndExecution(term, api.RUNTIME_STATUS_TERMINATED, wrapperspb.String(`"stop"`), nil); err != nil {
		t.Fatal(err)
	}
	if out, _ := term.Output(); term.RuntimeStatus() != api.RUNTIME_STATUS_TERMINATED || out != `"stop"` || len(term.PendingMessages()) != 0 {
		t.Fatalf("terminated: %v output %q messages %d", term.RuntimeStatus(), out, len(term.PendingMessages()))
	}
}
