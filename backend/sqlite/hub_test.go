package sqlite_test

// Tests of the SQLite task hub beyond the conformance suite: lock owners,
// wake-ups, scheduled starts, dead letters of this backend's own making,
// durability and connection handling under load. They use only the public
// API, plus a connection of their own to the file where they need to look
// at or plant rows.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dronehub/dronehub/backend/sqlite"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/taskhub"
)

// openWith opens a task hub on path with the given options (Path and Logger
// filled in) and closes it when the test ends.
func openWith(t *testing.T, path string, o sqlite.Options) *sqlite.Backend {
	t.Helper()
	o.Path = path
	if o.Logger == nil {
		o.Logger = quietLogger()
	}
	b, err := sqlite.Open(context.Background(), o)
	if err != nil {
		t.Fatalf("sqlite.Open(%s): %v", path, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// rawDB opens a connection of the test's own on the file.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// waitFor polls cond every 10ms until it holds, failing after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// turn runs an orchestration work item with the orchestrators in r and
// completes it, as durabletask-go's orchestration worker does.
func turn(t *testing.T, ctx context.Context, be dtbackend.Backend, r *task.TaskRegistry, wi *dtbackend.OrchestrationWorkItem) {
	t.Helper()
	state, err := be.GetOrchestrationRuntimeState(ctx, wi)
	if err != nil {
		t.Fatalf("GetOrchestrationRuntimeState: %v", err)
	}
	wi.State = state
	if !state.IsCompleted() {
		_ = state.AddEvent(taskhub.NewOrchestratorStartedEvent())
		for _, e := range wi.NewEvents {
			_ = state.AddEvent(e)
		}
		res, err := task.NewTaskExecutor(r).ExecuteOrchestrator(ctx, wi.InstanceID, state.OldEvents(), state.NewEvents())
		if err != nil {
			t.Fatalf("execute: %v", err)
		}
		if _, err := state.ApplyActions(res.Response.Actions, nil); err != nil {
			t.Fatalf("apply: %v", err)
		}
		state.CustomStatus = res.Response.CustomStatus
	}
	if err := be.CompleteOrchestrationWorkItem(ctx, wi); err != nil {
		t.Fatalf("CompleteOrchestrationWorkItem: %v", err)
	}
}

// fetchOrch fetches the next orchestration work item within 10 s.
func fetchOrch(t *testing.T, ctx context.Context, be dtbackend.Backend) *dtbackend.OrchestrationWorkItem {
	t.Helper()
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	wi, err := be.GetOrchestrationWorkItem(fctx)
	if err != nil {
		t.Fatalf("GetOrchestrationWorkItem: %v", err)
	}
	return wi
}

func waitRegistry() *task.TaskRegistry {
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Wait", func(ctx *task.OrchestrationContext) (any, error) {
		var v string
		err := ctx.WaitForSingleEvent("e", -1).Await(&v)
		return v, err
	})
	return r
}

// startRunner runs durabletask-go's workers on be through a taskhub.Runner
// until the test ends.
func startRunner(t *testing.T, be dtbackend.Backend, r *task.TaskRegistry) {
	t.Helper()
	log := taskhub.Logger(quietLogger())
	g := taskhub.NewGate(be)
	exec := task.NewTaskExecutor(r)
	run := taskhub.NewRunner(g, quietLogger(),
		dtbackend.NewOrchestrationWorker(g, exec, log, dtbackend.WithMaxParallelism(4)),
		dtbackend.NewActivityTaskWorker(g, exec, log, dtbackend.WithMaxParallelism(4)))
	if err := run.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := run.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
}

// eventRaised builds an EventRaised history event with a JSON payload.
func eventRaised(name, payload string) *dtbackend.HistoryEvent {
	e := &dtbackend.HistoryEvent{EventId: -1, Timestamp: timestamppb.Now()}
	m := e.ProtoReflect()
	fd := m.Descriptor().Fields().ByName("eventRaised")
	sub := m.NewField(fd)
	sm := sub.Message()
	sm.Set(sm.Descriptor().Fields().ByName("name"), protoreflect.ValueOfString(name))
	in := sm.Descriptor().Fields().ByName("input")
	iv := sm.NewField(in)
	iv.Message().Set(iv.Message().Descriptor().Fields().ByName("value"), protoreflect.ValueOfString(payload))
	sm.Set(in, iv)
	m.Set(fd, sub)
	return e
}

// TestLockOwnerUniquePerFetch: a work item delivered again after its lock
// expired (here: Stop stopped the renewals, as for a worker that went away)
// is locked under a new owner, so the first delivery can no longer complete
// it, even from the same process.
func TestLockOwnerUniquePerFetch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := openWith(t, filepath.Join(t.TempDir(), "hub.db"), sqlite.Options{LockTimeout: time.Second, PollInterval: 20 * time.Millisecond})
	if _, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Wait", api.WithInstanceID("owned")); err != nil {
		t.Fatal(err)
	}
	first := fetchOrch(t, ctx, b)
	if err := b.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	again := fetchOrch(t, ctx, b) // after the unrenewed lock expired
	if again.InstanceID != first.InstanceID {
		t.Fatalf("second work item for %s", again.InstanceID)
	}
	if again.LockedBy == first.LockedBy {
		t.Fatalf("both deliveries locked under %q", first.LockedBy)
	}
	first.State, _ = b.GetOrchestrationRuntimeState(ctx, first)
	if err := b.CompleteOrchestrationWorkItem(ctx, first); !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
		t.Fatalf("completing the expired delivery: %v, want ErrWorkItemLockLost", err)
	}
	turn(t, ctx, b, waitRegistry(), again)
	if md, _ := b.GetOrchestrationMetadata(ctx, "owned"); md.RuntimeStatus != api.RUNTIME_STATUS_RUNNING {
		t.Fatalf("after the second delivery's turn: %v", md.RuntimeStatus)
	}
}

