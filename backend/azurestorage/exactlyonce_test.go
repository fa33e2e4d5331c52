package azurestorage

// Scenario tests of the checkpoint protocol's invariants (commit.go,
// dedupe.go, history.go): each stops or disturbs an episode at one point,
// as a crash, a stale owner or a redelivery would, on real Azurite, and
// checks that every instance still ends with the result its committed
// history says and that each decision took effect once.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// runs counts activity or orchestrator runs by name.
type runs struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *runs) add(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[name]++
}

func (r *runs) get(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[name]
}

// touchSentinel changes an instance's status row as another worker's
// commit would, so that a commit prepared before fails its fence.
func touchSentinel(ctx context.Context, t *testing.T, b *Backend, id string) {
	t.Helper()
	touch := newEntity(escapeKey(id), sentinelRK)
	touch["Touched"] = time.Now().String()
	anyTag := azcore.ETagAny
	if _, err := b.history.UpdateEntity(ctx, touch.marshal(), &aztables.UpdateEntityOptions{UpdateMode: aztables.UpdateModeMerge, IfMatch: &anyTag}); err != nil {
		t.Errorf("touch sentinel of %s: %v", id, err)
	}
}

// rowKeys lists the row keys of an instance partition.
func rowKeys(ctx context.Context, t *testing.T, b *Backend, id string) []string {
	t.Helper()
	rows, err := b.partitionRows(ctx, escapeKey(id), true)
	if err != nil {
		t.Fatalf("read partition of %s: %v", id, err)
	}
	var keys []string
	for _, r := range rows {
		keys = append(keys, r.str("RowKey"))
	}
	slices.Sort(keys)
	return keys
}

func awaitDone(t *testing.T, ctx context.Context, b *Backend, id string, timeout time.Duration) *api.OrchestrationMetadata {
	t.Helper()
	var md *api.OrchestrationMetadata
	poll(t, timeout, "instance "+id+" to finish", func() bool {
		var err error
		md, err = b.GetOrchestrationMetadata(ctx, api.InstanceID(id))
		return err == nil && md.IsComplete()
	})
	return md
}

func noDeadLetters(ctx context.Context, t *testing.T, b *Backend) {
	t.Helper()
	dls, err := b.ListDeadLetters(ctx)
	if err != nil || len(dls) != 0 {
		t.Errorf("dead letters: %+v, %v", dls, err)
	}
}

