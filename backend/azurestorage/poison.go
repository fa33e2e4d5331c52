package azurestorage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/taskhub"
)

// A dead letter reaches its workflow (taskhub/deadletter.go states the
// contract every backend keeps). A message set aside as poison would
// otherwise leave its orchestration waiting forever: its retry policy and
// compensation never run, its drone stays reserved.
//
//   - An activity message: the task is answered as failed
//     (taskhub.ActivityDeadLetterFailure) under the id its result would
//     have had, so the orchestration's retry and saga logic run and a late
//     real result is a copy.
//   - An orchestration's own message: the execution ends Failed
//     (taskhub.FailExecution) in a fenced commit, which also answers its
//     parent through the outbox.
//
// Counting: a delivery counts toward MaxDequeueCount only when it failed —
// its episode ran on a live context and was abandoned without a commit
// being tried, or its worker died holding it (the lock expired). Benign
// releases are recorded in the envelope (see release). An episode that
// fails for the MaxDequeueCount-th time is dead-lettered at once, at its
// abandon; a message whose workers died that often is dead-lettered at its
// next dequeue.

// DeadLetterErrorType is taskhub.DeadLetterErrorType.
const DeadLetterErrorType = taskhub.DeadLetterErrorType

// failures is how many deliveries of m failed, this one excluded.
func (m *inMsg) failures() int64 { return m.dequeueCount - 1 - m.env.Benign }

// poison dead-letters m (failed is its count of failed deliveries) and
// tells its workflow.
func (b *Backend) poison(ctx context.Context, m *inMsg, reason string, failed int64) {
	exec := m.env.Exec
	if exec == "" && m.partition >= 0 && m.env.Instance != "" {
		if s, _, err := b.getSentinel(ctx, m.env.Instance); err == nil && s != nil {
			exec = s.str("ExecutionID")
		}
	}
	if err := b.deadLetter(ctx, m, reason, failed, exec); err != nil {
		b.log.Warn("azurestorage: dead-letter failed", "queue", queueName(m.queue), "err", err)
		return
	}
	id := m.env.Instance
	if id == "" {
		return
	}
	if m.partition < 0 && m.event.GetTaskScheduled() != nil {
		if err := b.answerDeadActivity(ctx, m, reason); err != nil {
			b.log.Warn("azurestorage: tell an orchestration its activity was dead-lettered", "instance", id, "err", err)
		}
		return
	}
	var events []*dtbackend.HistoryEvent
	if m.event != nil {
		events = append(events, m.event)
	}
	fd := taskhub.OrchestrationDeadLetterFailure(api.InstanceID(id), events, reason)
	var start *dtbackend.HistoryEvent
	if m.event.GetExecutionStarted() != nil {
		start = m.event
	}
	if err := b.failInstance(ctx, id, fd, start); err != nil {
		b.log.Warn("azurestorage: mark an instance failed after dead-lettering its message", "instance", id, "err", err)
	}
}

// answerDeadActivity answers a dead-lettered activity's task as failed.
func (b *Backend) answerDeadActivity(ctx context.Context, m *inMsg, reason string) error {
	id := m.env.Instance
	fd := taskhub.ActivityDeadLetterFailure(api.InstanceID(id), m.event, reason)
	answer := taskhub.NewTaskFailedEvent(m.event.GetEventId(), fd)
	env := envelope{ID: m.env.ID + "-result", Instance: id, Exec: m.env.Exec}
	if err := b.send(ctx, b.controlFor(id), env, answer, time.Time{}); err != nil {
		return err
	}
	b.orchWake.Notify()
	return nil
}

// DeadLetterActivityWorkItem implements taskhub.ActivityDeadLetterer: it
// sets a fetched activity aside now and answers its task as failed. A
// second call for the same work item fails with ErrWorkItemLockLost.
func (b *Backend) DeadLetterActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem, reason string) error {
	m, err := activityMsg(wi)
	if err != nil {
		return err
	}
	m.lk.Lock()
	gone := m.gone
	m.lk.Unlock()
	if gone {
		return fmt.Errorf("azurestorage: dead-letter activity of %s: %w", wi.InstanceID, dtbackend.ErrWorkItemLockLost)
	}
	ctx = retryUntil(ctx, b.lockDeadline([]*inMsg{m}))
	if err := b.deadLetter(ctx, m, reason, m.failures()+1, m.env.Exec); err != nil {
		return err
	}
	return b.answerDeadActivity(ctx, m, reason)
}

