package azurestorage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/google/uuid"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/proto"

	"github.com/dronehub/dronehub/taskhub"
)

// propKey is the key of this backend's state in a work item's Properties.
const propKey = "azurestorage"

// orchItem is what a fetched orchestration work item carries for its commit.
type orchItem struct {
	msgs   []*inMsg
	loaded *loadedState // the read made at fetch; used once by GetOrchestrationRuntimeState
	state  *loadedState // the read the commit is conditional on
}

// loadedState is one read of an instance partition.
type loadedState struct {
	sentinel entity      // nil if the instance has no status row
	etag     azcore.ETag // the sentinel's ETag
	history  []*dtbackend.HistoryEvent
	stash    []stashed
}

type stashed struct {
	rk, msgID string
	event     *dtbackend.HistoryEvent
}

func (s *loadedState) historyCount() int {
	if s.sentinel == nil {
		return 0
	}
	return int(s.sentinel.int64("HistoryCount"))
}

func (s *loadedState) seen() []string {
	if s.sentinel == nil || s.sentinel.str("Seen") == "" {
		return nil
	}
	return strings.Split(s.sentinel.str("Seen"), seenSep)
}

// load reads an instance's whole partition: status row, history (only the
// committed prefix, HistoryCount rows) and stashed early events.
func (b *Backend) load(ctx context.Context, id string) (*loadedState, error) {
	rows, err := b.partitionRows(ctx, escapeKey(id), false)
	if err != nil {
		return nil, fmt.Errorf("azurestorage: load instance %s: %w", id, err)
	}
	st := &loadedState{}
	var hist, stash []entity
	for _, e := range rows {
		switch rk := e.str("RowKey"); {
		case rk == sentinelRK:
			st.sentinel, st.etag = e, e.etag()
		case strings.HasPrefix(rk, historyRKPre):
			hist = append(hist, e)
		case strings.HasPrefix(rk, stashRKPre):
			stash = append(stash, e)
		}
	}
	n := st.historyCount()
	sort.Slice(hist, func(i, j int) bool { return hist[i].str("RowKey") < hist[j].str("RowKey") })
	for i, e := range hist {
		if i >= n {
			break // left over from a previous execution or an unfinished commit
		}
		if e.str("RowKey") != historyRK(i) {
			return nil, fmt.Errorf("azurestorage: instance %s: history row %d is missing", id, i)
		}
		ev, err := b.rowEvent(ctx, e)
		if err != nil {
			return nil, fmt.Errorf("azurestorage: instance %s history %d: %w", id, i, err)
		}
		st.history = append(st.history, ev)
	}
	if len(st.history) < n {
		return nil, fmt.Errorf("azurestorage: instance %s: %d of %d history rows found", id, len(st.history), n)
	}
	sort.Slice(stash, func(i, j int) bool { return stash[i].str("RowKey") < stash[j].str("RowKey") })
	for _, e := range stash {
		ev, err := b.rowEvent(ctx, e)
		if err != nil {
			return nil, fmt.Errorf("azurestorage: instance %s stashed event: %w", id, err)
		}
		st.stash = append(st.stash, stashed{rk: e.str("RowKey"), msgID: e.str("MsgID"), event: ev})
	}
	return st, nil
}

func (b *Backend) rowEvent(ctx context.Context, e entity) (*dtbackend.HistoryEvent, error) {
	var payload []byte
	var err error
	if blob := e.str("EventBlob"); blob != "" {
		payload, err = b.getBlob(ctx, blob)
	} else {
		payload, err = e.binary("Event")
	}
	if err != nil {
		return nil, err
	}
	return dtbackend.UnmarshalHistoryEvent(payload)
}

// eventRow builds a row holding one event, moving a large one to a blob.
func (b *Backend) eventRow(ctx context.Context, instance, rk string, ev *dtbackend.HistoryEvent) (entity, int, error) {
	payload, err := dtbackend.MarshalHistoryEvent(ev)
	if err != nil {
		return nil, 0, err
	}
	row := newEntity(escapeKey(instance), rk)
	if len(payload) > maxInlineProperty {
		blob := blobPrefix(instance) + "event-" + uuid.NewString() + ".gz"
		if err := b.putBlob(ctx, blob, payload); err != nil {
			return nil, 0, err
		}
		row["EventBlob"] = blob
		return row, 512, nil
	}
	row.setBinary("Event", payload)
	return row, len(payload)*4/3 + 512, nil
}