// TestDivergentRerun: an episode that fails to commit and runs again
// deciding differently (it sees another event first) must not let the
// lost decision act: the activity or child the lost run chose never runs,
// and the instance ends with the re-run's result.
func TestDivergentRerun(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"activity", "child"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			b := openTest(t, Options{Partitions: 1})
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			var ran runs
			r := task.NewTaskRegistry()
			r.AddOrchestratorN("Pick", func(c *task.OrchestrationContext) (any, error) {
				var pick, out string
				if err := c.WaitForSingleEvent("pick", -1).Await(&pick); err != nil {
					return nil, err
				}
				if mode == "activity" {
					err := c.CallActivity(pick).Await(&out)
					return out, err
				}
				err := c.CallSubOrchestrator("Child", task.WithSubOrchestratorInput(pick), task.WithSubOrchestrationInstanceID("child-"+pick)).Await(&out)
				return out, err
			})
			r.AddOrchestratorN("Child", func(c *task.OrchestrationContext) (any, error) {
				var in string
				if err := c.GetInput(&in); err != nil {
					return nil, err
				}
				// The child's effect is an activity: an orchestrator
				// function itself may run again (replay, a lost commit).
				err := c.CallActivity("Effect", task.WithActivityInput("child-"+in)).Await(nil)
				return strings.ToLower(in), err
			})
			r.AddActivityN("Effect", func(c task.ActivityContext) (any, error) {
				var name string
				err := c.GetInput(&name)
				ran.add(name)
				return nil, err
			})
			for _, name := range []string{"Foo", "Bar"} {
				r.AddActivityN(name, func(task.ActivityContext) (any, error) {
					ran.add(name)
					return strings.ToLower(name), nil
				})
			}
			client := dtbackend.NewTaskHubClient(b)
			const id = "diverge"
			if _, err := client.ScheduleNewOrchestration(ctx, "Pick", api.WithInstanceID(id)); err != nil {
				t.Fatal(err)
			}
			if err := client.RaiseEvent(ctx, id, "pick", api.WithEventPayload("?")); err != nil {
				t.Fatal(err)
			}
			// The first episode that sees the event decides Foo and its
			// commit fails; the re-run decides Bar. (The hook rewrites
			// the event each run sees: a re-run that decides differently,
			// whatever made it do so.)
			var attempt atomic.Int32
			b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
				if wi.InstanceID != id {
					return
				}
				for _, e := range wi.NewEvents {
					if er := e.GetEventRaised(); er != nil && er.GetName() == "pick" {
						switch attempt.Add(1) {
						case 1:
							er.Input = wrapperspb.String(`"Foo"`)
						default:
							er.Input = wrapperspb.String(`"Bar"`)
						}
					}
				}
			}
			var touched atomic.Bool
			b.hooks.beforeCommit = func(iid string) bool {
				if iid == id && attempt.Load() == 1 && touched.CompareAndSwap(false, true) {
					touchSentinel(ctx, t, b, id)
				}
				return false
			}
			startRunner(t, b, r, 4)
			md := awaitDone(t, ctx, b, id, 60*time.Second)
			if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || md.SerializedOutput != `"bar"` {
				t.Fatalf("status %v output %s, want COMPLETED \"bar\" (failure %v)", md.RuntimeStatus, md.SerializedOutput, md.FailureDetails)
			}
			if attempt.Load() < 2 || !touched.Load() {
				t.Fatalf("the scenario did not happen: %d attempts, touched %v", attempt.Load(), touched.Load())
			}
			if mode == "activity" {
				if ran.get("Foo") != 0 || ran.get("Bar") != 1 {
					t.Fatalf("runs: Foo %d, Bar %d; want 0 and 1", ran.get("Foo"), ran.get("Bar"))
				}
			} else {
				if _, err := b.GetOrchestrationMetadata(ctx, "child-Foo"); !errors.Is(err, api.ErrInstanceNotFound) {
					t.Fatalf("the lost run's child exists: %v", err)
				}
				if ran.get("child-Bar") != 1 {
					t.Fatalf("child-Bar ran %d times", ran.get("child-Bar"))
				}
			}
			noDeadLetters(ctx, t, b)
		})
	}
}

// logWatch counts log records whose message contains a substring.
type logWatch struct {
	slog.Handler
	substr string
	n      *atomic.Int64
}

func (l logWatch) Enabled(context.Context, slog.Level) bool { return true }

func (l logWatch) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, l.substr) {
		l.n.Add(1)
	}
	return nil
}

func (l logWatch) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logWatch) WithGroup(string) slog.Handler      { return l }

// TestAnswerFromEarlierExecution: after continue-as-new, the result of an
// activity the previous execution scheduled (task 0) arrives while the new
// execution waits on its own task 0. It must be dropped, not applied.
func TestAnswerFromEarlierExecution(t *testing.T) {
	t.Parallel()
	var stale atomic.Int64
	b := openTest(t, Options{Partitions: 1, Logger: slog.New(logWatch{substr: "stale", n: &stale})})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	releaseA, releaseB, startedB := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var onceB sync.Once
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Twice", func(c *task.OrchestrationContext) (any, error) {
		var n int
		if err := c.GetInput(&n); err != nil {
			return nil, err
		}
		if n == 0 {
			c.CallActivity("A") // never awaited
			if err := c.WaitForSingleEvent("next", -1).Await(nil); err != nil {
				return nil, err
			}
			c.ContinueAsNew(1)
			return nil, nil
		}
		var out string
		err := c.CallActivity("B").Await(&out)
		return out, err
	})
	r.AddActivityN("A", func(task.ActivityContext) (any, error) {
		<-releaseA
		return "A", nil
	})
	r.AddActivityN("B", func(task.ActivityContext) (any, error) {
		onceB.Do(func() { close(startedB) })
		<-releaseB
		return "B", nil
	})
	startRunner(t, b, r, 4)
	client := dtbackend.NewTaskHubClient(b)
	const id = "twice"
	if _, err := client.ScheduleNewOrchestration(ctx, "Twice", api.WithInstanceID(id), api.WithInput(0)); err != nil {
		t.Fatal(err)
	}
	poll(t, 30*time.Second, "execution 1 to schedule A", func() bool {
		st, err := b.load(ctx, id)
		return err == nil && len(st.history) >= 3
	})
	if err := client.RaiseEvent(ctx, id, "next"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-startedB:
	case <-ctx.Done():
		t.Fatal("B never started")
	}
	close(releaseA)
	poll(t, 30*time.Second, "A's result to be dropped as stale", func() bool { return stale.Load() > 0 })
	close(releaseB)
	md := awaitDone(t, ctx, b, id, 30*time.Second)
	if md.SerializedOutput != `"B"` {
		t.Fatalf("output %s, want \"B\"", md.SerializedOutput)
	}
}

