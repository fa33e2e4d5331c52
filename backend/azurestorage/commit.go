package azurestorage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/google/uuid"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/dronehub/dronehub/taskhub"
)

// The checkpoint protocol (CompleteOrchestrationWorkItem).
//
//  1. Fenced commit: one entity-group transaction, conditional on the
//     sentinel ETag read at fetch, holds the new status and Seen ids (the
//     sentinel), the episode's new history events (one packed row), its
//     outbox (one packed row: every message the episode decided to send),
//     and deletes of consumed stashed events, of outbox rows already sent,
//     and of a few garbage rows.
//  2. Send the outbox: activities, timers (delayed), events, answers to a
//     parent, sub-orchestration starts.
//  3. Delete the outbox row.
//  4. Delete the consumed queue messages, then blobs nothing refers to any
//     more.
//
// Invariants, and what a crash at each point leaves:
//   - Only committed decisions reach anyone (invariant 1): nothing is sent
//     before step 1 succeeds. A crash or a failed commit before it leaves
//     no trace but uploaded blobs with fresh names, which a failed commit
//     deletes; an episode that runs again and decides differently sends
//     only its own decisions. So no answer can arrive before its request
//     commits, and one whose request is not in the history is stale.
//   - Crash after 1 (before 4): the consumed messages were not deleted, so
//     they are redelivered after LockTimeout; the next owner loads the
//     instance, finds the outbox row, sends it again (same message ids,
//     copies dropped by the receivers) and drops the redelivered messages
//     as consumed (their ids are in Seen; answers are recognised by
//     content). Steps 2-4 therefore need no fence: each repeats safely.
//   - A stale owner (its lease lost or expired) fails at step 1 with
//     ErrWorkItemLockLost, whatever its clock says, and sends nothing.

// outMsg is one message of an outbox.
type outMsg struct {
	Queue     int      `json:"q"` // control queue partition; -1 for the work-item queue
	Env       envelope `json:"e"` // Event or Blob set
	VisibleAt int64    `json:"v,omitempty"`
	// Create marks a sub-orchestration start: the instance is created
	// (adopted if it exists with the same execution id).
	Create bool `json:"c,omitempty"`
}

// commitPlan is everything one commit writes and what follows it.
type commitPlan struct {
	sentinel     entity
	sentinelJSON []byte // as written: what a read of the row returns, but for odata fields
	actions      []aztables.TransactionAction
	out          []outMsg
	newBlobs     []string // uploaded for this attempt
	oldBlobs     []string // referenced only by what this commit replaces or deletes
	stashLeft    bool     // stashed events remain for a later episode

	// For the instance cache (cache.go).
	etag       azcore.ETag     // the status row's ETag after the commit; "" if unknown
	deleted    map[string]bool // row keys the commit deletes
	continued  bool            // the commit starts a new generation
	events     []*dtbackend.HistoryEvent
	historyRow entity // the history row written, if any
	outboxRow  entity // the outbox row written, if any
}

// maxStashPerEpisode bounds the stashed events one commit consumes (their
// deletes share the transaction's 100 operations).
const maxStashPerEpisode = 50

// maxGarbagePerCommit bounds the garbage rows one commit deletes.
const maxGarbagePerCommit = 20

// CompleteOrchestrationWorkItem checkpoints a work item (see the protocol
// above). A commit whose fence no longer matches (another worker took the
// partition, or the instance was purged) fails with ErrWorkItemLockLost.
func (b *Backend) CompleteOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	it := itemOf(wi)
	if it == nil {
		return fmt.Errorf("azurestorage: work item for %s was not fetched from this backend", wi.InstanceID)
	}
	if wi.State == nil {
		return fmt.Errorf("azurestorage: work item for %s has no runtime state", wi.InstanceID)
	}
	id := string(wi.InstanceID)
	defer b.finish(id)
	if err := ctx.Err(); err != nil {
		// The work was cut off (a shutdown deadline): what it computed
		// may be the cancellation itself. Hand it back instead.
		it.completeFailed = true
		return fmt.Errorf("azurestorage: complete %s: %w", id, err)
	}
	// Storage calls wait out an outage for as long as the messages stay locked.
	ctx = retryUntil(ctx, b.lockDeadline(it.msgs))
	if len(wi.State.NewEvents()) == 0 && len(it.stashUsed) == 0 {
		// Nothing to record (e.g. events for a completed instance).
		for _, row := range slices.Concat(it.state.outbox, it.state.sent) {
			b.deleteRow(ctx, id, row.str("RowKey")) // sent again at fetch
		}
		b.finishEpisode(ctx, id, it, nil)
		return nil
	}
	if crashAt(b.hooks.beforeCommit, id) {
		it.crashed = true
		return errSimulatedCrash
	}
	err := b.complete(ctx, id, wi.State, it)
	if err != nil {
		it.completeFailed = true
	}
	return err
}