// TestEventToLockedInstanceWakesAtOnce: an event raised while the instance's
// work item is out is fetched as soon as that work item completes, not
// after the poll interval (a minute here).
func TestEventToLockedInstanceWakesAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := openWith(t, filepath.Join(t.TempDir(), "hub.db"), sqlite.Options{PollInterval: time.Minute})
	c := dtbackend.NewTaskHubClient(b)
	if _, err := c.ScheduleNewOrchestration(ctx, "Wait", api.WithInstanceID("busy")); err != nil {
		t.Fatal(err)
	}
	wi := fetchOrch(t, ctx, b)

	got := make(chan *dtbackend.OrchestrationWorkItem, 1)
	waiting := make(chan struct{})
	go func() {
		fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		close(waiting)
		next, err := b.GetOrchestrationWorkItem(fctx)
		if err != nil {
			t.Errorf("waiting consumer: %v", err)
		}
		got <- next
	}()
	<-waiting
	if err := c.RaiseEvent(ctx, "busy", "e", api.WithEventPayload("now")); err != nil {
		t.Fatal(err)
	}
	turn(t, ctx, b, waitRegistry(), wi)
	completed := time.Now()
	next := <-got
	if next == nil {
		t.Fatal("no work item")
	}
	if latency := time.Since(completed); latency > 3*time.Second {
		t.Errorf("the event was fetched %s after the turn that held the lock completed (poll interval 1m)", latency)
	}
	if next.InstanceID != "busy" || len(next.NewEvents) != 1 || next.NewEvents[0].GetEventRaised() == nil {
		t.Fatalf("work item for %s with %d events, want the raised event", next.InstanceID, len(next.NewEvents))
	}
}

