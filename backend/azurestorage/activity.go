package azurestorage

import (
	"context"
	"fmt"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/taskhub"
)

// activityBatch is the most activity messages one dequeue takes.
const activityBatch = 8

// GetActivityWorkItem waits until an activity is ready or ctx ends, like
// GetOrchestrationWorkItem. At most activityBatch activities wait in this
// process's buffer (dequeued, or sent by this process and delivered by
// hand: messages.go); one that waited past half its lock is renewed before
// it is handed out (takeActivity), so none expires in memory. The queue is
// polled on the schedule of pollState.
func (b *Backend) GetActivityWorkItem(ctx context.Context) (*dtbackend.ActivityWorkItem, error) {
	for {
		b.actPolling.Store(time.Now().UnixNano())
		wake := b.actWake.C()
		if m := b.takeActivity(ctx); m != nil {
			if b.hooks.dropActivity != nil && b.hooks.dropActivity(m) {
				b.unhold(m)
				continue
			}
			return &dtbackend.ActivityWorkItem{
				InstanceID: api.InstanceID(m.env.Instance),
				NewEvent:   m.event,
				LockedBy:   b.opts.WorkerID,
				Properties: map[string]any{propKey: m},
			}, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
		}
		poll, next := b.poll.workDue()
		if !poll {
			if !taskhub.Sleep(ctx, wake, next) {
				return nil, fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
			}
			continue
		}
		sctx, cancel := b.storageCtx(ctx)
		b.mu.Lock()
		n := int32(max(activityBatch-len(b.actBuf), 1))
		b.mu.Unlock()
		msgs, err := b.dequeue(sctx, b.work, -1, n)
		cancel()
		if err != nil && ctx.Err() == nil {
			b.log.Warn("azurestorage: poll activity queue", "err", err)
		}
		if err == nil {
			b.poll.polled(0, len(msgs), int(n))
		}
		if len(msgs) > 0 {
			b.mu.Lock()
			b.actBuf = append(b.actBuf, msgs...)
			b.mu.Unlock()
			if len(msgs) > 1 {
				b.actWake.Notify()
			}
		}
	}
}

// takeActivity returns the next buffered activity message. One that has
// waited past half its lock has the lock renewed first (which does not
// count as a delivery), so it never expires in memory.
func (b *Backend) takeActivity(ctx context.Context) *inMsg {
	for {
		b.mu.Lock()
		if len(b.actBuf) == 0 {
			b.mu.Unlock()
			return nil
		}
		m := b.actBuf[0]
		b.actBuf = b.actBuf[1:]
		b.mu.Unlock()
		if time.Since(m.lockedAt()) < b.opts.LockTimeout/2 {
			return m
		}
		sctx, cancel := b.storageCtx(ctx)
		err := b.renew(sctx, m)
		cancel()
		if err == nil {
			return m
		}
		b.log.Debug("azurestorage: renew a buffered activity message", "err", err)
	}
}

func activityMsg(wi *dtbackend.ActivityWorkItem) (*inMsg, error) {
	if wi != nil && wi.Properties != nil {
		if m, ok := wi.Properties[propKey].(*inMsg); ok {
			return m, nil
		}
	}
	return nil, fmt.Errorf("azurestorage: activity work item %v was not fetched from this backend", wi)
}

// CompleteActivityWorkItem sends the result to the instance's control queue,
// then deletes the activity message. The result's message id derives from
// the activity message's, so if the activity runs again after a crash
// between the two, the second result is recognised as a copy.
func (b *Backend) CompleteActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem) error {
	m, err := activityMsg(wi)
	if err != nil {
		return err
	}
	if wi.Result == nil {
		return fmt.Errorf("azurestorage: activity work item %v has no result", wi)
	}
	id := string(wi.InstanceID)
	env := envelope{ID: m.env.ID + "-result", Instance: id, Exec: m.env.Exec}
	if b.carry(m, env, wi.Result) {
		return nil
	}
	ctx = retryUntil(ctx, b.lockDeadline([]*inMsg{m}))
	if err := b.send(ctx, b.controlFor(id), env, wi.Result, time.Time{}); err != nil {
		return err
	}
	b.orchWake.Notify()
	if err := b.deleteMsg(ctx, m); err != nil {
		return err
	}
	if m.env.Blob != "" {
		b.deleteBlob(ctx, m.env.Blob) // only after its message is gone (see dequeue)
	}
	return nil
}

// AbandonActivityWorkItem makes the activity message visible again.
func (b *Backend) AbandonActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem) error {
	m, err := activityMsg(wi)
	if err != nil {
		return err
	}
	// An activity's failure is its result; an abandon is never the
	// message's fault (storage, shutdown), so it does not count.
	err = b.release(retryUntil(ctx, b.lockDeadline([]*inMsg{m})), m, 0, true)
	b.actWake.Notify()
	return err
}