// complete commits state, the episode it of instance id decided, and runs
// the steps after the commit.
func (b *Backend) complete(ctx context.Context, id string, state *dtbackend.OrchestrationRuntimeState, it *orchItem) error {
	plan, err := b.planCommit(ctx, id, state, it)
	if err != nil {
		b.deleteBlobs(ctx, plan.newBlobs)
		return err
	}
	if err := b.submitCommit(ctx, id, plan, it.state); err != nil {
		if errors.Is(err, errCommitUnknown) {
			return err // it may have gone through: keep what it refers to
		}
		b.deleteBlobs(ctx, plan.newBlobs)
		return err
	}
	b.finishEpisode(ctx, id, it, plan)
	return nil
}

// partition is the control queue index of an instance.
func (b *Backend) partition(id string) int { return partitionOf(id, b.names.partitions) }

// errCommitUnknown wraps a commit error after which the commit may or may
// not have been applied.
var errCommitUnknown = errors.New("commit outcome unknown")

// planCommit builds the fenced transaction.
func (b *Backend) planCommit(ctx context.Context, id string, state *dtbackend.OrchestrationRuntimeState, it *orchItem, extra ...outMsg) (*commitPlan, error) {
	st := it.state
	pk := escapeKey(id)
	plan := &commitPlan{deleted: map[string]bool{}, continued: state.ContinuedAsNew(), events: state.NewEvents()}
	gen, base := st.gen(), st.historyCount()
	if state.ContinuedAsNew() {
		gen, base = gen+1, 0
	}
	seq := st.seq() + 1
	out, blobs, err := b.buildOutbox(ctx, id, state)
	plan.newBlobs = append(plan.newBlobs, blobs...)
	if err != nil {
		return plan, err
	}
	out = append(out, extra...)
	plan.out = out
	var rows []aztables.TransactionAction
	written := map[string]bool{}
	if evs := state.NewEvents(); len(evs) > 0 {
		data, err := encodeEvents(evs)
		if err != nil {
			return plan, fmt.Errorf("azurestorage: encode history of %s: %w", id, err)
		}
		row := newEntity(pk, historyRK(gen, base))
		blob, err := b.pack(ctx, row, id, "history", data)
		if blob != "" {
			plan.newBlobs = append(plan.newBlobs, blob)
		}
		if err != nil {
			return plan, err
		}
		row["N"] = len(evs)
		rows = append(rows, aztables.TransactionAction{ActionType: aztables.TransactionTypeInsertReplace, Entity: row.marshal()})
		written[row.str("RowKey")] = true
		plan.historyRow = row
	}
	if len(out) > 0 {
		data, err := json.Marshal(out)
		if err != nil {
			return plan, fmt.Errorf("azurestorage: encode outbox of %s: %w", id, err)
		}
		row := newEntity(pk, outboxRK(seq))
		blob, err := b.pack(ctx, row, id, "outbox", data)
		if blob != "" {
			plan.newBlobs = append(plan.newBlobs, blob)
		}
		if err != nil {
			return plan, err
		}
		rows = append(rows, aztables.TransactionAction{ActionType: aztables.TransactionTypeInsertReplace, Entity: row.marshal()})
		written[row.str("RowKey")] = true
		plan.outboxRow = row
	}
	del := func(e entity) {
		rk := e.str("RowKey")
		if written[rk] {
			return
		}
		written[rk] = true
		plan.deleted[rk] = true
		rows = append(rows, aztables.TransactionAction{ActionType: aztables.TransactionTypeDelete, Entity: newEntity(pk, rk).marshal()})
		if blob := e.str("Blob"); blob != "" {
			plan.oldBlobs = append(plan.oldBlobs, blob)
		}
		if blob := e.str("EventBlob"); blob != "" {
			plan.oldBlobs = append(plan.oldBlobs, blob)
		}
	}
	for _, s := range it.stashUsed {
		del(entity{"RowKey": s.rk, "EventBlob": s.blob})
	}
	plan.stashLeft = len(st.stash) > len(it.stashUsed)
	// Outbox rows found at load were sent again by buildWorkItem; those
	// of a cached state were sent by this worker.
	for _, e := range slices.Concat(st.outbox, st.sent) {
		del(e)
	}
	garbage := st.garbage
	if state.ContinuedAsNew() {
		// The previous generation's rows become garbage with this commit;
		// it is the one that can delete them first.
		garbage = append(slices.Clone(garbage), st.current...)
	}
	for i, e := range garbage {
		if i == maxGarbagePerCommit {
			break
		}
		del(e)
	}
	sentinel, replaced, fresh, err := b.statusRow(ctx, id, state, it, base+len(state.NewEvents()), gen, seq)
	plan.newBlobs = append(plan.newBlobs, fresh...)
	plan.oldBlobs = append(plan.oldBlobs, replaced...)
	if err != nil {
		return plan, err
	}
	plan.sentinel, plan.sentinelJSON = sentinel, sentinel.marshal()
	if st.sentinel == nil {
		plan.actions = append(plan.actions, aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: plan.sentinelJSON})
	} else {
		etag := st.etag
		plan.actions = append(plan.actions, aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: plan.sentinelJSON, IfMatch: &etag})
	}
	plan.actions = append(plan.actions, rows...)
	return plan, nil
}