// failInstance ends a running instance as Failed with fd, in a fenced
// commit (retried if another commit gets there first). An instance that
// has ended, or does not exist, is left alone. An instance that never
// started (its start is what was dead-lettered) gets the start first:
// start, else one rebuilt from its status row, so its history says what
// failed.
func (b *Backend) failInstance(ctx context.Context, id string, fd *dtbackend.TaskFailureDetails, start *dtbackend.HistoryEvent) error {
	// Its outbox (an answer to a parent) has no consumed message whose
	// redelivery would send it again: ride out an outage instead.
	ctx = retryUntil(ctx, time.Now().Add(b.opts.LockTimeout))
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
				var err error
				if s, err = b.startFromSentinel(ctx, st.sentinel); err != nil {
					return err
				}
			}
			if err := state.AddEvent(s); err != nil {
				return err
			}
		}
		if err := taskhub.FailExecution(state, fd); err != nil {
			return err
		}
		// The commit deletes the outbox rows it found: send them first
		// (again, if they were sent; receivers drop the copies).
		if err := b.resendOutbox(ctx, id, st.outbox); err != nil {
			return err
		}
		it := &orchItem{state: st}
		plan, err := b.planCommit(ctx, id, state, it)
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
		if !errors.Is(err, errCommitUnknown) {
			b.deleteBlobs(ctx, plan.newBlobs)
		}
		return err
	}
}

// startFromSentinel rebuilds the ExecutionStarted event of an instance
// that was created but never ran, its name and input read from their
// blobs when they are large.
func (b *Backend) startFromSentinel(ctx context.Context, e entity) (*dtbackend.HistoryEvent, error) {
	name, input, err := b.nameAndInput(ctx, e)
	if err != nil {
		return nil, err
	}
	return taskhub.NewExecutionStartedEvent(api.InstanceID(e.str("InstanceID")), e.str("ExecutionID"), name, input, parseTime(e.str("CreatedTime"))), nil
}

// nameAndInput reads the orchestrator name and input status row e
// records, from their blobs when they are large.
func (b *Backend) nameAndInput(ctx context.Context, e entity) (name, input string, err error) {
	if name, err = b.getLarge(ctx, e, "Name"); err != nil {
		return "", "", fmt.Errorf("azurestorage: the name of %s: %w", e.str("InstanceID"), err)
	}
	if input, err = b.getLarge(ctx, e, "Input"); err != nil {
		return "", "", fmt.Errorf("azurestorage: the input of %s: %w", e.str("InstanceID"), err)
	}
	return name, input, nil
}

// staleDeadLetter reports why a dead letter can no longer reach the
// execution it was sent to ("" if it can): the instance is gone or was
// recreated, the execution has ended, or the task it requests or answers
// has been answered (a dead-lettered activity's task is answered when it
// is set aside).
func (b *Backend) staleDeadLetter(ctx context.Context, e entity, content string) (string, error) {
	m := &inMsg{content: content}
	if e.str("Queue") == b.names.telemetry {
		return "", nil
	}
	if err := b.decode(ctx, m); err != nil {
		return "", nil // replayed as it was: it is dead-lettered again if still unreadable
	}
	st, err := b.load(ctx, m.env.Instance)
	if err != nil {
		return "", err
	}
	exec := e.str("ExecutionID")
	switch {
	case st.sentinel == nil:
		return "the instance no longer exists", nil
	case exec != "" && st.sentinel.str("ExecutionID") != exec:
		return "the instance runs another execution now", nil
	}
	state := dtbackend.NewOrchestrationRuntimeState(api.InstanceID(m.env.Instance), st.history)
	if state.IsCompleted() {
		return "the execution has ended", nil
	}
	view := newEpisodeView(st.history, nil)
	if m.event.GetTaskScheduled() != nil {
		if view.answered[fmt.Sprint("task|", m.event.GetEventId())] {
			return "its task has been answered", nil
		}
		return "", nil
	}
	if answerKey(m.event) != "" {
		if v, why := view.classify(m); v != accept {
			return why, nil
		}
	}
	return "", nil
}

// dropDeadLetter deletes a dead letter's row and blob.
func (b *Backend) dropDeadLetter(ctx context.Context, id string, e entity) error {
	etag := e.etag()
	if _, err := b.dead.DeleteEntity(ctx, deadPK, id, &aztables.DeleteEntityOptions{IfMatch: &etag}); err != nil && !isNotFound(err) {
		return fmt.Errorf("azurestorage: remove dead letter %s: %w", id, err)
	}
	if blob := e.str("Blob"); blob != "" {
		b.deleteBlob(ctx, blob)
	}
	return nil
}