// GetOrchestrationWorkItem waits until an instance of a partition this
// worker owns has work, or ctx ends; it then returns ErrNoWorkItems wrapping
// ctx's error. Idle, it polls its control queues with a back-off capped at
// MaxPollInterval; enqueues by this process and its own due timers wake it.
func (b *Backend) GetOrchestrationWorkItem(ctx context.Context) (*dtbackend.OrchestrationWorkItem, error) {
	b.lm.waitReady(ctx)
	var idle time.Duration
	for {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
		}
		// Once messages are dequeued they are seen through, whatever
		// happens to ctx: a fetch cut short would leave them locked
		// for LockTimeout.
		sctx, cancel := b.storageCtx(ctx)
		wake := b.orchWake.C()
		if id, msgs := b.takeReady(); id != "" {
			wi, err := b.buildWorkItem(retryUntil(sctx, b.lockDeadline(msgs)), id, msgs)
			cancel()
			if err != nil {
				b.releaseAll(msgs, time.Second)
				b.finish(id)
				if ctx.Err() != nil {
					return nil, fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
				}
				return nil, err
			}
			if wi != nil {
				return wi, nil
			}
			continue
		}
		n, err := b.pollControl(sctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			b.log.Warn("azurestorage: poll control queues", "err", err)
		}
		if n > 0 {
			idle = 0
			continue
		}
		idle = nextIdle(idle, b.opts.MaxPollInterval)
		if !taskhub.Sleep(ctx, wake, b.untilTimer(idle)) {
			return nil, fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
		}
	}
}

// storageCtx is ctx without its cancellation, bounded by the backend's life
// and a generous timeout, for storage calls that must not be cut short.
func (b *Backend) storageCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
	stop := context.AfterFunc(b.bg, cancel)
	return c, func() { stop(); cancel() }
}

func nextIdle(d, limit time.Duration) time.Duration {
	if d == 0 {
		return min(50*time.Millisecond, limit)
	}
	return min(d*2, limit)
}

// pollControl dequeues a batch from every owned control queue into the
// per-instance buffer and reports how many messages arrived.
func (b *Backend) pollControl(ctx context.Context) (int, error) {
	total := 0
	var errs []error
	for _, p := range b.lm.partitions() {
		msgs, err := b.dequeue(ctx, b.control[p], p, controlBatch)
		if err != nil {
			errs = append(errs, err)
		} else {
			b.lm.notePoll(p, len(msgs))
		}
		total += len(msgs)
		b.mu.Lock()
		for _, m := range msgs {
			id := m.env.Instance
			list := b.pending[id]
			dup := false
			for i, old := range list {
				if old.msgID == m.msgID {
					list[i], dup = m, true // redelivered: the newer pop receipt wins
				}
			}
			if !dup {
				list = append(list, m)
			}
			if len(b.pending[id]) == 0 && !b.inflight[id] {
				b.ready = append(b.ready, id)
			}
			b.pending[id] = list
		}
		b.mu.Unlock()
	}
	return total, errors.Join(errs...)
}

// takeReady hands out the oldest instance with buffered messages that is
// not already in a work item, and locks it. Instances of a partition this
// worker may not start work on (being handed off, lease not renewed) stay
// buffered; the hand-off or the loss of the lease returns their messages.
func (b *Backend) takeReady() (string, []*inMsg) {
	b.mu.Lock()
	defer b.mu.Unlock()
	kept := b.ready[:0]
	defer func() {
		clear(b.ready[len(kept):])
		b.ready = kept
	}()
	for i, id := range b.ready {
		msgs := b.pending[id]
		if len(msgs) == 0 || b.inflight[id] {
			continue // finish re-queues it when its work item ends
		}
		if !b.lm.isActive(partitionOf(id, b.names.partitions)) {
			kept = append(kept, id)
			continue
		}
		kept = append(kept, b.ready[i+1:]...)
		delete(b.pending, id)
		b.inflight[id] = true
		return id, msgs
	}
	return "", nil
}