// submitCommit runs the fenced transaction and interprets its failure.
func (b *Backend) submitCommit(ctx context.Context, id string, plan *commitPlan, st *loadedState) error {
	capture := &bodyCapture{}
	err := b.submit(withCapture(ctx, capture), plan.actions)
	for range 5 {
		// A row the commit deletes may be gone already: an outbox row its
		// sender deleted after this episode read it (a worker that lost
		// the partition, an evicted cache entry), or garbage. The
		// transaction is all or nothing, so nothing was written: commit
		// again without that delete, under the same fence.
		if err == nil || !isNotFound(err) || !plan.dropSpentDelete(failedOperation(err)) {
			break
		}
		capture = &bodyCapture{}
		err = b.submit(withCapture(ctx, capture), plan.actions)
	}
	if err == nil {
		plan.etag = firstOperationETag(capture.get())
		return nil
	}
	cur, etag, rerr := b.getSentinel(ctx, id)
	switch {
	case rerr == nil && cur != nil && cur.str("CommitID") == plan.sentinel.str("CommitID"):
		// An attempt whose answer was lost went through; the retry then
		// failed on its own change.
		plan.etag = etag
		return nil
	case rerr == nil && ((cur != nil) != (st.sentinel != nil) || cur != nil && etag != st.etag):
		return fmt.Errorf("azurestorage: commit %s: the instance was changed by another worker: %w", id, dtbackend.ErrWorkItemLockLost)
	case rerr != nil:
		return fmt.Errorf("azurestorage: commit %s: %w (%w)", id, err, errCommitUnknown)
	}
	return fmt.Errorf("azurestorage: commit %s: %w", id, err)
}

// dropSpentDelete removes action i (0-based) from the plan if it deletes a
// row that may be gone without harm (an outbox row, garbage): not a stashed
// event's, whose delete records that this commit consumed it. It reports
// whether it did.
func (p *commitPlan) dropSpentDelete(i int) bool {
	if i < 0 || i >= len(p.actions) || p.actions[i].ActionType != aztables.TransactionTypeDelete {
		return false
	}
	var e entity
	if err := json.Unmarshal(p.actions[i].Entity, &e); err != nil || strings.HasPrefix(e.str("RowKey"), stashRKPre) {
		return false
	}
	p.actions = slices.Delete(slices.Clone(p.actions), i, i+1)
	return true
}

