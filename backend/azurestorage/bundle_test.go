package azurestorage

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

// gatherRegistry registers "Gather": it returns the "e" events it got, in
// order, until "stop".
func gatherRegistry() *task.TaskRegistry {
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Gather", func(c *task.OrchestrationContext) (any, error) {
		got := []string{}
		for {
			var v string
			if err := c.WaitForSingleEvent("e", -1).Await(&v); err != nil {
				return nil, err
			}
			if v == "stop" {
				return got, nil
			}
			got = append(got, v)
		}
	})
	return r
}

// startGathers starts Gather on ids through b and waits until each has
// run its first episode on worker w.
func startGathers(ctx context.Context, t *testing.T, b, w *Backend, ids []string) {
	t.Helper()
	client := dtbackend.NewTaskHubClient(b)
	for _, id := range ids {
		if _, err := client.ScheduleNewOrchestration(ctx, "Gather", api.WithInstanceID(api.InstanceID(id))); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		poll(t, 20*time.Second, id+" to start", func() bool {
			md, err := b.GetOrchestrationMetadata(ctx, api.InstanceID(id))
			return err == nil && md.RuntimeStatus == api.RUNTIME_STATUS_RUNNING && settled(w, id)
		})
	}
}

// rounds is events for ids: rounds values each, "<id>/<k>", interleaved
// across the instances, and what each instance must receive.
func rounds(t *testing.T, ids []string, n int) ([]taskhub.RaisedEvent, map[string][]string) {
	var events []taskhub.RaisedEvent
	want := map[string][]string{}
	for k := range n {
		for _, id := range ids {
			v := fmt.Sprintf("%s/%d", id, k)
			events = append(events, taskhub.RaisedEvent{Instance: api.InstanceID(id), Event: raisedEvent(t, "e", v)})
			want[id] = append(want[id], v)
		}
	}
	return events, want
}

// waitReceived waits until every instance's history holds exactly its
// wanted values, in order.
func waitReceived(ctx context.Context, t *testing.T, reader *Backend, want map[string][]string) {
	t.Helper()
	for id, values := range want {
		poll(t, 30*time.Second, fmt.Sprintf("%s to receive %v", id, values), func() bool {
			got := raisedValues(historyOf(ctx, t, reader, id))
			if len(got) > len(values) {
				t.Fatalf("%s received %v, want %v", id, got, quoted(values))
			}
			return slices.Equal(got, quoted(values))
		})
	}
}

// drainedAll reports whether every control queue of b is empty.
func drainedAll(ctx context.Context, b *Backend) bool {
	for _, q := range b.control {
		if n, err := queueDepth(ctx, q); err != nil || n != 0 {
			return false
		}
	}
	return true
}

// TestBundleDeliveredByHand: events for instances of every partition,
// raised at once by the worker that owns them, travel in one message sent
// locked to it: one enqueue and one delete however many events, each
// instance's events in order. The parts' ids are confirmed when the bundle
// is deleted, so the next commit of each instance forgets them.
func TestBundleDeliveredByHand(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 4})
	c := openTest(t, Options{HubName: b.opts.HubName, Partitions: 4}) // a reader
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ids := []string{"h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7"}
	parts := map[int]bool{}
	for _, id := range ids {
		parts[b.partition(id)] = true
	}
	if len(parts) < 3 {
		t.Fatalf("the instances fall in %d partitions; pick ids that spread", len(parts))
	}
	startRunner(t, b, gatherRegistry(), 4)
	startGathers(ctx, t, c, b, ids)
	waitIdlePollers(t, b)
	events, want := rounds(t, ids, 3)
	before := b.Counter().Snapshot()
	if err := b.AddNewOrchestrationEvents(ctx, events); err != nil {
		t.Fatal(err)
	}
	waitReceived(ctx, t, c, want)
	poll(t, 10*time.Second, "the bundle to be deleted", func() bool {
		d := countsSince(before, b.Counter())
		return d["queue.delete"] >= 1 && drainedAll(ctx, c)
	})
	d := countsSince(before, b.Counter())
	if d["queue.enqueue"] != 1 || d["queue.delete"] != 1 {
		t.Errorf("requests %v: want one enqueue and one delete for %d events", d, len(events))
	}
	// One more event each, alone: its commit prunes the bundle's ids.
	client := dtbackend.NewTaskHubClient(c)
	for _, id := range ids {
		if err := client.RaiseEvent(ctx, api.InstanceID(id), "e", api.WithEventPayload("x")); err != nil {
			t.Fatal(err)
		}
		want[id] = append(want[id], "x")
	}
	waitReceived(ctx, t, c, want)
	for _, id := range ids {
		s, _, err := c.getSentinel(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if seen := parseSeen(s); len(seen) != 1 {
			t.Errorf("%s remembers %d consumed ids, want 1 (the last event's): the bundle's were never confirmed", id, len(seen))
		}
	}
	noDeadLetters(ctx, t, b)
}

