package taskhub

import (
	"context"
	"sync"
	"time"
)

// Wake lets a backend's consumers sleep until this process enqueues work,
// instead of polling storage on a fixed schedule. The zero value is ready to
// use.
type Wake struct {
	mu sync.Mutex
	ch chan struct{}
}

// C returns a channel that is closed at the next Notify. Take it before
// checking storage, so a Notify that lands between the check and the wait is
// not missed.
func (w *Wake) C() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch == nil {
		w.ch = make(chan struct{})
	}
	return w.ch
}

// Notify wakes every current waiter.
func (w *Wake) Notify() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch != nil {
		close(w.ch)
		w.ch = nil
	}
}

// Sleep waits for c to close, d to pass, or ctx to end, and reports whether
// ctx is still live.
func Sleep(ctx context.Context, c <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c:
	case <-t.C:
	case <-ctx.Done():
		return false
	}
	return true
}
