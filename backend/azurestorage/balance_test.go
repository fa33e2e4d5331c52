package azurestorage

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/internal/azurite"
	"github.com/dronehub/dronehub/internal/testkit/artifacts"
	"github.com/dronehub/dronehub/taskhub"
)

// startRunner runs durabletask-go's workers on b through taskhub.Runner
// until the test ends (or stop is called), like backendtest's startWorker.
func startRunner(t *testing.T, b dtbackend.Backend, r *task.TaskRegistry, parallelism int32) (stop func()) {
	t.Helper()
	logger := quietLogger()
	exec := task.NewTaskExecutor(r)
	ow := dtbackend.NewOrchestrationWorker(b, exec, logger, dtbackend.WithMaxParallelism(parallelism))
	aw := dtbackend.NewActivityTaskWorker(b, exec, logger, dtbackend.WithMaxParallelism(parallelism))
	w := taskhub.NewRunner(b, slog.New(slog.NewTextHandler(io.Discard, nil)), ow, aw)
	if err := w.Start(context.Background()); err != nil {
		t.Fatalf("start worker: %v", err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := w.Shutdown(ctx); err != nil {
				t.Errorf("shut down worker: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// chainRegistry registers "Chain", which calls "Inc" steps times in
// sequence on its input, and counts the orchestrator runs in runs.
func chainRegistry(steps int, runs *atomic.Int64) *task.TaskRegistry {
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Chain", func(c *task.OrchestrationContext) (any, error) {
		if runs != nil {
			runs.Add(1)
		}
		var n int
		if err := c.GetInput(&n); err != nil {
			return nil, err
		}
		for i := 0; i < steps; i++ {
			if err := c.CallActivity("Inc", task.WithActivityInput(n)).Await(&n); err != nil {
				return nil, err
			}
		}
		return n, nil
	})
	r.AddActivityN("Inc", func(c task.ActivityContext) (any, error) {
		var n int
		err := c.GetInput(&n)
		return n + 1, err
	})
	return r
}

// idsOn returns n instance ids with the prefix that hash to the partitions.
func idsOn(prefix string, n, partitions int, on []int) []string {
	var ids []string
	for i := 0; len(ids) < n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if slices.Contains(on, partitionOf(id, partitions)) {
			ids = append(ids, id)
		}
	}
	return ids
}

// scheduleAll starts a Chain instance for each id with input i, 8 at a time.
func scheduleAll(t *testing.T, ctx context.Context, b dtbackend.Backend, ids []string) {
	t.Helper()
	client := dtbackend.NewTaskHubClient(b)
	var wg sync.WaitGroup
	errs := make(chan error, len(ids))
	sem := make(chan struct{}, 8)
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := client.ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID(api.InstanceID(id)), api.WithInput(i)); err != nil {
				errs <- fmt.Errorf("schedule %s: %w", id, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// budget bounds a wait on work in progress: it fails when the work stops
// moving for longer than stall, or when it is not done by deadline.
type budget struct {
	deadline time.Time
	stall    time.Duration
	// progress counts work done so far (e.g. orchestrator runs); nil
	// leaves only the deadline.
	progress func() int64
}

// expired reports why the wait is over, or "" while it may go on; it
// tracks progress between calls.
func (w *budget) expired(last *int64, lastMove *time.Time) string {
	now := time.Now()
	if w.progress != nil {
		if n := w.progress(); n != *last {
			*last, *lastMove = n, now
		} else if w.stall > 0 && now.Sub(*lastMove) > w.stall {
			return fmt.Sprintf("no progress for %s (progress counter stuck at %d)", now.Sub(*lastMove).Round(time.Millisecond), n)
		}
	}
	if now.After(w.deadline) {
		return "deadline passed"
	}
	return ""
}

// checkChains asserts every instance completed once with output i+steps and
// a history without duplicates: one start, steps activities scheduled and
// completed, one completion. On failure it reports the hub (hubDump).
func checkChains(t *testing.T, ctx context.Context, b *Backend, ids []string, steps int, timeout time.Duration) {
	t.Helper()
	checkChainsWithin(t, b, ids, steps, budget{deadline: time.Now().Add(timeout)}, func(stuck string) string {
		return hubDump(b, []*Backend{b}, stuck)
	})
}

// checkChainsWithin is checkChains with a budget and a failure report:
// report(stuck) describes the hub for the first instance not done.
func checkChainsWithin(t *testing.T, b *Backend, ids []string, steps int, w budget, report func(stuck string) string) {
	t.Helper()
	// Reads get their own context: a test context that ran out would
	// make every read fail and hide why the instance is not done.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	began := time.Now()
	var last int64 = -1
	lastMove := began
	for i, id := range ids {
		var md *api.OrchestrationMetadata
		for {
			rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
			var err error
			md, err = b.GetOrchestrationMetadata(rctx, api.InstanceID(id))
			rcancel()
			if err == nil && md.IsComplete() {
				break
			}
			if why := w.expired(&last, &lastMove); why != "" {
				status := fmt.Sprint(err)
				if md != nil {
					status = taskhub.StatusName(md.RuntimeStatus)
				}
				t.Fatalf("instance %s (%d of %d) not complete after %s: %s; last read: %s\n%s",
					id, i, len(ids), time.Since(began).Round(time.Millisecond), why, status, report(id))
			}
			time.Sleep(20 * time.Millisecond) // polling interval
		}
		if want := fmt.Sprint(i + steps); md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || md.SerializedOutput != want {
			t.Fatalf("instance %s: %s output %s, want Completed %s (failure %v)\n%s", id, taskhub.StatusName(md.RuntimeStatus), md.SerializedOutput, want, md.FailureDetails, report(id))
		}
		st, err := b.load(ctx, id)
		if err != nil {
			t.Fatalf("load %s: %v", id, err)
		}
		var started, scheduled, completed, done int
		for _, e := range st.history {
			switch {
			case e.GetExecutionStarted() != nil:
				started++
			case e.GetTaskScheduled() != nil:
				scheduled++
			case e.GetTaskCompleted() != nil:
				completed++
			case e.GetExecutionCompleted() != nil:
				done++
			}
		}
		if started != 1 || scheduled != steps || completed != steps || done != 1 {
			t.Fatalf("instance %s history: %d starts, %d scheduled, %d completed, %d completions\n%s", id, started, scheduled, completed, done, report(id))
		}
	}
}

// hubDump describes the hub as storage sees it, for a failure message:
// the lease rows (owner, expiry, hand-off, published load) and worker
// heartbeats, what each worker believes it holds, the depth of every
// queue, instance counts by status, dead letters, and the last history
// events of the stuck instances. It reads with a context of its own (the
// dump used to be empty: it was read with the test's context, which had
// run out by then, and the error was dropped) and says how long storage
// took to answer, so a stalled storage shows as a slow or failed dump.
func hubDump(b *Backend, workers []*Backend, stuck ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	var sb strings.Builder
	fmt.Fprintf(&sb, "=== hub %s at %s ===\n", b.opts.HubName, began.UTC().Format("15:04:05.000"))
	leases, hbs, err := b.Leases(ctx)
	if err != nil {
		fmt.Fprintf(&sb, "lease rows: %v (after %s)\n", err, time.Since(began).Round(time.Millisecond))
	} else {
		fmt.Fprintf(&sb, "lease rows (read in %s):\n%s", time.Since(began).Round(time.Millisecond), FormatLeases(leases, hbs, time.Now()))
	}
	for _, w := range workers {
		fmt.Fprintf(&sb, "  %s believes it holds: %s\n", w.opts.WorkerID, w.lm.localView())
	}
	t0 := time.Now()
	info, err := b.HubInfo(ctx)
	if err != nil {
		fmt.Fprintf(&sb, "hub info: %v (after %s)\n", err, time.Since(t0).Round(time.Millisecond))
	} else {
		fmt.Fprintf(&sb, "queue depths (read in %s, invisible messages included):", time.Since(t0).Round(time.Millisecond))
		names := make([]string, 0, len(info.QueueDepths))
		for q := range info.QueueDepths {
			names = append(names, q)
		}
		sort.Strings(names)
		for _, q := range names {
			fmt.Fprintf(&sb, " %s=%d", strings.TrimPrefix(q, strings.ToLower(b.opts.HubName)+"-"), info.QueueDepths[q])
		}
		fmt.Fprintf(&sb, "\ninstances by status: %v; dead letters: %d\n", info.Instances, info.DeadLetters)
	}
	for i, id := range stuck {
		if i == 5 {
			fmt.Fprintf(&sb, "… and %d more stuck instances\n", len(stuck)-i)
			break
		}
		fmt.Fprintf(&sb, "instance %s (partition %d): %s\n", id, partitionOf(id, b.names.partitions), instanceSummary(ctx, b, id, 8))
	}
	fmt.Fprintf(&sb, "(dump took %s)\n", time.Since(began).Round(time.Millisecond))
	return sb.String()
}

// instanceSummary is an instance's status and its last n history events.
func instanceSummary(ctx context.Context, b *Backend, id string, n int) string {
	md, err := b.GetOrchestrationMetadata(ctx, api.InstanceID(id))
	if err != nil {
		return fmt.Sprintf("status: %v", err)
	}
	out := fmt.Sprintf("%s, last updated %s", taskhub.StatusName(md.RuntimeStatus), md.LastUpdatedAt.UTC().Format("15:04:05.000"))
	st, err := b.load(ctx, id)
	if err != nil {
		return out + fmt.Sprintf("; history: %v", err)
	}
	h := st.history
	from := max(0, len(h)-n)
	parts := make([]string, 0, n)
	for _, e := range h[from:] {
		parts = append(parts, eventSummary(e))
	}
	return fmt.Sprintf("%s; %d events, last: %s", out, len(h), strings.Join(parts, ", "))
}

// eventSummary is "#id Kind@15:04:05.000".
func eventSummary(e *dtbackend.HistoryEvent) string {
	kind := fmt.Sprintf("%T", e.GetEventType())
	if i := strings.LastIndex(kind, "HistoryEvent_"); i >= 0 {
		kind = kind[i+len("HistoryEvent_"):]
	}
	return fmt.Sprintf("#%d %s@%s", e.GetEventId(), kind, e.GetTimestamp().AsTime().UTC().Format("15:04:05.000"))
}

// testLogs gives each in-process worker of a test a debug log file; when
// the test fails they are kept (internal/testkit/artifacts) and their
// tails go into the failure message.
type testLogs struct {
	t     *testing.T
	dir   string
	mu    sync.Mutex
	files []string
}

func newTestLogs(t *testing.T) *testLogs {
	l := &testLogs{t: t, dir: t.TempDir()}
	artifacts.KeepOnFailure(t, l.paths)
	return l
}

func (l *testLogs) paths() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.files)
}

// file creates <name>.log, closed when the test ends.
func (l *testLogs) file(name string) io.Writer {
	path := filepath.Join(l.dir, name+".log")
	f, err := os.Create(path)
	if err != nil {
		l.t.Fatalf("worker log: %v", err)
	}
	l.t.Cleanup(func() { f.Close() })
	l.mu.Lock()
	l.files = append(l.files, path)
	l.mu.Unlock()
	return f
}

// logger returns a logger writing debug records to <name>.log.
func (l *testLogs) logger(name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(l.file(name), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// report keeps the logs now and returns where, with the tail of each.
func (l *testLogs) report() string { return artifacts.Report(l.t, 25, l.paths()...) }

// TestLoadAwareBalancing puts all the load on the two partitions one worker
// owns; that worker must hand a hot partition to the idle one, both must
// work on it, and every instance must complete exactly once.
//
// The backlog is built before any orchestration runs: 240 instances are
// scheduled on w1's partitions while neither worker executes anything, so
// w1's queues are deep and their oldest message ages past lagThreshold
// whatever the machine's speed. (Scheduled with the workers running, a fast
// machine kept up and never shed, a loaded one shed: the test measured the
// machine, not the rule.) The runners start once the hot partition has
// moved.
func TestLoadAwareBalancing(t *testing.T) {
	t.Parallel()
	// A server of its own, on disk. The package's shared server runs in
	// memory, where Azurite keeps every queue message ever written as an
	// extent of its own and, a minute after its previous sweep, deletes
	// the unreferenced ones in a loop that never yields to its event loop
	// (each delete is a linear LokiJS findAndRemove): it then answers
	// nothing, on any port. On the loaded 2-core machine, after 3000
	// messages one request waited 44 s, after 6000 over 2 minutes; this
	// test alone writes ~1200 (240 starts, 480 activities, 480 results),
	// and the package's tests run side by side. Every lease of this test lapsed meanwhile, both workers
	// showed the hot partition as theirs, and the instance deadline
	// passed. On disk, messages share 64 MB extent files: after 6000
	// messages the sweep held a request for 0.26 s.
	srv := azurite.Start(t, azurite.Options{Location: t.TempDir()})
	logs := newTestLogs(t)
	const (
		lease       = 4 * time.Second
		lockTimeout = 20 * time.Second
		steps, n    = 2, 240
	)
	opts := Options{ConnectionString: srv.ConnectionString(), HubName: testHub(t), Partitions: 4, LeaseDuration: lease, LockTimeout: lockTimeout}
	opts.WorkerID, opts.Logger = "w1", logs.logger("w1")
	b1 := openTest(t, opts)
	opts.WorkerID, opts.Logger = "w2", logs.logger("w2")
	b2 := openTest(t, opts)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	report := func(stuck ...string) string {
		return hubDump(b1, []*Backend{b1, b2}, stuck...) + logs.report()
	}
	// waitFor polls cond until it holds, failing with the hub and the
	// logs when the budget runs out.
	waitFor := func(w budget, what string, cond func() bool) time.Duration {
		t.Helper()
		began := time.Now()
		var last int64 = -1
		lastMove := began
		for !cond() {
			if why := w.expired(&last, &lastMove); why != "" {
				t.Fatalf("%s: not after %s (%s)\n%s", what, time.Since(began).Round(time.Millisecond), why, report())
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(began)
	}

	// Phases 1 and 2 are counted in lease rounds (LeaseDuration/3 apart):
	// a round's requests (heartbeat, listing, renewals, a few hand-offs
	// and claims) run within its round, whose context is LeaseDuration/2.
	round := lease / 3

	// Phase 1, 2/2 split by count. w1's first round claims all four
	// partitions; w2's first round sees w1 hold them all; w1's next round
	// sees w2 live and hands it two idle ones at once (nothing in flight);
	// w2 claims them in its next round, early since a hand-off to it is
	// pending. Three rounds, and one more in case a lease write failed.
	b1.Start(ctx)
	b1.lm.waitReady(ctx)
	b2.Start(ctx)
	took := waitFor(budget{deadline: time.Now().Add(4 * round)}, "2/2 split by count", func() bool {
		return len(b1.lm.partitions()) == 2 && len(b2.lm.partitions()) == 2
	})
	hot := b1.lm.partitions()
	t.Logf("split after %s: w1 owns %v, w2 owns %v; loading w1's partitions", took.Round(time.Millisecond), hot, b2.lm.partitions())

	// Phase 2, the backlog and the move. Once the oldest message is
	// lagThreshold old, w1's next round measures both queues (~120
	// messages, weight 1+120/16 each: 17 for w1 against 2 for w2) and
	// sheds one hot partition to w2, at once since nothing is in flight;
	// w2 claims it in its next, early, round. So lagThreshold after the
	// first start (counted from the last one here), then two rounds, and
	// one more for a failed write.
	ids := idsOn("hot", n, 4, hot)
	requestsBefore := b1.Counter().Total()
	began := time.Now()
	scheduleAll(t, ctx, b1, ids)
	scheduling := time.Since(began)
	// The time per request while scheduling: the storage's speed at this
	// moment, loaded by this test (8 creations in flight) and by whatever
	// else the machine runs.
	perRequest := scheduling / time.Duration(max(1, b1.Counter().Total()-requestsBefore))
	t.Logf("scheduled %d instances in %s (%s per storage request)", n, scheduling.Round(time.Millisecond), perRequest.Round(time.Microsecond))
	movedTo2 := func() bool {
		for _, p := range hot {
			if b2.lm.isActive(p) {
				return true
			}
		}
		return false
	}
	took = waitFor(budget{deadline: time.Now().Add(b1.lm.lagThreshold() + 3*round)}, "w2 holds one of w1's hot partitions", movedTo2)
	t.Logf("w2 holds a hot partition %s after the last start was scheduled: w1 owns %s; w2 owns %s",
		took.Round(time.Millisecond), b1.lm.localView(), b2.lm.localView())

	// Phase 3, the work. Each instance takes steps+1 orchestration
	// episodes and steps activities: counted with Backend.Counter, about
	// 30 storage requests per instance with the lease and polling requests
	// of both workers (7290-7720 for the 240 instances). At the time per
	// request measured while scheduling, that is n × 30 × perRequest. The
	// workers keep fewer requests in flight than the scheduling did (2
	// orchestrations and 2 activities each, against 8 creations) and spend
	// CPU between requests replaying orchestrations under the race
	// detector: in 10 runs on the loaded 2-core machine (scheduling at
	// 1.8-6.5 ms per request) the work took 0.6-1.25 times as long per
	// request, 12-34 s in all. The deadline allows a third of the
	// scheduling speed, more than twice the slowest of those.
	//
	// Progress is watched apart from that: the work may not stand still
	// (no orchestrator run anywhere) for longer than the longest pause the
	// protocol allows: a message dequeued by a worker that lost its
	// partition stays locked for LockTimeout; a lapsed lease is claimed
	// LeaseDuration after its last renewal, at the next round of another
	// worker; and the SDK's retries of one request span up to ~8 s.
	var runs1, runs2 atomic.Int64
	startRunner(t, b1, chainRegistry(steps, &runs1), 2)
	startRunner(t, b2, chainRegistry(steps, &runs2), 2)
	stall := lockTimeout + lease + round + 8*time.Second
	work := budget{
		deadline: time.Now().Add(3*time.Duration(n*30)*perRequest + stall),
		stall:    stall,
		progress: func() int64 { return runs1.Load() + runs2.Load() },
	}
	started := time.Now()
	took = waitFor(work, "w2 runs orchestrations of w1's hot partitions", func() bool { return runs2.Load() > 0 })
	t.Logf("w2 ran its first orchestration %s after the runners started", took.Round(time.Millisecond))
	checkChainsWithin(t, b1, ids, steps, work, func(stuck string) string { return report(stuck) })
	total := b1.Counter().Total() + b2.Counter().Total()
	t.Logf("all %d instances done %s after the runners started (budget %s); orchestrator runs: w1 %d, w2 %d; w1 owns %s; w2 owns %s; %d storage requests in the test",
		n, time.Since(started).Round(time.Millisecond), time.Until(work.deadline)+time.Since(started), runs1.Load(), runs2.Load(), b1.lm.localView(), b2.lm.localView(), total)
	if runs1.Load() == 0 || runs2.Load() == 0 {
		t.Errorf("orchestrator runs: w1 %d, w2 %d; want both workers to share the hot load\n%s", runs1.Load(), runs2.Load(), report())
	}
}

// leasePair opens two workers, w1 and w2, on a fresh hub with 4 partitions
// and a long LeaseDuration, without starting them: the test runs their
// lease rounds itself, so nothing expires or moves behind its back.
func leasePair(t *testing.T) (b1, b2 *Backend) {
	t.Helper()
	opts := Options{HubName: testHub(t), Partitions: 4, LeaseDuration: 30 * time.Second}
	opts.WorkerID = "w1"
	b1 = openTest(t, opts)
	opts.WorkerID = "w2"
	b2 = openTest(t, opts)
	return b1, b2
}

// runRound runs one lease round of b and fails the test on an error.
func runRound(t *testing.T, b *Backend) (soon bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	soon, err := b.lm.round(ctx)
	if err != nil {
		t.Fatalf("%s: lease round: %v", b.opts.WorkerID, err)
	}
	return soon
}

// leaseRows reads the lease rows by partition.
func leaseRows(t *testing.T, b *Backend) map[int]LeaseRow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, _, err := b.Leases(ctx)
	if err != nil {
		t.Fatalf("read lease rows: %v", err)
	}
	out := map[int]LeaseRow{}
	for _, r := range rows {
		out[r.Partition] = r
	}
	return out
}

// splitTwoTwo runs rounds until w1 holds 0 and 1 and w2 holds 2 and 3.
func splitTwoTwo(t *testing.T, b1, b2 *Backend) {
	t.Helper()
	runRound(t, b1) // claims all four: w2 is not live yet
	runRound(t, b2) // live now; everything is held
	runRound(t, b1) // hands 3, then 2, to w2 (nothing in flight)
	runRound(t, b2) // claims them
	if got1, got2 := b1.lm.partitions(), b2.lm.partitions(); !slices.Equal(got1, []int{0, 1}) || !slices.Equal(got2, []int{2, 3}) {
		t.Fatalf("split: w1 polls %v, w2 polls %v; want [0 1] and [2 3]\n%s", got1, got2, hubDump(b1, []*Backend{b1, b2}))
	}
}

// TestShedKeepsReceivedHotPartition: a hot partition handed to a worker is
// not sent straight back. w1 hands its hot partition 1 (published depth
// 121, lag 3 s: weight 8.6) to w2 and keeps only partition 0, which its
// owner now keeps up with (weight 1). In the round where w2 claims it, w2
// weighs 10.6 (1 + its two idle partitions) against w1's 1, and the move
// rule alone (w(p)+1 <= gap) would shed partition 1 back to w1 at once, on
// weights measured before the first move: a round trip that leaves the hot
// queue unpolled for a drain and two claims, and may repeat. This happened
// under load in TestLoadAwareBalancing. w2 must give its idle partitions
// instead.
func TestShedKeepsReceivedHotPartition(t *testing.T) {
	t.Parallel()
	b1, b2 := leasePair(t)
	splitTwoTwo(t, b1, b2)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b1.lm.mu.Lock()
	l := b1.lm.owned[1]
	l.depth, l.lag, l.draining = 121, 3*time.Second, "w2"
	err := b1.lm.handOff(ctx, 1, l)
	b1.lm.mu.Unlock()
	if err != nil {
		t.Fatalf("hand partition 1 to w2: %v", err)
	}
	if r := leaseRows(t, b1)[1]; r.Owner != "" || r.Next != "w2" || r.Depth != 121 {
		t.Fatalf("partition 1 after the hand-off: %+v", r)
	}

	runRound(t, b2)
	rows := leaseRows(t, b1)
	if r := rows[1]; r.Owner != "w2" || r.Draining != "" {
		t.Fatalf("partition 1 after w2's round: owner %q, draining to %q; want w2 to keep it\n%s", r.Owner, r.Draining, hubDump(b1, []*Backend{b1, b2}))
	}
	var given []int
	for p := range 4 {
		if r := rows[p]; r.Next == "w1" || r.Draining == "w1" {
			given = append(given, p)
		}
	}
	if len(given) == 0 {
		t.Fatalf("w2 (hot partition 1 and two idle ones) gave nothing to w1 (one idle partition)\n%s", hubDump(b1, []*Backend{b1, b2}))
	}
	t.Logf("w2 kept hot partition 1 and gave %v to w1; w2 holds %s", given, b2.lm.localView())
}

// TestLeaseUntilFromSend: a worker polls a partition until exactly
// pollGuard before the Expires that its last lease write put in the row,
// both measured from the moment that write was sent, for claims, renewals
// and the start of a hand-off alike. Had the poll limit been measured from
// the answer, a late answer (a slow or stalled storage) would let the
// worker poll past the Expires another worker goes by.
func TestLeaseUntilFromSend(t *testing.T) {
	t.Parallel()
	b1, b2 := leasePair(t)
	guard := pollGuard(b1.opts.LeaseDuration)
	check := func(what string, b *Backend, before, after time.Time) {
		t.Helper()
		rows := leaseRows(t, b)
		b.lm.mu.Lock()
		defer b.lm.mu.Unlock()
		if len(b.lm.owned) == 0 {
			t.Fatalf("%s: %s holds nothing", what, b.opts.WorkerID)
		}
		for p, l := range b.lm.owned {
			expires := rows[p].Expires
			if got := expires.Sub(l.until); got != guard {
				t.Errorf("%s: partition %d: Expires − poll limit = %s, want pollGuard %s", what, p, got, guard)
			}
			// The write was sent during the round.
			if sent := expires.Add(-b.opts.LeaseDuration); sent.Before(before) || sent.After(after) {
				t.Errorf("%s: partition %d: Expires %s is not LeaseDuration after a moment of the round [%s, %s]", what, p,
					expires.Format("15:04:05.000000"), before.Format("15:04:05.000000"), after.Format("15:04:05.000000"))
			}
		}
	}
	before := time.Now().Truncate(time.Microsecond)
	runRound(t, b1) // claims
	check("claims", b1, before, time.Now())
	before = time.Now().Truncate(time.Microsecond)
	runRound(t, b1) // renewals
	check("renewals", b1, before, time.Now())
	// A hand-off in progress (a work item of partition 3 in flight): the
	// renewal that starts it is timed the same way.
	id := idsOn("busy", 1, 4, []int{3})[0]
	b1.mu.Lock()
	b1.inflight[id] = true
	b1.mu.Unlock()
	runRound(t, b2)
	before = time.Now().Truncate(time.Microsecond)
	runRound(t, b1)
	check("hand-off started", b1, before, time.Now())
	if r := leaseRows(t, b1)[3]; r.Owner != "w1" || r.Draining != "w2" {
		t.Fatalf("partition 3 with a work item in flight: %+v, want draining to w2", r)
	}
	b1.finish(id)
}

// TestHandOffWhenDrained: a hand-off waiting for a work item in flight
// completes as soon as that work item ends, not at the owner's next round
// (LeaseDuration/3 = 10 s here); and the target, which sees the partition
// draining towards it, asks for its next round early.
func TestHandOffWhenDrained(t *testing.T) {
	t.Parallel()
	b1, b2 := leasePair(t)
	runRound(t, b1)
	runRound(t, b2)
	id := idsOn("busy", 1, 4, []int{3})[0]
	b1.mu.Lock()
	b1.inflight[id] = true
	b1.mu.Unlock()
	runRound(t, b1) // starts handing 3 and 2 to w2; 3 waits for its work item
	if r := leaseRows(t, b1)[3]; r.Owner != "w1" || r.Draining != "w2" {
		t.Fatalf("partition 3 with a work item in flight: %+v, want it draining to w2", r)
	}
	if !runRound(t, b2) {
		t.Errorf("w2's round with partition 3 draining towards it did not ask for an early next round")
	}
	ended := time.Now()
	b1.finish(id)
	poll(t, 5*time.Second, "partition 3 released for w2", func() bool {
		r := leaseRows(t, b1)[3]
		return r.Owner == "" && r.Next == "w2"
	})
	t.Logf("partition 3 released for w2 %s after its last work item ended (next round of w1 due in %s)",
		time.Since(ended).Round(time.Millisecond), b1.opts.LeaseDuration/3)
	runRound(t, b2)
	if got := b2.lm.partitions(); !slices.Equal(got, []int{2, 3}) {
		t.Fatalf("w2 polls %v after its round, want [2 3]", got)
	}
}
