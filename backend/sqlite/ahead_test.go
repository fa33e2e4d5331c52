package sqlite

// Tests of fetching ahead (ahead.go) and of group commit's fallback to
// savepoints (runGroup, tryGroup). They are internal: they look at the
// leases a backend tracks and queue writes on its writer directly, and they
// read and plant rows through a connection of their own to the file.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

// aheadOpen opens a task hub on path with o (Path and a quiet Logger filled
// in) and closes it when the test ends.
func aheadOpen(t *testing.T, path string, o Options) *Backend {
	t.Helper()
	o.Path = path
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if o.PollInterval == 0 {
		o.PollInterval = 20 * time.Millisecond
	}
	b, err := Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// aheadRaw opens a connection of the test's own on the file.
func aheadRaw(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// aheadWait polls cond every 5ms until it holds, failing after timeout.
func aheadWait(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// aheadRegistry: "Fan" schedules as many "Act" activities as its input says
// and waits for them; "Done" completes at once.
func aheadRegistry() *task.TaskRegistry {
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Fan", func(ctx *task.OrchestrationContext) (any, error) {
		var n int
		if err := ctx.GetInput(&n); err != nil {
			return nil, err
		}
		var ts []task.Task
		for i := range n {
			ts = append(ts, ctx.CallActivity("Act", task.WithActivityInput(i)))
		}
		for _, tk := range ts {
			if err := tk.Await(nil); err != nil {
				return nil, err
			}
		}
		return n, nil
	})
	_ = r.AddOrchestratorN("Done", func(*task.OrchestrationContext) (any, error) { return "done", nil })
	_ = r.AddActivityN("Act", func(ctx task.ActivityContext) (any, error) {
		var i int
		err := ctx.GetInput(&i)
		return i, err
	})
	return r
}

// aheadCreate creates instance id running orchestrator name with input.
func aheadCreate(t *testing.T, b *Backend, id, name, input string) {
	t.Helper()
	e := taskhub.NewExecutionStartedEvent(api.InstanceID(id), id+"-exec", name, input, time.Time{})
	if err := b.CreateOrchestrationInstance(context.Background(), e); err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
}

// aheadTurn runs an orchestration work item and completes it, as
// durabletask-go's orchestration worker does.
func aheadTurn(t *testing.T, b *Backend, wi *dtbackend.OrchestrationWorkItem) {
	t.Helper()
	ctx := context.Background()
	state, err := b.GetOrchestrationRuntimeState(ctx, wi)
	if err != nil {
		t.Fatalf("GetOrchestrationRuntimeState(%s): %v", wi.InstanceID, err)
	}
	wi.State = state
	_ = state.AddEvent(taskhub.NewOrchestratorStartedEvent())
	for _, e := range wi.NewEvents {
		_ = state.AddEvent(e)
	}
	res, err := task.NewTaskExecutor(aheadRegistry()).ExecuteOrchestrator(ctx, wi.InstanceID, state.OldEvents(), state.NewEvents())
	if err != nil {
		t.Fatalf("execute %s: %v", wi.InstanceID, err)
	}
	if _, err := state.ApplyActions(res.Response.Actions, nil); err != nil {
		t.Fatalf("apply %s: %v", wi.InstanceID, err)
	}
	if err := b.CompleteOrchestrationWorkItem(ctx, wi); err != nil {
		t.Fatalf("CompleteOrchestrationWorkItem(%s): %v", wi.InstanceID, err)
	}
}

// aheadFetchOrch fetches an orchestration work item within 5 s.
func aheadFetchOrch(t *testing.T, b *Backend) *dtbackend.OrchestrationWorkItem {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	wi, err := b.GetOrchestrationWorkItem(ctx)
	if err != nil {
		t.Fatalf("GetOrchestrationWorkItem: %v", err)
	}
	return wi
}

// aheadFetchAct fetches an activity work item within 5 s.
func aheadFetchAct(t *testing.T, b *Backend) *dtbackend.ActivityWorkItem {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	wi, err := b.GetActivityWorkItem(ctx)
	if err != nil {
		t.Fatalf("GetActivityWorkItem: %v", err)
	}
	return wi
}

// aheadNoOrch checks that no orchestration work item is fetched within d.
func aheadNoOrch(t *testing.T, b *Backend, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if wi, err := b.GetOrchestrationWorkItem(ctx); !errors.Is(err, dtbackend.ErrNoWorkItems) {
		t.Fatalf("GetOrchestrationWorkItem = %v, %v; want no work", wi, err)
	}
}

// aheadNoAct checks that no activity work item is fetched within d.
func aheadNoAct(t *testing.T, b *Backend, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if wi, err := b.GetActivityWorkItem(ctx); !errors.Is(err, dtbackend.ErrNoWorkItems) {
		t.Fatalf("GetActivityWorkItem = %v, %v; want no work", wi, err)
	}
}

// aheadFanOut creates instance id of "Fan" with input n and runs its first
// turn on b, which queues n activities. It returns their sequence numbers.
func aheadFanOut(t *testing.T, b *Backend, db *sql.DB, id string, n int) []int64 {
	t.Helper()
	aheadCreate(t, b, id, "Fan", fmt.Sprint(n))
	wi := aheadFetchOrch(t, b)
	if wi.InstanceID != api.InstanceID(id) {
		t.Fatalf("fetched %s, want %s", wi.InstanceID, id)
	}
	aheadTurn(t, b, wi)
	var seqs []int64
	for _, r := range aheadTasks(t, db) {
		if r.instance == id {
			seqs = append(seqs, r.seq)
		}
	}
	if len(seqs) != n {
		t.Fatalf("the turn of %s queued %d activities, want %d", id, len(seqs), n)
	}
	return seqs
}

// aheadRow is a NewTasks or Instances row's lock.
type aheadRow struct {
	seq      int64
	instance string
	lockedBy sql.NullString
	dequeues int
}

// aheadTasks reads the NewTasks rows in sequence order.
func aheadTasks(t *testing.T, db *sql.DB) []aheadRow {
	t.Helper()
	rows, err := db.Query(`SELECT SequenceNumber, InstanceID, LockedBy, DequeueCount FROM NewTasks ORDER BY SequenceNumber`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []aheadRow
	for rows.Next() {
		var r aheadRow
		if err := rows.Scan(&r.seq, &r.instance, &r.lockedBy, &r.dequeues); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// aheadInstances reads the lock of each instance, by id.
func aheadInstances(t *testing.T, db *sql.DB) map[string]sql.NullString {
	t.Helper()
	rows, err := db.Query(`SELECT InstanceID, LockedBy FROM Instances`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]sql.NullString{}
	for rows.Next() {
		var id string
		var by sql.NullString
		if err := rows.Scan(&id, &by); err != nil {
			t.Fatal(err)
		}
		out[id] = by
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// aheadLocked counts the NewTasks rows that are locked.
func aheadLocked(rows []aheadRow) int {
	n := 0
	for _, r := range rows {
		if r.lockedBy.Valid {
			n++
		}
	}
	return n
}

// aheadComplete completes an activity work item with its activity's result.
func aheadComplete(t *testing.T, b *Backend, wi *dtbackend.ActivityWorkItem) error {
	t.Helper()
	res, err := task.NewTaskExecutor(aheadRegistry()).ExecuteActivity(context.Background(), wi.InstanceID, wi.NewEvent)
	if err != nil {
		t.Fatalf("execute activity: %v", err)
	}
	wi.Result = res
	return b.CompleteActivityWorkItem(context.Background(), wi)
}

// TestAheadActivitiesOnceInOrder: with FetchBatch 8, the first fetch locks
// all five activities an orchestration scheduled; the fetches hand each out
// exactly once, in sequence-number order, and each can be completed.
func TestAheadActivitiesOnceInOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hub.db")
	b := aheadOpen(t, path, Options{FetchBatch: 8, LockTimeout: time.Minute})
	db := aheadRaw(t, path)
	seqs := aheadFanOut(t, b, db, "fan", 5)

	var got []*dtbackend.ActivityWorkItem
	for i := range seqs {
		wi := aheadFetchAct(t, b)
		got = append(got, wi)
		if i == 0 {
			if n := aheadLocked(aheadTasks(t, db)); n != 5 {
				t.Fatalf("after the first fetch %d of 5 activities are locked, want all 5 (fetched ahead)", n)
			}
		}
	}
	for i, wi := range got {
		if wi.SequenceNumber != seqs[i] {
			t.Fatalf("fetch %d returned activity %d; want %d (fetched: %v)", i, wi.SequenceNumber, seqs[i], aheadSeqs(got))
		}
		if wi.InstanceID != "fan" || wi.NewEvent.GetTaskScheduled().GetName() != "Act" {
			t.Fatalf("fetch %d: %s %v", i, wi.InstanceID, wi.NewEvent)
		}
		if !b.tracked(wi.LockedBy) {
			t.Errorf("the lease of fetch %d is not tracked", i)
		}
	}
	aheadNoAct(t, b, 200*time.Millisecond)
	for _, wi := range got {
		if err := aheadComplete(t, b, wi); err != nil {
			t.Fatalf("CompleteActivityWorkItem(%d): %v", wi.SequenceNumber, err)
		}
		if b.tracked(wi.LockedBy) {
			t.Errorf("the lease of %d is still tracked after its completion", wi.SequenceNumber)
		}
	}
	if rows := aheadTasks(t, db); len(rows) != 0 {
		t.Fatalf("%d activities left after completing all: %+v", len(rows), rows)
	}
	// The five results reach the orchestration, which completes.
	wi := aheadFetchOrch(t, b)
	if len(wi.NewEvents) != 5 {
		t.Fatalf("the orchestration got %d events, want the 5 results", len(wi.NewEvents))
	}
	aheadTurn(t, b, wi)
	if md, err := b.GetOrchestrationMetadata(context.Background(), "fan"); err != nil || md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("fan: %v, %v", md, err)
	}
}

func aheadSeqs(wis []*dtbackend.ActivityWorkItem) []int64 {
	var out []int64
	for _, wi := range wis {
		out = append(out, wi.SequenceNumber)
	}
	return out
}

// TestAheadOrchestrationsOnceInOrder: five instances with a pending start
// each are all locked by the first fetch and handed out once each, in the
// order they were created; completing and abandoning them works, and an
// abandoned one is fetched again at once.
func TestAheadOrchestrationsOnceInOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hub.db")
	b := aheadOpen(t, path, Options{FetchBatch: 8, LockTimeout: time.Minute})
	db := aheadRaw(t, path)
	ids := []string{"o-1", "o-2", "o-3", "o-4", "o-5"}
	for _, id := range ids {
		aheadCreate(t, b, id, "Done", "")
	}
	var got []*dtbackend.OrchestrationWorkItem
	for i := range ids {
		wi := aheadFetchOrch(t, b)
		got = append(got, wi)
		if i == 0 {
			locked := 0
			for _, by := range aheadInstances(t, db) {
				if by.Valid {
					locked++
				}
			}
			if locked != 5 {
				t.Fatalf("after the first fetch %d of 5 instances are locked, want all 5 (fetched ahead)", locked)
			}
		}
	}
	for i, wi := range got {
		if string(wi.InstanceID) != ids[i] || len(wi.NewEvents) != 1 || wi.NewEvents[0].GetExecutionStarted() == nil {
			t.Fatalf("fetch %d: %s with %d events; want %s with its start", i, wi.InstanceID, len(wi.NewEvents), ids[i])
		}
	}
	aheadNoOrch(t, b, 200*time.Millisecond)

	ctx := context.Background()
	for i, wi := range got {
		if i%2 == 0 {
			aheadTurn(t, b, wi)
			continue
		}
		if err := b.AbandonOrchestrationWorkItem(ctx, wi); err != nil {
			t.Fatalf("AbandonOrchestrationWorkItem(%s): %v", wi.InstanceID, err)
		}
	}
	// The abandoned ones (never run) come back at once, in order, with no
	// failed delivery counted.
	for _, id := range []string{"o-2", "o-4"} {
		wi := aheadFetchOrch(t, b)
		if string(wi.InstanceID) != id || wi.RetryCount != 0 {
			t.Fatalf("fetched %s (retry count %d) after the abandons, want %s (0)", wi.InstanceID, wi.RetryCount, id)
		}
		aheadTurn(t, b, wi)
	}
	for _, id := range ids {
		if md, err := b.GetOrchestrationMetadata(ctx, api.InstanceID(id)); err != nil || md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
			t.Fatalf("%s: %v, %v", id, md, err)
		}
	}
	aheadNoOrch(t, b, 100*time.Millisecond)
}

// TestAheadHandBack: when a backend that fetched one work item of five (so
// four are ahead) stops or closes, the four are unlocked at once and another
// backend on the file fetches them long before their one-minute locks would
// expire, while the item a took stays locked to it. Hand-backs count no
// failed delivery.
func TestAheadHandBack(t *testing.T) {
	for _, how := range []string{"Stop", "Close"} {
		t.Run(how+"/activities", func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hub.db")
			a := aheadOpen(t, path, Options{LockTimeout: time.Minute})
			b := aheadOpen(t, path, Options{LockTimeout: time.Minute})
			db := aheadRaw(t, path)
			seqs := aheadFanOut(t, a, db, "fan", 5)
			first := aheadFetchAct(t, a)
			if first.SequenceNumber != seqs[0] {
				t.Fatalf("a fetched %d, want %d", first.SequenceNumber, seqs[0])
			}
			if n := aheadLocked(aheadTasks(t, db)); n != 5 {
				t.Fatalf("%d of 5 locked after a's fetch, want 5", n)
			}
			aheadStopOrClose(t, a, how)
			for _, r := range aheadTasks(t, db) {
				if want := r.seq == first.SequenceNumber; r.lockedBy.Valid != want || r.dequeues != 0 {
					t.Fatalf("after a.%s: activity %d locked by %v with %d failed deliveries; want locked %v, 0", how, r.seq, r.lockedBy, r.dequeues, want)
				}
			}
			var others []int64
			for range 4 {
				others = append(others, aheadFetchAct(t, b).SequenceNumber)
			}
			slices.Sort(others)
			if !slices.Equal(others, seqs[1:]) {
				t.Fatalf("b fetched %v, want %v", others, seqs[1:])
			}
			aheadNoAct(t, b, 300*time.Millisecond) // a's item stays a's
			if how == "Close" {
				return
			}
			if err := a.AbandonActivityWorkItem(context.Background(), first); err != nil {
				t.Fatalf("a abandoning its item after Stop: %v", err)
			}
			if wi := aheadFetchAct(t, b); wi.SequenceNumber != first.SequenceNumber {
				t.Fatalf("b fetched %d after a's abandon, want %d", wi.SequenceNumber, first.SequenceNumber)
			}
		})
		t.Run(how+"/orchestrations", func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hub.db")
			a := aheadOpen(t, path, Options{LockTimeout: time.Minute})
			b := aheadOpen(t, path, Options{LockTimeout: time.Minute})
			db := aheadRaw(t, path)
			ids := []string{"o-1", "o-2", "o-3", "o-4", "o-5"}
			for _, id := range ids {
				aheadCreate(t, a, id, "Done", "")
			}
			first := aheadFetchOrch(t, a)
			if first.InstanceID != "o-1" {
				t.Fatalf("a fetched %s, want o-1", first.InstanceID)
			}
			aheadStopOrClose(t, a, how)
			for id, by := range aheadInstances(t, db) {
				if want := id == "o-1"; by.Valid != want {
					t.Fatalf("after a.%s: instance %s locked by %v, want locked %v", how, id, by, want)
				}
			}
			var n int
			if err := db.QueryRow(`SELECT COUNT(*) FROM NewEvents WHERE InstanceID <> 'o-1' AND (LockedBy IS NOT NULL OR DequeueCount <> 0 OR VisibleTime IS NOT NULL)`).Scan(&n); err != nil || n != 0 {
				t.Fatalf("after a.%s: %d handed-back events still locked, counted or delayed (%v)", how, n, err)
			}
			var others []string
			for range 4 {
				wi := aheadFetchOrch(t, b)
				others = append(others, string(wi.InstanceID))
				aheadTurn(t, b, wi)
			}
			slices.Sort(others)
			if !slices.Equal(others, ids[1:]) {
				t.Fatalf("b fetched %v, want %v", others, ids[1:])
			}
			aheadNoOrch(t, b, 300*time.Millisecond) // a's item stays a's
			if how == "Close" {
				return
			}
			if err := a.AbandonOrchestrationWorkItem(context.Background(), first); err != nil {
				t.Fatalf("a abandoning its item after Stop: %v", err)
			}
			wi := aheadFetchOrch(t, b)
			if wi.InstanceID != "o-1" || wi.RetryCount != 0 {
				t.Fatalf("b fetched %s (retry count %d) after a's abandon, want o-1 (0)", wi.InstanceID, wi.RetryCount)
			}
			aheadTurn(t, b, wi)
		})
	}
}

