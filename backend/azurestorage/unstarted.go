package azurestorage

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/dronehub/dronehub/taskhub"
)

// Terminating an instance that has not started.
//
// A scheduled start (api.WithStartTime in the future) is a start message
// sent invisible until its time; the status row is written Pending at
// creation. A terminate that reaches such an instance ends it at once, as
// on SQLite (terminateUnstarted there): the orchestrator never runs, the
// instance reads Terminated with the terminate's reason as its output, and
// the start that surfaces later is dropped.
//
//   - What the status row keeps. createInstance records the start event of
//     a delayed start without a parent in the status row (StartEvent: the
//     ExecutionStarted without Name and Input, which the row holds already,
//     in blobs if large). Every commit removes it (statusRow): it describes
//     only an execution that has not started. A child's start is never
//     rebuilt: its parent must get an answer, so it ends through its own
//     start message (below).
//
//   - When it ends. An episode of an instance whose history holds no start
//     ends it without running it when its accepted events (stashed or new)
//     hold an ExecutionTerminated and a start is at hand: one among those
//     events (the start came due with the terminate, or the terminate was
//     stashed before the status row existed), or else the one the Pending
//     status row recorded. Without either (an instance created by an older
//     version, a child whose start is in flight) the terminate is stashed as
//     before and acts, again without running the orchestrator, in the
//     episode of the start.
//
//   - How it ends: one fenced commit, exactly an episode's (planCommit,
//     submitCommit, finishEpisode): history [ExecutionStarted,
//     OrchestratorStarted, ExecutionCompleted(Terminated, the terminate's
//     input)] as taskhub.EndExecution builds it (the same history SQLite
//     writes), status Terminated, the consumed messages' ids in Seen, the
//     consumed stash rows deleted, a parent's answer in the outbox; all in
//     one entity-group transaction If-Match the status row read at load
//     (Add when there was none). The first terminate gives the output;
//     later ones are events for an ended instance and are dropped.
//
//   - What makes it exactly once. Nothing is deleted before the commit: a
//     crash or a failed commit before it leaves the messages to reappear
//     and the next delivery decides again from storage. A stale owner's
//     commit fails its If-Match (ErrWorkItemLockLost) and its messages are
//     handed back; so does one that races the start's own episode on
//     another worker: whichever commits first wins and the other's
//     messages are re-read against it. After the commit the redelivered
//     terminate is a copy (Seen), and the start message — whenever it
//     surfaces, on any worker — is the start of an execution the history
//     holds: a copy, deleted without effect.
//
//   - Purge and id reuse. After a purge the start finds no status row. A
//     start sent delayed (a scheduled start) that finds none createGrace
//     after it was sent is dropped: its create never finished or its
//     instance was purged or replaced since; within createGrace it is held
//     back (the creator's Add may still be on its way). So a create that
//     died between sending a scheduled start and writing its row (its
//     caller got no answer) does not happen, where an immediate start is
//     still repaired by its first commit: a resurrected purged instance
//     would be worse, and the two cannot be told apart. A start whose
//     execution is not the one the Pending status row names (the id was
//     reused: purged and created again, or replaced) is stale (dedupe.go:
//     created), and so is one meeting a history that started another
//     execution; the new instance starts normally with its own start.
//
//   - Terminate before the status row. createInstance sends the start,
//     then writes the row; a terminate that finds no row and no start is
//     held back (released for a second or more) while it is younger than
//     terminateWait, so it acts as soon as the row exists; an older one is
//     stashed (an event for an instance that may never exist) and acts with
//     the start.

// defaultCreateGrace is how long after a start message was sent its
// instance's status row may still be written by its creator (a client
// whose Add is retried through an outage); a scheduled start that finds no
// row after that is dropped.
const defaultCreateGrace = 5 * time.Minute

// terminateWait bounds how long a terminate that finds no status row waits
// for it before being stashed.
const terminateWait = 30 * time.Second

// startEventProp is the status row property that holds a delayed start
// (see above).
const startEventProp = "StartEvent"

func (b *Backend) createGrace() time.Duration {
	if b.opts.createGrace > 0 {
		return b.opts.createGrace
	}
	return defaultCreateGrace
}

// recordStart keeps start in the status row e of its instance, created with
// a start delayed to its scheduled time.
func recordStart(e entity, start *dtbackend.HistoryEvent) error {
	if start.GetExecutionStarted().GetParentInstance() != nil {
		return nil
	}
	c := proto.Clone(start).(*dtbackend.HistoryEvent)
	es := c.GetExecutionStarted()
	es.Name, es.Input = "", nil // in the row's Name and Input
	raw, err := dtbackend.MarshalHistoryEvent(c)
	if err != nil {
		return fmt.Errorf("azurestorage: encode the start of %s: %w", e.str("InstanceID"), err)
	}
	if len(raw) > maxInlineProperty {
		return nil // only ids, times and a trace context: never this large
	}
	e.setBinary(startEventProp, raw)
	return nil
}

