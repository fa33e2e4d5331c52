package azurestorage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// A dead letter reaches its workflow. A message set aside as poison would
// otherwise leave its orchestration waiting forever: its retry policy and
// compensation never run, its drone stays reserved.
//
//   - An activity message: the task is answered as failed (ErrorType
//     DeadLetterErrorType, the reason in the message), under the id its
//     result would have had, so the orchestration's retry and saga logic
//     run, and a late real result is a copy.
//   - An orchestration's own message (a start, an event, an answer whose
//     episode keeps failing): the instance is marked Failed with the
//     reason, in a fenced commit, and its parent is told.

// DeadLetterErrorType is the ErrorType of the failure a dead letter gives
// its task or instance.
const DeadLetterErrorType = "DeadLettered"

// poison dead-letters m and tells its workflow.
func (b *Backend) poison(ctx context.Context, m *inMsg, reason string) {
	if err := b.deadLetter(ctx, m, reason); err != nil {
		b.log.Warn("azurestorage: dead-letter failed", "queue", queueName(m.queue), "err", err)
		return
	}
	id := m.env.Instance
	if id == "" {
		return
	}
	fd := &dtbackend.TaskFailureDetails{ErrorType: DeadLetterErrorType}
	if ts := m.event.GetTaskScheduled(); m.partition < 0 && ts != nil {
		fd.ErrorMessage = fmt.Sprintf("activity %s (task %d) was dead-lettered: %s", ts.GetName(), m.event.GetEventId(), reason)
		answer := newEvent("taskFailed", func(e protoreflect.Message) {
			setInt32(e, "taskScheduledId", m.event.GetEventId())
			setMessage(e, "failureDetails", fd.ProtoReflect())
		})
		env := envelope{ID: m.env.ID + "-result", Instance: id, Exec: m.env.Exec}
		if err := b.send(ctx, b.controlFor(id), env, answer, time.Time{}); err != nil {
			b.log.Warn("azurestorage: tell an orchestration its activity was dead-lettered", "instance", id, "err", err)
		}
		b.orchWake.Notify()
		return
	}
	fd.ErrorMessage = fmt.Sprintf("a %s message for this instance was dead-lettered: %s", eventType(m.event), reason)
	if m.event == nil {
		fd.ErrorMessage = "a message for this instance was dead-lettered: " + reason
	}
	var start *dtbackend.HistoryEvent
	if m.event.GetExecutionStarted() != nil {
		start = m.event
	}
	if err := b.failInstance(ctx, id, fd, start); err != nil {
		b.log.Warn("azurestorage: mark an instance failed after dead-lettering its message", "instance", id, "err", err)
	}
}

// failInstance ends a running instance as Failed with fd, in a fenced
// commit (retried if another commit gets there first). An instance that
// has ended, or does not exist, is left alone. An instance that never
// started (its start is what was dead-lettered) gets the start first:
// start, else one rebuilt from its status row, so its history says what
// failed.
func (b *Backend) failInstance(ctx context.Context, id string, fd *dtbackend.TaskFailureDetails, start *dtbackend.HistoryEvent) error {
	for attempt := 0; ; attempt++ {
		st, err := b.load(ctx, id)
		if err != nil {
			return err
		}
		if st.sentinel == nil || st.sentinel.boolean("Purging") {
			return nil
		}
		state := dtbackend.NewOrchestrationRuntimeState(api.InstanceID(id), st.history)
		if state.IsCompleted() {
			return nil
		}
		if !hasStart(st.history) {
			s := start
			if s == nil {
				s = startFromSentinel(st.sentinel)
			}
			if err := state.AddEvent(s); err != nil {
				return err
			}
		}
		if err := state.AddEvent(executionFailed(fd)); err != nil {
			return err
		}
		it := &orchItem{state: st}
		extra, blob, err := b.parentAnswer(ctx, id, slices.Concat(state.OldEvents(), state.NewEvents()), fd)
		if err != nil {
			b.deleteBlobs(ctx, []string{blob})
			return err
		}
		plan, err := b.planCommit(ctx, id, state, it, extra...)
		if blob != "" {
			plan.newBlobs = append(plan.newBlobs, blob)
		}
		if err != nil {
			b.deleteBlobs(ctx, plan.newBlobs)
			return err
		}
		err = b.submitCommit(ctx, id, plan, st)
		switch {
		case err == nil:
			b.log.Warn("azurestorage: instance failed: its message was dead-lettered", "instance", id, "reason", fd.GetErrorMessage())
			b.finishEpisode(ctx, id, it, plan)
			return nil
		case errors.Is(err, dtbackend.ErrWorkItemLockLost) && attempt < 5:
			continue // another commit got there first: read again
		}
		return err
	}
}