// finish unlocks an instance and re-queues messages that arrived meanwhile.
func (b *Backend) finish(id string) {
	b.mu.Lock()
	delete(b.inflight, id)
	more := len(b.pending[id]) > 0
	if more {
		b.ready = append(b.ready, id)
	}
	b.mu.Unlock()
	if more {
		b.orchWake.Notify()
	}
}

// partitionBusy reports whether a work item of partition p is in flight.
func (b *Backend) partitionBusy(p int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id := range b.inflight {
		if partitionOf(id, b.names.partitions) == p {
			return true
		}
	}
	return false
}

// dropPending hands buffered messages of a released partition back to the queue.
func (b *Backend) dropPending(p int) {
	b.mu.Lock()
	var msgs []*inMsg
	for id, list := range b.pending {
		if partitionOf(id, b.names.partitions) == p && !b.inflight[id] {
			msgs = append(msgs, list...)
			delete(b.pending, id)
		}
	}
	b.mu.Unlock()
	b.releaseAll(msgs, 0)
}

func (b *Backend) releaseAll(msgs []*inMsg, delay time.Duration) {
	ctx, cancel := context.WithTimeout(b.bg, 30*time.Second)
	defer cancel()
	for _, m := range msgs {
		if err := b.release(ctx, m, delay); err != nil && !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
			b.log.Debug("azurestorage: release message", "err", err)
		}
	}
}

