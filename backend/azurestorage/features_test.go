package azurestorage

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

func quietLogger() dtbackend.Logger {
	return taskhub.Logger(slog.New(slog.NewTextHandler(io.Discard, nil)))
}

type loopWatch struct {
	dtbackend.Logger
	exited chan struct{}
}

func (l loopWatch) Infof(format string, v ...any) {
	if strings.Contains(format, "stopped listening for new work items") {
		select {
		case l.exited <- struct{}{}:
		default:
		}
	}
	l.Logger.Infof(format, v...)
}

// startWorker runs durabletask-go's worker on b until the test ends (see
// backendtest.startWorker for why shutdown waits for the polling loops).
func startWorker(t *testing.T, b *Backend, r *task.TaskRegistry) {
	t.Helper()
	logger := loopWatch{Logger: quietLogger(), exited: make(chan struct{}, 2)}
	exec := task.NewTaskExecutor(r)
	w := dtbackend.NewTaskHubWorker(b, dtbackend.NewOrchestrationWorker(b, exec, logger), dtbackend.NewActivityTaskWorker(b, exec, logger), logger)
	ctx, cancel := context.WithCancel(context.Background())
	if err := w.Start(ctx); err != nil {
		cancel()
		t.Fatalf("start worker: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		timeout := time.After(10 * time.Second)
		for range 2 {
			select {
			case <-logger.exited:
			case <-timeout:
				t.Errorf("worker loops did not stop")
				return
			}
		}
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		w.Shutdown(sctx)
	})
}

func waitDone(t *testing.T, ctx context.Context, b *Backend, id api.InstanceID) *api.OrchestrationMetadata {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		md, err := b.GetOrchestrationMetadata(ctx, id)
		if err == nil && md.IsComplete() {
			return md
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %s did not complete: %v %v", id, md, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not a wait for an event
	}
}

func (b *Backend) blobCount(ctx context.Context, t *testing.T, prefix string) int {
	t.Helper()
	n := 0
	pager := b.cl.blob.NewListBlobsFlatPager(b.names.largeMessages, &azblob.ListBlobsFlatOptions{Prefix: &prefix})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatalf("list blobs: %v", err)
		}
		n += len(page.Segment.BlobItems)
	}
	return n
}

// TestLargePayloads runs an orchestration whose input, activity payload and
// output are far above the queue and table limits; they travel through
// gzipped blobs, and purge removes them.
func TestLargePayloads(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Big", func(c *task.OrchestrationContext) (any, error) {
		var in, out string
		if err := c.GetInput(&in); err != nil {
			return nil, err
		}
		if err := c.CallActivity("Twice", task.WithActivityInput(in)).Await(&out); err != nil {
			return nil, err
		}
		return out, nil
	})
	r.AddActivityN("Twice", func(c task.ActivityContext) (any, error) {
		var s string
		err := c.GetInput(&s)
		return s + s, err
	})
	startWorker(t, b, r)
	big := strings.Repeat("0123456789abcdef", 8*1024) // 128 KiB
	id, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Big", api.WithInstanceID("big/1"), api.WithInput(big))
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	md := waitDone(t, ctx, b, id)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || md.SerializedOutput != `"`+big+big+`"` || md.SerializedInput != `"`+big+`"` {
		t.Fatalf("status %v, output %d bytes, input %d bytes", md.RuntimeStatus, len(md.SerializedOutput), len(md.SerializedInput))
	}
	if n := b.blobCount(ctx, t, blobPrefix("big/1")); n == 0 {
		t.Fatal("no blobs were written for the large payloads")
	}
	if err := b.PurgeOrchestrationState(ctx, id); err != nil {
		t.Fatalf("purge: %v", err)
	}
	if n := b.blobCount(ctx, t, blobPrefix("big/1")); n != 0 {
		t.Fatalf("%d blobs left after purge", n)
	}
	if _, err := b.GetOrchestrationMetadata(ctx, id); !errors.Is(err, api.ErrInstanceNotFound) {
		t.Fatalf("metadata after purge: %v", err)
	}
}

// TestDeadLetters abandons an activity until it passes MaxDequeueCount, then
// lists and replays it.
func TestDeadLetters(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1, MaxDequeueCount: 2, LockTimeout: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("One", func(c *task.OrchestrationContext) (any, error) {
		return nil, c.CallActivity("Poison").Await(nil)
	})
	exec := task.NewTaskExecutor(r)
	ow := dtbackend.NewOrchestrationWorker(b, exec, quietLogger())
	if _, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "One", api.WithInstanceID("poison")); err != nil {
		t.Fatalf("schedule: %v", err)
	}
	// Run the orchestrator's first turn by hand so the activity is scheduled.
	for {
		ok, err := ow.ProcessNext(ctx)
		if err != nil {
			t.Fatalf("process: %v", err)
		}
		if ok {
			break
		}
	}
	fetch := func() (*dtbackend.ActivityWorkItem, error) {
		fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		return b.GetActivityWorkItem(fctx)
	}
	// Two workers die holding the activity (no abandon, no renewal): each
	// delivery counts. (An abandon would not: see TestBenignReleasesDoNotCount.)
	for i := 0; i < 2; i++ {
		wi, err := fetch()
		if err != nil {
			t.Fatalf("fetch %d: %v", i, err)
		}
		m, _ := activityMsg(wi)
		b.unhold(m)
	}
	if wi, err := fetch(); !errors.Is(err, dtbackend.ErrNoWorkItems) {
		t.Fatalf("third fetch: %v, %v; want the message dead-lettered", wi, err)
	}
	dls, err := b.ListDeadLetters(ctx)
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters: %+v, %v", dls, err)
	}
	dl := dls[0]
	if dl.InstanceID != "poison" || dl.EventType != "TaskScheduled" || dl.DequeueCount != 2 || !strings.Contains(dl.Reason, "MaxDequeueCount 2") {
		t.Fatalf("dead letter = %+v", dl)
	}
	if err := b.ReplayDeadLetter(ctx, dl.ID); err != nil {
		t.Fatalf("replay: %v", err)
	}
	wi, err := fetch()
	if err != nil || wi.NewEvent.GetTaskScheduled().GetName() != "Poison" {
		t.Fatalf("after replay: %v, %v", wi, err)
	}
	if dls, _ := b.ListDeadLetters(ctx); len(dls) != 0 {
		t.Fatalf("dead letters after replay: %+v", dls)
	}
}

