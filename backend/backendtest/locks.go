package backendtest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

// lockCases check that a backend keeps the locks of the work items it handed
// out for as long as they are being worked on: a work item is never
// delivered twice at once, however long its work takes, and its result is
// accepted at the end.
func lockCases(cfg config) []testCase {
	return []testCase{
		{"Locks_HeldWorkItemsRenewed", func(t *testing.T, ctx context.Context, be taskhub.Backend) {
			testLocksRenewed(t, ctx, be, cfg)
		}},
		{"E2E_LongActivity_RunsOnceAndLands", func(t *testing.T, ctx context.Context, be taskhub.Backend) {
			testLongActivity(t, ctx, be, cfg)
		}},
	}
}

// requireLock skips a case unless the factory declared a usable lock timeout.
func requireLock(t *testing.T, cfg config) time.Duration {
	t.Helper()
	switch {
	case cfg.lockTimeout == 0:
		t.Skip("the factory did not declare its lock timeout: pass backendtest.LockTimeout")
	case cfg.lockTimeout > maxCaseLock:
		t.Skipf("the declared lock timeout %s is over %s: open the backends with a shorter lock", cfg.lockTimeout, maxCaseLock)
	}
	return cfg.lockTimeout
}

// holdFor keeps a work item out for d, checking every lock/4 that check
// (a fetch that must come back empty) still finds nothing.
func holdFor(d, lock time.Duration, check func()) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		check()
		t := time.NewTimer(min(lock/4, time.Until(end)))
		<-t.C
	}
}

// testLocksRenewed holds an orchestration work item and then an activity
// work item for three lock timeouts each: neither is delivered again
// meanwhile, and both complete afterwards.
func testLocksRenewed(t *testing.T, ctx context.Context, be taskhub.Backend, cfg config) {
	lock := requireLock(t, cfg)
	d := newDriver(t, be, echoRegistry())
	c := backend.NewTaskHubClient(be)
	id := schedule(t, ctx, c, "EchoOrchestrator", api.WithInstanceID("held"), api.WithInput("h"))

	wi := d.fetchOrch(ctx)
	holdFor(3*lock, lock, func() { d.noOrch(ctx) })
	d.runOrch(ctx, wi) // fails the test if the lock was lost

	awi := d.fetchAct(ctx)
	d.execAct(ctx, awi)
	holdFor(3*lock, lock, func() { d.noAct(ctx) })
	d.completeAct(ctx, awi)

	d.runUntil(ctx, func() bool { return metadata(t, ctx, be, id).IsComplete() })
	requireCompleted(t, metadata(t, ctx, be, id), `"h!"`)
	h := history(t, ctx, be, id)
	if count(h, isTaskScheduled) != 1 || count(h, isTaskCompleted) != 1 {
		t.Errorf("history %s: want one TaskScheduled and one TaskCompleted", summary(h))
	}
}

// testLongActivity runs an activity for five lock timeouts on the real
// workers: it runs once, never twice at the same time, and its result
// completes the orchestration.
func testLongActivity(t *testing.T, ctx context.Context, be taskhub.Backend, cfg config) {
	lock := requireLock(t, cfg)
	work := 5 * lock
	var runs, running, maxRunning atomic.Int32
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Long", func(ctx *task.OrchestrationContext) (any, error) {
		var out string
		err := ctx.CallActivity("Slow").Await(&out)
		return out, err
	})
	_ = r.AddActivityN("Slow", func(ctx task.ActivityContext) (any, error) {
		n := runs.Add(1)
		now := running.Add(1)
		defer running.Add(-1)
		for {
			m := maxRunning.Load()
			if now <= m || maxRunning.CompareAndSwap(m, now) {
				break
			}
		}
		// The activity's work: it takes this long.
		t := time.NewTimer(work)
		defer t.Stop()
		select {
		case <-t.C:
			return fmt.Sprintf("run %d", n), nil
		case <-ctx.Context().Done():
			return nil, ctx.Context().Err()
		}
	})
	startWorker(t, be, r)
	c := backend.NewTaskHubClient(be)
	id := schedule(t, ctx, c, "Long", api.WithInstanceID("long-activity"))

	var md *api.OrchestrationMetadata
	deadline := time.Now().Add(work + settleTimeout)
	for md = metadata(t, ctx, be, id); !md.IsComplete(); md = metadata(t, ctx, be, id) {
		if time.Now().After(deadline) {
			t.Fatalf("the instance with a %s activity (lock %s) did not complete within %s: %s; the activity ran %d times, up to %d at once",
				work, lock, work+settleTimeout, describe(md), runs.Load(), maxRunning.Load())
		}
		pause(ctx)
	}
	requireCompleted(t, md, `"run 1"`)
	if n, m := runs.Load(), maxRunning.Load(); n != 1 || m != 1 {
		t.Errorf("the %s activity ran %d times, up to %d at once (lock %s); want once", work, n, m, lock)
	}
	h := history(t, ctx, be, id)
	if count(h, isTaskScheduled) != 1 || count(h, isTaskCompleted) != 1 {
		t.Errorf("history %s: want one TaskScheduled and one TaskCompleted", summary(h))
	}
	if dl, ok := be.(taskhub.DeadLetterer); ok {
		if letters, err := dl.DeadLetters(ctx); err != nil || len(letters) != 0 {
			t.Errorf("dead letters: %+v, %v; want none", letters, err)
		}
	}
}
