package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/dronehub/dronehub/taskhub"
)

// newOwner returns the lock owner of one fetch: unique per fetch, so that a
// redelivered work item cannot be completed or renewed through an older
// delivery of it in this process.
func (b *Backend) newOwner() string {
	return fmt.Sprintf("%s,%d", b.ownerPrefix, b.ownerSeq.Add(1))
}

// noWork wraps ctx's error for a fetch that ends because ctx ended.
func noWork(ctx context.Context) error {
	return fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
}

// GetOrchestrationWorkItem waits until an instance has work or ctx ends; it
// then returns ErrNoWorkItems (wrapping ctx's error). Waiting here, woken by
// this process's own enqueues and completions and by due timers, gives low
// latency without the polling worker's backoff.
func (b *Backend) GetOrchestrationWorkItem(ctx context.Context) (*dtbackend.OrchestrationWorkItem, error) {
	return waitFor(ctx, &b.orchWake, b.nextOrchestration, func() time.Duration { return b.untilNextEvent(ctx) })
}

// waitFor runs next until it finds work, ctx ends, or it fails; between
// empty tries it sleeps until wake fires or idle() passes. next returns
// again when it handled work itself and should be called at once.
func waitFor[W any](ctx context.Context, wake *taskhub.Wake, next func(context.Context) (*W, bool, error), idle func() time.Duration) (*W, error) {
	for {
		woken := wake.C()
		wi, again, err := next(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil, noWork(ctx)
		case err != nil:
			return nil, err
		case wi != nil:
			return wi, nil
		case again:
			continue
		}
		if !taskhub.Sleep(ctx, woken, idle()) {
			return nil, noWork(ctx)
		}
	}
}

