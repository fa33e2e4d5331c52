package taskhub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// Runner drives a backend's orchestration and activity workers. It replaces
// durabletask-go's TaskHubWorker, whose poll loop can call WaitGroup.Add
// while StopAndDrain is in WaitGroup.Wait (a data race the race detector
// reports on every busy shutdown). Runner's loops stop calling ProcessNext
// before they drain, so the two never overlap.
type Runner struct {
	be      dtbackend.Backend
	workers []dtbackend.TaskWorker
	log     *slog.Logger

	mu     sync.Mutex
	cancel context.CancelFunc
	loops  sync.WaitGroup
}

// NewRunner returns a Runner for the workers (typically one orchestration
// worker and one activity worker built on be). Their Start methods must not
// be called: Runner polls them itself.
func NewRunner(be dtbackend.Backend, log *slog.Logger, workers ...dtbackend.TaskWorker) *Runner {
	return &Runner{be: be, workers: workers, log: log}
}

// Start creates the task hub if needed, starts the backend and begins polling.
func (r *Runner) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cancel != nil {
		return errors.New("runner already started")
	}
	if err := r.be.CreateTaskHub(ctx); err != nil && !errors.Is(err, dtbackend.ErrTaskHubExists) {
		return fmt.Errorf("create task hub: %w", err)
	}
	if err := r.be.Start(ctx); err != nil {
		return fmt.Errorf("start backend: %w", err)
	}
	// The loops outlive ctx's caller: they stop on Shutdown.
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	for _, w := range r.workers {
		r.loops.Add(1)
		go r.poll(lctx, w)
	}
	return nil
}

func (r *Runner) poll(ctx context.Context, w dtbackend.TaskWorker) {
	defer r.loops.Done()
	idle := time.Duration(0)
	for ctx.Err() == nil {
		ok, err := w.ProcessNext(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case ok:
			idle = 0
			continue
		case err != nil:
			r.log.Error("task worker poll failed; backing off", "err", err)
			idle = 5 * time.Second
		default:
			// Backends that wait for work inside the fetch rarely get here;
			// for those that return at once, back off to at most 1s.
			idle = min(max(idle*2, 10*time.Millisecond), time.Second)
		}
		t := time.NewTimer(idle)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// Shutdown stops polling, waits for work items in progress, then stops the
// backend. Work items cut short are abandoned and redelivered later.
func (r *Runner) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	cancel := r.cancel
	r.cancel = nil
	r.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	done := make(chan struct{})
	go func() {
		r.loops.Wait()
		var wg sync.WaitGroup
		for _, w := range r.workers {
			wg.Add(1)
			go func() { defer wg.Done(); w.StopAndDrain() }()
		}
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("work in progress did not finish: %w", ctx.Err())
	}
	return r.be.Stop(ctx)
}