func (b *Backend) deleteAll(ctx context.Context, msgs []*inMsg) error {
	var errs []error
	for _, m := range msgs {
		if err := b.deleteMsg(ctx, m); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func hasStart(events []*dtbackend.HistoryEvent) bool {
	return slices.ContainsFunc(events, func(e *dtbackend.HistoryEvent) bool { return e.GetExecutionStarted() != nil })
}

// buildWorkItem turns an instance's buffered messages into a work item, or
// returns nil when there is nothing to run: every message was a redelivered
// copy, a scheduled start is not due (it is sent again, delayed), or the
// instance has not started (the events are stashed in its partition and
// delivered with its start).
func (b *Backend) buildWorkItem(ctx context.Context, id string, msgs []*inMsg) (*dtbackend.OrchestrationWorkItem, error) {
	st, err := b.load(ctx, id)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, s := range st.seen() {
		seen[s] = true
	}
	for _, s := range st.stash {
		seen[s.msgID] = true
	}
	var events []*dtbackend.HistoryEvent
	// Messages not kept (duplicates, re-sent delayed starts) are consumed
	// with the rest when the work item commits. Messages held back (see
	// early) are not consumed: they go back to the queue.
	var keep, held []*inMsg
	consumed := make([]*inMsg, 0, len(msgs))
	exec := executionOf(st.history)
	now := time.Now()
	for _, m := range msgs {
		if seen[m.env.ID] {
			consumed = append(consumed, m)
			continue
		}
		if early(st.history, exec, m) {
			held = append(held, m)
			continue
		}
		seen[m.env.ID] = true
		consumed = append(consumed, m)
		if at, ok := taskhub.ScheduledStart([]*dtbackend.HistoryEvent{m.event}, now); ok {
			env := m.env
			env.Event, env.Blob = nil, ""
			if err := b.send(ctx, m.queue, env, m.event, at); err != nil {
				return nil, err
			}
			continue
		}
		events = append(events, m.event)
		keep = append(keep, m)
	}
	if len(held) > 0 {
		b.holdBack(ctx, id, held)
	}
	msgs = consumed
	var stashEvents []*dtbackend.HistoryEvent
	for _, s := range st.stash {
		stashEvents = append(stashEvents, s.event)
	}
	if !hasStart(st.history) && !hasStart(stashEvents) && !hasStart(events) {
		if len(keep) > 0 {
			if err := b.stash(ctx, id, keep); err != nil {
				return nil, err
			}
		}
		err := b.deleteAll(ctx, msgs)
		b.finish(id)
		return nil, err
	}
	if len(events) == 0 && len(stashEvents) == 0 {
		err := b.deleteAll(ctx, msgs)
		b.finish(id)
		return nil, err
	}
	retry := int64(0)
	for _, m := range keep {
		retry = max(retry, m.dequeueCount-1)
	}
	return &dtbackend.OrchestrationWorkItem{
		InstanceID: api.InstanceID(id),
		NewEvents:  append(stashEvents, events...),
		LockedBy:   b.opts.WorkerID,
		RetryCount: int32(retry),
		Properties: map[string]any{propKey: &orchItem{msgs: msgs, loaded: st, state: st}},
	}, nil
}

// stash keeps events that arrived before their instance started, as rows
// in its partition; the start's commit deletes them in the same batch.
func (b *Backend) stash(ctx context.Context, id string, msgs []*inMsg) error {
	var actions []aztables.TransactionAction
	for i, m := range msgs {
		rk := fmt.Sprintf("%s%020d|%s", stashRKPre, time.Now().UnixNano()+int64(i), m.env.ID)
		row, _, err := b.eventRow(ctx, id, rk, m.event)
		if err != nil {
			return err
		}
		row["MsgID"] = m.env.ID
		actions = append(actions, aztables.TransactionAction{ActionType: aztables.TransactionTypeInsertReplace, Entity: row.marshal()})
		if len(actions) == 100 || i == len(msgs)-1 {
			if err := b.submit(ctx, actions); err != nil {
				return fmt.Errorf("azurestorage: stash early events of %s: %w", id, err)
			}
			actions = actions[:0]
		}
	}
	b.log.Debug("azurestorage: stashed events for an instance that has not started", "instance", id, "events", len(msgs))
	return nil
}

func itemOf(wi *dtbackend.OrchestrationWorkItem) *orchItem {
	if wi == nil || wi.Properties == nil {
		return nil
	}
	it, _ := wi.Properties[propKey].(*orchItem)
	return it
}

// GetOrchestrationRuntimeState implements backend.Backend. It drops timer
// events that belong to an earlier execution (see taskhub.DropStaleTimers).
func (b *Backend) GetOrchestrationRuntimeState(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) (*dtbackend.OrchestrationRuntimeState, error) {
	it := itemOf(wi)
	if it != nil {
		ctx = retryUntil(ctx, b.lockDeadline(it.msgs))
	}
	var st *loadedState
	if it != nil && it.loaded != nil {
		st, it.loaded = it.loaded, nil
	} else {
		var err error
		if st, err = b.load(ctx, string(wi.InstanceID)); err != nil {
			return nil, err
		}
		if it != nil {
			it.state = st
		}
	}
	state := dtbackend.NewOrchestrationRuntimeState(wi.InstanceID, st.history)
	if kept := taskhub.DropStaleTimers(state.OldEvents(), wi.NewEvents); len(kept) != len(wi.NewEvents) {
		b.log.Debug("dropped stale timer events", "instance", wi.InstanceID, "dropped", len(wi.NewEvents)-len(kept))
		wi.NewEvents = kept
	}
	return state, nil
}

// AbandonOrchestrationWorkItem returns the work item's messages to the
// queue after the work item's back-off delay.
func (b *Backend) AbandonOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	it := itemOf(wi)
	if it == nil {
		return fmt.Errorf("azurestorage: work item for %s was not fetched from this backend", wi.InstanceID)
	}
	defer b.finish(string(wi.InstanceID))
	ctx = retryUntil(ctx, b.lockDeadline(it.msgs))
	var lost bool
	for _, m := range it.msgs {
		if err := b.release(ctx, m, wi.GetAbandonDelay()); err != nil {
			if errors.Is(err, dtbackend.ErrWorkItemLockLost) {
				lost = true
				continue
			}
			return err
		}
	}
	if lost {
		return dtbackend.ErrWorkItemLockLost
	}
	return nil
}

// CompleteOrchestrationWorkItem checkpoints a work item:
//
//  1. send outbound messages: activities, timers (delayed), events and
//     sub-orchestration starts;
//  2. in one entity-group transaction conditional on the sentinel's ETag:
//     append the new history, update the status (the sentinel row itself)
//     with the ids of the consumed messages, and delete consumed stashed
//     events;
//  3. delete the consumed queue messages.
//
// A crash after 1 re-runs the episode (duplicate outbound messages are
// harmless: activities are at-least-once, duplicate completions and timers
// are ignored). A crash after 2 redelivers the messages, and their ids in
// the sentinel mark them as already consumed. A commit whose ETag no longer
// matches (another worker took the partition) fails with ErrWorkItemLockLost.
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
	// Storage calls wait out an outage for as long as the messages stay locked.
	ctx = retryUntil(ctx, b.lockDeadline(it.msgs))
	state := wi.State
	out := newOutbox(id, state)
	sentActivities, sentOrch := false, false
	for _, t := range state.PendingTasks() {
		if err := b.send(ctx, b.work, envelope{ID: out.id("task", t), Instance: id, Exec: out.execution}, t, time.Time{}); err != nil {
			return err
		}
		sentActivities = true
	}
	for _, t := range state.PendingTimers() {
		if err := b.send(ctx, b.controlFor(id), envelope{ID: out.id("timer", t), Instance: id, Exec: out.execution}, t, t.GetTimerFired().GetFireAt().AsTime()); err != nil {
			return err
		}
	}
	for _, m := range state.PendingMessages() {
		sentOrch = true
		if m.HistoryEvent.GetExecutionStarted() != nil {
			policy := &api.OrchestrationIdReusePolicy{OperationStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_FAILED}, Action: api.REUSE_ID_ACTION_TERMINATE}
			if err := b.createInstance(ctx, m.HistoryEvent, policy); err != nil {
				if errors.Is(err, api.ErrDuplicateInstance) || errors.Is(err, api.ErrIgnoreInstance) {
					b.log.Warn("azurestorage: dropping sub-orchestration start: an instance with that id exists", "instance", id, "target", m.TargetInstanceID)
					continue
				}
				return err
			}
			continue
		}
		if err := b.send(ctx, b.controlFor(m.TargetInstanceID), envelope{ID: out.id("msg|"+m.TargetInstanceID, m.HistoryEvent), Instance: m.TargetInstanceID}, m.HistoryEvent, time.Time{}); err != nil {
			return err
		}
	}
	if len(state.NewEvents()) > 0 || len(it.state.stash) > 0 {
		if err := b.commit(ctx, id, state, it); err != nil {
			return err
		}
	}
	if err := b.deleteAll(ctx, it.msgs); err != nil {
		b.log.Warn("azurestorage: delete consumed messages (they will be dropped as duplicates)", "instance", id, "err", err)
	}
	if sentActivities {
		b.actWake.Notify()
	}
	if sentOrch {
		b.orchWake.Notify()
	}
	return nil
}