// nextOrchestration returns a work item locked ahead by an earlier fetch
// if there is one, and otherwise locks, in one transaction, up to
// FetchBatch instances in the order of their oldest visible event, each
// with its visible events: it returns the first and keeps the others for
// the next fetches (see ahead). It returns again when it handled the work
// it found itself (a start deferred to its time, an instance terminated
// before it started, unreadable events set aside): look again at once.
func (b *Backend) nextOrchestration(ctx context.Context) (*dtbackend.OrchestrationWorkItem, bool, error) {
	if wi := takeAhead(b, &b.orchAhead, orchOwner); wi != nil {
		return wi, false, nil
	}
	now := time.Now().UTC()
	var got []*dtbackend.OrchestrationWorkItem
	var again bool
	err := b.write(ctx, func(tx *stx) error {
		got, again = got[:0], false
		for range b.batchSize() {
			wi, handled, err := b.lockOrchestration(ctx, tx, b.newOwner(), now)
			switch {
			case err != nil:
				return err
			case wi != nil:
				got = append(got, wi)
			case handled:
				again = true
			default:
				return nil // no more work
			}
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	for _, wi := range got {
		b.track(&lease{owner: wi.LockedBy, instance: string(wi.InstanceID)})
	}
	if again {
		// Deferring, terminating or setting aside may have queued work
		// (a parent's message) or unlocked other events.
		b.orchWake.Notify()
	}
	if len(got) == 0 {
		return nil, again, nil
	}
	if refused := putAhead(&b.orchAhead, got[1:]); len(refused) > 0 {
		b.handBackOrchestrations(ctx, refused)
	}
	return got[0], false, nil
}

// lockOrchestration locks, under owner, the instance whose oldest visible
// event is the oldest, with its visible events. It returns nil and handled
// when it dealt with that instance's work itself, and nil, false when
// there is no work.
func (b *Backend) lockOrchestration(ctx context.Context, tx *stx, owner string, now time.Time) (*dtbackend.OrchestrationWorkItem, bool, error) {
	var id string
	err := tx.QueryRowContext(ctx, `UPDATE Instances SET LockedBy = ?, LockExpiration = ? WHERE InstanceID = (
			SELECT E.InstanceID FROM NewEvents E JOIN Instances I ON I.InstanceID = E.InstanceID
			WHERE (E.VisibleTime IS NULL OR E.VisibleTime <= ?) AND (I.LockExpiration IS NULL OR I.LockExpiration < ?)
			ORDER BY E.SequenceNumber LIMIT 1)
		RETURNING InstanceID`, owner, now.Add(b.opts.LockTimeout), now, now).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("sqlite: fetch orchestration work: %w", err)
	}
	events, failures, err := b.lockEvents(ctx, tx, id, owner, now, false)
	if err != nil {
		return nil, false, err
	}
	if len(events) == 0 { // all unreadable, and set aside
		return nil, true, unlockInstance(ctx, tx, id, owner)
	}
	started, err := hasHistory(ctx, tx, id)
	if err != nil {
		return nil, false, err
	}
	if !started {
		if term := first(events, isTerminate); term != nil {
			// Terminated before it started: end it now, without running
			// it, even if its start time lies ahead.
			if events, _, err = b.lockEvents(ctx, tx, id, owner, now, true); err != nil {
				return nil, false, err
			}
			if start := first(events, isStart); start != nil {
				return nil, true, b.terminateUnstarted(ctx, tx, id, owner, start, term.GetExecutionTerminated().GetInput(), now)
			}
		} else if at, ok := taskhub.ScheduledStart(events, now); ok {
			return nil, true, b.deferStart(ctx, tx, id, owner, at)
		} else if first(events, isStart) == nil {
			// A start postponed by an earlier version (its VisibleTime
			// set ahead): the other events wait for it.
			var at sql.NullString
			if err := tx.QueryRowContext(ctx, `SELECT MIN(VisibleTime) FROM NewEvents WHERE InstanceID = ? AND VisibleTime > ?`, id, now).Scan(&at); err == nil && at.Valid {
				if t, ok := parseTime(at.String); ok {
					return nil, true, b.deferStart(ctx, tx, id, owner, t)
				}
			}
		}
	}
	return &dtbackend.OrchestrationWorkItem{
		InstanceID: api.InstanceID(id),
		NewEvents:  events,
		LockedBy:   owner,
		RetryCount: int32(failures),
	}, false, nil
}

// lockEvents locks an instance's visible events (all of them if all) under
// owner and returns them in order, with the largest count of failed
// deliveries among them. Events whose payload cannot be read are set aside
// as dead letters at once.
func (b *Backend) lockEvents(ctx context.Context, tx *stx, id, owner string, now time.Time, all bool) ([]*dtbackend.HistoryEvent, int, error) {
	visible := `AND (VisibleTime IS NULL OR VisibleTime <= ?)`
	args := []any{owner, id, now}
	if all {
		visible, args = "", args[:2]
	}
	rows, err := tx.QueryContext(ctx, `UPDATE NewEvents SET LockedBy = ? WHERE SequenceNumber IN (
			SELECT SequenceNumber FROM NewEvents WHERE InstanceID = ? `+visible+` ORDER BY SequenceNumber LIMIT 1000)
		RETURNING SequenceNumber, EventPayload, DequeueCount`, args...)
	if err != nil {
		return nil, 0, fmt.Errorf("sqlite: lock events of %s: %w", id, err)
	}
	type row struct {
		seq     int64
		payload []byte
		count   int
	}
	var got []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.seq, &r.payload, &r.count); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("sqlite: lock events of %s: %w", id, err)
		}
		got = append(got, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("sqlite: lock events of %s: %w", id, err)
	}
	slices.SortFunc(got, func(a, b row) int { return int(a.seq - b.seq) })
	events := make([]*dtbackend.HistoryEvent, 0, len(got))
	failures := 0
	for _, r := range got {
		e, err := dtbackend.UnmarshalHistoryEvent(r.payload)
		if err != nil {
			b.log.Error("sqlite: an orchestration message cannot be read; dead-lettering it", "instance", id, "err", err)
			if err := setAsideEvent(ctx, tx, r.seq, err.Error(), now); err != nil {
				return nil, 0, err
			}
			continue
		}
		events = append(events, e)
		failures = max(failures, r.count)
	}
	return events, failures, nil
}

