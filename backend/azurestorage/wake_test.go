package azurestorage

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// pollNoMore pushes every queue's next poll of b an hour out: from then on
// only a wake-up (or b's own enqueues) makes it look at a queue.
func pollNoMore(b *Backend) {
	b.poll.mu.Lock()
	defer b.poll.mu.Unlock()
	for i := range b.poll.queues {
		// The interval too: a poll in flight schedules the next from it.
		b.poll.queues[i].due = time.Now().Add(time.Hour)
		b.poll.queues[i].interval = time.Hour
		b.poll.queues[i].dirty = false
	}
	b.poll.idle = time.Hour
}

// TestWakeUpsReachAnIdleWorker: a worker whose queues will not be polled
// for an hour still runs an orchestration started at once by another
// process (a backend of its own, like a client elsewhere, which learns the
// worker's wake address from the lease table): the start's sender wakes
// it over UDP.
func TestWakeUpsReachAnIdleWorker(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	w := openTest(t, Options{HubName: hub, Partitions: 2})
	client := openTest(t, Options{HubName: hub, Partitions: 2}) // runs no rounds: listens to nothing, only sends
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var ran runs
	startRunner(t, w, countedChain(3, &ran), 4)
	w.lm.waitReady(ctx)
	if !w.wakeups.listening() {
		t.Fatal("the worker does not listen for wake-ups")
	}
	poll(t, 10*time.Second, "the worker's wake address in its heartbeat", func() bool {
		rows, err := client.lm.list(ctx)
		if err != nil {
			return false
		}
		_, peers := viewOf(rows, 2, time.Now())
		return peers[w.opts.WorkerID] == w.wakeups.address()
	})
	pollNoMore(w)
	before := w.Counter().Snapshot()["queue.dequeue"]
	if _, err := dtbackend.NewTaskHubClient(client).ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID("woken"), api.WithInput(0)); err != nil {
		t.Fatal(err)
	}
	// Without the wake-up the start would wait an hour; the deadline is
	// far shorter than that and far longer than a loaded machine needs.
	began := time.Now()
	md := awaitDone(t, ctx, client, "woken", 30*time.Second)
	t.Logf("completed %s after the start; dequeues %d", time.Since(began), w.Counter().Snapshot()["queue.dequeue"]-before)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("status %v", md.RuntimeStatus)
	}
	if d := w.Counter().Snapshot()["queue.dequeue"] - before; d < 1 {
		t.Fatalf("the worker made %d dequeues: it cannot have found the start", d)
	}
}

// TestWakeUpsForgedDatagrams: datagrams for another hub, a partition the
// hub does not have, or in another format are ignored, and a flood for one
// queue makes at most one poll per minPoll.
func TestWakeUpsForgedDatagrams(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 2})
	pollNoMore(b)
	for _, msg := range []string{"dronehub-wake other-hub c0", "dronehub-wake " + b.opts.HubName + " c7",
		"dronehub-wake " + b.opts.HubName + " x", "hello", ""} {
		b.wakeups.received(msg)
	}
	b.poll.mu.Lock()
	for i, q := range b.poll.queues {
		if q.dirty {
			b.poll.mu.Unlock()
			t.Fatalf("queue %d marked for a poll by a forged datagram", i)
		}
	}
	b.poll.mu.Unlock()
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() { defer wg.Done(); b.wakeups.received("dronehub-wake " + b.opts.HubName + " c1") }()
	}
	wg.Wait()
	b.wakeups.mu.Lock()
	last := b.wakeups.last[2]
	b.wakeups.mu.Unlock()
	if last.IsZero() {
		t.Fatal("a valid wake-up for partition 1 was not taken")
	}
	parts, _ := b.poll.due([]int{0, 1}, false)
	if len(parts) != 1 || parts[0] != 1 {
		t.Fatalf("queues due after the wake-ups: %v, want partition 1 once", parts)
	}
	if parts, _ := b.poll.due([]int{0, 1}, false); len(parts) != 0 {
		t.Fatalf("queues due again at once: %v: a flood of wake-ups must make one poll", parts)
	}
}

// TestIdleRequestRateWithWakeUps: with wake-ups on, an idle worker polls
// each queue only every IdlePollInterval (2 s here, to fit a short
// window; the default is 15 s) and its lease rounds cost 3 requests each.
func TestIdleRequestRateWithWakeUps(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 4, IdlePollInterval: 2 * time.Second, LeaseDuration: 15 * time.Second})
	const ramp, window = 4 * time.Second, 10 * time.Second
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
	wg.Wait()
	snap := b.Counter().Snapshot()
	// 5 queues, each at most once per 2 s (+1 at the window's edge), and at
	// most 3 lease rounds of 3 requests.
	if d := snap["queue.dequeue"]; d > 5*(int64(window/(2*time.Second))+1) {
		t.Fatalf("%d dequeues in %s with IdlePollInterval 2s (%s)", d, window, b.Counter())
	}
	if total := b.Counter().Total(); total > 5*6+3*3+2 {
		t.Fatalf("%d requests in %s (%s)", total, window, b.Counter())
	}
	t.Logf("idle with wake-ups, IdlePollInterval 2s: %s in %s", b.Counter(), window)
}

// TestWakeUpsReachAnIdleWorkerEveryTime: one start after another from
// another process, each while the worker's queues are not due for an hour,
// is each picked up by its wake-up, on one partition as on several.
func TestWakeUpsReachAnIdleWorkerEveryTime(t *testing.T) {
	t.Parallel()
	for _, parts := range []int{1, 2} {
		hub := testHub(t)
		w := openTest(t, Options{HubName: hub, Partitions: parts})
		client := openTest(t, Options{HubName: hub, Partitions: parts})
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		var ran runs
		startRunner(t, w, countedChain(2, &ran), 4)
		w.lm.waitReady(ctx)
		poll(t, 10*time.Second, "the worker's wake address in its heartbeat", func() bool {
			rows, err := client.lm.list(ctx)
			if err != nil {
				return false
			}
			_, peers := viewOf(rows, parts, time.Now())
			return peers[w.opts.WorkerID] == w.wakeups.address()
		})
		hc := dtbackend.NewTaskHubClient(client)
		for i := range 4 {
			pollNoMore(w)
			id := fmt.Sprintf("woken-%d-%d", parts, i)
			if _, err := hc.ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID(api.InstanceID(id)), api.WithInput(0)); err != nil {
				t.Fatal(err)
			}
			began := time.Now()
			md := awaitDone(t, ctx, client, id, 20*time.Second)
			t.Logf("%d partitions, start %d: completed %s after the start", parts, i, time.Since(began))
			if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
				t.Fatalf("start %d: status %v", i, md.RuntimeStatus)
			}
		}
	}
}
