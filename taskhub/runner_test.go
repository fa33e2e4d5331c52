package taskhub_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/backend/sqlite"
	"github.com/dronehub/dronehub/taskhub"
)

// probe sits between the Gate and the SQLite backend. It tells the tests
// when Shutdown has begun (a fetch ended because its context was cancelled),
// counts fetches, and can hold a fetch or a commit.
type probe struct {
	dtbackend.Backend
	fetching  atomic.Int32 // fetches in progress
	lateFetch atomic.Int32 // fetches begun after stopped closed
	stopped   chan struct{}
	stopOnce  sync.Once
	// Hooks, run after the backend returned a work item / before a commit.
	afterActivityFetch func(*dtbackend.ActivityWorkItem)
	beforeCommit       func(*dtbackend.OrchestrationWorkItem)
}

func newProbe() *probe { return &probe{stopped: make(chan struct{})} }

func (p *probe) fetchBegins() {
	p.fetching.Add(1)
	select {
	case <-p.stopped:
		p.lateFetch.Add(1)
	default:
	}
}

func (p *probe) fetchEnds(ctx context.Context) {
	p.fetching.Add(-1)
	if ctx.Err() != nil {
		p.stopOnce.Do(func() { close(p.stopped) })
	}
}

func (p *probe) GetOrchestrationWorkItem(ctx context.Context) (*dtbackend.OrchestrationWorkItem, error) {
	p.fetchBegins()
	defer p.fetchEnds(ctx)
	return p.Backend.GetOrchestrationWorkItem(ctx)
}

func (p *probe) GetActivityWorkItem(ctx context.Context) (*dtbackend.ActivityWorkItem, error) {
	p.fetchBegins()
	defer p.fetchEnds(ctx)
	wi, err := p.Backend.GetActivityWorkItem(ctx)
	if err == nil && p.afterActivityFetch != nil {
		p.afterActivityFetch(wi)
	}
	return wi, err
}

func (p *probe) CompleteOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	if p.beforeCommit != nil {
		p.beforeCommit(wi)
	}
	return p.Backend.CompleteOrchestrationWorkItem(ctx, wi)
}

// waitStopped blocks until Shutdown has begun, or fails after a minute.
func (p *probe) waitStopped() error {
	select {
	case <-p.stopped:
		return nil
	case <-time.After(time.Minute):
		return errors.New("shutdown never began")
	}
}

// host is a Runner on a SQLite file, built as package worker builds it.
type host struct {
	be     *sqlite.Backend
	probe  *probe
	runner *taskhub.Runner
	client dtbackend.TaskHubClient
}

func startHost(t *testing.T, path string, lock time.Duration, reg *task.TaskRegistry, p *probe) *host {
	t.Helper()
	ctx := context.Background()
	log := testLogger()
	be, err := sqlite.Open(ctx, sqlite.Options{Path: path, LockTimeout: lock, PollInterval: 50 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	p.Backend = be
	g := taskhub.NewGate(p)
	exec := task.NewTaskExecutor(reg)
	ow := dtbackend.NewOrchestrationWorker(g, exec, taskhub.Logger(log), dtbackend.WithMaxParallelism(2))
	aw := dtbackend.NewActivityTaskWorker(g, exec, taskhub.Logger(log), dtbackend.WithMaxParallelism(2))
	r := taskhub.NewRunner(g, log, ow, aw)
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		r.Shutdown(ctx)
	})
	return &host{be: be, probe: p, runner: r, client: dtbackend.NewTaskHubClient(be)}
}

// shutdownWhenIdle waits until both workers wait in a fetch (so Shutdown
// cancelling them is observed), then starts Shutdown.
func (h *host) shutdownWhenIdle(t *testing.T, ctx context.Context) <-chan error {
	t.Helper()
	eventually(t, 30*time.Second, "both workers to wait for work", func() bool { return h.probe.fetching.Load() == 2 })
	done := make(chan error, 1)
	go func() { done <- h.runner.Shutdown(ctx) }()
	return done
}