// finishEpisode runs the steps after a commit (plan nil: nothing was
// committed): send the outbox, delete its row, wake the instance for
// leftover stashed events, delete the consumed messages, delete blobs.
// Every step repeats safely, so failures are logged, not returned: the
// redelivery of the consumed messages makes the next owner repeat them.
func (b *Backend) finishEpisode(ctx context.Context, id string, it *orchItem, plan *commitPlan) {
	if plan != nil {
		if crashAt(b.hooks.afterCommit, id) {
			b.unhold(it.msgs...) // a dead worker renews nothing
			return
		}
		if err := b.sendOutbox(ctx, id, plan.out); err != nil {
			b.log.Warn("azurestorage: send outbox (its messages are sent again when the instance is next loaded)", "instance", id, "err", err)
			b.comeBack(id, it.msgs)
			return
		}
		if crashAt(b.hooks.afterSend, id) {
			b.unhold(it.msgs...)
			return
		}
		if indexChanged(it.state.sentinel, plan.sentinel) {
			b.writeIndex(ctx, it.state.sentinel, plan.sentinel)
		}
		if plan.stashLeft {
			if err := b.wake(ctx, id); err != nil {
				b.log.Warn("azurestorage: wake instance for stashed events", "instance", id, "err", err)
				b.comeBack(id, it.msgs)
				return
			}
		}
	}
	if err := b.deleteAll(ctx, it.msgs); err != nil {
		b.log.Warn("azurestorage: delete consumed messages (they will be dropped as copies)", "instance", id, "err", err)
	} else {
		b.confirm(id, it.msgs)
	}
	var blobs []string
	for _, m := range it.msgs {
		if m.env.Blob != "" {
			blobs = append(blobs, m.env.Blob)
		}
	}
	if plan != nil {
		blobs = append(blobs, plan.oldBlobs...)
	}
	b.deleteBlobs(ctx, blobs)
	if plan != nil {
		// The outbox row is deleted by the instance's next commit, or
		// when it leaves the cache (cache.go).
		b.cacheCommitted(ctx, id, it, plan, plan.outboxRow)
	}
}

// comeBack returns an episode's consumed messages to the queue after a
// post-commit step failed, so that their redelivery makes the next load
// repeat it (send the outbox again, wake the instance). They are no longer
// renewed: if the release fails too (storage is away), their lock expires
// and they come back then. Never leave them held: a message renewed forever
// and never deleted would keep its instance waiting.
func (b *Backend) comeBack(id string, msgs []*inMsg) {
	b.unhold(msgs...)
	ctx, cancel := context.WithTimeout(b.bg, 30*time.Second)
	defer cancel()
	for _, m := range msgs {
		if err := b.release(ctx, m, time.Second, true); err != nil && !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
			b.log.Debug("azurestorage: release after a failed post-commit step (its lock will expire)", "instance", id, "err", err)
		}
	}
}

// buildOutbox turns the episode's decisions into messages, uploading large
// events to blobs (fresh names, returned so a failed commit deletes them).
func (b *Backend) buildOutbox(ctx context.Context, id string, state *dtbackend.OrchestrationRuntimeState) ([]outMsg, []string, error) {
	ob := newOutbox(id, state)
	var out []outMsg
	var blobs []string
	add := func(q int, env envelope, e *dtbackend.HistoryEvent, at time.Time, create bool) error {
		env, blob, err := b.prepare(ctx, env, e)
		if blob != "" {
			blobs = append(blobs, blob)
		}
		if err != nil {
			return err
		}
		m := outMsg{Queue: q, Env: env, Create: create}
		if !at.IsZero() {
			m.VisibleAt = at.UnixMilli()
		}
		out = append(out, m)
		return nil
	}
	for _, t := range state.PendingTasks() {
		if err := add(-1, envelope{ID: ob.id("task", t), Instance: id, Exec: ob.execution}, t, time.Time{}, false); err != nil {
			return out, blobs, err
		}
	}
	for _, t := range state.PendingTimers() {
		if err := add(b.partition(id), envelope{ID: ob.id("timer", t), Instance: id, Exec: ob.execution}, t, t.GetTimerFired().GetFireAt().AsTime(), false); err != nil {
			return out, blobs, err
		}
	}
	parentExec := ""
	for _, e := range slices.Concat(state.OldEvents(), state.NewEvents()) {
		if es := e.GetExecutionStarted(); es != nil {
			parentExec = es.GetParentInstance().GetOrchestrationInstance().GetExecutionId().GetValue()
		}
	}
	for _, m := range state.PendingMessages() {
		target := m.TargetInstanceID
		ev := m.HistoryEvent
		if es := ev.GetExecutionStarted(); es != nil {
			// The child's start names the parent's execution, so its
			// answer can be told from one to an earlier execution.
			ev = proto.Clone(ev).(*dtbackend.HistoryEvent)
			if oi := ev.GetExecutionStarted().GetParentInstance().GetOrchestrationInstance(); oi != nil && oi.GetExecutionId() == nil {
				oi.ExecutionId = wrapperspb.String(ob.execution)
			}
			if err := add(b.partition(target), envelope{ID: ob.id("start|"+target, ev), Instance: target}, ev, time.Time{}, true); err != nil {
				return out, blobs, err
			}
			continue
		}
		env := envelope{ID: ob.id("msg|"+target, ev), Instance: target, From: id}
		if answerKey(ev) != "" {
			env.Exec = parentExec // an answer to our parent's execution
		}
		if err := add(b.partition(target), env, ev, time.Time{}, false); err != nil {
			return out, blobs, err
		}
	}
	return out, blobs, nil
}

