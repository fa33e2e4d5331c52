package azurestorage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/taskhub"
)

// propKey is the key of this backend's state in a work item's Properties.
const propKey = "azurestorage"

// orchItem is what a fetched orchestration work item carries for its commit.
type orchItem struct {
	msgs      []*inMsg        // every message the episode consumes (deleted after the commit)
	recorded  []*inMsg        // accepted messages recognised by id: their ids go to Seen
	stashUsed []stashed       // stashed events the episode consumes
	loaded    *loadedState    // the read made at fetch; used once by GetOrchestrationRuntimeState
	state     *loadedState    // the read the commit is conditional on
	crashed   bool            // a test hook crashed it: abandoning does nothing
	loadCtx   context.Context // the context its state was loaded on
	// completeFailed: Complete was called and failed (storage, a lost
	// fence), so an abandon that follows is not the messages' fault.
	completeFailed bool
}

// GetOrchestrationWorkItem waits until an instance of a partition this
// worker owns has work, or ctx ends; it then returns ErrNoWorkItems wrapping
// ctx's error.
//
// Polling (see pollState): messages this process sends to a partition it
// holds are delivered by hand (messages.go) and cost no poll. Each owned
// control queue is polled on its own schedule for messages from elsewhere
// (clients, activity results of other workers): again soon after a poll
// that found some, backing off to MaxPollInterval after polls that found
// none, and at once when this process enqueued to it without handing the
// message over.
func (b *Backend) GetOrchestrationWorkItem(ctx context.Context) (*dtbackend.OrchestrationWorkItem, error) {
	b.lm.waitReady(ctx)
	for {
		b.orchPolling.Store(time.Now().UnixNano())
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
				// Hand them back now: waiting out their lock would hold
				// the instance up for LockTimeout.
				b.releaseAll(msgs, time.Second)
				b.finish(id)
				if ctx.Err() != nil {
					return nil, fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
				}
				return nil, err
			}
			if wi != nil {
				if b.hooks.workItem != nil {
					b.hooks.workItem(wi)
				}
				return wi, nil
			}
			continue
		}
		parts, next := b.poll.due(b.lm.partitions(), b.timerDue())
		if len(parts) == 0 {
			cancel()
			if !taskhub.Sleep(ctx, wake, b.untilTimer(next)) {
				return nil, fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
			}
			continue
		}
		_, err := b.pollControl(sctx, parts)
		cancel()
		if err != nil && ctx.Err() == nil {
			b.log.Warn("azurestorage: poll control queues", "err", err)
		}
	}
}

// pollState schedules the polls of each queue: queue q+1 is control queue
// q, 0 the work-item queue.
type pollState struct {
	mu     sync.Mutex
	max    time.Duration // MaxPollInterval
	idle   time.Duration // IdlePollInterval once wake-ups are on, else 0
	queues [maxPartitions + 1]queuePoll
}

type queuePoll struct {
	dirty    bool          // enqueued to by this process since its last poll
	due      time.Time     // when it is polled next
	interval time.Duration // the back-off
	// drained: the last poll found less than a full batch, so the queue
	// has no backlog, and a message handed over (messages.go) overtakes
	// at most what arrived since. False until the first poll of a queue,
	// and again after a full batch.
	drained bool
}

// maxPartitions is the most control queues a hub has.
const maxPartitions = 16

// minPoll is a busy queue's poll interval.
const minPoll = 50 * time.Millisecond

func newPollState(max time.Duration) *pollState { return &pollState{max: max} }

// setIdle makes idle queues back off to d (wake-ups are on).
func (s *pollState) setIdle(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.idle = d
}

// idleCap is the longest an idle queue goes unpolled.
func (s *pollState) idleCap() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.capLocked()
}

func (s *pollState) capLocked() time.Duration {
	if s.idle > 0 {
		return s.idle
	}
	return s.max
}

// markDirty makes queue i be polled next.
func (s *pollState) markDirty(i int) {
	s.mu.Lock()
	s.queues[i].dirty = true
	s.mu.Unlock()
}

// dueBy makes queue i due no later than t.
func (s *pollState) dueBy(i int, t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if q := &s.queues[i]; q.due.After(t) {
		q.due = t
	}
}