func (h *host) schedule(t *testing.T, name string, id api.InstanceID) {
	t.Helper()
	if _, err := h.client.ScheduleNewOrchestration(context.Background(), name, api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
}

func (h *host) status(t *testing.T, id api.InstanceID) api.OrchestrationStatus {
	t.Helper()
	md, err := h.be.GetOrchestrationMetadata(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return md.RuntimeStatus
}

// awaitOutput waits for id to complete and checks its output.
func awaitOutput(t *testing.T, c dtbackend.TaskHubClient, id api.InstanceID, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	md, err := c.WaitForOrchestrationCompletion(ctx, id)
	if err != nil {
		t.Fatalf("waiting for %s to complete: %v", id, err)
	}
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || md.SerializedOutput != want {
		t.Fatalf("instance %s: %v with output %s, want COMPLETED with %s (failure: %v)", id, md.RuntimeStatus, md.SerializedOutput, want, md.FailureDetails)
	}
}

// callOne registers "Orch", which returns what activity "Act" returns.
func callOne(act func(task.ActivityContext) (any, error)) *task.TaskRegistry {
	reg := task.NewTaskRegistry()
	reg.AddOrchestratorN("Orch", func(ctx *task.OrchestrationContext) (any, error) {
		var out string
		err := ctx.CallActivity("Act").Await(&out)
		return out, err
	})
	reg.AddActivityN("Act", act)
	return reg
}

// An activity that finishes after Shutdown began, inside the grace period,
// delivers its result and is not run again.
func TestShutdownLetsRunningActivityFinish(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "hub.db")
	p := newProbe()
	started := make(chan struct{}, 8)
	var runs atomic.Int32
	reg := callOne(func(ctx task.ActivityContext) (any, error) {
		if runs.Add(1) == 1 {
			started <- struct{}{}
			if err := p.waitStopped(); err != nil {
				return nil, err
			}
		}
		return "finished", nil
	})
	h := startHost(t, path, 5*time.Second, reg, p)
	h.schedule(t, "Orch", "a")
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := <-h.shutdownWhenIdle(t, ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	h2 := startHost(t, path, 5*time.Second, reg, newProbe())
	awaitOutput(t, h2.client, "a", `"finished"`)
	if n := runs.Load(); n != 1 {
		t.Fatalf("the activity ran %d times, want once: its result was lost at shutdown", n)
	}
}

// An orchestration work item being committed when Shutdown begins commits.
func TestShutdownLetsOrchestrationCommit(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "hub.db")
	p := newProbe()
	entered := make(chan struct{})
	var once sync.Once
	p.beforeCommit = func(*dtbackend.OrchestrationWorkItem) {
		once.Do(func() {
			close(entered)
			p.waitStopped()
		})
	}
	reg := task.NewTaskRegistry()
	reg.AddOrchestratorN("Orch", func(ctx *task.OrchestrationContext) (any, error) { return "done", nil })
	h := startHost(t, path, 5*time.Second, reg, p)
	h.schedule(t, "Orch", "o")
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := <-h.shutdownWhenIdle(t, ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if s := h.status(t, "o"); s != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("after shutdown the instance is %v, want COMPLETED: its commit was cut off", s)
	}
}

// Work still running at the grace deadline is cancelled, Shutdown says so,
// and the work item is handed back: a new runner gets it long before the
// lock would expire, and the cancelled attempt's failure is not recorded.
func TestShutdownCutsOffWorkAtDeadline(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "hub.db")
	p := newProbe()
	started := make(chan struct{}, 8)
	var runs atomic.Int32
	reg := callOne(func(ctx task.ActivityContext) (any, error) {
		if runs.Add(1) == 1 {
			started <- struct{}{}
			<-ctx.Context().Done()
			return nil, ctx.Context().Err()
		}
		return "second try", nil
	})
	const lock = 10 * time.Minute // redelivery within the test's deadlines means a hand-back
	h := startHost(t, path, lock, reg, p)
	h.schedule(t, "Orch", "c")
	<-started
	ctx, deadline := context.WithCancel(context.Background())
	done := h.shutdownWhenIdle(t, ctx)
	if err := p.waitStopped(); err != nil {
		t.Fatal(err)
	}
	deadline()
	err := <-done
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "1 work item(s) cut short at the shutdown deadline (1 handed back") {
		t.Fatalf("Shutdown: %v; want an error reporting 1 work item cut short, wrapping the deadline", err)
	}
	h2 := startHost(t, path, lock, reg, newProbe())
	awaitOutput(t, h2.client, "c", `"second try"`)
	if n := runs.Load(); n != 2 {
		t.Fatalf("the activity ran %d times, want twice (cut off, then redelivered)", n)
	}
}