// sendOutbox sends an outbox's messages.
func (b *Backend) sendOutbox(ctx context.Context, from string, out []outMsg) error {
	sentActivities, sentOrch := false, false
	for _, m := range out {
		if m.Create {
			if err := b.createChild(ctx, from, m); err != nil {
				return err
			}
			sentOrch = true
			continue
		}
		q := b.work
		if m.Queue >= 0 {
			q, sentOrch = b.control[m.Queue], true
		} else {
			sentActivities = true
		}
		var at time.Time
		if m.VisibleAt > 0 {
			at = time.UnixMilli(m.VisibleAt)
		}
		if err := b.enqueue(ctx, q, m.Env, at); err != nil {
			return err
		}
	}
	if sentActivities {
		b.actWake.Notify()
	}
	if sentOrch {
		b.orchWake.Notify()
	}
	return nil
}

// resendOutbox sends the messages of outbox rows found at load: their
// commit went through but its worker may have died before sending them.
func (b *Backend) resendOutbox(ctx context.Context, id string, rows []entity) error {
	for _, row := range rows {
		data, err := b.unpack(ctx, row)
		if err != nil {
			return fmt.Errorf("azurestorage: read outbox of %s: %w", id, err)
		}
		var out []outMsg
		if err := json.Unmarshal(data, &out); err != nil {
			return fmt.Errorf("azurestorage: read outbox of %s: %w", id, err)
		}
		b.log.Debug("azurestorage: sending an outbox again", "instance", id, "row", row.str("RowKey"), "messages", len(out))
		if err := b.sendOutbox(ctx, id, out); err != nil {
			return err
		}
	}
	return nil
}

// createChild creates a sub-orchestration from an outbox message. It is
// idempotent: an instance that already runs the same execution (the
// outbox was sent before) is adopted, never replaced or run twice. An id
// held by another execution that has ended is reused; one held by a
// running execution fails the parent's call.
func (b *Backend) createChild(ctx context.Context, parent string, m outMsg) error {
	e, err := b.envelopeEvent(ctx, m.Env)
	if err != nil {
		return err
	}
	policy := &api.OrchestrationIdReusePolicy{
		OperationStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_FAILED, api.RUNTIME_STATUS_COMPLETED, api.RUNTIME_STATUS_TERMINATED},
		Action:          api.REUSE_ID_ACTION_TERMINATE,
	}
	err = b.createInstance(ctx, e, policy, m.Env.ID)
	if !errors.Is(err, api.ErrDuplicateInstance) {
		return err
	}
	es := e.GetExecutionStarted()
	b.log.Warn("azurestorage: sub-orchestration id is taken by a running instance; failing the call", "instance", parent, "child", es.GetOrchestrationInstance().GetInstanceId())
	answer := taskhub.NewSubOrchestrationFailedEvent(es.GetParentInstance().GetTaskScheduledId(), &dtbackend.TaskFailureDetails{
		ErrorType:    "InstanceIdInUse",
		ErrorMessage: fmt.Sprintf("instance id %q is used by a running orchestration", es.GetOrchestrationInstance().GetInstanceId()),
	})
	env := envelope{ID: m.Env.ID + "-conflict", Instance: parent, Exec: es.GetParentInstance().GetOrchestrationInstance().GetExecutionId().GetValue()}
	return b.send(ctx, b.controlFor(parent), env, answer, time.Time{})
}