func aheadStopOrClose(t *testing.T, a *Backend, how string) {
	t.Helper()
	var err error
	if how == "Stop" {
		err = a.Stop(context.Background())
	} else {
		err = a.Close()
	}
	if err != nil {
		t.Fatalf("a.%s: %v", how, err)
	}
}

// TestAheadAfterStop: after Stop a fetch locks one work item only; after
// Start it fetches ahead again.
func TestAheadAfterStop(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hub.db")
	b := aheadOpen(t, path, Options{LockTimeout: time.Minute})
	db := aheadRaw(t, path)
	if err := b.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	aheadFanOut(t, b, db, "fan", 4)
	aheadFetchAct(t, b)
	if n := aheadLocked(aheadTasks(t, db)); n != 1 {
		t.Fatalf("a fetch after Stop locked %d of 4 activities, want 1", n)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	aheadFetchAct(t, b)
	if n := aheadLocked(aheadTasks(t, db)); n != 4 {
		t.Fatalf("after Start, two fetches locked %d of 4 activities, want all 4", n)
	}
}

// TestAheadLostLockSkipped: an item ahead whose lock another worker took
// (planted in the database) is dropped by the next renewal and never handed
// out, nor completable through this backend; the next fetch returns the
// item after it.
func TestAheadLostLockSkipped(t *testing.T) {
	far := time.Now().UTC().Add(24 * time.Hour)
	t.Run("activities", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "hub.db")
		a := aheadOpen(t, path, Options{LockTimeout: time.Second})
		db := aheadRaw(t, path)
		seqs := aheadFanOut(t, a, db, "fan", 3)
		first := aheadFetchAct(t, a)
		if first.SequenceNumber != seqs[0] {
			t.Fatalf("fetched %d, want %d", first.SequenceNumber, seqs[0])
		}
		rows := aheadTasks(t, db)
		if len(rows) != 3 || aheadLocked(rows) != 3 {
			t.Fatalf("after the first fetch: %+v; want 3 locked", rows)
		}
		owner := rows[1].lockedBy.String // the stolen item's lock owner in a
		res, err := db.Exec(`UPDATE NewTasks SET LockedBy = 'thief', LockExpiration = ? WHERE SequenceNumber = ? AND LockedBy = ?`, far, seqs[1], owner)
		if n, _ := res.RowsAffected(); err != nil || n != 1 {
			t.Fatalf("stealing the lock: %d rows, %v", n, err)
		}
		aheadWait(t, 5*time.Second, "a's renewal to drop the stolen lock", func() bool { return !a.tracked(owner) })
		if !a.tracked(rows[2].lockedBy.String) {
			t.Fatalf("the lease of the item not stolen was dropped too")
		}
		next := aheadFetchAct(t, a)
		if next.SequenceNumber != seqs[2] {
			t.Fatalf("after the theft a fetched %d, want %d (the stolen %d must be skipped)", next.SequenceNumber, seqs[2], seqs[1])
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if wi, err := a.GetActivityWorkItem(ctx); err == nil && wi.SequenceNumber == seqs[1] {
			t.Fatalf("a fetched the stolen activity %d", seqs[1])
		}
		stolen := &dtbackend.ActivityWorkItem{SequenceNumber: seqs[1], InstanceID: "fan", NewEvent: next.NewEvent, LockedBy: owner}
		if err := aheadComplete(t, a, stolen); !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
			t.Fatalf("completing the stolen activity through a: %v, want ErrWorkItemLockLost", err)
		}
		if r := aheadTasks(t, db)[1]; r.seq != seqs[1] || r.lockedBy.String != "thief" {
			t.Fatalf("the stolen row is now %+v", r)
		}
		for _, wi := range []*dtbackend.ActivityWorkItem{first, next} {
			if err := aheadComplete(t, a, wi); err != nil {
				t.Fatalf("completing %d: %v", wi.SequenceNumber, err)
			}
		}
	})
	t.Run("orchestrations", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "hub.db")
		a := aheadOpen(t, path, Options{LockTimeout: time.Second})
		db := aheadRaw(t, path)
		for _, id := range []string{"o-1", "o-2", "o-3"} {
			aheadCreate(t, a, id, "Done", "")
		}
		first := aheadFetchOrch(t, a)
		if first.InstanceID != "o-1" {
			t.Fatalf("fetched %s, want o-1", first.InstanceID)
		}
		locks := aheadInstances(t, db)
		owner := locks["o-2"].String
		if owner == "" || locks["o-3"].String == "" {
			t.Fatalf("after the first fetch: %v; want all locked", locks)
		}
		res, err := db.Exec(`UPDATE Instances SET LockedBy = 'thief', LockExpiration = ? WHERE InstanceID = 'o-2' AND LockedBy = ?`, far, owner)
		if n, _ := res.RowsAffected(); err != nil || n != 1 {
			t.Fatalf("stealing the lock: %d rows, %v", n, err)
		}
		aheadWait(t, 5*time.Second, "a's renewal to drop the stolen lock", func() bool { return !a.tracked(owner) })
		next := aheadFetchOrch(t, a)
		if next.InstanceID != "o-3" {
			t.Fatalf("after the theft a fetched %s, want o-3 (the stolen o-2 must be skipped)", next.InstanceID)
		}
		stolen := &dtbackend.OrchestrationWorkItem{InstanceID: "o-2", LockedBy: owner}
		stolen.State = dtbackend.NewOrchestrationRuntimeState("o-2", nil)
		if err := a.CompleteOrchestrationWorkItem(context.Background(), stolen); !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
			t.Fatalf("completing the stolen o-2 through a: %v, want ErrWorkItemLockLost", err)
		}
		if by := aheadInstances(t, db)["o-2"]; by.String != "thief" {
			t.Fatalf("o-2 is now locked by %v", by)
		}
		aheadTurn(t, a, first)
		aheadTurn(t, a, next)
	})
}

