package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	dtsqlite "github.com/microsoft/durabletask-go/backend/sqlite"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/backend"
	"github.com/dronehub/dronehub/taskhub"
)

// shutdownGrace bounds an engine's shutdown, and the deletion of its hub.
const shutdownGrace = 30 * time.Second

// Engine is an open engine: a worker running the bench's orchestrations and
// activities on one backend, and a client to schedule them. Open one with
// OpenEngine, run workloads one at a time with Run, and Close it.
type Engine struct {
	name    string
	opts    Options
	runID   string
	storage string
	// stack is whether the engine's own task-hub stack (worker and client
	// below) is open: not when it was opened for W3 and W4 only.
	stack bool

	// counter counts the worker backend's storage requests; nil when the
	// backend does not count them.
	counter taskhub.RequestCounter
	client  dtbackend.TaskHubClient
	// local schedules through the worker's own backend, as the worker's
	// HTTP API does (the solo workloads); the same as client where the
	// client shares the worker's backend.
	local dtbackend.TaskHubClient
	// cleanup runs last-in first-out at Close: the runner's shutdown, the
	// client's backend, the hub's deletion, the worker's backend, files.
	cleanup []func(context.Context) error

	rec recorder

	mu     sync.Mutex
	trk    *tracker // the orchestrations awaited now
	seq    int      // instance ids handed out
	closed bool
}

// OpenEngine opens the named engine with opts' concurrency and storage,
// starts its worker and warms it up with one orchestration of each shape.
// opts.Engines is ignored. When opts.Workloads names only W3, W4 and
// Ceiling, which run a dronehub worker of their own on fresh storage or
// none at all, the engine opens no worker (and Run refuses the other
// workloads).
func OpenEngine(ctx context.Context, name string, opts Options) (*Engine, error) {
	// Ceiling needs no task-hub stack either: without it, the stack is
	// needed as needsTaskHub says, if anything is left to run.
	rest := slices.DeleteFunc(slices.Clone(opts.Workloads), isCeiling)
	stack := needsTaskHub(rest) && (len(rest) > 0 || len(opts.Workloads) == 0)
	ceilingOnly := len(opts.Workloads) > 0 && len(rest) == 0
	if ceilingOnly && name != DronehubAzure {
		return nil, fmt.Errorf("open engine %s: %s runs on %s only: it measures Azure Storage", name, Ceiling, DronehubAzure)
	}
	opts.Engines, opts.Workloads = []string{name}, nil
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	e := &Engine{name: name, opts: opts, runID: randomHex(4), stack: stack}
	began := time.Now()
	e.progress(Progress{Engine: name})
	var err error
	if stack {
		err = e.open(ctx)
		if err == nil {
			err = e.warmUp(ctx, began)
		}
	} else {
		err = e.openSimOnly()
		if err == nil && ceilingOnly {
			e.storage, err = ceilingStorage(e.opts.AzureConnectionString)
		}
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open engine %s: %w", name, err), e.Close(context.WithoutCancel(ctx)))
	}
	return e, nil
}

// Name returns the engine's name.
func (e *Engine) Name() string { return e.name }

// Storage describes the storage the engine runs on, without secrets.
func (e *Engine) Storage() string { return e.storage }

// Close stops the worker, deletes the engine's hub or files and releases its
// storage. It is safe to call more than once.
func (e *Engine) Close(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	var errs []error
	for i := len(e.cleanup) - 1; i >= 0; i-- {
		if err := e.cleanup[i](ctx); err != nil {
			errs = append(errs, err)
		}
	}
	e.cleanup = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close engine %s: %w", e.name, err)
	}
	return nil
}

func (e *Engine) onClose(f func(context.Context) error) { e.cleanup = append(e.cleanup, f) }

