package azurestorage

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
)

// delayedStarts records the scheduled start messages a backend sends, with
// the receipts that can make them visible before their time.
type delayedStarts struct {
	mu   sync.Mutex
	msgs map[string]sentMsg // by "instance|execution"
}

type sentMsg struct {
	q        *azqueue.QueueClient
	id, pop  string
	body     string
	instance string
}

func watchDelayedStarts(b *Backend) *delayedStarts {
	d := &delayedStarts{msgs: map[string]sentMsg{}}
	b.hooks.enqueued = func(q *azqueue.QueueClient, body string, resp azqueue.EnqueueMessagesResponse) {
		var env envelope
		if json.Unmarshal([]byte(body), &env) != nil || env.VisibleAt == 0 || len(env.Event) == 0 || len(resp.Messages) == 0 {
			return
		}
		e, err := dtbackend.UnmarshalHistoryEvent(env.Event)
		if err != nil || e.GetExecutionStarted() == nil {
			return
		}
		exec := e.GetExecutionStarted().GetOrchestrationInstance().GetExecutionId().GetValue()
		d.mu.Lock()
		defer d.mu.Unlock()
		d.msgs[env.Instance+"|"+exec] = sentMsg{q: q, id: *resp.Messages[0].MessageID, pop: *resp.Messages[0].PopReceipt, body: body, instance: env.Instance}
	}
	return d
}

// surface makes the scheduled start of the instance's execution visible now.
func (d *delayedStarts) surface(ctx context.Context, t *testing.T, instance, exec string) {
	t.Helper()
	d.mu.Lock()
	m, ok := d.msgs[instance+"|"+exec]
	d.mu.Unlock()
	if !ok {
		t.Fatalf("no delayed start was sent for %s execution %s", instance, exec)
	}
	if _, err := m.q.UpdateMessage(ctx, m.id, m.pop, m.body, &azqueue.UpdateMessageOptions{VisibilityTimeout: to.Ptr[int32](0)}); err != nil {
		t.Fatalf("make the start of %s visible: %v", instance, err)
	}
}

// calls counts orchestrator calls by input.
type calls struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *calls) get(in string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[in]
}

// laterRegistry's orchestrator "Later" counts its calls and waits for an
// event "go", then returns "ran <input>".
func laterRegistry(c *calls) *task.TaskRegistry {
	c.n = map[string]int{}
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Later", func(ctx *task.OrchestrationContext) (any, error) {
		var in string
		if err := ctx.GetInput(&in); err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.n[in]++
		c.mu.Unlock()
		if err := ctx.WaitForSingleEvent("go", -1).Await(nil); err != nil {
			return nil, err
		}
		return "ran " + in, nil
	})
	return r
}

func executionID(ctx context.Context, t *testing.T, b *Backend, id string) string {
	t.Helper()
	s, _, err := b.getSentinel(ctx, id)
	if err != nil || s == nil {
		t.Fatalf("status row of %s: %v, %v", id, s, err)
	}
	return s.str("ExecutionID")
}

// requireTerminatedUnrun checks that id ended Terminated with reason as its
// output and a history of its start and the termination alone.
func requireTerminatedUnrun(ctx context.Context, t *testing.T, b *Backend, id, input, reason string) {
	t.Helper()
	md, err := b.GetOrchestrationMetadata(ctx, api.InstanceID(id))
	if err != nil || md.RuntimeStatus != api.RUNTIME_STATUS_TERMINATED || md.SerializedOutput != reason {
		t.Fatalf("%s: %v %v, want Terminated with output %s", id, md, err, reason)
	}
	if md.Name != "Later" || md.SerializedInput != input {
		t.Errorf("%s: name %q input %q, want Later %s", id, md.Name, md.SerializedInput, input)
	}
	h := historyOf(ctx, t, b, id)
	if len(h) != 3 || h[0].GetExecutionStarted() == nil || h[1].GetOrchestratorStarted() == nil || h[2].GetExecutionCompleted() == nil ||
		h[0].GetExecutionStarted().GetInput().GetValue() != input || h[0].GetExecutionStarted().GetName() != "Later" ||
		h[2].GetExecutionCompleted().GetOrchestrationStatus() != api.RUNTIME_STATUS_TERMINATED || h[2].GetExecutionCompleted().GetResult().GetValue() != reason {
		t.Fatalf("%s: history %v, want [ExecutionStarted Later %s, OrchestratorStarted, ExecutionCompleted Terminated %s]", id, h, input, reason)
	}
	if s, _, _ := b.getSentinel(ctx, id); s == nil || s.str(startEventProp) != "" {
		t.Errorf("%s: the status row still records its start: %v", id, s)
	}
}