// TestAheadFetchBatchOption: 0 means 8, 1 turns fetching ahead off, and
// values outside 1..100 are refused.
func TestAheadFetchBatchOption(t *testing.T) {
	t.Run("default", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "hub.db")
		b := aheadOpen(t, path, Options{LockTimeout: time.Minute})
		db := aheadRaw(t, path)
		if b.opts.FetchBatch != 8 {
			t.Fatalf("FetchBatch 0 became %d, want 8", b.opts.FetchBatch)
		}
		aheadFanOut(t, b, db, "fan", 9)
		aheadFetchAct(t, b)
		if n := aheadLocked(aheadTasks(t, db)); n != 8 {
			t.Fatalf("one fetch locked %d of 9 activities, want 8", n)
		}
	})
	t.Run("one", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "hub.db")
		b := aheadOpen(t, path, Options{LockTimeout: time.Minute, FetchBatch: 1})
		db := aheadRaw(t, path)
		seqs := aheadFanOut(t, b, db, "fan", 3)
		for i := range seqs {
			wi := aheadFetchAct(t, b)
			if wi.SequenceNumber != seqs[i] {
				t.Fatalf("fetch %d returned %d, want %d", i, wi.SequenceNumber, seqs[i])
			}
			for _, r := range aheadTasks(t, db) {
				if want := r.seq <= seqs[i]; r.lockedBy.Valid != want {
					t.Fatalf("after fetch %d with FetchBatch 1, activity %d locked by %v; want locked %v", i, r.seq, r.lockedBy, want)
				}
			}
		}
	})
	for _, n := range []int{101, -1} {
		o := Options{Path: filepath.Join(t.TempDir(), "hub.db"), FetchBatch: n, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		b, err := Open(context.Background(), o)
		if err == nil {
			b.Close()
			t.Errorf("Open with FetchBatch %d succeeded", n)
		} else if !strings.Contains(err.Error(), "FetchBatch") {
			t.Errorf("Open with FetchBatch %d: %q does not name FetchBatch", n, err)
		}
	}
	aheadOpen(t, filepath.Join(t.TempDir(), "hub.db"), Options{FetchBatch: 100})
}