// open builds the engine's backends, worker and client.
func (e *Engine) open(ctx context.Context) error {
	log := e.opts.Logger
	var (
		be, clientBE dtbackend.Backend
		dronehub     bool
		openClient   func() (dtbackend.Backend, error) // after the hub exists
	)
	switch e.name {
	case DronehubSQLite:
		path, err := e.tempFile()
		if err != nil {
			return err
		}
		hub, err := backend.Open(ctx, "sqlite:"+path, backend.Options{Logger: log})
		if err != nil {
			return fmt.Errorf("open SQLite hub: %w", err)
		}
		e.onClose(func(context.Context) error { return hub.Close() })
		// The client shares the worker's backend, as the worker's HTTP API
		// does: its starts wake the worker's fetch at once. SQLite counts
		// no requests, so nothing is lost by sharing.
		be, clientBE, dronehub, e.storage = hub.Backend, hub.Backend, true, hub.Description
	case DronehubAzure:
		if kind, err := backend.Kind(e.opts.AzureConnectionString); err != nil {
			return fmt.Errorf("Options.AzureConnectionString: %w", err)
		} else if kind != "azurestorage" {
			return fmt.Errorf("Options.AzureConnectionString names a %s hub, not Azure Storage", kind)
		}
		name := "bench" + e.runID
		bopts := backend.Options{HubName: name, Logger: log}
		hub, err := backend.Open(ctx, e.opts.AzureConnectionString, bopts)
		if err != nil {
			return fmt.Errorf("open Azure Storage hub %s: %w", name, err)
		}
		e.onClose(func(context.Context) error { return hub.Close() })
		e.onClose(func(ctx context.Context) error {
			if err := hub.Backend.DeleteTaskHub(ctx); err != nil && !errors.Is(err, dtbackend.ErrTaskHubNotFound) {
				return fmt.Errorf("delete hub %s: %w", name, err)
			}
			return nil
		})
		be, dronehub, e.storage = hub.Backend, true, hub.Description
		// The client has a backend (and request counter) of its own, so
		// that only the worker's requests are counted. Like a client in
		// another process, its starts reach the worker by polling.
		openClient = func() (dtbackend.Backend, error) {
			ch, err := backend.Open(ctx, e.opts.AzureConnectionString, bopts)
			if err != nil {
				return nil, fmt.Errorf("open the client's backend: %w", err)
			}
			e.onClose(func(context.Context) error { return ch.Close() })
			return ch.Backend, nil
		}
	case DtgoSQLiteFile:
		path, err := e.tempFile()
		if err != nil {
			return err
		}
		be = dtsqlite.NewSqliteBackend(dtsqlite.NewSqliteOptions(path), taskhub.Logger(log))
		clientBE, e.storage = be, "durabletask-go sqlite:"+path
	case DtgoSQLiteMemory:
		be = dtsqlite.NewSqliteBackend(dtsqlite.NewSqliteOptions(""), taskhub.Logger(log))
		clientBE, e.storage = be, "durabletask-go sqlite in memory"
	default:
		return fmt.Errorf("unknown engine %q", e.name)
	}
	if rc, ok := be.(taskhub.RequestCounter); ok {
		e.counter = rc
	}

	reg, err := e.registry()
	if err != nil {
		return err
	}
	var exec dtbackend.Executor = task.NewTaskExecutor(reg)
	inner := be
	if dronehub {
		// What dronehub's worker builds on every backend (worker.New).
		exec, inner = taskhub.TerminateExecutor(exec), taskhub.TerminateBackend(be)
	}
	gate := taskhub.NewGate(observer{Backend: inner, done: e.completed})
	dl := taskhub.Logger(log)
	par := dtbackend.WithMaxParallelism(int32(e.opts.Concurrency))
	runner := taskhub.NewRunner(gate, log,
		dtbackend.NewOrchestrationWorker(gate, exec, dl, par),
		dtbackend.NewActivityTaskWorker(gate, exec, dl, par))
	if err := runner.Start(ctx); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	if openClient != nil {
		if clientBE, err = openClient(); err != nil {
			// The runner's shutdown is not registered yet: stop it here.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
			defer cancel()
			return errors.Join(err, runner.Shutdown(sctx))
		}
	}
	e.onClose(func(ctx context.Context) error {
		if err := runner.Shutdown(ctx); err != nil {
			return fmt.Errorf("stop worker: %w", err)
		}
		return nil
	})
	e.client = dtbackend.NewTaskHubClient(clientBE)
	e.local = dtbackend.NewTaskHubClient(be)
	return nil
}

// tempFile makes a directory for the engine's SQLite file, removed at Close,
// and returns the file's path.
func (e *Engine) tempFile() (string, error) {
	dir, err := os.MkdirTemp(e.opts.TempDir, "dronehub-bench-")
	if err != nil {
		return "", fmt.Errorf("make a directory for the SQLite file: %w", err)
	}
	e.onClose(func(context.Context) error { return os.RemoveAll(dir) })
	return filepath.Join(dir, "bench.db"), nil
}

// warmUp runs one orchestration of each shape, so that the workloads find
// connections open, leases held and code paths warm.
func (e *Engine) warmUp(ctx context.Context, began time.Time) error {
	ids := e.newIDs("warm", 2)
	trk := e.track(ids)
	defer e.track(nil)
	for i, s := range []struct {
		orchestrator string
		width        int
	}{{sequenceName, SequenceSteps}, {fanOutName, e.opts.W2Fanout}} {
		if err := e.schedule(ctx, e.client, ids[i], s.orchestrator, s.width); err != nil {
			return err
		}
	}
	return e.await(ctx, trk, nil, func() {
		e.progress(Progress{Engine: e.name, Done: trk.count(), Total: len(ids), Elapsed: time.Since(began)})
	})
}