// maxBatchBytes keeps a transaction under the service's 4 MB limit.
const maxBatchBytes = 3 << 20

func (b *Backend) commit(ctx context.Context, id string, state *dtbackend.OrchestrationRuntimeState, it *orchItem) error {
	st := it.state
	pk := escapeKey(id)
	base := st.historyCount()
	if state.ContinuedAsNew() {
		base = 0
	}
	newEvents := state.NewEvents()
	type sized struct {
		action aztables.TransactionAction
		size   int
	}
	var rows []sized
	for i, ev := range newEvents {
		row, size, err := b.eventRow(ctx, id, historyRK(base+i), ev)
		if err != nil {
			return err
		}
		rows = append(rows, sized{aztables.TransactionAction{ActionType: aztables.TransactionTypeInsertReplace, Entity: row.marshal()}, size})
	}
	sentinel, err := b.statusRow(ctx, id, state, st, it.msgs, base+len(newEvents))
	if err != nil {
		return err
	}
	final := []aztables.TransactionAction{}
	if st.sentinel == nil {
		final = append(final, aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: sentinel.marshal()})
	} else {
		etag := st.etag
		final = append(final, aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: sentinel.marshal(), IfMatch: &etag})
	}
	for _, s := range st.stash {
		final = append(final, aztables.TransactionAction{ActionType: aztables.TransactionTypeDelete, Entity: newEntity(pk, s.rk).marshal()})
	}
	// History rows that do not fit beside the sentinel are written first;
	// they lie past HistoryCount, so they are invisible until the final
	// batch commits.
	room, bytes := 100-len(final), 0
	cut := len(rows)
	for cut > 0 && len(rows)-cut < room && bytes+rows[cut-1].size < maxBatchBytes {
		cut--
		bytes += rows[cut].size
	}
	var chunk []aztables.TransactionAction
	size := 0
	for i := 0; i < cut; i++ {
		if len(chunk) == 100 || size+rows[i].size > maxBatchBytes {
			if err := b.submit(ctx, chunk); err != nil {
				return fmt.Errorf("azurestorage: write history of %s: %w", id, err)
			}
			chunk, size = nil, 0
		}
		chunk = append(chunk, rows[i].action)
		size += rows[i].size
	}
	if len(chunk) > 0 {
		if err := b.submit(ctx, chunk); err != nil {
			return fmt.Errorf("azurestorage: write history of %s: %w", id, err)
		}
	}
	for _, r := range rows[cut:] {
		final = append(final, r.action)
	}
	if err := b.submit(ctx, final); err != nil {
		cur, etag, rerr := b.getSentinel(ctx, id)
		switch {
		case rerr == nil && cur != nil && cur.str("CommitID") == sentinel.str("CommitID"):
			// An attempt whose answer was lost went through; the retry
			// then failed on its own change.
		case rerr == nil && (cur != nil) != (st.sentinel != nil) || rerr == nil && cur != nil && etag != st.etag:
			return fmt.Errorf("azurestorage: commit %s: the instance was changed by another worker: %w", id, dtbackend.ErrWorkItemLockLost)
		default:
			return fmt.Errorf("azurestorage: commit %s: %w", id, err)
		}
	}
	if state.ContinuedAsNew() && st.historyCount() > len(newEvents) {
		b.deleteRows(ctx, pk, len(newEvents), st.historyCount())
	}
	return nil
}

