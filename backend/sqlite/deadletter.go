package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/proto"

	"github.com/dronehub/dronehub/taskhub"
)

// Dead letters (taskhub/deadletter.go has the rules every backend follows):
//
//   - An orchestration work item whose execution failed MaxDequeueCount
//     times is set aside, and the instance's execution ends Failed with a
//     DeadLettered failure in the same transaction (a parent is told).
//   - An activity message that cannot be run (unreadable, or not a
//     TaskScheduled), or that DeadLetterActivityWorkItem is given, is set
//     aside, and its task is answered with a DeadLettered TaskFailed in the
//     same transaction, so the orchestration's retry policy or compensation
//     runs.
//   - An orchestration message that cannot be read is set aside on its own.
//
// Each dead letter records the execution its message belonged to, so a
// replay can refuse a message whose execution is gone.

// deadLetterOrchestration sets aside the events of a work item whose
// execution failed too often and ends the instance's execution Failed. The
// caller's transaction holds the instance's lock.
func (b *Backend) deadLetterOrchestration(ctx context.Context, tx *stx, wi *dtbackend.OrchestrationWorkItem, failures int, now time.Time) error {
	id := string(wi.InstanceID)
	reason := fmt.Sprintf("its execution failed %d times (limit %d)", failures, b.opts.MaxDequeueCount)
	b.log.Error("sqlite: orchestration work item dead-lettered: its execution keeps failing; the instance fails", "instance", id, "failures", failures)
	if _, err := tx.ExecContext(ctx, `INSERT INTO DronehubDeadLetters (Queue, InstanceID, ExecutionID, EventPayload, DequeueCount, Reason, DeadAt)
		SELECT 'orchestration', E.InstanceID, COALESCE(E.ExecutionID, I.ExecutionID), E.EventPayload, E.DequeueCount, ?, ?
		FROM NewEvents E LEFT JOIN Instances I ON I.InstanceID = E.InstanceID
		WHERE E.InstanceID = ? AND E.LockedBy = ? ORDER BY E.SequenceNumber`,
		reason, now.Format(time.RFC3339Nano), id, wi.LockedBy); err != nil {
		return fmt.Errorf("sqlite: dead-letter: %w", err)
	}
	// The events as stored (GetOrchestrationRuntimeState may have filtered
	// wi.NewEvents).
	events, err := lockedEvents(ctx, tx, id, wi.LockedBy)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM NewEvents WHERE InstanceID = ? AND LockedBy = ?`, id, wi.LockedBy); err != nil {
		return fmt.Errorf("sqlite: dead-letter: %w", err)
	}
	return b.failInstance(ctx, tx, id, wi.LockedBy, events, taskhub.OrchestrationDeadLetterFailure(wi.InstanceID, events, reason), now)
}

// failInstance ends the execution of an instance locked by owner as Failed
// with fd. events are the work item's events: if the instance has not
// started, its start event is among them and becomes its history's start.
func (b *Backend) failInstance(ctx context.Context, tx *stx, id, owner string, events []*dtbackend.HistoryEvent, fd *dtbackend.TaskFailureDetails, now time.Time) error {
	history, err := loadHistory(ctx, tx, api.InstanceID(id))
	if err != nil {
		return err
	}
	state := dtbackend.NewOrchestrationRuntimeState(api.InstanceID(id), history)
	if state.IsCompleted() {
		return unlockInstance(ctx, tx, id, owner)
	}
	if state.RuntimeStatus() == api.RUNTIME_STATUS_PENDING {
		if start := first(events, isStart); start != nil {
			if err := state.AddEvent(start); err != nil {
				return err
			}
		}
	}
	if state.RuntimeStatus() != api.RUNTIME_STATUS_PENDING {
		if err := taskhub.FailExecution(state, fd); err != nil {
			return err
		}
		return b.commitState(ctx, tx, id, owner, state, now)
	}
	// No start event anywhere: mark the instance row alone.
	payload, err := proto.Marshal(fd)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `UPDATE Instances SET RuntimeStatus = 'FAILED', FailureDetails = ?, CompletedTime = ?, LastUpdatedTime = ?,
		LockedBy = NULL, LockExpiration = NULL WHERE InstanceID = ? AND LockedBy = ?`, payload, now, now, id, owner)
	return err
}

// setAsideActivity moves the activity message seq, locked by owner, to the
// dead letters and, if scheduled (its TaskScheduled event) is known,
// answers its task with a DeadLettered TaskFailed.
func (b *Backend) setAsideActivity(ctx context.Context, tx *stx, seq int64, owner string, id api.InstanceID, scheduled *dtbackend.HistoryEvent, reason string, now time.Time) error {
	var exec sql.NullString
	err := tx.QueryRowContext(ctx, `SELECT COALESCE(T.ExecutionID, I.ExecutionID) FROM NewTasks T LEFT JOIN Instances I ON I.InstanceID = T.InstanceID
		WHERE T.SequenceNumber = ? AND T.LockedBy = ?`, seq, owner).Scan(&exec)
	if errors.Is(err, sql.ErrNoRows) {
		return dtbackend.ErrWorkItemLockLost
	}
	if err != nil {
		return fmt.Errorf("sqlite: dead-letter: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO DronehubDeadLetters (Queue, InstanceID, ExecutionID, EventPayload, DequeueCount, Reason, DeadAt)
		SELECT 'activity', InstanceID, ?, EventPayload, DequeueCount, ?, ? FROM NewTasks WHERE SequenceNumber = ?`,
		exec, reason, now.Format(time.RFC3339Nano), seq); err != nil {
		return fmt.Errorf("sqlite: dead-letter: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM NewTasks WHERE SequenceNumber = ?`, seq); err != nil {
		return fmt.Errorf("sqlite: dead-letter: %w", err)
	}
	if scheduled == nil {
		return nil
	}
	answer := taskhub.NewTaskFailedEvent(scheduled.GetEventId(), taskhub.ActivityDeadLetterFailure(id, scheduled, reason))
	payload, err := dtbackend.MarshalHistoryEvent(answer)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO NewEvents (InstanceID, ExecutionID, EventPayload) VALUES (?, ?, ?)`, string(id), exec, payload)
	return err
}

// DeadLetterActivityWorkItem implements taskhub.ActivityDeadLetterer.
func (b *Backend) DeadLetterActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem, reason string) error {
	ctx, cancel := handBack(ctx)
	defer cancel()
	err := b.write(ctx, func(tx *stx) error {
		return b.setAsideActivity(ctx, tx, wi.SequenceNumber, wi.LockedBy, wi.InstanceID, wi.NewEvent, reason, time.Now().UTC())
	})
	if err != nil {
		return err
	}
	b.release(wi.LockedBy)
	b.log.Error("sqlite: activity work item dead-lettered; its task fails", "instance", wi.InstanceID,
		"activity", wi.NewEvent.GetTaskScheduled().GetName(), "reason", reason)
	b.orchWake.Notify()
	return nil
}

// DeadLetters implements taskhub.DeadLetterer.
func (b *Backend) DeadLetters(ctx context.Context) ([]taskhub.DeadLetter, error) {
	rows, err := b.rdb.QueryContext(ctx, `SELECT ID, Queue, InstanceID, EventPayload, DequeueCount, Reason, DeadAt FROM DronehubDeadLetters ORDER BY ID`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list dead letters: %w", err)
	}
	defer rows.Close()
	var out []taskhub.DeadLetter
	for rows.Next() {
		var d taskhub.DeadLetter
		var id int64
		var payload []byte
		var at string
		if err := rows.Scan(&id, &d.Queue, &d.InstanceID, &payload, &d.DequeueCount, &d.Reason, &at); err != nil {
			return nil, fmt.Errorf("sqlite: list dead letters: %w", err)
		}
		d.ID = strconv.FormatInt(id, 10)
		d.DeadAt, _ = time.Parse(time.RFC3339Nano, at)
		if e, err := dtbackend.UnmarshalHistoryEvent(payload); err == nil {
			d.EventType = taskhub.EventType(e)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// ReplayDeadLetter implements taskhub.DeadLetterer. The message is put back
// on its queue only if it can still reach its execution: the instance
// exists, is the same execution (when the dead letter recorded it), has not
// ended and, for an activity or an answer (a task's, sub-orchestration's or
// timer's completion), has scheduled it and not had it answered (this also
// keeps a dead letter that recorded no execution, from an earlier version,
// from completing another execution's task). Otherwise the dead
// letter is deleted, nothing is delivered, and the error wraps
// taskhub.ErrDeadLetterStale: a stale dead letter can never be delivered,
// and keeping it would leave it listed (and counted) for good.
func (b *Backend) ReplayDeadLetter(ctx context.Context, id string) error {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %q", taskhub.ErrDeadLetterNotFound, id)
	}
	var queue, stale string
	err = b.writeDurable(ctx, func(tx *stx) error {
		var instance string
		var exec sql.NullString
		var payload []byte
		err := tx.QueryRowContext(ctx, `SELECT Queue, InstanceID, ExecutionID, EventPayload FROM DronehubDeadLetters WHERE ID = ?`, n).Scan(&queue, &instance, &exec, &payload)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: %q", taskhub.ErrDeadLetterNotFound, id)
		}
		if err != nil {
			return fmt.Errorf("sqlite: replay dead letter %s: %w", id, err)
		}
		stale, err = b.staleness(ctx, tx, queue, instance, exec, payload)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM DronehubDeadLetters WHERE ID = ?`, n); err != nil {
			return fmt.Errorf("sqlite: replay dead letter %s: %w", id, err)
		}
		if stale != "" {
			return nil
		}
		table := "NewEvents"
		if queue == "activity" {
			table = "NewTasks"
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+table+` (InstanceID, ExecutionID, EventPayload) VALUES (?, ?, ?)`, instance, exec, payload); err != nil {
			return fmt.Errorf("sqlite: replay dead letter %s: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if stale != "" {
		b.log.Warn("sqlite: stale dead letter dropped instead of replayed", "id", id, "why", stale)
		return fmt.Errorf("sqlite: dead letter %s dropped, not replayed: %w: %s", id, taskhub.ErrDeadLetterStale, stale)
	}
	if queue == "activity" {
		b.actWake.Notify()
	} else {
		b.orchWake.Notify()
	}
	return nil
}