// newIDs returns n fresh instance ids for workload.
func (e *Engine) newIDs(workload string, n int) []string {
	e.mu.Lock()
	first := e.seq
	e.seq += n
	e.mu.Unlock()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-%s-%s-%d", e.runID, workload, first+i)
	}
	return ids
}

// schedule starts one orchestration through c.
func (e *Engine) schedule(ctx context.Context, c dtbackend.TaskHubClient, id, orchestrator string, width int) error {
	if _, err := c.ScheduleNewOrchestration(ctx, orchestrator, api.WithInstanceID(api.InstanceID(id)), api.WithInput(width)); err != nil {
		return fmt.Errorf("schedule %s: %w", id, err)
	}
	return nil
}

// track makes ids the orchestrations awaited now (nil: none).
func (e *Engine) track(ids []string) *tracker {
	var t *tracker
	if ids != nil {
		t = newTracker(ids)
	}
	e.mu.Lock()
	e.trk = t
	e.mu.Unlock()
	return t
}

// completed is called by the observer when the worker has committed an
// orchestration's completion.
func (e *Engine) completed(id string, status api.OrchestrationStatus, at time.Time) {
	e.mu.Lock()
	t := e.trk
	e.mu.Unlock()
	if t != nil {
		t.complete(id, status, at)
	}
}

// await waits until every orchestration of t has completed, sched (if not
// nil) has delivered a nil error, or ctx ends; tick runs a few times a
// second meanwhile.
func (e *Engine) await(ctx context.Context, t *tracker, sched <-chan error, tick func()) error {
	ticker := time.NewTicker(250 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-t.all:
			return t.err()
		case err := <-sched:
			if err != nil {
				return err
			}
			sched = nil
		case <-ticker.C:
			tick()
		case <-ctx.Done():
			return fmt.Errorf("%d of %d orchestrations completed: %w", t.count(), t.total, ctx.Err())
		}
	}
}

func (e *Engine) progress(p Progress) {
	if e.opts.Progress != nil {
		e.opts.Progress(p)
	}
}

// observer sees the worker commit orchestration completions: the moment an
// orchestration is completed for its client.
type observer struct {
	dtbackend.Backend
	done func(id string, status api.OrchestrationStatus, at time.Time)
}

// CompleteOrchestrationWorkItem implements backend.Backend.
func (o observer) CompleteOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	if err := o.Backend.CompleteOrchestrationWorkItem(ctx, wi); err != nil {
		return err
	}
	if wi.State != nil && wi.State.IsCompleted() {
		o.done(string(wi.InstanceID), wi.State.RuntimeStatus(), time.Now())
	}
	return nil
}

// tracker awaits a set of orchestrations.
type tracker struct {
	total int
	all   chan struct{} // closed when every one has completed

	mu     sync.Mutex
	done   map[string]time.Time // by id; zero until completed
	left   int
	failed []string
}

func newTracker(ids []string) *tracker {
	t := &tracker{total: len(ids), all: make(chan struct{}), done: make(map[string]time.Time, len(ids)), left: len(ids)}
	for _, id := range ids {
		t.done[id] = time.Time{}
	}
	if t.left == 0 {
		close(t.all)
	}
	return t
}

func (t *tracker) complete(id string, status api.OrchestrationStatus, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	prev, ok := t.done[id]
	if !ok || !prev.IsZero() {
		return
	}
	t.done[id] = at
	if status != api.RUNTIME_STATUS_COMPLETED {
		t.failed = append(t.failed, fmt.Sprintf("%s ended %s", id, status.String()))
	}
	if t.left--; t.left == 0 {
		close(t.all)
	}
}

// count is the number of orchestrations completed so far.
func (t *tracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.total - t.left
}

// at is when id completed (zero if it has not).
func (t *tracker) at(id string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.done[id]
}

// last is when the last orchestration completed.
func (t *tracker) last() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	var l time.Time
	for _, at := range t.done {
		if at.After(l) {
			l = at
		}
	}
	return l
}

func (t *tracker) err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.failed) == 0 {
		return nil
	}
	const show = 3
	f := t.failed
	more := ""
	if len(f) > show {
		f, more = f[:show], fmt.Sprintf(" and %d more", len(t.failed)-show)
	}
	return fmt.Errorf("%d of %d orchestrations did not complete successfully: %v%s", len(t.failed), t.total, f, more)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}
