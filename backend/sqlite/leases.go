package sqlite

import (
	"context"
	"database/sql"
	"sync"
	"time"
)

// A lease is a work item this backend handed out and that has not been
// completed or abandoned yet. Its lock is renewed every LockTimeout/3, so a
// work item is delivered again only if its worker stops (the process died,
// or Stop was called), never while it is still being worked on, however
// long that takes.
//
// Each fetch locks under an owner name of its own, so a work item redelivered
// after its lock expired cannot be completed, abandoned or renewed through an
// older delivery in the same process.
type lease struct {
	activity bool
	owner    string
	instance string
	seq      int64 // activity work items: NewTasks.SequenceNumber

	// How an orchestration delivery went, to tell a failed execution (it
	// counts towards the dead-letter limit) from a hand-back.
	loaded        bool            // GetOrchestrationRuntimeState succeeded for it
	loadCtx       context.Context // the context it was loaded on: the work's
	loadFailed    bool            // loading its state failed
	completeTried bool            // a Complete was attempted
}

// failedExecution reports whether abandoning the delivery l means its
// execution failed: its state was loaded on a context that is still live
// (not cut off at shutdown) and no Complete was tried.
func (l *lease) failedExecution() bool {
	return l != nil && !l.activity && l.loaded && !l.loadFailed && !l.completeTried && l.loadCtx.Err() == nil
}

type leases struct {
	mu      sync.Mutex
	m       map[string]*lease
	running bool          // a renewer goroutine runs
	closed  bool          // the backend is closed: no more leases
	stop    chan struct{} // closed by Close
	done    sync.WaitGroup
}

// track starts renewing l's lock.
func (b *Backend) track(l *lease) {
	ls := &b.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.closed {
		return
	}
	if ls.m == nil {
		ls.m = map[string]*lease{}
	}
	ls.m[l.owner] = l
	if !ls.running {
		ls.running = true
		ls.done.Add(1)
		go b.renewLoop()
	}
}

// update calls fn on the lease of owner, if it is tracked.
func (b *Backend) update(owner string, fn func(*lease)) {
	ls := &b.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if l := ls.m[owner]; l != nil {
		fn(l)
	}
}

// tracked reports whether the lease of owner is tracked: its lock is held.
func (b *Backend) tracked(owner string) bool {
	ls := &b.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.m[owner] != nil
}

// release stops renewing the lease of owner and returns it (nil if it was
// not tracked).
func (b *Backend) release(owner string) *lease {
	ls := &b.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.m[owner]
	delete(ls.m, owner)
	return l
}

// dropLeases stops renewing every lease: their work items are delivered
// again once their locks expire, unless completed or abandoned first.
func (b *Backend) dropLeases() {
	ls := &b.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	clear(ls.m)
}

// closeLeases stops the renewer for good and waits for it.
func (b *Backend) closeLeases() {
	ls := &b.leases
	ls.mu.Lock()
	if !ls.closed {
		ls.closed = true
		close(ls.stop)
		clear(ls.m)
	}
	ls.mu.Unlock()
	ls.done.Wait()
}

// renewLoop renews the tracked leases every LockTimeout/3 until there are
// none left or the backend closes.
func (b *Backend) renewLoop() {
	ls := &b.leases
	defer ls.done.Done()
	every := b.opts.LockTimeout / 3
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ls.stop:
			return
		}
		ls.mu.Lock()
		if len(ls.m) == 0 {
			ls.running = false
			ls.mu.Unlock()
			return
		}
		held := make([]*lease, 0, len(ls.m))
		for _, l := range ls.m {
			held = append(held, l)
		}
		ls.mu.Unlock()
		b.renew(held, every)
		t.Reset(every)
	}
}

// renew extends the locks of held by LockTimeout from now, in one
// transaction. A lock that is gone (the work item was completed or
// abandoned meanwhile, or its lock expired and another fetch took it) is
// dropped.
func (b *Backend) renew(held []*lease, within time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	now := time.Now().UTC()
	until := now.Add(b.opts.LockTimeout)
	var lost []*lease
	err := b.write(ctx, func(tx *stx) error {
		lost = lost[:0]
		for _, l := range held {
			var res sql.Result
			var err error
			if l.activity {
				res, err = tx.ExecContext(ctx, `UPDATE NewTasks SET LockExpiration = ? WHERE SequenceNumber = ? AND LockedBy = ?`, until, l.seq, l.owner)
			} else {
				res, err = tx.ExecContext(ctx, `UPDATE Instances SET LockExpiration = ? WHERE InstanceID = ? AND LockedBy = ?`, until, l.instance, l.owner)
			}
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				lost = append(lost, l)
			}
		}
		return nil
	})
	if err != nil {
		b.log.Warn("sqlite: renewing work-item locks failed; retrying", "locks", len(held), "err", err)
		return
	}
	ls := &b.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, l := range lost {
		if ls.m[l.owner] == l {
			delete(ls.m, l.owner)
			b.log.Warn("sqlite: a work item's lock was lost while it was being worked on", "instance", l.instance, "activity", l.activity)
		}
	}
}