// TestTerminateBeforeScheduledStart: terminating an instance scheduled to
// start in an hour acts at once, and its orchestrator never runs.
func TestTerminateBeforeScheduledStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := openWith(t, filepath.Join(t.TempDir(), "hub.db"), sqlite.Options{PollInterval: 50 * time.Millisecond})
	var ran atomic.Int32
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Later", func(ctx *task.OrchestrationContext) (any, error) {
		ran.Add(1)
		return "ran", nil
	})
	startRunner(t, b, r)
	c := dtbackend.NewTaskHubClient(b)
	if _, err := c.ScheduleNewOrchestration(ctx, "Later", api.WithInstanceID("later"), api.WithStartTime(time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	md, err := b.GetOrchestrationMetadata(ctx, "later")
	if err != nil || md.RuntimeStatus != api.RUNTIME_STATUS_PENDING {
		t.Fatalf("before the terminate: %v, %v", md, err)
	}
	if err := c.TerminateOrchestration(ctx, "later", api.WithOutput("cancelled early")); err != nil {
		t.Fatal(err)
	}
	terminated := time.Now()
	waitFor(t, 10*time.Second, "the terminate to act", func() bool {
		md, err = b.GetOrchestrationMetadata(ctx, "later")
		return err == nil && md.RuntimeStatus == api.RUNTIME_STATUS_TERMINATED
	})
	t.Logf("terminated %s after the request", time.Since(terminated).Round(time.Millisecond))
	if md.SerializedOutput != `"cancelled early"` {
		t.Errorf("output %q, want the terminate's", md.SerializedOutput)
	}
	if n := ran.Load(); n != 0 {
		t.Errorf("the orchestrator ran %d times before it was due", n)
	}
	info, _ := b.HubInfo(ctx)
	if info.QueueDepths["NewEvents"] != 0 {
		t.Errorf("%d events still queued for the terminated instance", info.QueueDepths["NewEvents"])
	}
}

// TestUnrunnableActivityMessageDeadLettered: an activity message that cannot
// be read is set aside at once, and the workers go on.
func TestUnrunnableActivityMessageDeadLettered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "hub.db")
	b := openWith(t, path, sqlite.Options{PollInterval: 20 * time.Millisecond})
	if _, err := rawDB(t, path).ExecContext(ctx, `INSERT INTO NewTasks (InstanceID, EventPayload) VALUES ('ghost', x'ffffffff')`); err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if wi, err := b.GetActivityWorkItem(fctx); !errors.Is(err, dtbackend.ErrNoWorkItems) {
		t.Fatalf("GetActivityWorkItem: %v, %v; want no work (the message set aside)", wi, err)
	}
	letters, err := b.DeadLetters(ctx)
	if err != nil || len(letters) != 1 || letters[0].InstanceID != "ghost" || letters[0].Queue != "activity" || letters[0].Reason == "" {
		t.Fatalf("dead letters %+v, %v; want the unreadable activity message", letters, err)
	}
}

