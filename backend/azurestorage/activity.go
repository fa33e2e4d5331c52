package azurestorage

import (
	"context"
	"fmt"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/taskhub"
)

// activityBatch is how many activity messages one dequeue takes; they wait
// in memory, so it stays small.
const activityBatch = 8

// GetActivityWorkItem waits until an activity is ready or ctx ends, like
// GetOrchestrationWorkItem.
func (b *Backend) GetActivityWorkItem(ctx context.Context) (*dtbackend.ActivityWorkItem, error) {
	var idle time.Duration
	for {
		wake := b.actWake.C()
		if m := b.takeActivity(); m != nil {
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
		sctx, cancel := b.storageCtx(ctx)
		msgs, err := b.dequeue(sctx, b.work, -1, activityBatch)
		cancel()
		if err != nil && ctx.Err() == nil {
			b.log.Warn("azurestorage: poll activity queue", "err", err)
		}
		if len(msgs) > 0 {
			b.mu.Lock()
			b.actBuf = append(b.actBuf, msgs...)
			b.mu.Unlock()
			idle = 0
			continue
		}
		idle = nextIdle(idle, b.opts.MaxPollInterval)
		if !taskhub.Sleep(ctx, wake, idle) {
			return nil, fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
		}
	}
}

// takeActivity returns the next buffered activity message whose lock still
// has at least half its time left; older ones are left to reappear.
func (b *Backend) takeActivity() *inMsg {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.actBuf) > 0 {
		m := b.actBuf[0]
		b.actBuf = b.actBuf[1:]
		if time.Since(m.dequeuedAt) < b.opts.LockTimeout/2 {
			return m
		}
	}
	return nil
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
	ctx = retryUntil(ctx, b.lockDeadline([]*inMsg{m}))
	if err := b.send(ctx, b.controlFor(id), envelope{ID: m.env.ID + "-result", Instance: id, Exec: m.env.Exec}, wi.Result, time.Time{}); err != nil {
		return err
	}
	b.orchWake.Notify()
	if err := b.deleteMsg(ctx, m); err != nil {
		return err
	}
	return nil
}

// AbandonActivityWorkItem makes the activity message visible again.
func (b *Backend) AbandonActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem) error {
	m, err := activityMsg(wi)
	if err != nil {
		return err
	}
	err = b.release(retryUntil(ctx, b.lockDeadline([]*inMsg{m})), m, 0)
	b.actWake.Notify()
	return err
}