// envelopeEvent reads the event an envelope carries.
func (b *Backend) envelopeEvent(ctx context.Context, env envelope) (*dtbackend.HistoryEvent, error) {
	payload := env.Event
	if env.Blob != "" {
		var err error
		if payload, err = b.getBlobCached(ctx, env.Blob); err != nil {
			return nil, err
		}
	}
	return dtbackend.UnmarshalHistoryEvent(payload)
}

// wake sends the instance a message without an event, so that its owner
// loads it and consumes what is left of its stashed events.
func (b *Backend) wake(ctx context.Context, id string) error {
	return b.enqueue(ctx, b.controlFor(id), envelope{ID: uuid.NewString(), Instance: id, Wake: true}, time.Time{})
}

// deleteRow deletes one row of an instance partition, unconditionally;
// only for rows whose purpose is fulfilled (a sent outbox).
func (b *Backend) deleteRow(ctx context.Context, id, rk string) {
	err := b.storage(ctx, "delete row", func(ctx context.Context) error {
		_, err := b.history.DeleteEntity(ctx, escapeKey(id), rk, nil)
		return err
	})
	if err != nil && !isNotFound(err) {
		b.log.Debug("azurestorage: delete row", "instance", id, "row", rk, "err", err)
	}
}

func (b *Backend) deleteBlobs(ctx context.Context, names []string) {
	for _, n := range names {
		b.deleteBlob(ctx, n)
	}
}

// confirm records that msgs were deleted, so that the instance's next
// commit can forget their ids (see dedupe.go).
func (b *Backend) confirm(id string, msgs []*inMsg) {
	// A bundle's part is confirmed when the bundle's message is deleted
	// (settle): until then the whole bundle can come back.
	b.confirmIDs(id, slices.DeleteFunc(slices.Clone(msgs), (*inMsg).isPart))
}

// confirmIDs records that msgs are gone from their queue for good.
func (b *Backend) confirmIDs(id string, msgs []*inMsg) {
	if len(msgs) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	set := b.confirmed[id]
	if set == nil {
		if len(b.confirmed) >= maxConfirmedInstances {
			return // the entries age out instead
		}
		set = map[string]bool{}
		b.confirmed[id] = set
	}
	for _, m := range msgs {
		set[seenKey(m.env.ID)] = true
	}
}

// maxConfirmedInstances bounds the memory confirm uses.
const maxConfirmedInstances = 10000

func (b *Backend) takeConfirmed(id string) map[string]bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	set := b.confirmed[id]
	delete(b.confirmed, id)
	return set
}