// TestStaleCommitRejected changes an instance's sentinel between fetch and
// commit, as a new partition owner would; the commit must fail with
// ErrWorkItemLockLost and leave the history untouched.
func TestStaleCommitRejected(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Hello", func(c *task.OrchestrationContext) (any, error) { return "hi", nil })
	id, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Hello", api.WithInstanceID("stale"))
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	wi, err := b.GetOrchestrationWorkItem(ctx)
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if wi.State, err = b.GetOrchestrationRuntimeState(ctx, wi); err != nil {
		t.Fatalf("state: %v", err)
	}
	// Another worker touches the sentinel.
	touch := newEntity(escapeKey(string(id)), sentinelRK)
	touch["Touched"] = true
	any := azcore.ETagAny
	if _, err := b.history.UpdateEntity(ctx, touch.marshal(), &aztables.UpdateEntityOptions{UpdateMode: aztables.UpdateModeMerge, IfMatch: &any}); err != nil {
		t.Fatalf("touch: %v", err)
	}
	for _, e := range wi.NewEvents {
		wi.State.AddEvent(e)
	}
	if err := b.CompleteOrchestrationWorkItem(ctx, wi); !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
		t.Fatalf("stale commit: %v, want ErrWorkItemLockLost", err)
	}
	st, err := b.load(ctx, string(id))
	if err != nil || len(st.history) != 0 {
		t.Fatalf("history after a rejected commit: %d events, %v", len(st.history), err)
	}
}

// TestPartitionsBalance starts a second worker on a hub and waits until the
// four partitions are split two and two; closing one hands its partitions
// back to the other.
func TestPartitionsBalance(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	opts := Options{HubName: hub, Partitions: 4, LeaseDuration: 3 * time.Second}
	opts.WorkerID = "w1"
	b1 := openTest(t, opts)
	opts.WorkerID = "w2"
	b2 := openTest(t, opts)
	b1.Start(context.Background())
	b1.lm.waitReady(context.Background())
	if got := len(b1.lm.partitions()); got != 4 {
		t.Fatalf("first worker owns %d partitions, want 4", got)
	}
	b2.Start(context.Background())
	deadline := time.Now().Add(20 * time.Second)
	for len(b1.lm.partitions()) != 2 || len(b2.lm.partitions()) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("partitions not balanced: w1 %v, w2 %v", b1.lm.partitions(), b2.lm.partitions())
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	b1.Close()
	for len(b2.lm.partitions()) != 4 {
		if time.Now().After(deadline) {
			t.Fatalf("partitions not taken over: w2 %v", b2.lm.partitions())
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}

// TestIdleRequestRate measures what an idle worker without wake-ups costs
// in requests per minute: after a 2 s ramp (poll back-off 50 ms -> 1 s), a
// 10 s window with 30 s leases (one lease round per 10 s) is counted and
// scaled.
func TestIdleRequestRate(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 4, MaxPollInterval: time.Second, Wake: wakeOff, LeaseDuration: 30 * time.Second})
	const ramp, window = 2 * time.Second, 10 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), ramp+window)
	defer cancel()
	b.lm.waitReady(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); b.GetActivityWorkItem(ctx) }()
	go func() { defer wg.Done(); b.GetOrchestrationWorkItem(ctx) }()
	time.Sleep(ramp) // the back-off ramp is excluded by design, not waited for as an event
	b.Counter().Reset()
	<-ctx.Done()
	total := b.Counter().Total()
	wg.Wait()
	perMinute := float64(total) * float64(time.Minute) / float64(window)
	t.Logf("idle, 4 partitions, MaxPollInterval 1s, LeaseDuration 30s: %d requests in %s = %.0f/min (%s)", total, window, perMinute, b.Counter())
	// 5 queues polled once a second (300/min) plus a lease round every
	// 10 s (heartbeat, list, 4 renewals: 36/min).
	if perMinute > 400 {
		t.Fatalf("idle worker makes %.0f requests per minute", perMinute)
	}
}

// TestLongTimerIsChained: a timer longer than the queue's visibility limit
// (7 days in Azure Storage, 1 s here) is sent at the limit and sent again on
// arrival until it is due; it must fire no earlier than its time.
func TestLongTimerIsChained(t *testing.T) {
	t.Parallel()
	b := openTest(t, WithMaxVisibility(Options{Partitions: 1}, time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Sleeper", func(c *task.OrchestrationContext) (any, error) {
		if err := c.CreateTimer(3500 * time.Millisecond).Await(nil); err != nil {
			return nil, err
		}
		return c.CurrentTimeUtc.UnixMilli(), nil
	})
	startWorker(t, b, r)
	client := dtbackend.NewTaskHubClient(b)
	start := time.Now()
	id, err := client.ScheduleNewOrchestration(ctx, "Sleeper")
	if err != nil {
		t.Fatal(err)
	}
	md, err := client.WaitForOrchestrationCompletion(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("status %v", md.RuntimeStatus)
	}
	if took := time.Since(start); took < 3500*time.Millisecond {
		t.Fatalf("a 3.5 s timer chained through a 1 s visibility limit fired after %s", took)
	}
}