// staleness says why the message can no longer reach its execution, or ""
// if it can.
func (b *Backend) staleness(ctx context.Context, tx *stx, queue, instance string, exec sql.NullString, payload []byte) (string, error) {
	staleBecause := fmt.Sprintf
	var current, status string
	err := tx.QueryRowContext(ctx, `SELECT ExecutionID, RuntimeStatus FROM Instances WHERE InstanceID = ?`, instance).Scan(&current, &status)
	if errors.Is(err, sql.ErrNoRows) {
		return staleBecause("instance %q no longer exists", instance), nil
	}
	if err != nil {
		return "", fmt.Errorf("sqlite: replay: %w", err)
	}
	if exec.Valid && exec.String != "" && exec.String != current {
		return staleBecause("instance %q was recreated: its execution %s is gone (now %s)", instance, exec.String, current), nil
	}
	switch status {
	case "COMPLETED", "FAILED", "TERMINATED", "CANCELED":
		return staleBecause("the execution of instance %q has ended (%s)", instance, status), nil
	}
	e, err := dtbackend.UnmarshalHistoryEvent(payload)
	if err != nil {
		return "", fmt.Errorf("sqlite: replay: %w", err)
	}
	if e.GetExecutionStarted() != nil && status != "PENDING" {
		return staleBecause("instance %q has started already", instance), nil
	}
	// A request (an activity's TaskScheduled) or an answer (a task's,
	// sub-orchestration's or timer's) must match a request of the current
	// execution that has no answer yet; otherwise it would complete whatever
	// task of this execution has the same id.
	var ref taskRef
	var ok bool
	if queue == "activity" {
		ref, ok = requestOf(e)
	} else {
		ref, ok = answerTo(e)
	}
	if !ok {
		return "", nil
	}
	history, err := loadHistory(ctx, tx, api.InstanceID(instance))
	if err != nil {
		return "", err
	}
	queued, err := queuedEvents(ctx, tx, instance)
	if err != nil {
		return "", err
	}
	var request *dtbackend.HistoryEvent
	answered := false
	for _, h := range append(history, queued...) {
		if r, ok := requestOf(h); ok && r == ref {
			request = h
		}
		if a, ok := answerTo(h); ok && a == ref {
			answered = true
		}
	}
	switch {
	case request == nil:
		return staleBecause("the current execution of instance %q has no %s %d waiting for this message", instance, ref.kind, ref.id), nil
	case queue == "activity" && request.GetTaskScheduled().GetName() != e.GetTaskScheduled().GetName(),
		e.GetTimerFired() != nil && !request.GetTimerCreated().GetFireAt().AsTime().Equal(e.GetTimerFired().GetFireAt().AsTime()):
		return staleBecause("%s %d of the current execution of instance %q is another one", ref.kind, ref.id, instance), nil
	case answered:
		return staleBecause("%s %d of instance %q has been answered already", ref.kind, ref.id, instance), nil
	}
	return "", nil
}