// parentAnswer is the failure answer to the instance's parent, if it has
// one, ready for the outbox (its blob, if any, is returned to be deleted
// should the commit fail).
func (b *Backend) parentAnswer(ctx context.Context, id string, history []*dtbackend.HistoryEvent, fd *dtbackend.TaskFailureDetails) ([]outMsg, string, error) {
	var start *dtbackend.HistoryEvent
	for _, e := range history {
		if e.GetExecutionStarted() != nil {
			start = e
		}
	}
	pi := start.GetExecutionStarted().GetParentInstance()
	if pi == nil || pi.GetOrchestrationInstance().GetInstanceId() == "" {
		return nil, "", nil
	}
	target := pi.GetOrchestrationInstance().GetInstanceId()
	answer := subOrchestrationFailed(pi.GetTaskScheduledId(), timestamppb.Now(), fd)
	env := envelope{ID: seenKey(id + "|dead-letter|" + executionOf(history)), Instance: target, From: id,
		Exec: pi.GetOrchestrationInstance().GetExecutionId().GetValue()}
	env, blob, err := b.prepare(ctx, env, answer)
	if err != nil {
		return nil, blob, err
	}
	return []outMsg{{Queue: b.partition(target), Env: env}}, blob, nil
}

// startFromSentinel rebuilds the ExecutionStarted event of an instance
// that was created but never ran.
func startFromSentinel(e entity) *dtbackend.HistoryEvent {
	ev := newEvent("executionStarted", func(m protoreflect.Message) {
		m.Set(m.Descriptor().Fields().ByName("name"), protoreflect.ValueOfString(e.str("Name")))
		setMessage(m, "input", wrapperspb.String(e.str("Input")).ProtoReflect())
		oi := m.NewField(m.Descriptor().Fields().ByName("orchestrationInstance")).Message()
		oi.Set(oi.Descriptor().Fields().ByName("instanceId"), protoreflect.ValueOfString(e.str("InstanceID")))
		setMessage(oi, "executionId", wrapperspb.String(e.str("ExecutionID")).ProtoReflect())
		setMessage(m, "orchestrationInstance", oi)
	})
	if t := parseTime(e.str("CreatedTime")); !t.IsZero() {
		ev.Timestamp = timestamppb.New(t)
	}
	return ev
}

// executionFailed is an ExecutionCompleted event with status Failed.
func executionFailed(fd *dtbackend.TaskFailureDetails) *dtbackend.HistoryEvent {
	return newEvent("executionCompleted", func(e protoreflect.Message) {
		f := e.Descriptor().Fields().ByName("orchestrationStatus")
		e.Set(f, protoreflect.ValueOfEnum(protoreflect.EnumNumber(api.RUNTIME_STATUS_FAILED)))
		setMessage(e, "result", wrapperspb.String("").ProtoReflect())
		setMessage(e, "failureDetails", fd.ProtoReflect())
	})
}

// newEvent builds a HistoryEvent whose oneof field is set by fill.
// durabletask-go keeps its protobuf types internal, so events it has no
// exported constructor for are built through protobuf reflection.
func newEvent(field string, fill func(protoreflect.Message)) *dtbackend.HistoryEvent {
	ev := &dtbackend.HistoryEvent{EventId: -1, Timestamp: timestamppb.Now()}
	m := ev.ProtoReflect()
	f := m.Descriptor().Fields().ByName(protoreflect.Name(field))
	sub := m.NewField(f).Message()
	fill(sub)
	m.Set(f, protoreflect.ValueOfMessage(sub))
	return ev
}

func setInt32(m protoreflect.Message, name string, v int32) {
	m.Set(m.Descriptor().Fields().ByName(protoreflect.Name(name)), protoreflect.ValueOfInt32(v))
}

func setMessage(m protoreflect.Message, name string, v protoreflect.Message) {
	m.Set(m.Descriptor().Fields().ByName(protoreflect.Name(name)), protoreflect.ValueOfMessage(v))
}