// deleteRows removes leftover history rows [from, to), best effort.
func (b *Backend) deleteRows(ctx context.Context, pk string, from, to int) {
	var actions []aztables.TransactionAction
	for i := from; i < to; i++ {
		actions = append(actions, aztables.TransactionAction{ActionType: aztables.TransactionTypeDelete, Entity: newEntity(pk, historyRK(i)).marshal()})
		if len(actions) == 100 || i == to-1 {
			if err := b.submit(ctx, actions); err != nil {
				b.log.Debug("azurestorage: delete old history rows", "err", err)
			}
			actions = nil
		}
	}
}

// statusRow is the sentinel after a commit: the instance's status, derived
// from its runtime state, and the ids of the messages the commit consumed.
func (b *Backend) statusRow(ctx context.Context, id string, state *dtbackend.OrchestrationRuntimeState, st *loadedState, msgs []*inMsg, count int) (entity, error) {
	e := newEntity(escapeKey(id), sentinelRK)
	if st.sentinel != nil {
		for k, v := range st.sentinel {
			if !strings.HasPrefix(k, "odata.") && k != "Timestamp" {
				e[k] = v
			}
		}
	}
	e["InstanceID"] = id
	e["Status"] = taskhub.StorageName(state.RuntimeStatus())
	e["LastUpdatedTime"] = formatTime(time.Now())
	e["HistoryCount"] = count
	e["CommitID"] = uuid.NewString() // tells a retried commit that its first attempt went through
	if name, err := state.Name(); err == nil {
		e["Name"] = name
	}
	if created, err := state.CreatedTime(); err == nil {
		e["CreatedTime"] = formatTime(created)
	}
	for _, ev := range slices.Concat(state.OldEvents(), state.NewEvents()) {
		if es := ev.GetExecutionStarted(); es != nil {
			e["ExecutionID"] = es.GetOrchestrationInstance().GetExecutionId().GetValue()
		}
	}
	// The input changes only with a new start (first run, continue-as-new);
	// re-storing it every episode would rewrite a large input's blob.
	if input, err := state.Input(); err == nil && (st.sentinel == nil || hasStart(state.NewEvents())) {
		if err := b.setLarge(ctx, e, id, "Input", input); err != nil {
			return nil, err
		}
	}
	if state.CustomStatus != nil {
		if err := b.setLarge(ctx, e, id, "CustomStatus", state.CustomStatus.GetValue()); err != nil {
			return nil, err
		}
	}
	if state.IsCompleted() {
		out, _ := state.Output()
		if err := b.setLarge(ctx, e, id, "Output", out); err != nil {
			return nil, err
		}
		e["CompletedTime"] = formatTime(time.Now())
		if fd, err := state.FailureDetails(); err == nil && fd != nil {
			raw, err := proto.Marshal(fd)
			if err != nil {
				return nil, fmt.Errorf("azurestorage: encode failure details of %s: %w", id, err)
			}
			if len(raw) > maxInlineProperty {
				fd = proto.Clone(fd).(*dtbackend.TaskFailureDetails)
				fd.StackTrace = nil
				raw, _ = proto.Marshal(fd)
			}
			e.setBinary("FailureDetails", raw)
		}
	} else if state.ContinuedAsNew() {
		e["Output"], e["OutputBlob"], e["CompletedTime"] = "", "", ""
		delete(e, "FailureDetails")
		delete(e, "FailureDetails@odata.type")
	}
	seen := st.seen()
	for _, m := range msgs {
		seen = append(seen, m.env.ID)
	}
	for _, s := range st.stash {
		seen = append(seen, s.msgID)
	}
	if len(seen) > maxSeen {
		seen = seen[len(seen)-maxSeen:]
	}
	e["Seen"] = strings.Join(seen, seenSep)
	return e, nil
}