// TestFailedCommitTouchesNothing: a commit of more rows than one
// transaction holds (a 150-activity fan-out; a continue-as-new whose new
// execution schedules 120) that fails its fence leaves every committed row
// as it was; the re-run completes with each activity run once, and the
// earlier generation's rows are cleaned up by later fenced commits.
func TestFailedCommitTouchesNothing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		input int
		n     int
	}{{"fan-out", 0, 150}, {"continue-as-new", 1, 120}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := openTest(t, Options{Partitions: 1})
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			defer cancel()
			var echoes atomic.Int64
			r := task.NewTaskRegistry()
			r.AddOrchestratorN("Fan", func(c *task.OrchestrationContext) (any, error) {
				var mode int
				if err := c.GetInput(&mode); err != nil {
					return nil, err
				}
				if mode != 2 {
					if err := c.WaitForSingleEvent("go", -1).Await(nil); err != nil {
						return nil, err
					}
				}
				if mode == 1 {
					c.ContinueAsNew(2)
					return nil, nil
				}
				var tasks []task.Task
				for i := range tc.n {
					tasks = append(tasks, c.CallActivity("Echo", task.WithActivityInput(i)))
				}
				sum := 0
				for _, tk := range tasks {
					var v int
					if err := tk.Await(&v); err != nil {
						return nil, err
					}
					sum += v
				}
				return sum, nil
			})
			r.AddActivityN("Echo", func(c task.ActivityContext) (any, error) {
				echoes.Add(1)
				var v int
				err := c.GetInput(&v)
				return v, err
			})
			const id = "fan"
			var before []string
			var committed []*dtbackend.HistoryEvent
			var failed atomic.Bool
			b.hooks.beforeCommit = func(iid string) bool {
				if iid != id || before == nil || !failed.CompareAndSwap(false, true) {
					return false
				}
				touchSentinel(ctx, t, b, id)
				return false
			}
			startRunner(t, b, r, 16)
			client := dtbackend.NewTaskHubClient(b)
			if _, err := client.ScheduleNewOrchestration(ctx, "Fan", api.WithInstanceID(id), api.WithInput(tc.input)); err != nil {
				t.Fatal(err)
			}
			poll(t, 30*time.Second, "the start to commit", func() bool {
				md, err := b.GetOrchestrationMetadata(ctx, id)
				return err == nil && md.RuntimeStatus == api.RUNTIME_STATUS_RUNNING
			})
			st, err := b.load(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			committed = st.history
			before = rowKeys(ctx, t, b, id)
			if err := client.RaiseEvent(ctx, id, "go"); err != nil {
				t.Fatal(err)
			}
			poll(t, 30*time.Second, "the failing commit", failed.Load)
			md := awaitDone(t, ctx, b, id, 90*time.Second)
			want := tc.n * (tc.n - 1) / 2
			if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || md.SerializedOutput != fmt.Sprint(want) {
				t.Fatalf("status %v output %s, want %d", md.RuntimeStatus, md.SerializedOutput, want)
			}
			if got := echoes.Load(); got != int64(tc.n) {
				t.Fatalf("%d activity runs, want %d", got, tc.n)
			}
			// The committed prefix is unchanged (same events, in order).
			st, err = b.load(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if tc.input == 0 {
				for i, e := range committed {
					if got := eventType(st.history[i]); got != eventType(e) {
						t.Fatalf("history[%d] is %s, was %s", i, got, eventType(e))
					}
				}
			}
			// Only rows of the current generation remain.
			for _, k := range rowKeys(ctx, t, b, id) {
				if g, _, ok := parseHistoryRK(k); ok && g != st.gen() {
					t.Fatalf("row %s of generation %d left after generation %d completed", k, g, st.gen())
				}
				if strings.HasPrefix(k, outboxRKPre) {
					t.Fatalf("outbox row %s left", k)
				}
			}
			_ = before
		})
	}
}

