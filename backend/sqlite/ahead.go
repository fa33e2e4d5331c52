package sqlite

import (
	"context"
	"sync"

	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// Fetching ahead. durabletask-go's workers fetch one work item at a time
// from one loop per kind, so a worker takes work no faster than one fetch
// (a write transaction) after another. A fetch therefore locks up to
// FetchBatch work items in its transaction, returns the first, and keeps
// the others here for the next fetches, which then need no transaction.
//
// Invariants:
//   - An item ahead is locked and its lease tracked from the moment it is
//     locked, so its lock is renewed while it waits, like a running item's.
//   - An item whose lock was lost while it waited (its lease no longer
//     tracked: a renewal found the lock gone) is never handed out.
//   - Stop and Close hand the items still ahead back at once, so that
//     neither another process nor this one's next start waits out their
//     locks; fetches after Stop lock one item at a time, and a fetch under
//     way when Stop ran hands back what it locked beyond its first item
//     (putAhead refuses it).

// ahead is the work items of one kind locked ahead.
type ahead[W any] struct {
	mu      sync.Mutex
	items   []*W
	stopped bool // Stop was called: keep nothing ahead
}

// takeAhead returns the oldest item ahead whose lock is still held; nil if
// there is none.
func takeAhead[W any](b *Backend, a *ahead[W], owner func(*W) string) *W {
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.items) > 0 {
		wi := a.items[0]
		a.items[0] = nil
		a.items = a.items[1:]
		if b.tracked(owner(wi)) {
			return wi
		}
	}
	return nil
}

// putAhead keeps items for the next fetches. After Stop (stopAhead) it
// keeps none and returns them, for the caller to hand back: a fetch that
// was under way when Stop drained the items ahead must not leave its own
// behind, locked.
func putAhead[W any](a *ahead[W], items []*W) (refused []*W) {
	if len(items) == 0 {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped {
		return items
	}
	a.items = append(a.items, items...)
	return nil
}

// stopAhead makes putAhead refuse items from now on, and removes and
// returns every item ahead.
func stopAhead[W any](a *ahead[W]) []*W {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopped = true
	items := a.items
	a.items = nil
	return items
}

// isStopped reports whether Stop was called (and Start not since).
func (a *ahead[W]) isStopped() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stopped
}

// startAhead makes putAhead keep items again.
func startAhead[W any](a *ahead[W]) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopped = false
}

func orchOwner(wi *dtbackend.OrchestrationWorkItem) string { return wi.LockedBy }
func actOwner(wi *dtbackend.ActivityWorkItem) string       { return wi.LockedBy }

// batchSize is how many work items a fetch may lock.
func (b *Backend) batchSize() int {
	if b.actAhead.isStopped() {
		return 1
	}
	return b.opts.FetchBatch
}

// handBackAhead abandons every work item ahead and keeps none from now on
// (until Start), so that they are fetchable again at once (an abandon of an
// item that never ran counts as no failed delivery).
func (b *Backend) handBackAhead(ctx context.Context) {
	b.handBackOrchestrations(ctx, stopAhead(&b.orchAhead))
	b.handBackActivities(ctx, stopAhead(&b.actAhead))
}

func (b *Backend) handBackOrchestrations(ctx context.Context, items []*dtbackend.OrchestrationWorkItem) {
	for _, wi := range items {
		if err := b.AbandonOrchestrationWorkItem(ctx, wi); err != nil {
			b.log.Warn("sqlite: handing back a work item fetched ahead failed; it is delivered again when its lock expires", "instance", wi.InstanceID, "err", err)
		}
	}
}

func (b *Backend) handBackActivities(ctx context.Context, items []*dtbackend.ActivityWorkItem) {
	for _, wi := range items {
		if err := b.AbandonActivityWorkItem(ctx, wi); err != nil {
			b.log.Warn("sqlite: handing back an activity fetched ahead failed; it is delivered again when its lock expires", "instance", wi.InstanceID, "err", err)
		}
	}
}
