package azurestorage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/internal/azurite"
	"github.com/dronehub/dronehub/taskhub"
)

// lockedBuilder is a strings.Builder safe for concurrent writers.
type lockedBuilder struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// warnOnly passes on the records of a text handler at level WARN and above
// (each Write is one record).
type warnOnly struct{ w io.Writer }

func (o warnOnly) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(" level=WARN ")) || bytes.Contains(p, []byte(" level=ERROR ")) {
		return o.w.Write(p)
	}
	return len(p), nil
}

// kill stops a backend as a dying process would: its background work ends
// without releasing anything, and its leases are left to expire.
func (b *Backend) kill() {
	b.cancel()
	b.wg.Wait()
}

// TestKilledWorkerTakeover kills a worker that owns every partition and
// holds a work item; another worker must take the partitions over within
// LeaseDuration (plus one renewal period and a margin), finish the
// instance, and the dead worker's late commit must be rejected.
func TestKilledWorkerTakeover(t *testing.T) {
	t.Parallel()
	// A server of its own, on disk: the shared in-memory one stops
	// answering for tens of seconds when its queue GC runs on a busy
	// machine (see TestLoadAwareBalancing), longer than this test's
	// takeover bound.
	srv := azurite.Start(t, azurite.Options{Location: t.TempDir()})
	logs := newTestLogs(t)
	hub := testHub(t)
	const lease = 3 * time.Second
	opts := Options{ConnectionString: srv.ConnectionString(), HubName: hub, Partitions: 2, LeaseDuration: lease, LockTimeout: 4 * time.Second}
	opts.WorkerID, opts.Logger = "doomed", logs.logger("doomed")
	a := openTest(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a.Start(ctx)
	a.lm.waitReady(ctx)
	if got := a.lm.partitions(); len(got) != 2 {
		t.Fatalf("doomed worker owns %v, want both partitions", got)
	}
	if _, err := dtbackend.NewTaskHubClient(a).ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID("victim"), api.WithInput(0)); err != nil {
		t.Fatalf("schedule: %v", err)
	}
	wi, err := a.GetOrchestrationWorkItem(ctx)
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if wi.State, err = a.GetOrchestrationRuntimeState(ctx, wi); err != nil {
		t.Fatalf("state: %v", err)
	}
	a.kill()
	killed := time.Now()

	opts.WorkerID, opts.Logger = "heir", logs.logger("heir")
	b := openTest(t, opts)
	startRunner(t, b, chainRegistry(1, nil), 2)
	// The dead worker's leases expire LeaseDuration after their last
	// renewal (at most that long after the kill); the heir claims them in
	// its next round (LeaseDuration/3 later), and 3 s cover its start.
	limit := lease + lease/3 + 3*time.Second
	deadline := time.Now().Add(limit)
	for len(b.lm.partitions()) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("heir owns %v, not both partitions, %s after the kill\n%s%s", b.lm.partitions(), time.Since(killed).Round(time.Millisecond),
				hubDump(b, []*Backend{b}), logs.report())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("partitions taken over %s after the kill (LeaseDuration %s)", time.Since(killed).Round(time.Millisecond), lease)
	checkChains(t, ctx, b, []string{"victim"}, 1, 30*time.Second)
	t.Logf("its instance completed %s after the kill", time.Since(killed).Round(time.Millisecond))

	// The dead worker wakes up and commits its stale work item.
	for _, e := range wi.NewEvents {
		wi.State.AddEvent(e)
	}
	if err := a.CompleteOrchestrationWorkItem(ctx, wi); !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
		t.Fatalf("stale commit after takeover: %v, want ErrWorkItemLockLost", err)
	}
	checkChains(t, ctx, b, []string{"victim"}, 1, time.Second)
}

// countingHandler counts warnings, to report what an outage looked like.
type countingHandler struct {
	slog.Handler
	warnings *atomic.Int64
}

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		h.warnings.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

func (h countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return countingHandler{h.Handler.WithAttrs(as), h.warnings}
}

func (h countingHandler) WithGroup(name string) slog.Handler {
	return countingHandler{h.Handler.WithGroup(name), h.warnings}
}