// TestRedeliveryBeyondWindow: episodes that consume many messages and die
// after committing (before deleting them) get every one of them back after
// LockTimeout; none may be applied twice.
func TestRedeliveryBeyondWindow(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1, LockTimeout: 3 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Count", func(c *task.OrchestrationContext) (any, error) {
		n := 0
		for {
			var v string
			if err := c.WaitForSingleEvent("e", -1).Await(&v); err != nil {
				return nil, err
			}
			if v == "stop" {
				return n, nil
			}
			n++
		}
	})
	const id, events = "count", 180
	client := dtbackend.NewTaskHubClient(b)
	if _, err := client.ScheduleNewOrchestration(ctx, "Count", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	for i := range events {
		if err := client.RaiseEvent(ctx, id, "e", api.WithEventPayload(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	var crashes atomic.Int32
	b.hooks.afterCommit = func(iid string) bool { return iid == id && crashes.Add(1) <= 2 }
	startRunner(t, b, r, 4)
	poll(t, 60*time.Second, "every message, and every redelivered copy, to be consumed", func() bool {
		n, err := queueDepth(ctx, b.control[0])
		return err == nil && n == 0 && crashes.Load() > 2
	})
	if err := client.RaiseEvent(ctx, id, "e", api.WithEventPayload("stop")); err != nil {
		t.Fatal(err)
	}
	md := awaitDone(t, ctx, b, id, 30*time.Second)
	if md.SerializedOutput != fmt.Sprint(events) {
		t.Fatalf("counted %s events, want %d", md.SerializedOutput, events)
	}
}

// TestManyEventsBeforeStart: any number of events raised before an
// instance starts is delivered once it does.
func TestManyEventsBeforeStart(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const id, events = "early", 230
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Collect", func(c *task.OrchestrationContext) (any, error) {
		seen := map[string]bool{}
		for len(seen) < events {
			var v string
			if err := c.WaitForSingleEvent("e", -1).Await(&v); err != nil {
				return nil, err
			}
			seen[v] = true
		}
		return len(seen), nil
	})
	client := dtbackend.NewTaskHubClient(b)
	for i := range events {
		if err := client.RaiseEvent(ctx, id, "e", api.WithEventPayload(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	startRunner(t, b, r, 4)
	poll(t, 60*time.Second, "the events to be stashed", func() bool {
		n, err := queueDepth(ctx, b.control[0])
		return err == nil && n == 0
	})
	if _, err := client.ScheduleNewOrchestration(ctx, "Collect", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	md := awaitDone(t, ctx, b, id, 60*time.Second)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || md.SerializedOutput != fmt.Sprint(events) {
		t.Fatalf("status %v output %s", md.RuntimeStatus, md.SerializedOutput)
	}
	for _, k := range rowKeys(ctx, t, b, id) {
		if strings.HasPrefix(k, stashRKPre) {
			t.Fatalf("stashed row %s left after the instance consumed every event", k)
		}
	}
	noDeadLetters(ctx, t, b)
}

// TestHugeProperties: every value that ends up in a table property can be
// 1 MiB: a failure message, a custom status, a termination reason, an
// orchestrator name, an event name.
func TestHugeProperties(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Fail", func(c *task.OrchestrationContext) (any, error) { return nil, errors.New(big) })
	r.AddOrchestratorN("Status", func(c *task.OrchestrationContext) (any, error) {
		c.SetCustomStatus(big)
		return "ok", nil
	})
	r.AddOrchestratorN("Wait", func(c *task.OrchestrationContext) (any, error) {
		err := c.WaitForSingleEvent("x", -1).Await(nil)
		return "done", err
	})
	startRunner(t, b, r, 4)
	client := dtbackend.NewTaskHubClient(b)
	start := func(name, id string) {
		if _, err := client.ScheduleNewOrchestration(ctx, name, api.WithInstanceID(api.InstanceID(id))); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
	}
	start("Fail", "fail")
	start("Status", "status")
	start(big, "name")
	start("Wait", "terminate")
	start("Wait", "event")
	poll(t, 30*time.Second, "the waiting instances to start", func() bool {
		for _, id := range []string{"terminate", "event"} {
			md, err := b.GetOrchestrationMetadata(ctx, api.InstanceID(id))
			if err != nil || md.RuntimeStatus != api.RUNTIME_STATUS_RUNNING {
				return false
			}
		}
		return true
	})
	if err := client.TerminateOrchestration(ctx, "terminate", api.WithRawOutput(big)); err != nil {
		t.Fatal(err)
	}
	if err := client.RaiseEvent(ctx, "event", big, api.WithRawEventData(big)); err != nil {
		t.Fatal(err)
	}
	if err := client.RaiseEvent(ctx, "event", "x"); err != nil {
		t.Fatal(err)
	}
	md := awaitDone(t, ctx, b, "fail", 60*time.Second)
	if md.RuntimeStatus != api.RUNTIME_STATUS_FAILED || md.FailureDetails.GetErrorMessage() != big {
		t.Errorf("fail: status %v, message of %d bytes", md.RuntimeStatus, len(md.FailureDetails.GetErrorMessage()))
	}
	if md := awaitDone(t, ctx, b, "status", 60*time.Second); md.SerializedCustomStatus != big {
		t.Errorf("status: custom status of %d bytes", len(md.SerializedCustomStatus))
	}
	if md := awaitDone(t, ctx, b, "name", 60*time.Second); md.Name != big || md.RuntimeStatus != api.RUNTIME_STATUS_FAILED {
		t.Errorf("name: status %v, name of %d bytes", md.RuntimeStatus, len(md.Name))
	}
	if md := awaitDone(t, ctx, b, "terminate", 60*time.Second); md.RuntimeStatus != api.RUNTIME_STATUS_TERMINATED || md.SerializedOutput != big {
		t.Errorf("terminate: status %v, output of %d bytes", md.RuntimeStatus, len(md.SerializedOutput))
	}
	if md := awaitDone(t, ctx, b, "event", 60*time.Second); md.SerializedOutput != `"done"` {
		t.Errorf("event: status %v, output %.40s", md.RuntimeStatus, md.SerializedOutput)
	}
	noDeadLetters(ctx, t, b)
}

// TestChildStartsAfterParentCommits: a parent whose worker dies before
// committing the episode that calls a child must not have started the
// child; with a LockTimeout longer than the poison budget of any early
// answer, the parent still completes once its messages come back, the
// child runs once, and nothing is dead-lettered.
func TestChildStartsAfterParentCommits(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1, LockTimeout: 6 * time.Second, MaxDequeueCount: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var ran runs
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Parent", func(c *task.OrchestrationContext) (any, error) {
		var out string
		err := c.CallSubOrchestrator("Kid", task.WithSubOrchestrationInstanceID("kid")).Await(&out)
		return out, err
	})
	r.AddOrchestratorN("Kid", func(c *task.OrchestrationContext) (any, error) {
		err := c.CallActivity("Effect").Await(nil)
		return "kid done", err
	})
	r.AddActivityN("Effect", func(task.ActivityContext) (any, error) {
		ran.add("kid")
		return nil, nil
	})
	var crashed atomic.Bool
	b.hooks.beforeCommit = func(id string) bool { return id == "parent" && crashed.CompareAndSwap(false, true) }
	startRunner(t, b, r, 4)
	client := dtbackend.NewTaskHubClient(b)
	if _, err := client.ScheduleNewOrchestration(ctx, "Parent", api.WithInstanceID("parent")); err != nil {
		t.Fatal(err)
	}
	poll(t, 30*time.Second, "the parent's worker to die before its commit", crashed.Load)
	if _, err := b.GetOrchestrationMetadata(ctx, "kid"); !errors.Is(err, api.ErrInstanceNotFound) {
		t.Fatalf("the child exists before the parent committed: %v", err)
	}
	md := awaitDone(t, ctx, b, "parent", 60*time.Second)
	if md.SerializedOutput != `"kid done"` || ran.get("kid") != 1 {
		t.Fatalf("parent output %s, child runs %d", md.SerializedOutput, ran.get("kid"))
	}
	noDeadLetters(ctx, t, b)
}

// TestRerunAdoptsFailedChild: a parent's worker dies after sending the
// child's start but before deleting its messages; the child fails; the
// parent's messages come back and its outbox is sent again. The failed
// child is adopted, not purged and run again.
func TestRerunAdoptsFailedChild(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1, LockTimeout: 3 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var ran runs
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Parent", func(c *task.OrchestrationContext) (any, error) {
		err := c.CallSubOrchestrator("Kid", task.WithSubOrchestrationInstanceID("kid")).Await(nil)
		if err != nil {
			return "child failed", nil
		}
		return "child ok", nil
	})
	r.AddOrchestratorN("Kid", func(c *task.OrchestrationContext) (any, error) {
		if err := c.CallActivity("Effect").Await(nil); err != nil {
			return nil, err
		}
		return nil, errors.New("kid fails")
	})
	r.AddActivityN("Effect", func(task.ActivityContext) (any, error) {
		ran.add("kid")
		return nil, nil
	})
	var crashed atomic.Bool
	b.hooks.afterSend = func(id string) bool { return id == "parent" && crashed.CompareAndSwap(false, true) }
	startRunner(t, b, r, 4)
	client := dtbackend.NewTaskHubClient(b)
	if _, err := client.ScheduleNewOrchestration(ctx, "Parent", api.WithInstanceID("parent")); err != nil {
		t.Fatal(err)
	}
	md := awaitDone(t, ctx, b, "parent", 60*time.Second)
	if !crashed.Load() || md.SerializedOutput != `"child failed"` {
		t.Fatalf("crashed %v, parent output %s", crashed.Load(), md.SerializedOutput)
	}
	// The redelivered start has been handled once the control queue is empty.
	poll(t, 30*time.Second, "the parent's messages to be consumed", func() bool {
		n, err := queueDepth(ctx, b.control[0])
		return err == nil && n == 0
	})
	if n := ran.get("kid"); n != 1 {
		t.Fatalf("the child's activity ran %d times, want 1", n)
	}
	// Adopted, not re-created: the child still runs the execution the
	// parent's committed history started.
	kid, err := b.load(ctx, "kid")
	if err != nil || executionOf(kid.history) != kid.sentinel.str("ExecutionID") || len(kid.history) == 0 {
		t.Fatalf("child state: %v", err)
	}
}

// TestBlobsBounded: storage used by an instance stays bounded by its live
// state: 100 commits that each set a 100 KB custom status, and ten
// activities with 100 KB inputs, leave one blob (the current status).
func TestBlobsBounded(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Grow", func(c *task.OrchestrationContext) (any, error) {
		for i := range 100 {
			c.SetCustomStatus(fmt.Sprintf("%03d", i) + strings.Repeat("s", 100_000))
			var in any
			if i%10 == 0 {
				in = strings.Repeat("i", 100_000)
			}
			if err := c.CallActivity("Nop", task.WithActivityInput(in)).Await(nil); err != nil {
				return nil, err
			}
		}
		return "ok", nil
	})
	r.AddActivityN("Nop", func(task.ActivityContext) (any, error) { return nil, nil })
	startRunner(t, b, r, 4)
	client := dtbackend.NewTaskHubClient(b)
	if _, err := client.ScheduleNewOrchestration(ctx, "Grow", api.WithInstanceID("grow")); err != nil {
		t.Fatal(err)
	}
	// 100 sequential episodes and activities: seconds on an idle machine,
	// minutes on one where Azurite gets a fraction of a core.
	md := awaitDone(t, ctx, b, "grow", 200*time.Second)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || !strings.HasPrefix(md.SerializedCustomStatus, "099") {
		t.Fatalf("status %v, custom status %.10s", md.RuntimeStatus, md.SerializedCustomStatus)
	}
	poll(t, 10*time.Second, "one blob to remain", func() bool { return b.blobCount(ctx, t, blobPrefix("grow")) == 1 })
}