// TestTerminateBeforeScheduledStart: an instance scheduled an hour ahead is
// Terminated within seconds of a terminate, with its reason as output, and
// its orchestrator never runs; when its start message surfaces it is dropped
// as a copy (the queue empties) and the instance stays as it was. A second
// terminate changes nothing.
func TestTerminateBeforeScheduledStart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	b := openTest(t, Options{Partitions: 2, LockTimeout: 3 * time.Second})
	starts := watchDelayedStarts(b)
	var ran calls
	startWorker(t, b, laterRegistry(&ran))
	client := dtbackend.NewTaskHubClient(b)
	const id = "later"
	q := b.controlFor(id)
	if _, err := client.ScheduleNewOrchestration(ctx, "Later", api.WithInstanceID(id), api.WithInput("in"), api.WithStartTime(time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	exec := executionID(ctx, t, b, id)
	if md, err := b.GetOrchestrationMetadata(ctx, id); err != nil || md.RuntimeStatus != api.RUNTIME_STATUS_PENDING {
		t.Fatalf("before the terminate: %v, %v", md, err)
	}
	if s, _, _ := b.getSentinel(ctx, id); s.str(startEventProp) == "" {
		t.Fatalf("the status row of a scheduled instance does not record its start: %v", s)
	}
	asked := time.Now()
	if err := client.TerminateOrchestration(ctx, id, api.WithOutput("cancelled early")); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "the terminate to end the instance", func() bool {
		md, err := b.GetOrchestrationMetadata(ctx, id)
		return err == nil && md.RuntimeStatus == api.RUNTIME_STATUS_TERMINATED
	})
	t.Logf("terminated %s after the request", time.Since(asked).Round(time.Millisecond))
	requireTerminatedUnrun(ctx, t, b, id, `"in"`, `"cancelled early"`)
	if err := client.TerminateOrchestration(ctx, id, api.WithOutput("again")); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "the terminates to be deleted (only the delayed start left)", func() bool { return depth(ctx, t, q) == 1 })

	starts.surface(ctx, t, id, exec)
	poll(t, 10*time.Second, "the surfaced start to be dropped", func() bool { return depth(ctx, t, q) == 0 })
	requireTerminatedUnrun(ctx, t, b, id, `"in"`, `"cancelled early"`)
	if n := ran.get("in"); n != 0 {
		t.Fatalf("the orchestrator ran %d times", n)
	}
	noDeadLetters(ctx, t, b)
}

