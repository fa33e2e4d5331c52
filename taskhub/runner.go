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

// handBackTimeout bounds handing a work item back to the backend (abandoning
// it) once its own context is cancelled, and how long Shutdown waits after
// its deadline for cut-off work to do so.
const handBackTimeout = 5 * time.Second

// Runner drives a backend's orchestration and activity workers. It replaces
// durabletask-go's TaskHubWorker, whose poll loop can call WaitGroup.Add
// while StopAndDrain is in WaitGroup.Wait (a data race the race detector
// reports on every busy shutdown), and whose shutdown cancels the work in
// progress.
//
// durabletask-go's TaskWorker.ProcessNext(ctx) fetches a work item with ctx
// and then processes it in the background with the same ctx: the executor,
// then CompleteWorkItem or AbandonWorkItem. Cancelling ctx to stop fetching
// would also cut off work in progress: an activity that finished could not
// send its result and would run again elsewhere; an orchestration commit
// could be cut off. So the Runner hands ProcessNext a work context that only
// Shutdown's deadline cancels, and stops fetches through a [Gate]: build the
// workers on a Gate over the backend and give the Runner that Gate.
//
//	g := taskhub.NewGate(be)
//	r := taskhub.NewRunner(g, log,
//		dtbackend.NewOrchestrationWorker(g, exec, logger),
//		dtbackend.NewActivityTaskWorker(g, exec, logger))
//
// With a Gate, Shutdown keeps these invariants:
//
//  1. Once Shutdown begins, no work item is fetched. The loops stop calling
//     ProcessNext; the Gate refuses new fetches at once, cancels those
//     waiting, and hands back (abandons) an item whose fetch returned as
//     Shutdown began, so it is never processed here.
//  2. A work item fetched before Shutdown began runs to completion: its
//     executor and its Complete or Abandon run on the work context, which is
//     not cancelled until Shutdown's ctx ends (the grace deadline).
//  3. At the grace deadline the work context is cancelled. Work still in
//     progress is cut short: the Gate refuses to complete it (an activity's
//     result may be just the cancellation) and abandons it on a context of
//     its own, so it is redelivered to the next worker at once. Shutdown
//     waits up to handBackTimeout for that, then returns an error saying how
//     many items were cut short (wrapping ctx's error).
//  4. ProcessNext never runs concurrently with StopAndDrain: the loops have
//     returned before any worker drains, so durabletask-go's WaitGroup.Add
//     in ProcessNext cannot race its Wait in StopAndDrain.
//  5. Backend.Stop is called after draining (after the deadline, once the
//     cut-off work has been handed back or handBackTimeout has passed).
//
// Workers not built on a Gate can only be stopped by cancelling the context
// they also work on; for them Shutdown cancels work in progress at once, as
// TaskHubWorker does, and it is redelivered after the backend's lock timeout.
type Runner struct {
	be      dtbackend.Backend
	gate    *Gate // be, if it is a Gate; nil otherwise
	workers []dtbackend.TaskWorker
	log     *slog.Logger

	mu         sync.Mutex
	state      runnerState
	stopLoops  context.CancelFunc // ends the poll loops
	cancelWork context.CancelFunc // cancels the context work items run on
	loops      sync.WaitGroup
}

type runnerState int

const (
	created runnerState = iota
	running
	// stopped: Shutdown has begun. A Runner does not start again: a
	// durabletask-go TaskWorker that has been through StopAndDrain abandons
	// every work item it is given afterwards.
	stopped
)

// NewRunner returns a Runner for the workers (typically one orchestration
// worker and one activity worker). Their Start methods must not be called:
// Runner polls them itself. For a graceful Shutdown, be must be a [Gate] and
// the workers must be built on it; a Gate serves a single Runner.
func NewRunner(be dtbackend.Backend, log *slog.Logger, workers ...dtbackend.TaskWorker) *Runner {
	r := &Runner{be: be, workers: workers, log: log}
	if g, ok := be.(*Gate); ok {
		g.claim()
		r.gate = g
	}
	return r
}

// Start creates the task hub if needed, starts the backend and begins
// polling. A Runner starts once; after Shutdown, build a new one.
func (r *Runner) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case running:
		return errors.New("runner already started")
	case stopped:
		return errors.New("runner was shut down; build a new one")
	}
	if err := r.be.CreateTaskHub(ctx); err != nil && !errors.Is(err, dtbackend.ErrTaskHubExists) {
		return fmt.Errorf("create task hub: %w", err)
	}
	if err := r.be.Start(ctx); err != nil {
		return fmt.Errorf("start backend: %w", err)
	}
	// The loops and the work outlive ctx's caller: Shutdown ends them.
	base := context.WithoutCancel(ctx)
	stop, stopLoops := context.WithCancel(base)
	work, cancelWork := context.WithCancel(base)
	r.stopLoops, r.cancelWork = stopLoops, cancelWork
	for _, w := range r.workers {
		r.loops.Add(1)
		go r.poll(stop, work, w)
	}
	r.state = running
	return nil
}