// aheadHoldWriter runs a write on b that holds the writer connection until
// the returned release is called, so that the writes queued meanwhile run
// together as the next groups. release returns once the holding write has
// committed.
func aheadHoldWriter(t *testing.T, b *Backend) (release func()) {
	t.Helper()
	started, rel, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	var once sync.Once
	go func() {
		done <- b.write(context.Background(), func(*stx) error {
			once.Do(func() { close(started) })
			<-rel
			return nil
		})
	}()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("the holding write did not start")
	}
	return func() {
		close(rel)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("the holding write: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the holding write did not end")
		}
	}
}

// aheadQueued waits until n writes wait for the writer.
func aheadQueued(t *testing.T, b *Backend, n int) {
	t.Helper()
	aheadWait(t, 5*time.Second, fmt.Sprintf("%d queued writes", n), func() bool {
		b.group.mu.Lock()
		defer b.group.mu.Unlock()
		return len(b.group.queue) >= n
	})
}

// TestAheadGroupCompleteFallback: two activity completions run in one
// group, one with a lock it does not hold: the other's completion commits
// and the failing one gets ErrWorkItemLockLost and changes nothing, in
// either order.
func TestAheadGroupCompleteFallback(t *testing.T) {
	for _, badFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("badFirst=%v", badFirst), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hub.db")
			b := aheadOpen(t, path, Options{LockTimeout: time.Minute})
			db := aheadRaw(t, path)
			seqs := aheadFanOut(t, b, db, "fan", 2)
			good, other := aheadFetchAct(t, b), aheadFetchAct(t, b)
			bad := *other
			bad.LockedBy = "wrong"
			for _, wi := range []*dtbackend.ActivityWorkItem{good, &bad} {
				res, err := task.NewTaskExecutor(aheadRegistry()).ExecuteActivity(context.Background(), wi.InstanceID, wi.NewEvent)
				if err != nil {
					t.Fatal(err)
				}
				wi.Result = res
			}

			release := aheadHoldWriter(t, b)
			errs := map[string]chan error{"good": make(chan error, 1), "bad": make(chan error, 1)}
			order := []string{"good", "bad"}
			if badFirst {
				order = []string{"bad", "good"}
			}
			for i, which := range order {
				wi := good
				if which == "bad" {
					wi = &bad
				}
				go func() { errs[which] <- b.CompleteActivityWorkItem(context.Background(), wi) }()
				aheadQueued(t, b, i+1)
			}
			release()
			result := func(which string) error {
				select {
				case err := <-errs[which]:
					return err
				case <-time.After(5 * time.Second):
					t.Fatalf("the %s completion did not return", which)
					return nil
				}
			}
			if err := result("good"); err != nil {
				t.Fatalf("the good completion: %v", err)
			}
			if err := result("bad"); !errors.Is(err, dtbackend.ErrWorkItemLockLost) {
				t.Fatalf("the completion with a wrong lock: %v, want ErrWorkItemLockLost", err)
			}
			rows := aheadTasks(t, db)
			if len(rows) != 1 || rows[0].seq != other.SequenceNumber || rows[0].lockedBy.String != other.LockedBy || other.SequenceNumber != seqs[1] {
				t.Fatalf("NewTasks after the group: %+v; want only %d, still locked by its owner", rows, other.SequenceNumber)
			}
			var n int
			if err := db.QueryRow(`SELECT COUNT(*) FROM NewEvents WHERE InstanceID = 'fan'`).Scan(&n); err != nil || n != 1 {
				t.Fatalf("%d results queued for the orchestration (%v), want the good one's", n, err)
			}
			if err := aheadComplete(t, b, other); err != nil {
				t.Fatalf("completing the other activity with its own lock: %v", err)
			}
		})
	}
}