// statusRow is the sentinel after a commit. It also returns the blobs the
// new row no longer refers to and the blobs uploaded for it.
func (b *Backend) statusRow(ctx context.Context, id string, state *dtbackend.OrchestrationRuntimeState, it *orchItem, count int, gen, seq int64) (e entity, replaced, fresh []string, err error) {
	st := it.state
	e = newEntity(escapeKey(id), sentinelRK)
	if st.sentinel != nil {
		for k, v := range st.sentinel {
			if !strings.HasPrefix(k, "odata.") && k != "Timestamp" {
				e[k] = v
			}
		}
	}
	forgetStart(e) // the execution has a start in history now (unstarted.go)
	e["InstanceID"] = id
	e["Status"] = taskhub.StorageName(state.RuntimeStatus())
	e["LastUpdatedTime"] = formatTime(time.Now())
	e["HistoryCount"] = count
	e.setInt64("Gen", gen)
	e.setInt64("Seq", seq)
	e["CommitID"] = uuid.NewString() // tells a retried commit that its first attempt went through
	if created, err := state.CreatedTime(); err == nil {
		e["CreatedTime"] = formatTime(created)
	}
	if exec := executionOf(slices.Concat(state.OldEvents(), state.NewEvents())); exec != "" {
		e["ExecutionID"] = exec
	}
	set := func(name, value string) error {
		old, nw, err := b.setLarge(ctx, e, id, name, value)
		if old != "" {
			replaced = append(replaced, old)
		}
		if nw != "" {
			fresh = append(fresh, nw)
		}
		return err
	}
	if name, err := state.Name(); err == nil {
		if err := set("Name", name); err != nil {
			return nil, replaced, fresh, err
		}
	}
	// The input changes only with a new start (first run, continue-as-new).
	if input, err := state.Input(); err == nil && (st.sentinel == nil || hasStart(state.NewEvents())) {
		if err := set("Input", input); err != nil {
			return nil, replaced, fresh, err
		}
	}
	if state.CustomStatus != nil {
		if err := set("CustomStatus", state.CustomStatus.GetValue()); err != nil {
			return nil, replaced, fresh, err
		}
	}
	switch {
	case state.IsCompleted():
		out, _ := state.Output()
		if err := set("Output", out); err != nil {
			return nil, replaced, fresh, err
		}
		e["CompletedTime"] = formatTime(time.Now())
		if fd, err := state.FailureDetails(); err == nil && fd != nil {
			raw, err := proto.Marshal(fd)
			if err != nil {
				return nil, replaced, fresh, fmt.Errorf("azurestorage: encode failure details of %s: %w", id, err)
			}
			if err := b.setLargeBinary(ctx, e, id, "FailureDetails", raw, &replaced, &fresh); err != nil {
				return nil, replaced, fresh, err
			}
		}
	case state.ContinuedAsNew():
		if err := set("Output", ""); err != nil {
			return nil, replaced, fresh, err
		}
		e["CompletedTime"] = ""
		if err := b.setLargeBinary(ctx, e, id, "FailureDetails", nil, &replaced, &fresh); err != nil {
			return nil, replaced, fresh, err
		}
	}
	// Seen: the ids of consumed messages that can come again.
	now := time.Now()
	seen, dropped := pruneSeen(parseSeen(st.sentinel), b.takeConfirmed(id), now)
	for _, m := range it.recorded {
		seen = append(seen, seenEntry{key: seenKey(m.env.ID), at: now.Unix(), resend: m.env.From != ""})
	}
	for _, s := range it.stashUsed {
		seen = append(seen, seenEntry{key: seenKey(s.msgID), at: now.Unix(), resend: s.from != ""})
	}
	if len(seen) > maxSeenEntries {
		dropped += len(seen) - maxSeenEntries
		seen = seen[len(seen)-maxSeenEntries:]
	}
	if dropped > 0 {
		b.log.Warn("azurestorage: consumed-message ids forgotten early (too many unconfirmed deletes)", "instance", id, "dropped", dropped)
	}
	setSeen(e, seen)
	return e, replaced, fresh, nil
}

// outbox names the messages an episode sends. The names are deterministic
// functions of committed history, so an outbox sent again after a crash
// sends the same ids and the receivers drop the copies. Within an
// execution, an activity or timer is identified by its event id; other
// messages by the episode (history length before it), kind, target and
// their rank among such messages.
type outbox struct {
	instance, execution string
	base                int
	rank                map[string]int
}

func newOutbox(instance string, state *dtbackend.OrchestrationRuntimeState) *outbox {
	return &outbox{instance: instance, execution: executionOf(slices.Concat(state.OldEvents(), state.NewEvents())),
		base: len(state.OldEvents()), rank: map[string]int{}}
}

func (o *outbox) id(kind string, e *dtbackend.HistoryEvent) string {
	key := fmt.Sprintf("%s|%s|%s|%T|", o.instance, o.execution, kind, e.GetEventType())
	switch {
	case e.GetTimerFired() != nil:
		key += fmt.Sprint(e.GetTimerFired().GetTimerId())
	case e.EventId >= 0:
		key += fmt.Sprint(e.EventId)
	default:
		r := o.rank[key]
		o.rank[key]++
		key += fmt.Sprintf("@%d#%d", o.base, r)
	}
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16])
}

// executionOf is the execution id of the last start in events, or "".
func executionOf(events []*dtbackend.HistoryEvent) string {
	exec := ""
	for _, e := range events {
		if es := e.GetExecutionStarted(); es != nil {
			exec = es.GetOrchestrationInstance().GetExecutionId().GetValue()
		}
	}
	return exec
}

// submit runs one entity-group transaction on the history table.
func (b *Backend) submit(ctx context.Context, actions []aztables.TransactionAction) error {
	return b.storage(ctx, "table batch", func(ctx context.Context) error {
		_, err := b.history.SubmitTransaction(ctx, actions, nil)
		return err
	})
}