// poll calls w.ProcessNext until stop ends. The fetched work runs on work.
func (r *Runner) poll(stop, work context.Context, w dtbackend.TaskWorker) {
	defer r.loops.Done()
	idle := time.Duration(0)
	for stop.Err() == nil {
		ok, err := w.ProcessNext(work)
		switch {
		case stop.Err() != nil:
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
		case <-stop.Done():
			t.Stop()
			return
		}
	}
}

// Shutdown stops fetching work at once, lets the work items in progress
// finish until ctx ends, then stops the backend. Work still in progress when
// ctx ends is cancelled and handed back to be redelivered, and Shutdown
// returns an error saying how many items were cut short; it may take up to a
// few seconds after ctx ends for that work to be handed back. See Runner for
// the invariants.
func (r *Runner) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	if r.state != running {
		r.mu.Unlock()
		return nil
	}
	r.state = stopped
	stopLoops, cancelWork := r.stopLoops, r.cancelWork
	r.mu.Unlock()

	// Invariant 1: no new fetches.
	stopLoops()
	var admittedDone <-chan struct{}
	if r.gate != nil {
		admittedDone = r.gate.close()
	} else {
		cancelWork() // no Gate: the only way to end a waiting fetch
	}

	drained := make(chan struct{})
	go func() {
		defer close(drained)
		// Invariant 4: every loop has returned, so no ProcessNext is running
		// or will run; only then may the workers drain.
		r.loops.Wait()
		if admittedDone != nil {
			// Every item the Gate let through has completed or been handed
			// back. Waiting here first keeps StopAndDrain from abandoning an
			// item whose goroutine had not yet started (invariant 2).
			<-admittedDone
		}
		var wg sync.WaitGroup
		for _, w := range r.workers {
			wg.Add(1)
			go func() { defer wg.Done(); w.StopAndDrain() }()
		}
		wg.Wait()
	}()

	select {
	case <-drained:
		return r.finish(ctx, cancelWork, nil)
	case <-ctx.Done():
	}
	select {
	case <-drained: // both were ready
		return r.finish(ctx, cancelWork, nil)
	default:
	}

	// Invariant 3: the grace period is over; cut off what is left.
	if r.gate != nil {
		r.gate.expire()
	}
	cancelWork()
	t := time.NewTimer(handBackTimeout)
	defer t.Stop()
	select {
	case <-drained:
	case <-t.C:
		r.log.Warn("work cut off at shutdown is still running; its work items stay locked until the lock timeout")
	}
	var cut error
	if r.gate != nil {
		back, still := r.gate.cutShort()
		cut = fmt.Errorf("taskhub: %d work item(s) cut short at the shutdown deadline (%d handed back for redelivery, %d still running, redelivered when their locks expire): %w",
			back+still, back, still, ctx.Err())
	} else {
		cut = fmt.Errorf("taskhub: work in progress did not finish before the shutdown deadline: %w", ctx.Err())
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), handBackTimeout)
	defer cancel()
	return r.finish(sctx, cancelWork, cut)
}

// finish stops the backend (invariant 5).
func (r *Runner) finish(ctx context.Context, cancelWork context.CancelFunc, cut error) error {
	cancelWork() // releases the work context's resources
	var err error
	if e := r.be.Stop(ctx); e != nil {
		err = fmt.Errorf("stop backend: %w", e)
	}
	return errors.Join(cut, err)
}

// errGateClosed is what a closed Gate's fetches return. durabletask-go's
// workers treat it as "no work".
var errGateClosed = fmt.Errorf("%w: the runner is shutting down", dtbackend.ErrNoWorkItems)

// Gate is the backend a [Runner]'s task workers are built on. It delegates
// everything to the wrapped backend, except that the Runner can close it:
// from then on GetOrchestrationWorkItem and GetActivityWorkItem return
// ErrNoWorkItems at once, fetches waiting in the backend are cancelled, and
// an item such a fetch still returned is abandoned rather than processed.
// Closing does not touch the context work runs on.
//
// The Gate also tracks the work items it let through until they are
// completed or abandoned, so the Runner can wait for them. It refuses to
// complete a work item whose context is already cancelled (the work was cut
// short at the shutdown deadline, and an activity's result may be just its
// cancellation error), and abandons work items on a context of their own, so
// that a cut-off item is handed back at once instead of staying locked until
// the lock timeout.
type Gate struct {
	dtbackend.Backend

	stop   context.Context // cancelled when the gate closes
	stopFn context.CancelFunc

	mu         sync.Mutex
	claimed    bool
	closed     bool
	admitted   map[any]struct{} // work items let through, not yet completed or abandoned
	drained    chan struct{}    // made when the gate closes; closed once admitted is empty
	expired    bool             // the shutdown deadline has passed
	handedBack int              // admitted work items abandoned after the deadline
}