// forgetStart removes the recorded start from a status row being committed.
func forgetStart(e entity) {
	delete(e, startEventProp)
	delete(e, startEventProp+"@odata.type")
}

// recordedStart rebuilds the start a Pending status row recorded, or
// returns nil if it recorded none.
func (b *Backend) recordedStart(ctx context.Context, e entity) (*dtbackend.HistoryEvent, error) {
	if e == nil || sentinelStatus(e) != api.RUNTIME_STATUS_PENDING || e.int64("HistoryCount") != 0 {
		return nil, nil
	}
	raw, err := e.binary(startEventProp)
	if err != nil || len(raw) == 0 {
		return nil, err
	}
	start, err := dtbackend.UnmarshalHistoryEvent(raw)
	if err != nil {
		return nil, fmt.Errorf("azurestorage: the recorded start of %s: %w", e.str("InstanceID"), err)
	}
	es := start.GetExecutionStarted()
	if es == nil || es.GetOrchestrationInstance().GetExecutionId().GetValue() != e.str("ExecutionID") {
		return nil, nil
	}
	name, input, err := b.nameAndInput(ctx, e)
	if err != nil {
		return nil, err
	}
	es.Name = name
	if input != "" { // serialized inputs are never empty: "" is no input
		es.Input = wrapperspb.String(input)
	}
	return start, nil
}

// delayedStart reports whether m is a start sent invisible until its
// scheduled time (createInstance, or buildFrom sending one again).
func delayedStart(m *inMsg) bool {
	es := m.event.GetExecutionStarted()
	return es != nil && es.GetScheduledStartTimestamp() != nil && es.GetParentInstance() == nil && m.env.VisibleAt > 0
}

// young reports whether m was sent less than d ago.
func young(m *inMsg, d time.Duration, now time.Time) bool {
	return !m.inserted.IsZero() && now.Sub(m.inserted) < d
}

// awaitCreate reports whether the messages of an instance without a status
// row are to be held back until its creator has written it: a scheduled
// start sent less than createGrace ago, or a terminate sent less than
// terminateWait ago with no start to go with it.
func (b *Backend) awaitCreate(msgs []*inMsg, now time.Time) bool {
	start, term := false, false
	for _, m := range msgs {
		switch {
		case m.env.Wake || m.event == nil:
		case m.event.GetExecutionStarted() != nil:
			if delayedStart(m) && young(m, b.createGrace(), now) {
				return true
			}
			start = true
		case m.event.GetExecutionTerminated() != nil:
			term = term || young(m, min(terminateWait, b.createGrace()), now)
		}
	}
	return term && !start
}

// orphanedStart reports whether m, accepted for an instance without a
// status row, is a scheduled start to drop: its creator would have written
// the row by now, so the create failed, or the instance was purged since.
func (b *Backend) orphanedStart(m *inMsg, now time.Time) bool {
	return delayedStart(m) && !m.inserted.IsZero() && !young(m, b.createGrace(), now)
}

// settleUnstarted ends an instance whose history holds no start, if the
// episode's accepted events terminate it (see above). It reports whether
// it did; buildFrom then has nothing to run.
func (b *Backend) settleUnstarted(ctx context.Context, id string, it *orchItem, stashEvents, events []*dtbackend.HistoryEvent) (bool, error) {
	st := it.state
	isTerm := func(e *dtbackend.HistoryEvent) bool { return e.GetExecutionTerminated() != nil }
	accepted := slices.Concat(stashEvents, events)
	var term *dtbackend.HistoryEvent
	if i := slices.IndexFunc(accepted, isTerm); i >= 0 {
		term = accepted[i]
	} else {
		// Beyond the stash this episode consumes: acted on now, its row
		// consumed by a later episode (an event for an ended instance).
		for _, s := range st.stash[len(it.stashUsed):] {
			if isTerm(s.event) {
				term = s.event
				break
			}
		}
	}
	if term == nil {
		return false, nil
	}
	var start *dtbackend.HistoryEvent
	if i := slices.IndexFunc(accepted, func(e *dtbackend.HistoryEvent) bool { return e.GetExecutionStarted() != nil }); i >= 0 {
		start = accepted[i]
	} else {
		var err error
		if start, err = b.recordedStart(ctx, st.sentinel); err != nil || start == nil {
			return false, err
		}
	}
	state := dtbackend.NewOrchestrationRuntimeState(api.InstanceID(id), nil)
	if err := state.AddEvent(start); err != nil {
		return false, err
	}
	if err := taskhub.EndExecution(state, api.RUNTIME_STATUS_TERMINATED, term.GetExecutionTerminated().GetInput(), nil); err != nil {
		return false, err
	}
	if crashAt(b.hooks.beforeCommit, id) {
		b.unhold(it.msgs...) // a dead worker renews nothing
		return false, errSimulatedCrash
	}
	if err := b.complete(ctx, id, state, it); err != nil {
		return false, err
	}
	b.log.Info("azurestorage: terminated an instance before it started", "instance", id)
	return true, nil
}