// TestBundleFromAnotherProcess: a process that owns no partition (a
// client) sends one visible bundle per partition; the owner dequeues it
// and delivers every event in order.
func TestBundleFromAnotherProcess(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 4})
	c := openTest(t, Options{HubName: b.opts.HubName, Partitions: 4})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ids := []string{"v0", "v1", "v2", "v3", "v4", "v5"}
	parts := map[int]bool{}
	for _, id := range ids {
		parts[b.partition(id)] = true
	}
	startRunner(t, b, gatherRegistry(), 4)
	startGathers(ctx, t, c, b, ids)
	events, want := rounds(t, ids, 4)
	before := c.Counter().Snapshot()
	if err := c.AddNewOrchestrationEvents(ctx, events); err != nil {
		t.Fatal(err)
	}
	if d := countsSince(before, c.Counter()); d["queue.enqueue"] != int64(len(parts)) {
		t.Errorf("requests %v: want one enqueue per partition (%d)", d, len(parts))
	}
	waitReceived(ctx, t, c, want)
	poll(t, 10*time.Second, "the bundles to be deleted", func() bool { return drainedAll(ctx, c) })
	noDeadLetters(ctx, t, b)
}

// TestBundleComesBackWhole: the worker dies (a test hook) right after one
// instance's episode committed its part of a bundle, so that part is never
// settled and the bundle is never deleted; its lock expires and it comes
// back whole. The parts consumed meanwhile, including one whose instance
// committed again before the bundle came back, are dropped as copies:
// their ids are confirmed only once the bundle's message is gone.
func TestBundleComesBackWhole(t *testing.T) {
	t.Parallel()
	var copies atomic.Int64
	b := openTest(t, Options{Partitions: 2, LockTimeout: 3 * time.Second,
		Logger: slog.New(logWatch{substr: "dropping a copy", n: &copies})})
	c := openTest(t, Options{HubName: b.opts.HubName, Partitions: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ids := []string{"w0", "w1", "w2", "w3"}
	const victim = "w1"
	var armed, crashes atomic.Int32
	b.hooks.afterCommit = func(id string) bool {
		return id == victim && armed.Load() == 1 && crashes.Add(1) == 1
	}
	var bundles atomic.Int32
	b.hooks.enqueued = func(q *azqueue.QueueClient, body string, _ azqueue.EnqueueMessagesResponse) {
		if strings.Contains(body, `"ps":`) {
			bundles.Add(1)
		}
	}
	startRunner(t, b, gatherRegistry(), 4)
	startGathers(ctx, t, c, b, ids)
	waitIdlePollers(t, b)
	armed.Store(1)
	events, want := rounds(t, ids, 2)
	if err := b.AddNewOrchestrationEvents(ctx, events); err != nil {
		t.Fatal(err)
	}
	if bundles.Load() != 1 {
		t.Fatalf("%d bundles sent, want 1", bundles.Load())
	}
	waitReceived(ctx, t, c, want)
	if crashes.Load() != 1 {
		t.Fatalf("the hook crashed %d episodes, want 1", crashes.Load())
	}
	// Before the bundle comes back, the other instances commit again: a
	// commit would forget ids confirmed too early.
	client := dtbackend.NewTaskHubClient(c)
	for _, id := range ids {
		if id == victim {
			continue
		}
		if err := client.RaiseEvent(ctx, api.InstanceID(id), "e", api.WithEventPayload("x")); err != nil {
			t.Fatal(err)
		}
		want[id] = append(want[id], "x")
	}
	waitReceived(ctx, t, c, want)
	if copies.Load() != 0 {
		t.Fatalf("%d copies dropped before the bundle came back", copies.Load())
	}
	poll(t, 30*time.Second, "the bundle to come back, its parts dropped as copies, and be deleted", func() bool {
		return drainedAll(ctx, c) && copies.Load() >= int64(len(events))
	})
	for _, id := range ids {
		if err := client.RaiseEvent(ctx, api.InstanceID(id), "e", api.WithEventPayload("stop")); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		md := awaitDone(t, ctx, c, id, 30*time.Second)
		out, _ := json.Marshal(want[id])
		if md.SerializedOutput != string(out) {
			t.Errorf("%s received %s, want %s: a part was applied twice or lost", id, md.SerializedOutput, out)
		}
		checkHistory(t, id, historyOf(ctx, t, c, id))
	}
	noDeadLetters(ctx, t, b)
}

// TestBundleUnreadablePart: a bundle written by someone else with a part
// that cannot be read has that part dead-lettered on its own; the others
// are delivered and the bundle is deleted. A bundle in the work-item queue
// is dead-lettered whole.
func TestBundleUnreadablePart(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1})
	c := openTest(t, Options{HubName: b.opts.HubName, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	startRunner(t, b, gatherRegistry(), 2)
	startGathers(ctx, t, c, b, []string{"u0"})
	good, err := dtbackend.MarshalHistoryEvent(raisedEvent(t, "e", "fine"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(envelope{ID: "forged", Parts: []envelope{
		{ID: "p0", Instance: "u0", Event: []byte("not a protobuf event")},
		{ID: "p1", Instance: "u0", Event: good},
		{ID: "", Instance: "u0", Event: good},
	}})
	if _, err := c.control[0].EnqueueMessage(ctx, string(body), &azqueue.EnqueueMessageOptions{TimeToLive: to.Ptr[int32](-1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.work.EnqueueMessage(ctx, string(body), &azqueue.EnqueueMessageOptions{TimeToLive: to.Ptr[int32](-1)}); err != nil {
		t.Fatal(err)
	}
	b.orchWake.Notify()
	var letters []taskhub.DeadLetter
	poll(t, 30*time.Second, "three dead letters", func() bool {
		letters, err = c.DeadLetters(ctx)
		return err == nil && len(letters) == 3
	})
	reasons := map[string]int{}
	for _, l := range letters {
		switch {
		case strings.Contains(l.Reason, "unreadable bundle part"):
			reasons["part"]++
		case strings.Contains(l.Reason, "bundle in the work-item queue"):
			reasons["work"]++
		default:
			t.Errorf("dead letter %+v", l)
		}
	}
	if reasons["part"] != 2 || reasons["work"] != 1 {
		t.Errorf("dead letters by kind %v, want 2 unreadable parts and 1 bundle in the work-item queue", reasons)
	}
	poll(t, 20*time.Second, "the control queue to drain", func() bool { return drainedAll(ctx, c) })
}

// TestBundlePartsReleasedAtClose: a worker that stops with parts of a
// bundle still buffered (its only slot busy with another part's episode)
// sends them alone, in order, as it closes; the next owner of the
// partition delivers each once, and the bundle's message is deleted once
// its last part is settled (one consumed, the others sent alone).
func TestBundlePartsReleasedAtClose(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	a, err := Open(context.Background(), Options{ConnectionString: azr.Get(t).ConnectionString(), HubName: hub, Partitions: 1,
		MaxPollInterval: 200 * time.Millisecond, LeaseDuration: 3 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			a.Close()
		}
	})
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const first, second = "r0", "r1"
	entered, release := make(chan struct{}), make(chan struct{})
	var armed atomic.Bool
	var once sync.Once
	var secondRan, sentAlone atomic.Int32
	a.hooks.enqueued = func(_ *azqueue.QueueClient, body string, _ azqueue.EnqueueMessagesResponse) {
		if armed.Load() && strings.Contains(body, `"i":"`+second+`"`) && !strings.Contains(body, `"ps":`) {
			sentAlone.Add(1)
		}
	}
	a.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		if string(wi.InstanceID) == second && armed.Load() {
			secondRan.Add(1)
		}
		if string(wi.InstanceID) == first && armed.Load() {
			once.Do(func() {
				close(entered)
				select {
				case <-release:
				case <-ctx.Done():
				}
			})
		}
	}
	stopA := startRunner(t, a, gatherRegistry(), 1)
	startGathers(ctx, t, c, a, []string{first, second})
	waitIdlePollers(t, a)
	armed.Store(true)
	events, want := rounds(t, []string{first, second}, 3)
	if err := a.AddNewOrchestrationEvents(ctx, events); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the first instance's episode never started")
	}
	a.mu.Lock()
	buffered := len(a.pending[second])
	a.mu.Unlock()
	if buffered != 3 {
		t.Fatalf("%d of the second instance's parts buffered while the slot is busy, want 3", buffered)
	}
	// Stop: the blocked episode finishes, then Close sends the buffered
	// parts alone and gives the partition up.
	close(release)
	stopA()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	// Close hands what is buffered back at once: sent alone, not left to
	// come back when the bundle's lock runs out. (The runner may also have
	// taken the second instance's episode before it stopped.)
	if secondRan.Load() == 0 && sentAlone.Load() != 3 {
		t.Errorf("the closing worker sent %d of %s's 3 buffered parts alone, want 3", sentAlone.Load(), second)
	}
	b := openTest(t, Options{HubName: hub, Partitions: 1})
	startRunner(t, b, gatherRegistry(), 2)
	waitReceived(ctx, t, c, want)
	poll(t, 30*time.Second, "the queue to drain (the bundle deleted)", func() bool { return drainedAll(ctx, c) })
	client := dtbackend.NewTaskHubClient(c)
	for _, id := range []string{first, second} {
		if err := client.RaiseEvent(ctx, api.InstanceID(id), "e", api.WithEventPayload("stop")); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{first, second} {
		md := awaitDone(t, ctx, c, id, 30*time.Second)
		out, _ := json.Marshal(want[id])
		if md.SerializedOutput != string(out) {
			t.Errorf("%s received %s, want %s", id, md.SerializedOutput, out)
		}
	}
	noDeadLetters(ctx, t, b)
}