// Once Shutdown has begun, nothing new is fetched: not an instance created
// after that, nor the orchestration work that an activity finishing during
// the grace period produces. The next runner picks both up.
func TestShutdownFetchesNothingNew(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "hub.db")
	p := newProbe()
	started := make(chan struct{}, 8)
	release := make(chan struct{})
	var runs atomic.Int32
	reg := callOne(func(ctx task.ActivityContext) (any, error) {
		if runs.Add(1) == 1 {
			started <- struct{}{}
			<-release
		}
		return "ok", nil
	})
	h := startHost(t, path, 5*time.Second, reg, p)
	h.schedule(t, "Orch", "first")
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := h.shutdownWhenIdle(t, ctx)
	if err := p.waitStopped(); err != nil {
		t.Fatal(err)
	}
	h.schedule(t, "Orch", "late")
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := p.lateFetch.Load(); n != 0 {
		t.Errorf("%d fetches began after Shutdown did", n)
	}
	if s := h.status(t, "late"); s != api.RUNTIME_STATUS_PENDING {
		t.Errorf("instance created during shutdown is %v, want PENDING (never run)", s)
	}
	if s := h.status(t, "first"); s != api.RUNTIME_STATUS_RUNNING {
		t.Errorf("instance whose activity finished during shutdown is %v, want RUNNING (its result not yet processed)", s)
	}
	if err := h.runner.Start(context.Background()); err == nil {
		t.Error("a Runner started again after Shutdown")
	}
	h2 := startHost(t, path, 5*time.Second, reg, newProbe())
	awaitOutput(t, h2.client, "first", `"ok"`)
	awaitOutput(t, h2.client, "late", `"ok"`)
	if n := runs.Load(); n != 2 {
		t.Fatalf("the activity ran %d times, want once per instance", n)
	}
}

// A work item the backend returns to a fetch as Shutdown begins is handed
// back, not processed.
func TestShutdownHandsBackItemFetchedDuringShutdown(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "hub.db")
	p := newProbe()
	held := make(chan struct{})
	var once sync.Once
	p.afterActivityFetch = func(*dtbackend.ActivityWorkItem) {
		once.Do(func() {
			close(held)
			p.waitStopped()
		})
	}
	var runs atomic.Int32
	reg := callOne(func(task.ActivityContext) (any, error) {
		runs.Add(1)
		return "ok", nil
	})
	const lock = 10 * time.Minute
	h := startHost(t, path, lock, reg, p)
	h.schedule(t, "Orch", "h")
	<-held
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := <-h.shutdownWhenIdle(t, ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := runs.Load(); n != 0 {
		t.Fatalf("the activity fetched as Shutdown began ran %d times, want 0", n)
	}
	h2 := startHost(t, path, lock, reg, newProbe())
	awaitOutput(t, h2.client, "h", `"ok"`)
	if n := runs.Load(); n != 1 {
		t.Fatalf("the activity ran %d times, want once", n)
	}
}

// testLogger discards logs unless DRONEHUB_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("DRONEHUB_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