var errAheadFail = errors.New("this write fails")

// TestAheadGroupMarkers: 200 writes queued together, every fifth of which
// inserts a marker and then fails: each succeeding write's marker is
// committed exactly once, no failing write's marker is, each caller gets
// its own write's result, and the failing writes made groups run again
// with savepoints.
func TestAheadGroupMarkers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hub.db")
	b := aheadOpen(t, path, Options{LockTimeout: time.Minute})
	ctx := context.Background()
	if err := b.write(ctx, func(tx *stx) error {
		_, err := tx.ExecContext(ctx, `CREATE TABLE AheadMarks (ID INTEGER NOT NULL)`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	const n = 200
	fails := func(i int) bool { return i%5 == 3 }
	var runs atomic.Int64
	errs := make([]error, n)
	var wg sync.WaitGroup
	release := aheadHoldWriter(t, b)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = b.write(ctx, func(tx *stx) error {
				runs.Add(1)
				if _, err := tx.ExecContext(ctx, `INSERT INTO AheadMarks (ID) VALUES (?)`, i); err != nil {
					return err
				}
				if fails(i) {
					return fmt.Errorf("write %d: %w", i, errAheadFail)
				}
				return nil
			})
		}()
	}
	aheadQueued(t, b, n)
	release()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the writes did not all return")
	}
	for i, err := range errs {
		switch {
		case fails(i) && (!errors.Is(err, errAheadFail) || err.Error() != fmt.Sprintf("write %d: %v", i, errAheadFail)):
			t.Errorf("failing write %d returned %v, want its own error", i, err)
		case !fails(i) && err != nil:
			t.Errorf("write %d returned %v", i, err)
		}
	}
	rows, err := aheadRaw(t, path).Query(`SELECT ID, COUNT(*) FROM AheadMarks GROUP BY ID`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := map[int]int{}
	for rows.Next() {
		var id, c int
		if err := rows.Scan(&id, &c); err != nil {
			t.Fatal(err)
		}
		seen[id] = c
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		want := 1
		if fails(i) {
			want = 0
		}
		if seen[i] != want {
			t.Errorf("write %d's marker committed %d times, want %d", i, seen[i], want)
		}
	}
	if r := runs.Load(); r <= n {
		t.Errorf("the writes ran %d times for %d writes: no group ran again with savepoints", r, n)
	}
}

