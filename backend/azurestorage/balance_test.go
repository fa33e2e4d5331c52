package azurestorage

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

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

// checkChains asserts every instance completed once with output i+steps and
// a history without duplicates: one start, steps activities scheduled and
// completed, one completion.
func checkChains(t *testing.T, ctx context.Context, b *Backend, ids []string, steps int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for i, id := range ids {
		var md *api.OrchestrationMetadata
		for {
			var err error
			md, err = b.GetOrchestrationMetadata(ctx, api.InstanceID(id))
			if err == nil && md.IsComplete() {
				break
			}
			if time.Now().After(deadline) {
				info, _ := b.HubInfo(ctx)
				t.Fatalf("instance %s (%d of %d) not complete within %s: %v %v; hub %+v", id, i, len(ids), timeout, md, err, info)
			}
			time.Sleep(20 * time.Millisecond) // polling interval
		}
		if want := fmt.Sprint(i + steps); md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || md.SerializedOutput != want {
			t.Fatalf("instance %s: %s output %s, want Completed %s (failure %v)", id, taskhub.StatusName(md.RuntimeStatus), md.SerializedOutput, want, md.FailureDetails)
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
			t.Fatalf("instance %s history: %d starts, %d scheduled, %d completed, %d completions", id, started, scheduled, completed, done)
		}
	}
}

// TestLoadAwareBalancing puts all the load on the two partitions one worker
// owns; that worker must hand a hot partition to the idle one, and every
// instance must complete exactly once.
func TestLoadAwareBalancing(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	opts := Options{HubName: hub, Partitions: 4, LeaseDuration: 4 * time.Second}
	opts.WorkerID = "w1"
	b1 := openTest(t, opts)
	opts.WorkerID = "w2"
	b2 := openTest(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Second)
	defer cancel()
	b1.Start(ctx)
	b1.lm.waitReady(ctx)
	b2.Start(ctx)
	poll(t, 20*time.Second, "2/2 split by count", func() bool {
		return len(b1.lm.partitions()) == 2 && len(b2.lm.partitions()) == 2
	})
	hot := b1.lm.partitions()
	t.Logf("w1 owns %v, w2 owns %v; loading w1's partitions", hot, b2.lm.partitions())

	const steps, n = 2, 240
	var runs1, runs2 atomic.Int64
	startRunner(t, b1, chainRegistry(steps, &runs1), 2)
	startRunner(t, b2, chainRegistry(steps, &runs2), 2)
	ids := idsOn("hot", n, 4, hot)
	began := time.Now()
	scheduleAll(t, ctx, b1, ids)
	t.Logf("scheduled %d instances in %s", n, time.Since(began).Round(time.Millisecond))

	poll(t, 30*time.Second, "w2 runs orchestrations of w1's hot partitions", func() bool { return runs2.Load() > 0 })
	moved := time.Since(began)
	t.Logf("w2 took over a hot partition after %s: w1 owns %v, w2 owns %v", moved.Round(time.Millisecond), b1.lm.owners(), b2.lm.owners())
	checkChains(t, ctx, b1, ids, steps, 60*time.Second)
	t.Logf("all %d instances done after %s; orchestrator runs: w1 %d, w2 %d; w1 owns %v, w2 owns %v",
		n, time.Since(began).Round(time.Millisecond), runs1.Load(), runs2.Load(), b1.lm.owners(), b2.lm.owners())
}
