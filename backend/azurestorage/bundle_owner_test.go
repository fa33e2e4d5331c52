package azurestorage

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/google/uuid"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// TestBundlePartsForAnotherOwner: a visible bundle in partition P's
// control queue carries parts for instances of P and of another partition
// Q, owned by another worker. This is what a worker leaves behind when it
// delivered a bundle to itself by hand for several partitions it owned and
// died: the bundle reappears in one control queue, and that queue's owner
// dequeues it. The owner of P (worker A) must run its own instances' parts
// and forward each part of Q's instances alone, visible, to Q's control
// queue, where their owner (worker B) runs them: every instance receives
// its events once and in the order they were given in (the parts of one
// instance must be sent alone one after the other, not side by side), the
// bundle message is deleted once its last part is settled, and nothing is
// dead-lettered.
func TestBundlePartsForAnotherOwner(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	a := openTest(t, Options{HubName: hub, Partitions: 2, WorkerID: "wa"})
	b := openTest(t, Options{HubName: hub, Partitions: 2, WorkerID: "wb"})
	c := openTest(t, Options{HubName: hub, Partitions: 2}) // a client: no runner, no lease, a reader
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// What A sends while armed (its forwarded parts), and the instances of
	// the episodes A runs. Set before A's runner starts.
	var armed atomic.Bool
	var mu sync.Mutex
	type sent struct {
		queue *azqueue.QueueClient
		env   envelope
	}
	var forwarded []sent
	ranOnA := map[string]bool{}
	a.hooks.enqueued = func(q *azqueue.QueueClient, body string, _ azqueue.EnqueueMessagesResponse) {
		if !armed.Load() {
			return
		}
		var env envelope
		if err := json.Unmarshal([]byte(body), &env); err != nil {
			env.ID = "unreadable: " + body
		}
		mu.Lock()
		forwarded = append(forwarded, sent{q, env})
		mu.Unlock()
	}
	a.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		mu.Lock()
		ranOnA[string(wi.InstanceID)] = true
		mu.Unlock()
	}
	startRunner(t, a, gatherRegistry(), 4)
	startRunner(t, b, gatherRegistry(), 4)

	// One partition each, neither being handed off.
	began := time.Now()
	var p, q int
	poll(t, 30*time.Second, "A and B to own one partition each", func() bool {
		ownA, ownB := a.lm.owners(), b.lm.owners()
		if len(ownA) != 1 || len(ownB) != 1 || ownA[0] == ownB[0] ||
			!slices.Equal(a.lm.partitions(), ownA) || !slices.Equal(b.lm.partitions(), ownB) {
			return false
		}
		p, q = ownA[0], ownB[0]
		return true
	})
	t.Logf("A owns partition %d, B owns partition %d (after %s)", p, q, time.Since(began).Round(time.Millisecond))

	aIDs := idsOn("pa", 2, 2, []int{p})
	bIDs := idsOn("pb", 3, 2, []int{q})
	startGathers(ctx, t, c, a, aIDs)
	startGathers(ctx, t, c, b, bIDs)

	// The wake-ups that make this prompt: C's view of the hub must name A
	// as P's owner (C wakes it for the bundle), and A's must name B as Q's
	// (A wakes it for each forwarded part). A learns of B's claim at its
	// next lease round, LeaseDuration/3 after the hand-off; without these
	// the messages wait for an idle poll (IdlePollInterval, 15 s).
	began = time.Now()
	poll(t, 30*time.Second, "C's and A's wake-up views to name P's and Q's owners", func() bool {
		return slices.Equal(c.wakeups.targets(p), []string{a.wakeups.address()}) &&
			slices.Equal(a.wakeups.targets(q), []string{b.wakeups.address()})
	})
	t.Logf("wake-up views up to date after %s", time.Since(began).Round(time.Millisecond))

	// The bundle: parts built as AddNewOrchestrationEvents builds them,
	// the instances of A and B interleaved, three events each in order.
	var mixed []string
	for i := range max(len(aIDs), len(bIDs)) {
		if i < len(aIDs) {
			mixed = append(mixed, aIDs[i])
		}
		if i < len(bIDs) {
			mixed = append(mixed, bIDs[i])
		}
	}
	events, want := rounds(t, mixed, 3)
	var parts []envelope
	partsOfB := map[string]envelope{} // by part id
	valueOf := map[string]string{}    // each part's value, by part id
	for _, r := range events {
		payload, err := dtbackend.MarshalHistoryEvent(r.Event)
		if err != nil {
			t.Fatal(err)
		}
		env := envelope{ID: uuid.NewString(), Instance: string(r.Instance), Event: payload}
		parts = append(parts, env)
		valueOf[env.ID] = r.Event.GetEventRaised().GetInput().GetValue()
		if c.partition(env.Instance) == q {
			partsOfB[env.ID] = env
		}
	}
	beforeA, beforeC := a.Counter().Snapshot(), c.Counter().Snapshot()
	armed.Store(true)
	sentAt := time.Now()
	if err := c.sendBundle(ctx, p, parts); err != nil {
		t.Fatal(err)
	}
	if d := countsSince(beforeC, c.Counter()); d["queue.enqueue"] != 1 {
		t.Fatalf("C's requests %v: want the %d events sent as one message", d, len(parts))
	}

	// On failure: the order in which A's sends of an instance's parts
	// completed (a hint: sends in flight together may reach the queue in
	// another order).
	sendOrder := func(id string) string {
		mu.Lock()
		defer mu.Unlock()
		var vs []string
		for _, s := range forwarded {
			if s.env.Instance == id {
				vs = append(vs, valueOf[s.env.ID])
			}
		}
		return fmt.Sprintf("A's sends of %s's parts to Q's queue completed in the order %v", id, vs)
	}
	waitInOrder(t, ctx, c, []*Backend{a, b}, want, 30*time.Second, sendOrder)
	waitReceived(ctx, t, c, want)
	t.Logf("%d events for %d instances received %s after the bundle was sent", len(parts), len(mixed), time.Since(sentAt).Round(time.Millisecond))
	deadline := time.Now().Add(30 * time.Second)
	for !drainedAll(ctx, c) {
		if time.Now().After(deadline) {
			t.Fatalf("the control queues did not drain (the bundle, or a forwarded part, is left)\n%s", hubDump(c, []*Backend{a, b}))
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}

	// A forwarded each of B's parts once, alone, to Q's control queue, and
	// nothing else; deleted one message: the bundle.
	d := countsSince(beforeA, a.Counter())
	mu.Lock()
	got := map[string]int{}
	for _, s := range forwarded {
		env := s.env
		orig, ok := partsOfB[env.ID]
		switch {
		case !ok:
			t.Errorf("A sent %s to %s: not one of B's parts", env.ID, queueName(s.queue))
		case s.queue != a.control[q]:
			t.Errorf("A sent B's part %s to %s, want Q's control queue %s", env.ID, queueName(s.queue), queueName(a.control[q]))
		case len(env.Parts) > 0 || env.Instance != orig.Instance || !slices.Equal(env.Event, orig.Event):
			t.Errorf("A sent B's part %s for %q with %d parts, want it alone, for %q, its event as it was in the bundle", env.ID, env.Instance, len(env.Parts), orig.Instance)
		}
		got[env.ID]++
	}
	for id, env := range partsOfB {
		if got[id] != 1 {
			t.Errorf("A forwarded B's part %s (for %s) %d times, want once", id, env.Instance, got[id])
		}
	}
	for id := range ranOnA {
		if c.partition(id) != p {
			t.Errorf("A ran an episode of %s, an instance of B's partition %d", id, q)
		}
	}
	mu.Unlock()
	if d["queue.enqueue"] != int64(len(partsOfB)) || d["queue.delete"] != 1 {
		t.Errorf("A's requests %v: want one enqueue per forwarded part (%d) and one delete (the bundle)", d, len(partsOfB))
	}

	client := dtbackend.NewTaskHubClient(c)
	for _, id := range mixed {
		if err := client.RaiseEvent(ctx, api.InstanceID(id), "e", api.WithEventPayload("stop")); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range mixed {
		md := awaitDone(t, ctx, c, id, 30*time.Second)
		out, _ := json.Marshal(want[id])
		if md.SerializedOutput != string(out) {
			t.Errorf("%s received %s, want %s: a part was lost, applied twice or out of order", id, md.SerializedOutput, out)
		}
		checkHistory(t, id, historyOf(ctx, t, c, id))
	}
	noDeadLetters(ctx, t, c)
}

// waitInOrder waits until every instance's history holds exactly its
// wanted values, in order. It fails at once when what an instance received
// so far is not a prefix of them (an event out of order, twice, or not its
// own), and otherwise when timeout passes, with the hub as workers see it;
// hint(id) adds to either failure.
func waitInOrder(t *testing.T, ctx context.Context, reader *Backend, workers []*Backend, want map[string][]string, timeout time.Duration, hint func(id string) string) {
	t.Helper()
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	deadline := time.Now().Add(timeout)
	for _, id := range ids {
		values := quoted(want[id])
		for {
			got := raisedValues(historyOf(ctx, t, reader, id))
			if len(got) > len(values) || !slices.Equal(got, values[:len(got)]) {
				t.Fatalf("%s (partition %d) received %v, want %v in this order; %s", id, reader.partition(id), got, values, hint(id))
			}
			if len(got) == len(values) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s (partition %d) received %v, not all of %v within %s; %s\n%s", id, reader.partition(id), got, values, timeout,
					hint(id), hubDump(reader, workers, id))
			}
			time.Sleep(20 * time.Millisecond) // polling interval
		}
	}
}