// setAsideEvent moves one queued orchestration message to the dead letters.
func setAsideEvent(ctx context.Context, tx *stx, seq int64, reason string, now time.Time) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO DronehubDeadLetters (Queue, InstanceID, ExecutionID, EventPayload, DequeueCount, Reason, DeadAt)
		SELECT 'orchestration', E.InstanceID, COALESCE(E.ExecutionID, I.ExecutionID), E.EventPayload, E.DequeueCount, ?, ?
		FROM NewEvents E LEFT JOIN Instances I ON I.InstanceID = E.InstanceID WHERE E.SequenceNumber = ?`,
		reason, now.Format(time.RFC3339Nano), seq); err != nil {
		return fmt.Errorf("sqlite: dead-letter: %w", err)
	}
	_, err := tx.ExecContext(ctx, `DELETE FROM NewEvents WHERE SequenceNumber = ?`, seq)
	return err
}

func first(events []*dtbackend.HistoryEvent, match func(*dtbackend.HistoryEvent) bool) *dtbackend.HistoryEvent {
	for _, e := range events {
		if match(e) {
			return e
		}
	}
	return nil
}

func isStart(e *dtbackend.HistoryEvent) bool     { return e.GetExecutionStarted() != nil }
func isTerminate(e *dtbackend.HistoryEvent) bool { return e.GetExecutionTerminated() != nil }

func hasHistory(ctx context.Context, tx *stx, id string) (bool, error) {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM History WHERE InstanceID = ?)`, id).Scan(&n); err != nil {
		return false, fmt.Errorf("sqlite: read history of %s: %w", id, err)
	}
	return n == 1, nil
}

// deferStart hands back the events of an instance that has not started
// and keeps it from being fetched until its start time: it starts on time,
// never early, and shows as Pending until then.
func (b *Backend) deferStart(ctx context.Context, tx *stx, id, owner string, at time.Time) error {
	if _, err := tx.ExecContext(ctx, `UPDATE NewEvents SET LockedBy = NULL WHERE InstanceID = ? AND LockedBy = ?`, id, owner); err != nil {
		return err
	}
	return deferInstance(ctx, tx, id, at)
}

func unlockInstance(ctx context.Context, tx *stx, id, owner string) error {
	_, err := tx.ExecContext(ctx, `UPDATE Instances SET LockedBy = NULL, LockExpiration = NULL WHERE InstanceID = ? AND LockedBy = ?`, id, owner)
	return err
}

// terminateUnstarted ends an instance that never ran as Terminated, with the
// terminate request's output, and consumes its queued events.
func (b *Backend) terminateUnstarted(ctx context.Context, tx *stx, id, owner string, start *dtbackend.HistoryEvent, output *wrapperspb.StringValue, now time.Time) error {
	state := dtbackend.NewOrchestrationRuntimeState(api.InstanceID(id), nil)
	if err := state.AddEvent(start); err != nil {
		return err
	}
	if err := taskhub.EndExecution(state, api.RUNTIME_STATUS_TERMINATED, output, nil); err != nil {
		return err
	}
	if err := b.commitState(ctx, tx, id, owner, state, now); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `DELETE FROM NewEvents WHERE InstanceID = ? AND LockedBy = ?`, id, owner)
	return err
}

// untilNextEvent is how long to sleep before the next check: until the
// earliest queued event becomes fetchable (a timer, a retry back-off, a
// scheduled start, the lock expiry of an instance another worker holds),
// but no longer than PollInterval.
func (b *Backend) untilNextEvent(ctx context.Context) time.Duration {
	d := b.opts.PollInterval
	var next sql.NullString
	err := b.rdb.QueryRowContext(ctx, `SELECT MIN(CASE WHEN I.LockExpiration IS NOT NULL AND (E.VisibleTime IS NULL OR I.LockExpiration > E.VisibleTime)
			THEN I.LockExpiration ELSE E.VisibleTime END)
		FROM NewEvents E JOIN Instances I ON I.InstanceID = E.InstanceID`).Scan(&next)
	if err != nil || !next.Valid {
		return d
	}
	if t, ok := parseTime(next.String); ok {
		if until := time.Until(t) + time.Millisecond; until < d {
			return max(until, time.Millisecond)
		}
	}
	return d
}

// executionID returns the id of the execution whose state this is.
func executionID(state *dtbackend.OrchestrationRuntimeState) string {
	for _, events := range [][]*dtbackend.HistoryEvent{state.NewEvents(), state.OldEvents()} {
		if e := first(events, isStart); e != nil {
			return e.GetExecutionStarted().GetOrchestrationInstance().GetExecutionId().GetValue()
		}
	}
	return ""
}