// submit runs one entity-group transaction on the history table.
func (b *Backend) submit(ctx context.Context, actions []aztables.TransactionAction) error {
	return b.storage(ctx, "table batch", func(ctx context.Context) error {
		_, err := b.history.SubmitTransaction(ctx, actions, nil)
		return err
	})
}

// outbox names the messages an episode sends. The names are deterministic:
// if the episode runs again (its commit failed, or its worker died after
// sending), it sends the same messages under the same ids, and the
// receivers drop the copies (activity results take the id of the activity
// message, and each instance remembers the ids it consumed). Within an
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

// early reports whether m answers a task, timer or sub-orchestration whose
// scheduling the instance's history does not hold yet. That happens when
// an episode sent its messages but its commit failed (or its worker died):
// the answer can arrive before the episode runs again. Consumed then, it
// would be ignored by the executor and recorded as seen, and the answer to
// the re-run's identical request dropped as a copy; the instance would
// wait forever. So such a message is held back (returned to the queue)
// until the scheduling is committed. Answers that name another execution
// (the instance continued as new or was replaced) are stale, not early,
// and pass (the executor and DropStaleTimers ignore them).
func early(history []*dtbackend.HistoryEvent, exec string, m *inMsg) bool {
	if exec != "" && m.env.Exec != "" && m.env.Exec != exec {
		return false
	}
	e := m.event
	var id int32
	var scheduled func(*dtbackend.HistoryEvent) bool
	switch {
	case e.GetTaskCompleted() != nil:
		id, scheduled = e.GetTaskCompleted().GetTaskScheduledId(), isTaskScheduled
	case e.GetTaskFailed() != nil:
		id, scheduled = e.GetTaskFailed().GetTaskScheduledId(), isTaskScheduled
	case e.GetTimerFired() != nil:
		id, scheduled = e.GetTimerFired().GetTimerId(), isTimerCreated
	case e.GetSubOrchestrationInstanceCompleted() != nil:
		id, scheduled = e.GetSubOrchestrationInstanceCompleted().GetTaskScheduledId(), isSubOrchestrationCreated
	case e.GetSubOrchestrationInstanceFailed() != nil:
		id, scheduled = e.GetSubOrchestrationInstanceFailed().GetTaskScheduledId(), isSubOrchestrationCreated
	default:
		return false
	}
	for _, h := range history {
		if h.EventId == id && scheduled(h) {
			return false
		}
	}
	return true
}

func isTaskScheduled(e *dtbackend.HistoryEvent) bool { return e.GetTaskScheduled() != nil }
func isTimerCreated(e *dtbackend.HistoryEvent) bool  { return e.GetTimerCreated() != nil }
func isSubOrchestrationCreated(e *dtbackend.HistoryEvent) bool {
	return e.GetSubOrchestrationInstanceCreated() != nil
}

// holdBack returns early messages to the queue, visible again after a
// delay that doubles with each delivery (1 s up to 30 s).
func (b *Backend) holdBack(ctx context.Context, id string, msgs []*inMsg) {
	for _, m := range msgs {
		delay := min(time.Second<<min(max(m.dequeueCount-1, 0), 5), 30*time.Second)
		b.log.Debug("azurestorage: holding back an answer whose request is not committed yet", "instance", id, "event", eventType(m.event), "delay", delay)
		if err := b.release(ctx, m, delay); err != nil && !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
			b.log.Warn("azurestorage: hold back message", "instance", id, "err", err)
		}
	}
}