// polled records a poll of queue i that found n messages of at most batch.
func (s *pollState) polled(i, n, batch int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := &s.queues[i]
	q.drained = n < batch
	switch {
	case n >= batch:
		q.interval, q.dirty = 0, true // more are waiting
	case n > 0:
		q.interval = minPoll
	default:
		q.interval = nextIdle(q.interval, s.capLocked())
	}
	q.due = time.Now().Add(min(q.interval, s.capLocked()))
}

// isDrained reports whether queue i had no backlog at its last poll.
func (s *pollState) isDrained(i int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queues[i].drained
}

// reset forgets what polls of queue i found (its partition was released:
// another owner may leave it with a backlog), and makes it due at once.
func (s *pollState) reset(i int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queues[i] = queuePoll{}
}

// due returns the control partitions among owned to poll now (all of them
// when a timer this process set came due: it may be in any), or else how
// long until the next is due.
func (s *pollState) due(owned []int, timer bool) ([]int, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	next := s.capLocked()
	var parts []int
	for _, p := range owned {
		q := &s.queues[p+1]
		if timer || q.dirty || !now.Before(q.due) {
			q.dirty = false
			parts = append(parts, p)
			continue
		}
		next = min(next, q.due.Sub(now))
	}
	return parts, next
}

// workDue reports whether the work-item queue is to be polled now, or
// else how long until it is.
func (s *pollState) workDue() (bool, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := &s.queues[0]
	if d := time.Until(q.due); !q.dirty && d > 0 {
		return false, d
	}
	q.dirty = false
	return true, 0
}