// commitState writes what a turn of the instance produced, as durabletask-go
// defines it: the instance row, the new history (replacing the old after
// continue-as-new), the activities, timers and messages to other instances;
// and unlocks the instance. It does not consume the work item's events.
func (b *Backend) commitState(ctx context.Context, tx *stx, id, owner string, state *dtbackend.OrchestrationRuntimeState, now time.Time) error {
	if state == nil {
		return fmt.Errorf("sqlite: complete %s: the work item has no state", id)
	}
	var set []string
	var args []any
	started, completed := false, false
	for _, e := range state.NewEvents() {
		if es := e.GetExecutionStarted(); es != nil && !started {
			started = true
			set = append(set, "CreatedTime = ?", "Input = ?", "ExecutionID = ?")
			args = append(args, e.Timestamp.AsTime(), es.GetInput().GetValue(), es.GetOrchestrationInstance().GetExecutionId().GetValue())
		} else if ec := e.GetExecutionCompleted(); ec != nil && !completed {
			completed = true
			var fd []byte
			if ec.GetFailureDetails() != nil {
				var err error
				if fd, err = proto.Marshal(ec.GetFailureDetails()); err != nil {
					return fmt.Errorf("sqlite: complete %s: %w", id, err)
				}
			}
			set = append(set, "CompletedTime = ?", "Output = ?", "FailureDetails = ?")
			args = append(args, now, ec.GetResult().GetValue(), fd)
		}
	}
	if state.CustomStatus != nil {
		set = append(set, "CustomStatus = ?")
		args = append(args, state.CustomStatus.GetValue())
	}
	set = append(set, "RuntimeStatus = ?", "LastUpdatedTime = ?", "LockedBy = NULL", "LockExpiration = NULL")
	args = append(args, taskhub.StorageName(state.RuntimeStatus()), now, id, owner)
	res, err := tx.ExecContext(ctx, `UPDATE Instances SET `+strings.Join(set, ", ")+` WHERE InstanceID = ? AND LockedBy = ?`, args...)
	if err != nil {
		return fmt.Errorf("sqlite: complete %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: instance %s no longer exists or another worker holds it", dtbackend.ErrWorkItemLockLost, id)
	}
	if state.ContinuedAsNew() {
		if _, err := tx.ExecContext(ctx, `DELETE FROM History WHERE InstanceID = ?`, id); err != nil {
			return fmt.Errorf("sqlite: complete %s: %w", id, err)
		}
	}
	next := len(state.OldEvents())
	for _, e := range state.NewEvents() {
		payload, err := dtbackend.MarshalHistoryEvent(e)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO History (InstanceID, SequenceNumber, EventPayload) VALUES (?, ?, ?)`, id, next, payload); err != nil {
			return fmt.Errorf("sqlite: complete %s: %w", id, err)
		}
		next++
	}
	exec := nullIfEmpty(executionID(state))
	for _, e := range state.PendingTasks() {
		payload, err := dtbackend.MarshalHistoryEvent(e)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO NewTasks (InstanceID, ExecutionID, EventPayload) VALUES (?, ?, ?)`, id, exec, payload); err != nil {
			return fmt.Errorf("sqlite: complete %s: %w", id, err)
		}
	}
	for _, e := range state.PendingTimers() {
		payload, err := dtbackend.MarshalHistoryEvent(e)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO NewEvents (InstanceID, ExecutionID, EventPayload, VisibleTime) VALUES (?, ?, ?, ?)`,
			id, exec, payload, e.GetTimerFired().GetFireAt().AsTime().UTC()); err != nil {
			return fmt.Errorf("sqlite: complete %s: %w", id, err)
		}
	}
	for _, msg := range state.PendingMessages() {
		if msg.HistoryEvent.GetExecutionStarted() != nil {
			// A sub-orchestration: an id taken by a failed instance is
			// reused, any other is kept.
			err := b.createInstance(ctx, tx, msg.HistoryEvent, now, dtbackend.WithOrchestrationIdReusePolicy(&api.OrchestrationIdReusePolicy{
				OperationStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_FAILED},
				Action:          api.REUSE_ID_ACTION_TERMINATE,
			}))
			if errors.Is(err, api.ErrDuplicateInstance) || errors.Is(err, api.ErrIgnoreInstance) {
				b.log.Warn("sqlite: not creating a sub-orchestration: an instance with its id exists", "instance", id, "sub-orchestration", msg.TargetInstanceID)
				continue
			}
			if err != nil {
				return err
			}
			continue
		}
		payload, err := dtbackend.MarshalHistoryEvent(msg.HistoryEvent)
		if err != nil {
			return err
		}
		if err := addEvent(ctx, tx, msg.TargetInstanceID, "", msg.HistoryEvent, payload); err != nil {
			return fmt.Errorf("sqlite: complete %s: %w", id, err)
		}
	}
	return nil
}

// CompleteOrchestrationWorkItem implements backend.Backend.
func (b *Backend) CompleteOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	b.update(wi.LockedBy, func(l *lease) { l.completeTried = true })
	err := b.write(ctx, func(tx *stx) error {
		if err := b.commitState(ctx, tx, string(wi.InstanceID), wi.LockedBy, wi.State, time.Now().UTC()); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM NewEvents WHERE InstanceID = ? AND LockedBy = ?`, string(wi.InstanceID), wi.LockedBy)
		if err != nil {
			return fmt.Errorf("sqlite: complete %s: %w", wi.InstanceID, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("%w: the events of %s were taken by another worker", dtbackend.ErrWorkItemLockLost, wi.InstanceID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	b.release(wi.LockedBy)
	if len(wi.State.PendingTasks()) > 0 {
		b.actWake.Notify()
	}
	// Events that arrived during the turn (and messages it sent) are
	// fetchable now: wake the waiting consumers instead of leaving them to
	// the poll interval.
	b.orchWake.Notify()
	return nil
}

// retryDelay is how long a work item whose execution failed n times waits
// before it is delivered again.
func retryDelay(n int) time.Duration { return min(time.Duration(n)*time.Second, 30*time.Second) }

// AbandonOrchestrationWorkItem implements backend.Backend. The delivery
// counts towards the dead-letter limit only if its execution failed (see
// lease.failedExecution); at the limit the work item's events are set aside
// and the instance ends Failed.
func (b *Backend) AbandonOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	l := b.release(wi.LockedBy)
	counted := l.failedExecution()
	var delay time.Duration
	if l != nil && l.completeTried {
		delay = time.Second // do not spin on a commit that keeps failing
	}
	ctx, cancel := handBack(ctx)
	defer cancel()
	id := string(wi.InstanceID)
	err := b.write(ctx, func(tx *stx) error {
		now := time.Now().UTC()
		if counted {
			if _, err := tx.ExecContext(ctx, `UPDATE NewEvents SET DequeueCount = DequeueCount + 1 WHERE InstanceID = ? AND LockedBy = ?`, id, wi.LockedBy); err != nil {
				return err
			}
			var failures sql.NullInt64
			if err := tx.QueryRowContext(ctx, `SELECT MAX(DequeueCount) FROM NewEvents WHERE InstanceID = ? AND LockedBy = ?`, id, wi.LockedBy).Scan(&failures); err != nil {
				return err
			}
			if int(failures.Int64) >= b.opts.MaxDequeueCount {
				return b.deadLetterOrchestration(ctx, tx, wi, int(failures.Int64), now)
			}
			delay = retryDelay(int(failures.Int64))
		}
		var visible any
		if delay > 0 {
			visible = now.Add(delay)
		}
		res, err := tx.ExecContext(ctx, `UPDATE NewEvents SET LockedBy = NULL, VisibleTime = ? WHERE InstanceID = ? AND LockedBy = ?`, visible, id, wi.LockedBy)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return dtbackend.ErrWorkItemLockLost
		}
		res, err = tx.ExecContext(ctx, `UPDATE Instances SET LockedBy = NULL, LockExpiration = NULL WHERE InstanceID = ? AND LockedBy = ?`, id, wi.LockedBy)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return dtbackend.ErrWorkItemLockLost
		}
		return nil
	})
	b.orchWake.Notify()
	if err != nil && !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
		return fmt.Errorf("sqlite: abandon %s: %w", id, err)
	}
	return err
}