// taskRef names something an orchestration waits for: a task, a
// sub-orchestration or a timer, by its event id.
type taskRef struct {
	kind string
	id   int32
}

// requestOf returns what e asks for, if it schedules a task, a
// sub-orchestration or a timer.
func requestOf(e *dtbackend.HistoryEvent) (taskRef, bool) {
	switch {
	case e.GetTaskScheduled() != nil:
		return taskRef{"task", e.GetEventId()}, true
	case e.GetSubOrchestrationInstanceCreated() != nil:
		return taskRef{"sub-orchestration", e.GetEventId()}, true
	case e.GetTimerCreated() != nil:
		return taskRef{"timer", e.GetEventId()}, true
	}
	return taskRef{}, false
}

// answerTo returns what e answers, if it completes a task, a
// sub-orchestration or a timer.
func answerTo(e *dtbackend.HistoryEvent) (taskRef, bool) {
	switch {
	case e.GetTaskCompleted() != nil:
		return taskRef{"task", e.GetTaskCompleted().GetTaskScheduledId()}, true
	case e.GetTaskFailed() != nil:
		return taskRef{"task", e.GetTaskFailed().GetTaskScheduledId()}, true
	case e.GetSubOrchestrationInstanceCompleted() != nil:
		return taskRef{"sub-orchestration", e.GetSubOrchestrationInstanceCompleted().GetTaskScheduledId()}, true
	case e.GetSubOrchestrationInstanceFailed() != nil:
		return taskRef{"sub-orchestration", e.GetSubOrchestrationInstanceFailed().GetTaskScheduledId()}, true
	case e.GetTimerFired() != nil:
		return taskRef{"timer", e.GetTimerFired().GetTimerId()}, true
	}
	return taskRef{}, false
}