// TestReplaceFencesInflightCommit: replacing a running instance through
// the id-reuse policy fences it first; the old instance's in-flight commit
// then fails and cannot touch the new instance.
func TestReplaceFencesInflightCommit(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Echo", func(c *task.OrchestrationContext) (any, error) {
		var in string
		err := c.GetInput(&in)
		return in, err
	})
	client := dtbackend.NewTaskHubClient(b)
	if _, err := client.ScheduleNewOrchestration(ctx, "Echo", api.WithInstanceID("re"), api.WithInput("old")); err != nil {
		t.Fatal(err)
	}
	wi, err := b.GetOrchestrationWorkItem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if wi.State, err = b.GetOrchestrationRuntimeState(ctx, wi); err != nil {
		t.Fatal(err)
	}
	// Replace the instance while its first episode is in flight.
	policy := &api.OrchestrationIdReusePolicy{OperationStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_PENDING, api.RUNTIME_STATUS_RUNNING}, Action: api.REUSE_ID_ACTION_TERMINATE}
	if _, err := client.ScheduleNewOrchestration(ctx, "Echo", api.WithInstanceID("re"), api.WithInput("new"), api.WithOrchestrationIdReusePolicy(policy)); err != nil {
		t.Fatalf("replace: %v", err)
	}
	for _, e := range wi.NewEvents {
		wi.State.AddEvent(e)
	}
	if err := b.CompleteOrchestrationWorkItem(ctx, wi); !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
		t.Fatalf("the replaced instance's commit: %v, want ErrWorkItemLockLost", err)
	}
	b.AbandonOrchestrationWorkItem(ctx, wi)
	startRunner(t, b, r, 4)
	md := awaitDone(t, ctx, b, "re", 30*time.Second)
	if md.SerializedOutput != `"new"` {
		t.Fatalf("output %s, want \"new\"", md.SerializedOutput)
	}
}