// GetActivityWorkItem waits until an activity is ready or ctx ends, like
// GetOrchestrationWorkItem.
func (b *Backend) GetActivityWorkItem(ctx context.Context) (*dtbackend.ActivityWorkItem, error) {
	return waitFor(ctx, &b.actWake, b.nextActivity, func() time.Duration { return b.opts.PollInterval })
}

// nextActivity returns a work item locked ahead by an earlier fetch if
// there is one, and otherwise locks, in one transaction, up to FetchBatch
// of the oldest activity messages that are not locked: it returns the
// first and keeps the others for the next fetches (see ahead). One that
// cannot be run (unreadable, or not a TaskScheduled event) is set aside at
// once; again is returned if that is all there was.
func (b *Backend) nextActivity(ctx context.Context) (*dtbackend.ActivityWorkItem, bool, error) {
	if wi := takeAhead(b, &b.actAhead, actOwner); wi != nil {
		return wi, false, nil
	}
	now := time.Now().UTC()
	var got []*dtbackend.ActivityWorkItem
	var again bool
	err := b.write(ctx, func(tx *stx) error {
		got, again = got[:0], false
		for range b.batchSize() {
			owner := b.newOwner()
			var seq int64
			var id string
			var payload []byte
			err := tx.QueryRowContext(ctx, `UPDATE NewTasks SET LockedBy = ?, LockExpiration = ? WHERE SequenceNumber = (
					SELECT SequenceNumber FROM NewTasks WHERE LockExpiration IS NULL OR LockExpiration < ? ORDER BY SequenceNumber LIMIT 1)
				RETURNING SequenceNumber, InstanceID, EventPayload`, owner, now.Add(b.opts.LockTimeout), now).Scan(&seq, &id, &payload)
			if errors.Is(err, sql.ErrNoRows) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("sqlite: fetch activity work: %w", err)
			}
			e, err := dtbackend.UnmarshalHistoryEvent(payload)
			if err != nil || e.GetTaskScheduled() == nil {
				reason := "not a TaskScheduled event"
				if err != nil {
					reason, e = err.Error(), nil
				}
				b.log.Error("sqlite: an activity message cannot be run; dead-lettering it", "instance", id, "reason", reason)
				again = true
				if err := b.setAsideActivity(ctx, tx, seq, owner, api.InstanceID(id), e, reason, now); err != nil {
					return err
				}
				continue
			}
			got = append(got, &dtbackend.ActivityWorkItem{SequenceNumber: seq, InstanceID: api.InstanceID(id), NewEvent: e, LockedBy: owner})
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	for _, wi := range got {
		b.track(&lease{activity: true, owner: wi.LockedBy, instance: string(wi.InstanceID), seq: wi.SequenceNumber})
	}
	if again {
		b.orchWake.Notify()
	}
	if len(got) == 0 {
		return nil, again, nil
	}
	if refused := putAhead(&b.actAhead, got[1:]); len(refused) > 0 {
		b.handBackActivities(ctx, refused)
	}
	return got[0], false, nil
}

// CompleteActivityWorkItem implements backend.Backend: the activity's
// result is queued for its orchestration, if the lock is still held.
func (b *Backend) CompleteActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem) error {
	b.update(wi.LockedBy, func(l *lease) { l.completeTried = true })
	if wi.Result == nil {
		return fmt.Errorf("sqlite: complete activity %s: no result", wi)
	}
	payload, err := dtbackend.MarshalHistoryEvent(wi.Result)
	if err != nil {
		return err
	}
	err = b.write(ctx, func(tx *stx) error {
		var exec sql.NullString
		err := tx.QueryRowContext(ctx, `DELETE FROM NewTasks WHERE SequenceNumber = ? AND LockedBy = ? RETURNING ExecutionID`, wi.SequenceNumber, wi.LockedBy).Scan(&exec)
		if errors.Is(err, sql.ErrNoRows) {
			return dtbackend.ErrWorkItemLockLost
		}
		if err != nil {
			return fmt.Errorf("sqlite: complete activity %s: %w", wi, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO NewEvents (InstanceID, ExecutionID, EventPayload) VALUES (?, ?, ?)`, string(wi.InstanceID), exec, payload); err != nil {
			return fmt.Errorf("sqlite: complete activity %s: %w", wi, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	b.release(wi.LockedBy)
	b.orchWake.Notify()
	return nil
}

// AbandonActivityWorkItem implements backend.Backend: the activity is
// delivered again. Activity abandons never count towards the dead-letter
// limit (an activity's error is its result; an abandon is a hand-back or a
// failed commit).
func (b *Backend) AbandonActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem) error {
	l := b.release(wi.LockedBy)
	var visible any
	if l != nil && l.completeTried {
		visible = time.Now().UTC().Add(time.Second) // do not spin on a commit that keeps failing
	}
	ctx, cancel := handBack(ctx)
	defer cancel()
	var res sql.Result
	err := b.write(ctx, func(tx *stx) (err error) {
		res, err = tx.ExecContext(ctx, `UPDATE NewTasks SET LockedBy = NULL, LockExpiration = ? WHERE SequenceNumber = ? AND LockedBy = ?`, visible, wi.SequenceNumber, wi.LockedBy)
		return err
	})
	b.actWake.Notify()
	if err != nil {
		return fmt.Errorf("sqlite: abandon activity %s: %w", wi, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return dtbackend.ErrWorkItemLockLost
	}
	return nil
}
