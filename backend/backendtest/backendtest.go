// Package backendtest is the conformance suite every dronehub task hub
// backend runs: the same assertions against SQLite, Azure Storage and any
// backend that follows.
//
// durabletask-go's own backend tests import its internal packages, so they
// cannot be reused from outside; this suite drives a backend through public
// API only, in two ways:
//
//   - directly, through the backend methods, with a small in-test driver that
//     plays the part of the worker one step at a time (lifecycle.go), so each
//     step of the contract can be asserted on;
//   - end to end, with durabletask-go's real orchestration and activity
//     workers (e2e.go).
//
// A backend's test calls [Run] with a [Factory] and, for its domain store,
// [RunFleet]. Options declare how the factory configures its backends, for
// the cases that depend on it (they are skipped when it is not declared):
//
//	func TestConformance(t *testing.T) {
//		backendtest.Run(t, newBackend, // opened with a 2 s lock and a limit of 3
//			backendtest.LockTimeout(2*time.Second), backendtest.MaxDequeueCount(3))
//	}
//
// Every case is a subtest with its own fresh backend and runs in parallel with
// the others; limit that with go test -parallel for backends that share one
// storage service.
package backendtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

// Factory returns a fresh, empty, already-created backend. It registers its
// own cleanup (closing the backend, removing its storage) with t.Cleanup.
type Factory func(t *testing.T) taskhub.Backend

// Timing bounds. Waits are polls against a deadline, never fixed sleeps.
const (
	// caseTimeout bounds one case from start to finish.
	caseTimeout = 30 * time.Second
	// workWait is how long a work item that must exist may take to show up.
	workWait = 5 * time.Second
	// noWorkWait is how long a fetch that must come back empty is given.
	noWorkWait = 200 * time.Millisecond
	// settleTimeout bounds waiting for an instance to reach a status.
	settleTimeout = 15 * time.Second
	// pollEvery is the polling period of eventually.
	pollEvery = 10 * time.Millisecond
)

// testCase is one named conformance case.
type testCase struct {
	name string
	f    func(t *testing.T, ctx context.Context, be taskhub.Backend)
}

// Option declares how a Factory configures the backends it opens.
type Option func(*config)

type config struct {
	lockTimeout     time.Duration
	maxDequeueCount int
}

// LockTimeout declares the work-item lock timeout of the factory's backends.
// The lock cases hold work items and run an activity for several times this
// long (5x for the activity), so it must be at most maxCaseLock (3 s); they
// are skipped when it is longer or not declared.
func LockTimeout(d time.Duration) Option { return func(c *config) { c.lockTimeout = d } }

// MaxDequeueCount declares the dead-letter limit of the factory's backends:
// how many failed deliveries set a message aside. The cases that count
// deliveries are skipped when it is not declared; keep it small (2-4), every
// counted failure may be delayed by the backend's retry back-off.
func MaxDequeueCount(n int) Option { return func(c *config) { c.maxDequeueCount = n } }

// maxCaseLock bounds a declared lock timeout the lock cases accept.
const maxCaseLock = 3 * time.Second

// Run runs the task hub conformance suite against backends made by f.
func Run(t *testing.T, f Factory, opts ...Option) {
	t.Helper()
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	cases := slices.Concat(lifecycleCases(), e2eCases(), queryCases(), lockCases(cfg), deadLetterCases(cfg))
	cases = append(cases, unstartedCases()...)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			be := f(t)
			ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
			t.Cleanup(cancel)
			tc.f(t, ctx, be)
		})
	}
}

// eventually polls cond until it holds, failing the test if it does not
// within timeout. msg, if given, is formatted with fmt.Sprint into the
// failure.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, msg ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %s", timeout, fmt.Sprint(msg...))
		}
		<-tick.C
	}
}

// discardLogger is the durabletask-go logger every case uses.
func discardLogger() backend.Logger {
	return taskhub.Logger(slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// startWorker runs durabletask-go's task hub worker on be with the
// orchestrators and activities in r, until the test ends.
func startWorker(t *testing.T, be backend.Backend, r *task.TaskRegistry) {
	t.Helper()
	startWorkerWith(t, be, task.NewTaskExecutor(r))
}

// startWorkerWith is startWorker with the given executor.
func startWorkerWith(t *testing.T, be backend.Backend, exec backend.Executor) {
	t.Helper()
	logger := discardLogger()
	gate := taskhub.NewGate(be)
	ow := backend.NewOrchestrationWorker(gate, exec, logger, backend.WithMaxParallelism(4))
	aw := backend.NewActivityTaskWorker(gate, exec, logger, backend.WithMaxParallelism(4))
	// taskhub.Runner, not backend.NewTaskHubWorker: the latter's shutdown
	// races with its own poll loop (upstream microsoft/durabletask-go#125).
	w := taskhub.NewRunner(gate, slog.New(slog.NewTextHandler(io.Discard, nil)), ow, aw)
	if err := w.Start(context.Background()); err != nil {
		t.Fatalf("start worker: %v", err)
	}
	// Cleanups run last-in first-out: the worker stops before the factory's
	// cleanup closes the backend.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.Shutdown(ctx); err != nil {
			t.Errorf("shut down worker: %v", err)
		}
	})
}