// TestCloseHandsBackBufferedMessages: messages a worker dequeued but did
// not start are visible to the next worker at once after Close, not after
// LockTimeout.
func TestCloseHandsBackBufferedMessages(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b1 := openTest(t, Options{HubName: hub, Partitions: 1, LockTimeout: 5 * time.Minute, WorkerID: "w1"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := dtbackend.NewTaskHubClient(b1)
	for _, id := range []string{"one", "two"} {
		if _, err := client.ScheduleNewOrchestration(ctx, "Echo", api.WithInstanceID(api.InstanceID(id)), api.WithInput(id)); err != nil {
			t.Fatal(err)
		}
	}
	wi, err := b1.GetOrchestrationWorkItem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.AbandonOrchestrationWorkItem(ctx, wi); err != nil {
		t.Fatal(err)
	}
	b1.Close()
	b2 := openTest(t, Options{HubName: hub, Partitions: 1, LockTimeout: 5 * time.Minute, WorkerID: "w2", LeaseDuration: 3 * time.Second})
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Echo", func(c *task.OrchestrationContext) (any, error) {
		var in string
		err := c.GetInput(&in)
		return in, err
	})
	startRunner(t, b2, r, 4)
	for _, id := range []string{"one", "two"} {
		if md := awaitDone(t, ctx, b2, id, 30*time.Second); md.SerializedOutput != `"`+id+`"` {
			t.Fatalf("%s: output %s", id, md.SerializedOutput)
		}
	}
}