// lockedEvents returns the readable events of an instance locked by owner,
// in order.
func lockedEvents(ctx context.Context, tx *stx, instance, owner string) ([]*dtbackend.HistoryEvent, error) {
	return readEvents(ctx, tx, `SELECT EventPayload FROM NewEvents WHERE InstanceID = ? AND LockedBy = ? ORDER BY SequenceNumber`, instance, owner)
}

// queuedEvents returns the readable events queued for an instance.
func queuedEvents(ctx context.Context, tx *stx, instance string) ([]*dtbackend.HistoryEvent, error) {
	return readEvents(ctx, tx, `SELECT EventPayload FROM NewEvents WHERE InstanceID = ? ORDER BY SequenceNumber`, instance)
}

func readEvents(ctx context.Context, tx *stx, query string, args ...any) ([]*dtbackend.HistoryEvent, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: read queued events: %w", err)
	}
	defer rows.Close()
	var out []*dtbackend.HistoryEvent
	for rows.Next() {
		var payload []byte
		if err := rows.Scan(&payload); err != nil {
			return nil, fmt.Errorf("sqlite: read queued events: %w", err)
		}
		if e, err := dtbackend.UnmarshalHistoryEvent(payload); err == nil {
			out = append(out, e)
		}
	}
	return out, rows.Err()
}