// markDirty notes an enqueue to q by this process that was not delivered
// by hand, so that q is polled next.
func (b *Backend) markDirty(q *azqueue.QueueClient) {
	if q == b.work {
		b.poll.markDirty(0)
		b.actWake.Notify()
		return
	}
	if p := b.queuePartition(q); p >= 0 {
		b.poll.markDirty(p + 1)
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

// pollControl dequeues a batch from each of the given control queues into
// the per-instance buffer and reports how many messages arrived. A queue
// that gave a full batch stays dirty: it has more.
func (b *Backend) pollControl(ctx context.Context, parts []int) (int, error) {
	total := 0
	var errs []error
	for _, p := range parts {
		msgs, err := b.dequeue(ctx, b.control[p], p, controlBatch)
		if err != nil {
			errs = append(errs, err)
		} else {
			n := queueMessages(msgs)
			b.lm.notePoll(p, n)
			b.poll.polled(p+1, n, controlBatch)
		}
		if len(msgs) > 0 && !b.lm.isActive(p) {
			// The partition was lost or handed off during the dequeue.
			b.releaseAll(msgs, 0)
			continue
		}
		total += len(msgs)
		b.buffer(msgs)
	}
	return total, errors.Join(errs...)
}

// buffer adds control messages to their instances' buffers.
func (b *Backend) buffer(msgs []*inMsg) {
	b.mu.Lock()
	defer b.mu.Unlock()
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
}

// takeReady hands out the oldest instance with buffered messages that is
// not already in a work item (at most maxEpisodeMessages of its messages;
// the rest wait for its next episode), and locks it. Instances of a
// partition this worker holds but may not start work on now (being handed
// off, lease renewal late) stay buffered. Messages of a partition this
// worker no longer holds are returned to the queue: their receipts belong
// to a lease that is gone, and the new owner must see them.
func (b *Backend) takeReady() (string, []*inMsg) {
	b.mu.Lock()
	idle := len(b.ready) == 0
	b.mu.Unlock()
	if idle {
		return "", nil // the common case on every poll: no lease look-up
	}
	held := map[int]bool{}
	for _, p := range b.lm.owners() {
		held[p] = true
	}
	var orphans []*inMsg
	defer func() {
		if len(orphans) > 0 {
			go b.releaseAll(orphans, 0)
		}
	}()
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
		p := partitionOf(id, b.names.partitions)
		if !held[p] {
			orphans = append(orphans, msgs...)
			delete(b.pending, id)
			continue
		}
		if !b.lm.isActive(p) {
			kept = append(kept, id)
			continue
		}
		kept = append(kept, b.ready[i+1:]...)
		if len(msgs) > maxEpisodeMessages {
			b.pending[id] = msgs[maxEpisodeMessages:]
			msgs = msgs[:maxEpisodeMessages:maxEpisodeMessages]
		} else {
			delete(b.pending, id)
		}
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
	b.dropCached(p)
	b.poll.reset(p + 1)
	b.mu.Lock()
	var msgs []*inMsg
	for id, list := range b.pending {
		if partitionOf(id, b.names.partitions) == p && !b.inflight[id] {
			msgs = append(msgs, list...)
			delete(b.pending, id)
		}
	}
	b.mu.Unlock()
	// In the background: the lease round that calls this holds the lease
	// manager's lock, and releasing hundreds of messages on a slow storage
	// account must not make it miss its renewals.
	if len(msgs) > 0 {
		go b.releaseAll(msgs, 0)
	}
}

// releaseAll returns msgs to the queue (benign releases), eight instances
// at a time. An instance's messages are released one after another, in
// the order given, and none after one that failed: a message released
// alone (a bundle's part, a carried result) is sent again, and a later one
// must not overtake it. Those not released are no longer renewed, so they
// come back when their locks run out (a part: its whole bundle).
func (b *Backend) releaseAll(msgs []*inMsg, delay time.Duration) {
	ctx, cancel := context.WithTimeout(b.bg, 30*time.Second)
	defer cancel()
	var order []string
	byInstance := map[string][]*inMsg{}
	for _, m := range msgs {
		if _, ok := byInstance[m.env.Instance]; !ok {
			order = append(order, m.env.Instance)
		}
		byInstance[m.env.Instance] = append(byInstance[m.env.Instance], m)
	}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for _, id := range order {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ms := byInstance[id]
			for k, m := range ms {
				if err := b.release(ctx, m, delay, true); err != nil && !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
					b.log.Debug("azurestorage: release message (it and the instance's later ones come back when their locks run out)", "instance", id, "err", err)
					b.unhold(ms[k+1:]...)
					return
				}
			}
		}()
	}
	wg.Wait()
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
// returns nil when there is nothing to run: every message was a copy or
// stale, a scheduled start is not due (it is sent again, delayed), or the
// instance has not started (the events are stashed in its partition and
// delivered with its start). Before anything else it sends again the
// outbox of a commit whose worker may have died before sending it.
func (b *Backend) buildWorkItem(ctx context.Context, id string, msgs []*inMsg) (*dtbackend.OrchestrationWorkItem, error) {
	st, cached, err := b.cachedLoad(ctx, id)
	if err != nil {
		return nil, err
	}
	wi, err := b.buildFrom(ctx, id, msgs, st, cached)
	if !errors.Is(err, errReadAgain) {
		return wi, err
	}
	// The episode would consume messages without a commit, which would
	// not check the cached state: read the partition. This worker's sent
	// outbox rows are deleted first, or the read would send them again.
	for _, row := range st.sent {
		b.deleteRow(ctx, id, row.str("RowKey"))
	}
	if st, err = b.load(ctx, id); err != nil {
		return nil, err
	}
	return b.buildFrom(ctx, id, msgs, st, false)
}

// errReadAgain asks buildWorkItem to build an episode from a fresh read.
var errReadAgain = errors.New("azurestorage: read the instance again")

// buildFrom is buildWorkItem on a loaded (or cached) state.
func (b *Backend) buildFrom(ctx context.Context, id string, msgs []*inMsg, st *loadedState, cached bool) (*dtbackend.OrchestrationWorkItem, error) {
	if st.sentinel != nil && st.sentinel.boolean("Purging") {
		// A purge (or a replacement through the id-reuse policy) is under
		// way: its messages wait until it has finished.
		b.holdBack(ctx, id, msgs)
		b.finish(id)
		return nil, nil
	}
	if len(st.outbox) > 0 {
		if err := b.resendOutbox(ctx, id, st.outbox); err != nil {
			return nil, err
		}
	}
	if st.sentinel != nil && slices.ContainsFunc(msgs, func(m *inMsg) bool { return m.dequeueCount > 1 }) {
		// A redelivery: the worker that consumed these may have died
		// before updating the index.
		b.writeIndex(ctx, nil, st.sentinel)
	}
	now := time.Now()
	if st.sentinel == nil && b.awaitCreate(msgs, now) {
		// Its creator has sent the start but not yet written the status
		// row, which decides what they do (unstarted.go).
		if b.hooks.heldBack != nil {
			b.hooks.heldBack(id)
		}
		b.holdBack(ctx, id, msgs)
		b.finish(id)
		return nil, nil
	}
	view := newEpisodeView(st.history, parseSeen(st.sentinel))
	if st.sentinel != nil && !hasStart(st.history) {
		view.created = st.sentinel.str("ExecutionID")
	}
	it := &orchItem{msgs: msgs, loaded: st, state: st}
	// Stashed events first: they arrived before anything in msgs.
	var stashEvents []*dtbackend.HistoryEvent
	for _, s := range st.stash {
		if len(it.stashUsed) == maxStashPerEpisode {
			break
		}
		if v, _ := view.classify(&inMsg{env: envelope{ID: s.msgID, From: s.from}, event: s.event}); v != accept {
			// A stash row is deleted in the commit that records its id,
			// so this is a second row for one message: consume it too.
			it.stashUsed = append(it.stashUsed, s)
			continue
		}
		it.stashUsed = append(it.stashUsed, s)
		stashEvents = append(stashEvents, s.event)
	}
	for _, s := range st.stash[len(it.stashUsed):] {
		view.seen[seenKey(s.msgID)] = true // a queued copy of a stashed event is a copy
	}
	var events []*dtbackend.HistoryEvent
	for _, m := range msgs {
		if m.env.Wake {
			continue
		}
		v, why := view.classify(m)
		switch v {
		case duplicate:
			b.log.Debug("azurestorage: dropping a copy", "instance", id, "event", eventType(m.event), "why", why)
			continue
		case stale:
			b.log.Info("azurestorage: dropping a stale message", "instance", id, "event", eventType(m.event), "why", why)
			continue
		}
		if st.sentinel == nil && b.orphanedStart(m, now) {
			b.log.Warn("azurestorage: dropping a scheduled start whose instance has no status row (purged, or its create failed)", "instance", id)
			continue
		}
		if at, ok := taskhub.ScheduledStart([]*dtbackend.HistoryEvent{m.event}, now); ok {
			env := m.env
			env.Event, env.Blob = nil, ""
			if err := b.send(ctx, m.queue, env, m.event, at); err != nil {
				return nil, err
			}
			continue
		}
		events = append(events, m.event)
		if answerKey(m.event) == "" {
			it.recorded = append(it.recorded, m)
		}
	}
	if cached && (len(events) == 0 && len(it.stashUsed) == 0 || !hasStart(st.history)) {
		return nil, errReadAgain
	}
	if !hasStart(st.history) {
		// Terminated before it started: end it now, without running it
		// (unstarted.go).
		done, err := b.settleUnstarted(ctx, id, it, stashEvents, events)
		switch {
		case done, errors.Is(err, errSimulatedCrash):
			b.finish(id)
			return nil, nil
		case errors.Is(err, dtbackend.ErrWorkItemLockLost):
			// Changed since it was read (the start's episode on another
			// worker, a purge): read again at the next delivery.
			b.releaseAll(msgs, 0)
			b.finish(id)
			return nil, nil
		case err != nil:
			return nil, err
		}
	}
	if !hasStart(st.history) && !hasStart(stashEvents) && !hasStart(events) {
		if len(it.recorded) > 0 {
			if err := b.stash(ctx, id, it.recorded); err != nil {
				return nil, err
			}
		}
		b.finishEpisode(ctx, id, &orchItem{msgs: msgs}, nil)
		b.finish(id)
		return nil, nil
	}
	if len(events) == 0 && len(it.stashUsed) == 0 {
		for _, row := range st.outbox {
			b.deleteRow(ctx, id, row.str("RowKey")) // sent again above
		}
		b.finishEpisode(ctx, id, &orchItem{msgs: msgs}, nil)
		b.finish(id)
		return nil, nil
	}
	retry := int64(0)
	for _, m := range msgs {
		retry = max(retry, m.failures())
	}
	return &dtbackend.OrchestrationWorkItem{
		InstanceID: api.InstanceID(id),
		NewEvents:  append(stashEvents, events...),
		LockedBy:   b.opts.WorkerID,
		RetryCount: int32(retry),
		Properties: map[string]any{propKey: it},
	}, nil
}

// holdBack returns messages to the queue, visible again after a delay that
// doubles with each delivery (1 s up to 30 s).
func (b *Backend) holdBack(ctx context.Context, id string, msgs []*inMsg) {
	for _, m := range msgs {
		delay := min(time.Second<<min(max(m.dequeueCount-1, 0), 5), 30*time.Second)
		if err := b.release(ctx, m, delay, true); err != nil && !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
			b.log.Warn("azurestorage: hold back message", "instance", id, "err", err)
		}
	}
}