// TestPrefetchedActivitiesDoNotExpire: with one activity slot, activities
// queued behind a running one are not held in memory past their lock (that
// would count a delivery each time and dead-letter them at
// MaxDequeueCount 1).
func TestPrefetchedActivitiesDoNotExpire(t *testing.T) {
	t.Parallel()
	// LockTimeout 6 s: long enough for a busy machine to finish each
	// step, short enough that six 1.6 s activities prefetched at once
	// would outlive half their lock.
	b := openTest(t, Options{Partitions: 1, LockTimeout: 6 * time.Second, MaxDequeueCount: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Many", func(c *task.OrchestrationContext) (any, error) {
		var tasks []task.Task
		for range 6 {
			tasks = append(tasks, c.CallActivity("Slow"))
		}
		for _, tk := range tasks {
			if err := tk.Await(nil); err != nil {
				return nil, err
			}
		}
		return "ok", nil
	})
	r.AddActivityN("Slow", func(c task.ActivityContext) (any, error) {
		t := time.NewTimer(1600 * time.Millisecond) // the activity's own work, not a wait for the test
		defer t.Stop()
		<-t.C
		return nil, nil
	})
	startRunner(t, b, r, 1)
	client := dtbackend.NewTaskHubClient(b)
	if _, err := client.ScheduleNewOrchestration(ctx, "Many", api.WithInstanceID("many")); err != nil {
		t.Fatal(err)
	}
	if md := awaitDone(t, ctx, b, "many", 50*time.Second); md.SerializedOutput != `"ok"` {
		t.Fatalf("output %s", md.SerializedOutput)
	}
	noDeadLetters(ctx, t, b)
}