// TestTerminateBeforeScheduledStartThenReuse: after a terminate before the
// start, the id can be purged and reused. The old start, coming due later,
// never starts anything: not when it finds no status row (dropped once the
// create's grace has passed), not when it finds a new instance of the id
// still Pending (another execution: stale); the new instances start
// normally.
func TestTerminateBeforeScheduledStartThenReuse(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	o := Options{Partitions: 2, LockTimeout: 3 * time.Second}
	o.createGrace = 2 * time.Second
	b := openTest(t, o)
	var ran calls
	startWorker(t, b, laterRegistry(&ran))
	client := dtbackend.NewTaskHubClient(b)
	later := func(id, input string, at time.Time) string {
		t.Helper()
		opts := []api.NewOrchestrationOptions{api.WithInstanceID(api.InstanceID(id)), api.WithInput(input)}
		if !at.IsZero() {
			opts = append(opts, api.WithStartTime(at))
		}
		if _, err := client.ScheduleNewOrchestration(ctx, "Later", opts...); err != nil {
			t.Fatal(err)
		}
		return executionID(ctx, t, b, id)
	}
	terminate := func(id string) {
		t.Helper()
		if err := client.TerminateOrchestration(ctx, api.InstanceID(id), api.WithOutput("stop")); err != nil {
			t.Fatal(err)
		}
		poll(t, 10*time.Second, id+" to be terminated", func() bool {
			md, err := b.GetOrchestrationMetadata(ctx, api.InstanceID(id))
			return err == nil && md.RuntimeStatus == api.RUNTIME_STATUS_TERMINATED
		})
	}
	purge := func(id string) {
		t.Helper()
		if err := client.PurgeOrchestrationState(ctx, api.InstanceID(id)); err != nil {
			t.Fatalf("purge %s: %v", id, err)
		}
	}
	finish := func(id, want string) {
		t.Helper()
		poll(t, 15*time.Second, id+" to start", func() bool {
			md, err := b.GetOrchestrationMetadata(ctx, api.InstanceID(id))
			return err == nil && md.RuntimeStatus == api.RUNTIME_STATUS_RUNNING
		})
		if err := client.RaiseEvent(ctx, api.InstanceID(id), "go"); err != nil {
			t.Fatal(err)
		}
		md := waitDone(t, ctx, b, api.InstanceID(id))
		if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || md.SerializedOutput != want {
			t.Fatalf("%s: %v, want Completed %s", id, md, want)
		}
	}
	// Purged: the old start, come due, finds no status row and is dropped.
	const p = "purged"
	oldDue := time.Now().Add(3 * time.Second)
	later(p, "old", oldDue)
	terminate(p)
	purge(p)
	poll(t, 20*time.Second, "the orphaned start to come due and be dropped", func() bool {
		return time.Now().After(oldDue) && depth(ctx, t, b.controlFor(p)) == 0
	})
	if _, err := b.GetOrchestrationMetadata(ctx, p); !errors.Is(err, api.ErrInstanceNotFound) {
		t.Fatalf("the purged instance is back: %v", err)
	}
	later(p, "new", time.Time{})
	finish(p, `"ran new"`)

	// Reused, the new instance Pending too: the old start, come due, is
	// stale (another execution than the status row's).
	const r = "reused"
	oldDue = time.Now().Add(3 * time.Second)
	later(r, "old", oldDue)
	terminate(r)
	purge(r)
	due := time.Now().Add(10 * time.Second)
	fresh := later(r, "new", due)
	poll(t, 8*time.Second, "the old start to come due and be dropped", func() bool {
		return time.Now().After(oldDue) && depth(ctx, t, b.controlFor(r)) == 1
	})
	if md, err := b.GetOrchestrationMetadata(ctx, r); err != nil || md.RuntimeStatus != api.RUNTIME_STATUS_PENDING || executionID(ctx, t, b, r) != fresh {
		t.Fatalf("the new instance after the old start came due: %v, %v", md, err)
	}
	if time.Now().After(due) {
		t.Fatal("the old start was not dropped before the new one came due")
	}
	finish(r, `"ran new"`)

	if ran.get("old") != 0 {
		t.Fatalf("a terminated execution ran %d times", ran.get("old"))
	}
	noDeadLetters(ctx, t, b)
}

// TestTerminateMeetsDueStart: a start that comes due in the same episode as
// the terminate never runs either: no work item is ever handed out, and the
// history holds the start as it was sent.
func TestTerminateMeetsDueStart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := openTest(t, Options{Partitions: 1, LockTimeout: 3 * time.Second})
	client := dtbackend.NewTaskHubClient(b)
	const id = "due"
	if _, err := client.ScheduleNewOrchestration(ctx, "Later", api.WithInstanceID(id), api.WithInput("in"), api.WithStartTime(time.Now().Add(2*time.Second))); err != nil {
		t.Fatal(err)
	}
	// No worker polls: the start comes due and waits, visible, in the
	// queue, and the terminate joins it.
	poll(t, 10*time.Second, "the start to come due", func() bool { return len(peekEnvelopes(ctx, t, b.controlFor(id))) == 1 })
	if err := client.TerminateOrchestration(ctx, id, api.WithOutput("due and done")); err != nil {
		t.Fatal(err)
	}
	if n := len(peekEnvelopes(ctx, t, b.controlFor(id))); n != 2 {
		t.Fatalf("%d visible messages, want the start and the terminate", n)
	}
	fctx, fcancel := context.WithTimeout(ctx, 3*time.Second)
	defer fcancel()
	if wi, err := b.GetOrchestrationWorkItem(fctx); !errors.Is(err, dtbackend.ErrNoWorkItems) {
		t.Fatalf("GetOrchestrationWorkItem: %v, %v; want no work (the instance ended without running)", wi, err)
	}
	requireTerminatedUnrun(ctx, t, b, id, `"in"`, `"due and done"`)
	if n := depth(ctx, t, b.controlFor(id)); n != 0 {
		t.Fatalf("%d messages left", n)
	}
}