// TestStorageOutage stops a dedicated, persistent Azurite for 10 s while a
// worker has instances in flight, restarts it, and checks that every
// instance completes exactly once with the right output.
func TestStorageOutage(t *testing.T) {
	t.Parallel()
	srv := azurite.Start(t, azurite.Options{Location: t.TempDir()})
	var warnings atomic.Int64
	logs := &lockedBuilder{b: &strings.Builder{}}
	// Debug records go to a file kept if the test fails; warnings are
	// also collected for the verbose summary.
	files := newTestLogs(t)
	handler := slog.NewTextHandler(io.MultiWriter(files.file("worker"), warnOnly{logs}), &slog.HandlerOptions{Level: slog.LevelDebug})
	logger := slog.New(countingHandler{handler, &warnings})
	b := openTest(t, Options{ConnectionString: srv.ConnectionString(), Partitions: 2, LockTimeout: 20 * time.Second, Logger: logger})
	ctx, cancel := context.WithTimeout(context.Background(), 85*time.Second)
	defer cancel()

	const steps, n = 6, 16
	var runs atomic.Int64
	startRunner(t, b, chainRegistry(steps, &runs), 4)
	ids := idsOn("outage", n, 2, []int{0, 1})
	scheduleAll(t, ctx, b, ids)
	// Let the work get going, then take storage away mid-flight.
	poll(t, 30*time.Second, "work in progress", func() bool { return runs.Load() >= 3*n })
	done := 0
	for _, id := range ids {
		if md, err := b.GetOrchestrationMetadata(ctx, api.InstanceID(id)); err == nil && md.IsComplete() {
			done++
		}
	}
	srv.Stop()
	stopped := time.Now()
	poll(t, 30*time.Second, "storage calls fail", func() bool {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		defer ccancel()
		_, err := queueDepth(cctx, b.work)
		return err != nil
	})
	t.Logf("storage stopped with %d of %d instances complete, %d orchestrator runs", done, n, runs.Load())
	outage := time.NewTimer(10 * time.Second)
	<-outage.C // the outage itself: the one fixed wait of this test
	if err := srv.Restart(); err != nil {
		t.Fatalf("restart azurite: %v", err)
	}
	restarted := time.Now()
	t.Logf("storage back after %s", restarted.Sub(stopped).Round(time.Millisecond))
	checkChainsWithin(t, b, ids, steps, budget{deadline: time.Now().Add(60 * time.Second)}, func(stuck string) string {
		return hubDump(b, []*Backend{b}, stuck) + files.report()
	})
	t.Logf("all %d instances complete %s after the restart; %d orchestrator runs, %d warnings logged",
		n, time.Since(restarted).Round(time.Millisecond), runs.Load(), warnings.Load())
	page, err := b.ListInstances(ctx, taskhub.Query{PageSize: taskhub.MaxPageSize})
	if err != nil || len(page.Instances) != n {
		t.Fatalf("listing after the outage: %d instances, %v", len(page.Instances), err)
	}
	if testing.Verbose() {
		t.Logf("warnings:\n%s", logs.String())
	}
}

// TestWorkerRestart restarts a worker under the same WorkerID without
// Close: it takes its partitions back in its first round, without waiting
// for the old leases (30 s) to expire. Heartbeats of workers dead for
// longer than heartbeatRetention are pruned.
func TestWorkerRestart(t *testing.T) {
	t.Parallel()
	// A server of its own, on disk, like TestKilledWorkerTakeover: the
	// shared in-memory one can stall past this test's 30 s.
	srv := azurite.Start(t, azurite.Options{Location: t.TempDir()})
	hub := testHub(t)
	opts := Options{ConnectionString: srv.ConnectionString(), HubName: hub, Partitions: 2, WorkerID: "same"}
	a := openTest(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	old := newEntity(workerPK, "ghost")
	old["WorkerID"], old["Expires"] = "ghost", formatTime(time.Now().Add(-2*heartbeatRetention))
	if _, err := a.leases.AddEntity(ctx, old.marshal(), nil); err != nil {
		t.Fatalf("add old heartbeat: %v", err)
	}
	a.Start(ctx)
	a.lm.waitReady(ctx)
	if got := a.lm.partitions(); len(got) != 2 {
		t.Fatalf("first run owns %v", got)
	}
	if _, err := a.leases.GetEntity(ctx, workerPK, "ghost", nil); !isNotFound(err) {
		t.Fatalf("old heartbeat after a round: %v, want it deleted", err)
	}
	a.kill()
	b := openTest(t, opts)
	b.Start(ctx)
	b.lm.waitReady(ctx)
	if got := b.lm.partitions(); len(got) != 2 {
		t.Fatalf("restarted worker owns %v after its first round, want both partitions", got)
	}
}