// metadata returns an instance's metadata, failing the test on error.
func metadata(t *testing.T, ctx context.Context, be backend.Backend, id api.InstanceID) *api.OrchestrationMetadata {
	t.Helper()
	md, err := be.GetOrchestrationMetadata(ctx, id)
	if err != nil {
		t.Fatalf("GetOrchestrationMetadata(%s): %v", id, err)
	}
	if md == nil {
		t.Fatalf("GetOrchestrationMetadata(%s) returned nil metadata and nil error", id)
	}
	return md
}

// waitForStatus polls an instance's metadata until its status is one of want.
func waitForStatus(t *testing.T, ctx context.Context, be backend.Backend, id api.InstanceID, want ...api.OrchestrationStatus) *api.OrchestrationMetadata {
	t.Helper()
	var md *api.OrchestrationMetadata
	var lastErr error
	deadline := time.Now().Add(settleTimeout)
	for {
		md, lastErr = be.GetOrchestrationMetadata(ctx, id)
		if lastErr == nil && md != nil && slices.Contains(want, md.RuntimeStatus) {
			return md
		}
		if time.Now().After(deadline) {
			// The message is built now, from the last answer.
			t.Fatalf("condition not met within %s: instance %s to reach %s (last: %s, err %v)", settleTimeout, id, statusNames(want), describe(md), lastErr)
		}
		time.Sleep(pollEvery)
	}
}

// waitForCompletion polls until an instance has finished, whatever the outcome.
func waitForCompletion(t *testing.T, ctx context.Context, be backend.Backend, id api.InstanceID) *api.OrchestrationMetadata {
	t.Helper()
	return waitForStatus(t, ctx, be, id,
		api.RUNTIME_STATUS_COMPLETED, api.RUNTIME_STATUS_FAILED, api.RUNTIME_STATUS_TERMINATED, api.RUNTIME_STATUS_CANCELED)
}

// requireCompleted asserts md is Completed with the given serialized output.
func requireCompleted(t *testing.T, md *api.OrchestrationMetadata, output string) {
	t.Helper()
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("instance %s: status %s, want Completed (failure: %v)", md.InstanceID, taskhub.StatusName(md.RuntimeStatus), md.FailureDetails)
	}
	if md.SerializedOutput != output {
		t.Fatalf("instance %s: output %s, want %s", md.InstanceID, abbreviate(md.SerializedOutput), abbreviate(output))
	}
}

// history returns an instance's stored history, read the way the worker reads
// it (GetOrchestrationRuntimeState with no new events).
func history(t *testing.T, ctx context.Context, be backend.Backend, id api.InstanceID) []*backend.HistoryEvent {
	t.Helper()
	state, err := be.GetOrchestrationRuntimeState(ctx, &backend.OrchestrationWorkItem{InstanceID: id})
	if err != nil {
		t.Fatalf("GetOrchestrationRuntimeState(%s): %v", id, err)
	}
	return state.OldEvents()
}

// count returns how many events satisfy match.
func count(events []*backend.HistoryEvent, match func(*backend.HistoryEvent) bool) int {
	n := 0
	for _, e := range events {
		if match(e) {
			n++
		}
	}
	return n
}

// first returns the first event that satisfies match, or nil.
func first(events []*backend.HistoryEvent, match func(*backend.HistoryEvent) bool) *backend.HistoryEvent {
	for _, e := range events {
		if match(e) {
			return e
		}
	}
	return nil
}

// Event predicates.
func isStarted(e *backend.HistoryEvent) bool       { return e.GetExecutionStarted() != nil }
func isCompleted(e *backend.HistoryEvent) bool     { return e.GetExecutionCompleted() != nil }
func isTaskScheduled(e *backend.HistoryEvent) bool { return e.GetTaskScheduled() != nil }
func isTaskCompleted(e *backend.HistoryEvent) bool { return e.GetTaskCompleted() != nil }
func isTimerCreated(e *backend.HistoryEvent) bool  { return e.GetTimerCreated() != nil }
func isTimerFired(e *backend.HistoryEvent) bool    { return e.GetTimerFired() != nil }
func isEventRaised(e *backend.HistoryEvent) bool   { return e.GetEventRaised() != nil }

// summary lists event kinds, for failure messages.
func summary(events []*backend.HistoryEvent) string {
	kinds := make([]string, len(events))
	for i, e := range events {
		kinds[i] = fmt.Sprintf("%T", e.GetEventType())
	}
	return fmt.Sprint(kinds)
}

func describe(md *api.OrchestrationMetadata) string {
	if md == nil {
		return "no metadata"
	}
	return fmt.Sprintf("%s output=%s", taskhub.StatusName(md.RuntimeStatus), abbreviate(md.SerializedOutput))
}

func statusNames(ss []api.OrchestrationStatus) string {
	names := make([]string, len(ss))
	for i, s := range ss {
		names[i] = taskhub.StatusName(s)
	}
	return fmt.Sprint(names)
}

func abbreviate(s string) string {
	if len(s) > 80 {
		return fmt.Sprintf("%s...(%d bytes)", s[:80], len(s))
	}
	return s
}

// requireNoWork asserts an error from a Get*WorkItem call that had to come
// back empty: nil item and an error wrapping ErrNoWorkItems.
func requireNoWork(t *testing.T, what string, item any, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: got work item %v, want none", what, item)
	}
	if !errors.Is(err, backend.ErrNoWorkItems) {
		t.Fatalf("%s: error %v does not wrap backend.ErrNoWorkItems", what, err)
	}
}

// echo is an activity that returns its string input.
func echo(ctx task.ActivityContext) (any, error) {
	var s string
	if err := ctx.GetInput(&s); err != nil {
		return nil, err
	}
	return s, nil
}