// TestTerminateBeforeStatusRow: a terminate that a worker meets before the
// creator has written the status row waits for it, then acts at once.
func TestTerminateBeforeStatusRow(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := openTest(t, Options{Partitions: 1, LockTimeout: 3 * time.Second})
	var ran calls
	startWorker(t, b, laterRegistry(&ran))
	client := dtbackend.NewTaskHubClient(b)
	const id = "early"
	var sent, met atomic.Bool
	b.hooks.enqueued = func(q *azqueue.QueueClient, body string, resp azqueue.EnqueueMessagesResponse) {
		var env envelope
		if json.Unmarshal([]byte(body), &env) != nil || env.VisibleAt == 0 || env.Instance != id || !sent.CompareAndSwap(false, true) {
			return
		}
		// The start is sent and its status row not yet written: terminate
		// now, and let the worker meet the terminate first.
		if err := client.TerminateOrchestration(ctx, id, api.WithOutput("before the row")); err != nil {
			t.Error(err)
		}
		poll(t, 10*time.Second, "the worker to meet the terminate", met.Load)
	}
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) { t.Errorf("work item for %s", wi.InstanceID) }
	var seen atomic.Int32
	b.hooks.heldBack = func(iid string) {
		if iid == id && seen.Add(1) == 1 {
			met.Store(true)
		}
	}
	if _, err := client.ScheduleNewOrchestration(ctx, "Later", api.WithInstanceID(id), api.WithInput("in"), api.WithStartTime(time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	poll(t, 15*time.Second, "the terminate to end the instance", func() bool {
		md, err := b.GetOrchestrationMetadata(ctx, id)
		return err == nil && md.RuntimeStatus == api.RUNTIME_STATUS_TERMINATED
	})
	requireTerminatedUnrun(ctx, t, b, id, `"in"`, `"before the row"`)
	if ran.get("in") != 0 {
		t.Fatal("the orchestrator ran")
	}
}

// TestTerminateBeforeStartCrashes: a worker that dies before the terminate's
// commit leaves it to the next delivery, which commits it; one that dies
// after it leaves copies that are dropped, and the instance ends once.
func TestTerminateBeforeStartCrashes(t *testing.T) {
	t.Parallel()
	for _, at := range []string{"before", "after"} {
		t.Run(at, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			b := openTest(t, Options{Partitions: 1, LockTimeout: 2 * time.Second})
			var crashed atomic.Int32
			crash := func(iid string) bool { return iid == "doomed" && crashed.Add(1) == 1 }
			if at == "before" {
				b.hooks.beforeCommit = crash
			} else {
				b.hooks.afterCommit = crash
			}
			var ran calls
			startWorker(t, b, laterRegistry(&ran))
			client := dtbackend.NewTaskHubClient(b)
			const id = "doomed"
			if _, err := client.ScheduleNewOrchestration(ctx, "Later", api.WithInstanceID(id), api.WithInput("in"), api.WithStartTime(time.Now().Add(time.Hour))); err != nil {
				t.Fatal(err)
			}
			if err := client.TerminateOrchestration(ctx, id, api.WithOutput("crashed")); err != nil {
				t.Fatal(err)
			}
			poll(t, 10*time.Second, "the crash", func() bool { return crashed.Load() > 0 })
			if md, _ := b.GetOrchestrationMetadata(ctx, id); at == "before" && md.RuntimeStatus != api.RUNTIME_STATUS_PENDING {
				t.Fatalf("a commit that did not happen shows: %v", md)
			}
			poll(t, 20*time.Second, "the terminate to be redelivered and consumed", func() bool {
				md, err := b.GetOrchestrationMetadata(ctx, id)
				return err == nil && md.RuntimeStatus == api.RUNTIME_STATUS_TERMINATED && depth(ctx, t, b.controlFor(id)) == 1
			})
			// Before: the redelivery commits (the hook runs again). After:
			// the redelivery is a copy, and nothing commits again.
			if n := crashed.Load(); at == "before" && n < 2 || at == "after" && n != 1 {
				t.Fatalf("the commit point was reached %d times", n)
			}
			requireTerminatedUnrun(ctx, t, b, id, `"in"`, `"crashed"`)
			if ran.get("in") != 0 {
				t.Fatal("the orchestrator ran")
			}
			noDeadLetters(ctx, t, b)
		})
	}
}
