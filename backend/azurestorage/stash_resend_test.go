package azurestorage

// Regression tests for an exactly-once violation once seen in
// TestCacheDuplicateMessage/copy_beside_a_new_message (history
// ["a","b","m","a","n"]): a message sent from another orchestration's
// outbox (envelope From set: copies of it may be re-sent later) that
// reaches its instance before the instance's start is stashed
// (orchestration.go, stash). The stash row did not keep From, so the
// episode that consumed it recorded its id in Seen without the resend flag
// (commit.go, statusRow: it.stashUsed); the first copy dropped (its delete
// confirmed) let the next commit prune the id (dedupe.go, pruneSeen:
// confirmed && !resend), and the copy after that was applied again. A
// stash row now keeps From, and the id of a stashed message from an
// outbox stays in Seen at least resendWindow like any other.

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// seenEntryOf is the Seen entry of msgID in id's status row, read through
// c (nil if there is none).
func seenEntryOf(ctx context.Context, t *testing.T, c *Backend, id, msgID string) *seenEntry {
	t.Helper()
	e, _, err := c.getSentinel(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range parseSeen(e) {
		if s.key == seenKey(msgID) {
			return &s
		}
	}
	return nil
}

// copiesAfterStash runs, on an instance "Gather" whose first event "a"
// (envelope a, from another orchestration's outbox) was applied, the
// sequence of TestCacheDuplicateMessage: a copy of "a" alone, a new event
// "b", then a copy of "a" with a new event "n". Each copy must be dropped.
func copiesAfterStash(ctx context.Context, t *testing.T, b, c *Backend, id string, a envelope) {
	t.Helper()
	client := dtbackend.NewTaskHubClient(c)
	if s := seenEntryOf(ctx, t, c, id, a.ID); s == nil || !s.resend {
		t.Errorf("Seen entry of %q after the episode that consumed its stash row: %+v; want one with resend "+
			"(the message came from an outbox, copies of it can be re-sent: the stash row lost its From)", a.ID, s)
	}
	send := func(env envelope, value string) {
		t.Helper()
		if err := c.send(ctx, c.controlFor(id), env, raisedEvent(t, "e", value), time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	drained := func() bool {
		n, err := queueDepth(ctx, c.control[0])
		return err == nil && n == 0 && settled(b, id)
	}
	events := func(values ...string) func() bool {
		return func() bool {
			return slices.Equal(raisedValues(historyOf(ctx, t, c, id)), quoted(values))
		}
	}
	// The first copy is dropped; its delete is confirmed.
	send(a, "a")
	poll(t, 20*time.Second, "the first copy to be consumed", drained)
	if !events("a")() {
		t.Fatalf("history's events %v after the first copy", raisedValues(historyOf(ctx, t, c, id)))
	}
	// A commit: it prunes the confirmed ids of Seen.
	if err := client.RaiseEvent(ctx, api.InstanceID(id), "e", api.WithEventPayload("b")); err != nil {
		t.Fatal(err)
	}
	poll(t, 20*time.Second, "b to be applied", events("a", "b"))
	poll(t, 10*time.Second, "the queue to drain", drained)
	if s := seenEntryOf(ctx, t, c, id, a.ID); s == nil {
		t.Errorf("the id of %q left Seen at the commit after its first copy was dropped: "+
			"a copy re-sent within resendWindow will be applied again", a.ID)
	}
	// The second copy, and a new event.
	send(a, "a")
	if err := client.RaiseEvent(ctx, api.InstanceID(id), "e", api.WithEventPayload("n")); err != nil {
		t.Fatal(err)
	}
	poll(t, 20*time.Second, "n to be applied", func() bool {
		return slices.Contains(raisedValues(historyOf(ctx, t, c, id)), `"n"`)
	})
	poll(t, 10*time.Second, "the queue to drain", drained)
	if got := raisedValues(historyOf(ctx, t, c, id)); !slices.Equal(got, quoted([]string{"a", "b", "n"})) {
		t.Errorf("history's events %v, want [\"a\" \"b\" \"n\"]: a copy of a message re-sent from an outbox was applied twice", got)
	}
	if err := client.RaiseEvent(ctx, api.InstanceID(id), "e", api.WithEventPayload("stop")); err != nil {
		t.Fatal(err)
	}
	if md := awaitDone(t, ctx, c, id, 20*time.Second); md.SerializedOutput != `["a","b","n"]` {
		t.Errorf("output %s", md.SerializedOutput)
	}
	checkHistory(t, id, historyOf(ctx, t, c, id))
	noDeadLetters(ctx, t, b)
}

// TestStashedResendRemembered: an outbox message that arrives before its
// instance exists is stashed, and consumed with the start. Its id must stay
// in Seen as one that can be re-sent.
func TestStashedResendRemembered(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 1, LeaseDuration: 5 * time.Minute})
	c := openTest(t, Options{HubName: hub, Partitions: 1}) // client, and sender of copies
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const id = "dup"
	startRunner(t, b, gatherRegistry(), 1)
	a := envelope{ID: "outbox-of-sender|a", Instance: id, From: "sender"}
	if err := c.send(ctx, c.controlFor(id), a, raisedEvent(t, "e", "a"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 20*time.Second, "a to be stashed", func() bool {
		n, err := queueDepth(ctx, c.control[0])
		return err == nil && n == 0 && slices.ContainsFunc(rowKeys(ctx, t, c, id), func(k string) bool { return strings.HasPrefix(k, stashRKPre) })
	})
	if _, err := dtbackend.NewTaskHubClient(c).ScheduleNewOrchestration(ctx, "Gather", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	poll(t, 20*time.Second, "a to be applied", func() bool {
		return slices.Equal(raisedValues(historyOf(ctx, t, c, id)), quoted([]string{"a"})) && settled(b, id)
	})
	copiesAfterStash(ctx, t, b, c, id, a)
}

// TestStartRaceStashesResend is the interleaving of the flake: the worker
// dequeues the start between the creator's enqueue and its Add of the
// status row (createInstance), so the start's episode runs on no row and
// its commit (an Add) conflicts with the creator's: ErrWorkItemLockLost,
// and the start is released for a second. The first event, sent as soon
// as the create returned, is consumed meanwhile by an episode that finds a
// Pending row and no start: it is stashed. The start then consumes it.
func TestStartRaceStashesResend(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 1, LeaseDuration: 5 * time.Minute})
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const id = "dup"
	a := envelope{ID: "outbox-of-sender|a", Instance: id, From: "sender"}
	var (
		mu         sync.Mutex
		startSeen  = make(chan struct{}) // the worker built the start's episode on no status row
		startOnce  sync.Once
		raced      bool
		commitOnce sync.Once
	)
	isStart := func(body string) bool {
		var env envelope
		if json.Unmarshal([]byte(body), &env) != nil || env.Instance != id || env.Event == nil {
			return false
		}
		e, err := dtbackend.UnmarshalHistoryEvent(env.Event)
		return err == nil && e.GetExecutionStarted() != nil
	}
	var blockOnce sync.Once
	c.hooks.enqueued = func(_ *azqueue.QueueClient, body string, _ azqueue.EnqueueMessagesResponse) {
		if !isStart(body) {
			return
		}
		// The creator is between its enqueue and its Add: wait until the
		// worker has built the start's episode.
		blockOnce.Do(func() {
			select {
			case <-startSeen:
			case <-time.After(20 * time.Second):
			}
		})
	}
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		if wi.InstanceID != id || !hasStart(wi.NewEvents) {
			return
		}
		if itemOf(wi).state.sentinel == nil {
			mu.Lock()
			raced = true
			mu.Unlock()
			startOnce.Do(func() { close(startSeen) })
		}
	}
	b.hooks.beforeCommit = func(cid string) bool {
		if cid != id {
			return false
		}
		commitOnce.Do(func() {
			// The first commit of the start waits for the creator's Add,
			// and for the worker to hold the first event (sent once the
			// create returned), so that its episode is the next.
			deadline := time.Now().Add(20 * time.Second)
			for time.Now().Before(deadline) {
				e, _, err := c.getSentinel(ctx, id)
				b.mu.Lock()
				held := len(b.pending[id]) > 0
				b.mu.Unlock()
				if err == nil && e != nil && held {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
		return false
	}
	// Two slots: the first event is dequeued while the start's episode
	// waits in its commit.
	startRunner(t, b, gatherRegistry(), 2)
	if _, err := dtbackend.NewTaskHubClient(c).ScheduleNewOrchestration(ctx, "Gather", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	if err := c.send(ctx, c.controlFor(id), a, raisedEvent(t, "e", "a"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 20*time.Second, "a to be applied", func() bool {
		return slices.Equal(raisedValues(historyOf(ctx, t, c, id)), quoted([]string{"a"})) && settled(b, id)
	})
	mu.Lock()
	didRace := raced
	mu.Unlock()
	if !didRace {
		t.Fatal("the scenario did not happen: the start's episode was not built before the creator's Add")
	}
	copiesAfterStash(ctx, t, b, c, id, a)
}