// TestAheadFetchRacingStop: a fetch whose transaction locked a batch before
// Stop was called, but which returns after Stop returned, must not leave
// items ahead: another backend fetches them long before their locks would
// expire: putAhead refuses them after Stop, and the fetch hands them back.
func TestAheadFetchRacingStop(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hub.db")
	a := aheadOpen(t, path, Options{LockTimeout: time.Minute})
	b := aheadOpen(t, path, Options{LockTimeout: time.Minute})
	db := aheadRaw(t, path)
	seqs := aheadFanOut(t, a, db, "fan", 5)

	// The fetch and a write that holds the writer after it run as one
	// group: the fetch's statements (FetchBatch 8, not stopped yet) have
	// run once the holder runs, and the fetch returns once it commits.
	release := aheadHoldWriter(t, a)
	fetched := make(chan *dtbackend.ActivityWorkItem, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		wi, _ := a.GetActivityWorkItem(ctx)
		fetched <- wi
	}()
	aheadQueued(t, a, 1)
	inGroup, rel := make(chan struct{}), make(chan struct{})
	var once sync.Once
	go func() {
		_ = a.write(context.Background(), func(*stx) error {
			once.Do(func() { close(inGroup) })
			<-rel
			return nil
		})
	}()
	aheadQueued(t, a, 2)
	release()
	select {
	case <-inGroup:
	case <-time.After(5 * time.Second):
		t.Fatal("the group with the fetch did not run")
	}
	if err := a.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(rel)
	var first *dtbackend.ActivityWorkItem
	select {
	case first = <-fetched:
	case <-time.After(5 * time.Second):
		t.Fatal("the fetch did not return")
	}
	if first == nil || first.SequenceNumber != seqs[0] {
		t.Fatalf("the racing fetch returned %v, want activity %d", first, seqs[0])
	}
	var others []int64
	for range 4 {
		others = append(others, aheadFetchAct(t, b).SequenceNumber)
	}
	slices.Sort(others)
	if !slices.Equal(others, seqs[1:]) {
		t.Fatalf("b fetched %v, want %v", others, seqs[1:])
	}
}

// TestAheadCrashLeavesItemsToTheLockTimeout: a process that dies with items
// ahead (no Stop, no Close: its renewals just stop) loses nothing. Its
// items stay locked until their locks expire, then another process fetches
// every one of them, the one it was running included, each once.
func TestAheadCrashLeavesItemsToTheLockTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hub.db")
	a := aheadOpen(t, path, Options{LockTimeout: time.Second})
	b := aheadOpen(t, path, Options{LockTimeout: time.Second})
	db := aheadRaw(t, path)
	seqs := aheadFanOut(t, a, db, "fan", 4)
	aheadFetchAct(t, a) // running; the other 3 wait ahead
	if n := aheadLocked(aheadTasks(t, db)); n != 4 {
		t.Fatalf("%d of 4 locked after a's fetch, want 4", n)
	}
	a.closeLeases() // the crash: no hand-back, no renewal
	var got []int64
	for range 4 {
		got = append(got, aheadFetchAct(t, b).SequenceNumber)
	}
	slices.Sort(got)
	if !slices.Equal(got, seqs) {
		t.Fatalf("b fetched %v after a's locks expired, want %v", got, seqs)
	}
	aheadNoAct(t, b, 300*time.Millisecond)
}