// TestLostPartitionReleasesBuffer: messages a worker buffered for an
// instance of a partition it then loses (here while the instance was in a
// work item, so the hand-back at the loss skipped them) are returned to the
// queue, not kept with stale receipts: the new owner gets them at once, not
// after LockTimeout.
func TestLostPartitionReleasesBuffer(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	opts := Options{HubName: hub, Partitions: 1, LockTimeout: 5 * time.Minute, LeaseDuration: 3 * time.Second}
	opts.WorkerID = "w1"
	b1 := openTest(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := dtbackend.NewTaskHubClient(b1)
	if _, err := client.ScheduleNewOrchestration(ctx, "Wait", api.WithInstanceID("x")); err != nil {
		t.Fatal(err)
	}
	wi, err := b1.GetOrchestrationWorkItem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.RaiseEvent(ctx, "x", "e"); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "the event to be buffered", func() bool {
		b1.pollControl(ctx, b1.lm.partitions())
		b1.mu.Lock()
		defer b1.mu.Unlock()
		return len(b1.pending["x"]) == 1
	})
	// Another worker takes the lease; w1's next renewal fails.
	row := newEntity(leasePK, leaseRK(0))
	row["Owner"], row["Expires"] = "w2", formatTime(time.Now().Add(time.Hour))
	anyTag := azcore.ETagAny
	if _, err := b1.leases.UpdateEntity(ctx, row.marshal(), &aztables.UpdateEntityOptions{IfMatch: &anyTag, UpdateMode: aztables.UpdateModeReplace}); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "w1 to notice the loss", func() bool { return len(b1.lm.owners()) == 0 })
	if wi.State, err = b1.GetOrchestrationRuntimeState(ctx, wi); err != nil {
		t.Fatal(err)
	}
	b1.AbandonOrchestrationWorkItem(ctx, wi)
	if id, _ := b1.takeReady(); id != "" {
		t.Fatalf("w1 handed out %s from a partition it lost", id)
	}
	opts.WorkerID = "w2"
	b2 := openTest(t, opts)
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Wait", func(c *task.OrchestrationContext) (any, error) {
		return "got it", c.WaitForSingleEvent("e", -1).Await(nil)
	})
	startRunner(t, b2, r, 2)
	if md := awaitDone(t, ctx, b2, "x", 30*time.Second); md.SerializedOutput != `"got it"` {
		t.Fatalf("output %s", md.SerializedOutput)
	}
}