// NewGate wraps be. Give the Gate to exactly one Runner, as its backend, and
// build that Runner's task workers on it.
func NewGate(be dtbackend.Backend) *Gate {
	g := &Gate{Backend: be, admitted: map[any]struct{}{}}
	g.stop, g.stopFn = context.WithCancel(context.Background())
	return g
}

func (g *Gate) claim() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.claimed {
		panic("taskhub: a Gate serves a single Runner")
	}
	g.claimed = true
}

// close ends fetching and returns a channel closed once every admitted work
// item has been completed or abandoned.
func (g *Gate) close() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		g.closed = true
		g.stopFn()
		g.drained = make(chan struct{})
		if len(g.admitted) == 0 {
			close(g.drained)
		}
	}
	return g.drained
}

// expire records that the shutdown deadline has passed: work items
// abandoned from now on were cut short.
func (g *Gate) expire() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.expired = true
}

// cutShort reports the work items cut short at the deadline: those handed
// back since, and those still running. An item whose Complete was under way
// at the deadline and succeeded is neither.
func (g *Gate) cutShort() (handedBack, running int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.handedBack, len(g.admitted)
}

// beginFetch returns the context a fetch runs on: ctx, also cancelled when
// the gate closes. ok is false if the gate is closed already.
func (g *Gate) beginFetch(ctx context.Context) (fctx context.Context, end func(), ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, nil, false
	}
	fctx, cancel := context.WithCancel(ctx)
	unhook := context.AfterFunc(g.stop, cancel)
	return fctx, func() { unhook(); cancel() }, true
}

// admit records a fetched work item, unless the gate closed meanwhile.
func (g *Gate) admit(wi any) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.admitted[wi] = struct{}{}
	return true
}

// release forgets a completed or abandoned work item.
func (g *Gate) release(wi any, abandoned bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.admitted[wi]; !ok {
		return
	}
	delete(g.admitted, wi)
	if abandoned && g.expired {
		g.handedBack++
	}
	if len(g.admitted) == 0 && g.drained != nil {
		close(g.drained)
	}
}

// handBackContext is ctx without its cancellation, bounded by handBackTimeout.
func handBackContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), handBackTimeout)
}

func gatedFetch[W any](g *Gate, ctx context.Context, get func(context.Context) (*W, error), abandon func(context.Context, *W) error) (*W, error) {
	fctx, end, ok := g.beginFetch(ctx)
	if !ok {
		return nil, errGateClosed
	}
	wi, err := get(fctx)
	end()
	switch {
	case err != nil:
		if ctx.Err() == nil && g.stop.Err() != nil {
			return nil, errGateClosed
		}
		return nil, err
	case wi == nil:
		return nil, nil
	case g.admit(wi):
		return wi, nil
	}
	// The gate closed while the backend was locking this item for us.
	hctx, cancel := handBackContext(ctx)
	defer cancel()
	if err := abandon(hctx, wi); err != nil {
		return nil, fmt.Errorf("taskhub: hand back a work item fetched as the runner stopped: %w", err)
	}
	return nil, errGateClosed
}

// GetOrchestrationWorkItem implements backend.Backend; see Gate.
func (g *Gate) GetOrchestrationWorkItem(ctx context.Context) (*dtbackend.OrchestrationWorkItem, error) {
	return gatedFetch(g, ctx, g.Backend.GetOrchestrationWorkItem, g.Backend.AbandonOrchestrationWorkItem)
}

// GetActivityWorkItem implements backend.Backend; see Gate.
func (g *Gate) GetActivityWorkItem(ctx context.Context) (*dtbackend.ActivityWorkItem, error) {
	return gatedFetch(g, ctx, g.Backend.GetActivityWorkItem, g.Backend.AbandonActivityWorkItem)
}

// CompleteOrchestrationWorkItem implements backend.Backend. It refuses a work
// item whose context is cancelled: that work was cut short.
func (g *Gate) CompleteOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := g.Backend.CompleteOrchestrationWorkItem(ctx, wi); err != nil {
		return err
	}
	g.release(wi, false)
	return nil
}

// AbandonOrchestrationWorkItem implements backend.Backend. The hand-back is
// not cancelled with ctx.
func (g *Gate) AbandonOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	defer g.release(wi, true)
	hctx, cancel := handBackContext(ctx)
	defer cancel()
	return g.Backend.AbandonOrchestrationWorkItem(hctx, wi)
}

// CompleteActivityWorkItem implements backend.Backend. It refuses a work item
// whose context is cancelled: that work was cut short, and its result may be
// just the cancellation.
func (g *Gate) CompleteActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := g.Backend.CompleteActivityWorkItem(ctx, wi); err != nil {
		return err
	}
	g.release(wi, false)
	return nil
}

// AbandonActivityWorkItem implements backend.Backend. The hand-back is not
// cancelled with ctx.
func (g *Gate) AbandonActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem) error {
	defer g.release(wi, true)
	hctx, cancel := handBackContext(ctx)
	defer cancel()
	return g.Backend.AbandonActivityWorkItem(hctx, wi)
}