// stash keeps events that arrived before their instance started, as rows
// in its partition; the episodes after the start consume them (at most
// maxStashPerEpisode at a time) and delete them in their fenced commits.
func (b *Backend) stash(ctx context.Context, id string, msgs []*inMsg) error {
	var actions []aztables.TransactionAction
	for i, m := range msgs {
		rk := fmt.Sprintf("%s%020d|%s", stashRKPre, time.Now().UnixNano()+int64(i), m.env.ID)
		row, err := b.eventRow(ctx, id, rk, m.event)
		if err != nil {
			return err
		}
		row["MsgID"] = m.env.ID
		if m.env.From != "" {
			row["From"] = m.env.From // its id must outlive re-sends, stashed or not
		}
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
	if it != nil {
		it.loadCtx = ctx
	}
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
// queue. Only an episode that ran and failed counts toward
// MaxDequeueCount: its state was loaded on a context that is still live,
// and no commit was tried. One handed back unprocessed (shutdown, a lost
// partition), cut off at a shutdown deadline, or whose commit failed, is a
// benign release and goes back at once (a second after a failed commit).
// An episode that fails for the MaxDequeueCount-th time is dead-lettered
// here, and its instance fails (poison.go).
func (b *Backend) AbandonOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	it := itemOf(wi)
	if it == nil {
		return fmt.Errorf("azurestorage: work item for %s was not fetched from this backend", wi.InstanceID)
	}
	id := string(wi.InstanceID)
	defer b.finish(id)
	if it.crashed {
		b.unhold(it.msgs...) // a dead worker renews nothing
		return nil
	}
	failed := it.loaded == nil && it.loadCtx != nil && it.loadCtx.Err() == nil && !it.completeFailed
	ctx = retryUntil(context.WithoutCancel(ctx), b.lockDeadline(it.msgs))
	// The episode took its instance's cache entry and commits nothing: the
	// outbox rows it knew as sent are deleted now, or the next read would
	// send them again (running finished activities twice).
	for _, row := range it.state.sent {
		b.deleteRow(ctx, id, row.str("RowKey"))
	}
	delay := time.Duration(0)
	if it.completeFailed {
		delay = time.Second
	}
	// Every message is released, whatever happens to the others: one left
	// out would stay locked, and renewed, for as long as this worker lives.
	var lost bool
	var errs []error
	for _, m := range it.msgs {
		if failed {
			if n := m.failures() + 1; n >= int64(b.opts.MaxDequeueCount) {
				b.poison(ctx, m, fmt.Sprintf("its episode failed %d times (MaxDequeueCount %d)", n, b.opts.MaxDequeueCount), n)
				continue
			}
			delay = min(time.Duration(m.failures()+1)*time.Second, 30*time.Second)
		}
		if err := b.release(ctx, m, delay, !failed); err != nil {
			if errors.Is(err, dtbackend.ErrWorkItemLockLost) {
				lost = true
				continue
			}
			b.unhold(m) // its lock runs out instead
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if lost {
		return dtbackend.ErrWorkItemLockLost
	}
	return nil
}