// TestReplayChecksExecution: a dead letter is replayed into the execution it
// was set aside from, and dropped (reported stale) once the instance has
// been recreated.
func TestReplayChecksExecution(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "hub.db")
	b := openWith(t, path, sqlite.Options{PollInterval: 20 * time.Millisecond})
	db := rawDB(t, path)
	c := dtbackend.NewTaskHubClient(b)
	r := waitRegistry()
	start := func() string {
		if _, err := c.ScheduleNewOrchestration(ctx, "Wait", api.WithInstanceID("r")); err != nil {
			t.Fatal(err)
		}
		turn(t, ctx, b, r, fetchOrch(t, ctx, b))
		var exec string
		if err := db.QueryRowContext(ctx, `SELECT ExecutionID FROM Instances WHERE InstanceID = 'r'`).Scan(&exec); err != nil {
			t.Fatal(err)
		}
		return exec
	}
	plantEvent := func(exec any, e *dtbackend.HistoryEvent) string {
		t.Helper()
		ev, err := dtbackend.MarshalHistoryEvent(e)
		if err != nil {
			t.Fatal(err)
		}
		res, err := db.ExecContext(ctx, `INSERT INTO DronehubDeadLetters (Queue, InstanceID, ExecutionID, EventPayload, DequeueCount, Reason, DeadAt)
			VALUES ('orchestration', 'r', ?, ?, 3, 'test', ?)`, exec, ev, time.Now().UTC().Format(time.RFC3339Nano))
		if err != nil {
			t.Fatal(err)
		}
		n, _ := res.LastInsertId()
		return fmt.Sprint(n)
	}
	plant := func(exec, payload string) string { t.Helper(); return plantEvent(exec, eventRaised("e", payload)) }

	old := start()
	oldLetter := plant(old, `"for the old execution"`)
	if err := c.TerminateOrchestration(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	turn(t, ctx, b, r, fetchOrch(t, ctx, b))
	if err := c.PurgeOrchestrationState(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	current := start()
	if current == old {
		t.Fatalf("the recreated instance has the old execution id %s", old)
	}
	err := b.ReplayDeadLetter(ctx, oldLetter)
	if !errors.Is(err, taskhub.ErrDeadLetterStale) {
		t.Fatalf("replaying the old execution's event into the new one: %v, want ErrDeadLetterStale", err)
	}
	t.Logf("stale replay: %v", err)
	fctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if wi, err := b.GetOrchestrationWorkItem(fctx); err == nil {
		t.Fatalf("the stale message was delivered: %v", wi.NewEvents)
	}

	// A task's answer that recorded no execution (an earlier version's
	// dead letter) must not complete a task this execution never scheduled.
	if err := b.ReplayDeadLetter(ctx, plantEvent(nil, taskhub.NewTaskFailedEvent(0, &dtbackend.TaskFailureDetails{ErrorMessage: "old"}))); !errors.Is(err, taskhub.ErrDeadLetterStale) {
		t.Fatalf("replaying an answer to a task the execution never scheduled: %v, want ErrDeadLetterStale", err)
	}

	if err := b.ReplayDeadLetter(ctx, plant(current, `"for this execution"`)); err != nil {
		t.Fatalf("replaying an event of the current execution: %v", err)
	}
	turn(t, ctx, b, r, fetchOrch(t, ctx, b))
	md, err := b.GetOrchestrationMetadata(ctx, "r")
	if err != nil || md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || md.SerializedOutput != `"for this execution"` {
		t.Fatalf("after the replay: %v, %v", md, err)
	}
	if letters, _ := b.DeadLetters(ctx); len(letters) != 0 {
		t.Errorf("dead letters left: %+v", letters)
	}
}

// TestCloseClosesEveryHandle: after Close, the process holds no file
// descriptor on the database or its WAL.
func TestCloseClosesEveryHandle(t *testing.T) {
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("needs /proc/self/fd")
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "hub.db")
	b, err := sqlite.Open(ctx, sqlite.Options{Path: path, PollInterval: 20 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	c := dtbackend.NewTaskHubClient(b)
	if _, err := c.ScheduleNewOrchestration(ctx, "Wait", api.WithInstanceID("x")); err != nil {
		t.Fatal(err)
	}
	turn(t, ctx, b, waitRegistry(), fetchOrch(t, ctx, b))
	if _, err := b.ListInstances(ctx, taskhub.Query{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Fleet().AddDrone(ctx, "d", domain.LatLon{}); err != nil {
		t.Fatal(err)
	}
	if n := openFiles(t, path); n == 0 {
		t.Fatalf("no open descriptors on %s while open: the check sees nothing", path)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := openFiles(t, path); n != 0 {
		t.Fatalf("%d descriptors on %s still open after Close", n, path)
	}
}

// openFiles counts this process's descriptors on path and its -wal/-shm.
func openFiles(t *testing.T, path string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.HasPrefix(target, path) {
			n++
		}
	}
	return n
}

// TestWritesUnderLoadNeverBusy: purges, dead-letter replays and telemetry
// ingestion (fleet updates) run while another process writes to the same
// file as fast as it can and this process's workers commit orchestration
// turns. None may fail with SQLITE_BUSY.
func TestWritesUnderLoadNeverBusy(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "hub.db")
	b := openWith(t, path, sqlite.Options{PollInterval: 20 * time.Millisecond})
	other := openWith(t, path, sqlite.Options{PollInterval: 20 * time.Millisecond}) // another process
	db := rawDB(t, path)
	c := dtbackend.NewTaskHubClient(b)
	r := waitRegistry()
	_ = r.AddOrchestratorN("Done", func(ctx *task.OrchestrationContext) (any, error) { return "done", nil })

	// Set up: instances to purge (completed) and instances waiting for an
	// event that a dead letter carries.
	const purges, replays, drones, writers, updates = 30, 30, 64, 64, 10
	for i := range purges {
		if _, err := c.ScheduleNewOrchestration(ctx, "Done", api.WithInstanceID(api.InstanceID(fmt.Sprint("p-", i)))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range replays {
		if _, err := c.ScheduleNewOrchestration(ctx, "Wait", api.WithInstanceID(api.InstanceID(fmt.Sprint("w-", i)))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range drones {
		if _, err := b.Fleet().AddDrone(ctx, fmt.Sprint("d-", i), domain.LatLon{}); err != nil {
			t.Fatal(err)
		}
	}
	startRunner(t, b, r)
	waitFor(t, 60*time.Second, "the set-up instances to settle", func() bool {
		info, err := b.HubInfo(ctx)
		return err == nil && info.Instances["Completed"] == purges && info.Instances["Running"] == replays
	})
	var letters []string
	for i := range replays {
		ev, _ := dtbackend.MarshalHistoryEvent(eventRaised("e", `"replayed"`))
		res, err := db.ExecContext(ctx, `INSERT INTO DronehubDeadLetters (Queue, InstanceID, EventPayload, DequeueCount, Reason, DeadAt)
			VALUES ('orchestration', ?, ?, 3, 'test', ?)`, fmt.Sprint("w-", i), ev, time.Now().UTC().Format(time.RFC3339Nano))
		if err != nil {
			t.Fatal(err)
		}
		n, _ := res.LastInsertId()
		letters = append(letters, fmt.Sprint(n))
	}

	// Load: the other process creates instances and raises events to them
	// without pause until the test's writes are done.
	stop := make(chan struct{})
	var load sync.WaitGroup
	var loadWrites atomic.Int64
	oc := dtbackend.NewTaskHubClient(other)
	for g := range 1 {
		load.Add(1)
		go func() {
			defer load.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := api.InstanceID(fmt.Sprintf("load-%d-%d", g, i))
				if _, err := oc.ScheduleNewOrchestration(ctx, "Wait", api.WithInstanceID(id)); err != nil {
					t.Errorf("load: %v", err)
					return
				}
				if err := oc.RaiseEvent(ctx, id, "e", api.WithEventPayload("x")); err != nil {
					t.Errorf("load: %v", err)
					return
				}
				loadWrites.Add(2)
			}
		}()
	}

	// The pools are bounded: sample the descriptors this process holds on
	// the file (two backends and the test's own connection).
	var maxFiles atomic.Int64
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if n := int64(openFiles(t, path)); n > maxFiles.Load() {
				maxFiles.Store(n)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()

	var errs sync.Map
	fail := func(what string, err error) { errs.Store(fmt.Sprintf("%s: %v", what, err), true) }
	var work sync.WaitGroup
	for i := range purges {
		work.Add(1)
		go func() {
			defer work.Done()
			if err := b.PurgeOrchestrationState(ctx, api.InstanceID(fmt.Sprint("p-", i))); err != nil {
				fail("purge", err)
			}
		}()
	}
	for _, id := range letters {
		work.Add(1)
		go func() {
			defer work.Done()
			if err := b.ReplayDeadLetter(ctx, id); err != nil {
				fail("replay", err)
			}
		}()
	}
	for w := range writers {
		work.Add(1)
		go func() {
			defer work.Done()
			for u := range updates {
				store := b.Fleet()
				if u%2 == 1 {
					store = other.Fleet()
				}
				if _, err := store.UpdateDrone(ctx, fmt.Sprint("d-", (w+u)%drones), func(d *fleet.Drone) error { d.Frames++; return nil }); err != nil {
					fail("ingest", err)
				}
			}
		}()
	}
	work.Wait()
	close(stop)
	load.Wait()
	<-sampled
	t.Logf("the other process wrote %d times meanwhile; at most %d descriptors were open on the file", loadWrites.Load(), maxFiles.Load())
	// Each connection holds the file, its WAL and its shared memory: at
	// most 3 x (1 writer + 4 readers) per backend, plus the test's own.
	if n := maxFiles.Load(); n > 2*3*5+6 {
		t.Errorf("%d descriptors open on the file at once: the connection pools are not bounded", n)
	}
	errs.Range(func(k, _ any) bool {
		t.Error(k)
		return true
	})
	if t.Failed() {
		return
	}
	total := int64(0)
	for i := range drones {
		d, err := b.Fleet().Drone(ctx, fmt.Sprint("d-", i))
		if err != nil {
			t.Fatal(err)
		}
		total += d.Frames
	}
	if total != int64(writers*updates) {
		t.Errorf("%d frames counted, want %d", total, writers*updates)
	}
	waitFor(t, 60*time.Second, "the replayed events to complete their instances", func() bool {
		page, err := b.ListInstances(ctx, taskhub.Query{InstanceIDPrefix: "w-", RuntimeStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_COMPLETED}, PageSize: replays})
		return err == nil && len(page.Instances) == replays
	})
}
