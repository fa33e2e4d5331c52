package azurestorage

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
)

// The Azure paths of Fleet.UpdateDrones: the known records (no reads, one
// transaction), a transaction that fails on one drone (stale known record,
// lost race, index row gone) and how writes are packed in transactions.

// batchIDs returns n drone ids, "d-00" …
func batchIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("d-%02d", i)
	}
	return ids
}

func addBatchDrones(t *testing.T, ctx context.Context, f *Fleet, ids []string) {
	t.Helper()
	for _, id := range ids {
		if _, err := f.AddDrone(ctx, id, domain.LatLon{}); err != nil {
			t.Fatalf("AddDrone(%s): %v", id, err)
		}
	}
}

// mustUpdateDrones runs UpdateDrones and fails t unless every drone was
// written; it returns the drones written, by id.
func mustUpdateDrones(t *testing.T, ctx context.Context, f *Fleet, ids []string, fn func(*fleet.Drone) error) map[string]fleet.Drone {
	t.Helper()
	ups, err := f.UpdateDrones(ctx, ids, fn)
	if err != nil || len(ups) != len(ids) {
		t.Fatalf("UpdateDrones(%d drones) = %d results, %v", len(ids), len(ups), err)
	}
	out := make(map[string]fleet.Drone, len(ids))
	for k, id := range ids {
		if ups[k].Err != nil {
			t.Fatalf("UpdateDrones: drone %s: %v", id, ups[k].Err)
		}
		if ups[k].Drone.ID != id {
			t.Fatalf("UpdateDrones: result %d is drone %q, want %q", k, ups[k].Drone.ID, id)
		}
		out[id] = ups[k].Drone
	}
	return out
}

// sameRecord reports whether two records are the same, as stored (JSON).
func sameRecord(a, b fleet.Drone) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}

// requestKinds returns counter's counts by operation kind ("table.get"),
// leaving out finer counts a kind may be broken into ("table.get:…").
func requestKinds(counter *Counter) map[string]int64 {
	out := map[string]int64{}
	for k, v := range counter.Snapshot() {
		if !strings.Contains(k, ":") {
			out[k] = v
		}
	}
	return out
}

// wantRequests fails t unless counter holds exactly want (kinds not listed
// must be absent).
func wantRequests(t *testing.T, what string, counter *Counter, want map[string]int64) {
	t.Helper()
	got := requestKinds(counter)
	for k, v := range got {
		if want[k] != v {
			t.Errorf("%s cost %s; want %v", what, counter, want)
			return
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s cost %s; want %v", what, counter, want)
			return
		}
	}
}

// TestFleetBatchRequestEconomy: UpdateDrones of drones this Fleet wrote
// last reads none of them and writes them in as few transactions as the
// limits allow, index rows included.
func TestFleetBatchRequestEconomy(t *testing.T) {
	var counter Counter
	f := openTestFleet(t, testHub(t), &counter)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := batchIDs(50)
	addBatchDrones(t, ctx, f, ids)
	inc := func(d *fleet.Drone) error { d.Frames++; return nil }

	counter.Reset()
	mustUpdateDrones(t, ctx, f, ids, inc)
	wantRequests(t, "a first UpdateDrones of 50 drones", &counter, map[string]int64{"table.get": 50, "table.batch": 1})
	counter.Reset()
	mustUpdateDrones(t, ctx, f, ids, inc)
	wantRequests(t, "a second UpdateDrones of the same 50 drones", &counter, map[string]int64{"table.batch": 1})

	// Dispatched: 50 drone rows and 50 quiet rows inserted, 100 operations.
	T := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	route := domain.Route{Pickup: domain.LatLon{Lat: 1}, Dropoff: domain.LatLon{Lat: 2}}
	counter.Reset()
	mustUpdateDrones(t, ctx, f, ids, func(d *fleet.Drone) error {
		d.MissionID, d.Route, d.DispatchedAt = "m-"+d.ID, &route, T.Add(-time.Hour)
		return nil
	})
	wantRequests(t, "UpdateDrones dispatching the 50 drones", &counter, map[string]int64{"table.batch": 1})
	counter.Reset()
	mustUpdateDrones(t, ctx, f, ids, inc)
	wantRequests(t, "UpdateDrones of the 50 drones after their index rows were inserted", &counter, map[string]int64{"table.batch": 1})

	// Frames a minute later: each quiet row moves (a delete and an insert),
	// 150 operations in two transactions.
	counter.Reset()
	moved := mustUpdateDrones(t, ctx, f, ids, func(d *fleet.Drone) error { d.LastFrameAt = T.Add(time.Minute); return nil })
	wantRequests(t, "UpdateDrones moving the 50 drones' quiet rows", &counter, map[string]int64{"table.batch": 2})
	for _, id := range ids {
		if d := moved[id]; d.Frames != 3 || !d.LastFrameAt.Equal(T.Add(time.Minute)) {
			t.Fatalf("drone %s after 5 updates: %+v", id, d)
		}
	}
	ws, err := f.Watched(ctx, fleet.WatchQuery{QuietUntil: T.Add(time.Hour)})
	if err != nil || len(ws) != len(ids) {
		t.Fatalf("Watched: %d drones, %v; want %d", len(ws), err, len(ids))
	}
}

// TestFleetBatchKnownAfterIndexRowsMove: a transaction that deletes an
// index row (one drone's quiet row moves) leaves every drone it wrote
// known all the same: the next UpdateDrones reads none of them.
func TestFleetBatchKnownAfterIndexRowsMove(t *testing.T) {
	var counter Counter
	f := openTestFleet(t, testHub(t), &counter)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := batchIDs(10)
	addBatchDrones(t, ctx, f, ids)
	T := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	route := domain.Route{Pickup: domain.LatLon{Lat: 1}, Dropoff: domain.LatLon{Lat: 2}}
	mustUpdateDrones(t, ctx, f, ids, func(d *fleet.Drone) error {
		d.MissionID, d.Route, d.DispatchedAt = "m-"+d.ID, &route, T.Add(-time.Hour)
		return nil
	})
	// d-00's quiet row moves (delete, insert); the others' rows stay.
	mustUpdateDrones(t, ctx, f, ids, func(d *fleet.Drone) error {
		d.Frames++
		if d.ID == "d-00" {
			d.LastFrameAt = T
		}
		return nil
	})
	counter.Reset()
	mustUpdateDrones(t, ctx, f, ids, func(d *fleet.Drone) error { d.Frames++; return nil })
	wantRequests(t, "UpdateDrones of 10 drones written by a transaction that moved one quiet row", &counter, map[string]int64{"table.batch": 1})
}

// TestFleetBatchNoRacesInProcess: UpdateDrone and UpdateDrones of the same
// drones at once through one Fleet queue on the drones' locks, so none of
// them loses an ETag race to another or reads a drone: each UpdateDrones
// is one transaction and each UpdateDrone one replace.
func TestFleetBatchNoRacesInProcess(t *testing.T) {
	var counter Counter
	f := openTestFleet(t, testHub(t), &counter)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := batchIDs(4)
	addBatchDrones(t, ctx, f, ids)
	inc := func(d *fleet.Drone) error { d.Frames++; return nil }
	mustUpdateDrones(t, ctx, f, ids, inc) // all known from here on
	counter.Reset()
	const each = 8
	var wg sync.WaitGroup
	for w := range ids {
		wg.Go(func() {
			for range each {
				if _, err := f.UpdateDrone(ctx, ids[w], inc); err != nil {
					t.Errorf("UpdateDrone: %v", err)
				}
			}
		})
		wg.Go(func() {
			batch := append(slices.Clone(ids[w:]), ids[:w]...)
			for range each {
				slices.Reverse(batch)
				ups, err := f.UpdateDrones(ctx, batch, inc)
				if err == nil {
					err = ups[0].Err
				}
				if err != nil {
					t.Errorf("UpdateDrones: %v", err)
				}
			}
		})
	}
	wg.Wait()
	n := int64(len(ids) * each)
	wantRequests(t, fmt.Sprintf("%d UpdateDrone and %d UpdateDrones of known drones at once", n, n), &counter,
		map[string]int64{"table.replace": n, "table.batch": n})
	for _, id := range ids {
		if d, err := f.Drone(ctx, id); err != nil || d.Frames != 1+each+n {
			t.Errorf("drone %s after %d increments: %+v, %v", id, 1+each+n, d, err)
		}
	}
}

// TestFleetBatchStaleKnownRecord: another Fleet on the hub writes a drone
// in the middle of a batch this Fleet knows: the transaction fails on it
// (412), and the batch still writes every drone once, the stale one on top
// of the other Fleet's write.
func TestFleetBatchStaleKnownRecord(t *testing.T) {
	hub := testHub(t)
	var counter Counter
	f, g := openTestFleet(t, hub, &counter), openTestFleet(t, hub, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := batchIDs(20)
	addBatchDrones(t, ctx, f, ids)
	mustUpdateDrones(t, ctx, f, ids, func(d *fleet.Drone) error { d.Frames++; return nil })
	const stale = "d-10"
	if _, err := g.UpdateDrone(ctx, stale, func(d *fleet.Drone) error { d.Frames += 100; d.MissionID = "m-g"; return nil }); err != nil {
		t.Fatal(err)
	}

	counter.Reset()
	saw := map[string]int64{}
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	written := mustUpdateDrones(t, ctx, f, ids, func(d *fleet.Drone) error {
		saw[d.ID] = d.Frames
		d.Frames++
		d.LastSignalAt = at
		return nil
	})
	for _, id := range ids {
		want := fleet.Drone{ID: id, Frames: 2, LastSignalAt: at}
		if id == stale {
			want.Frames, want.MissionID = 102, "m-g"
			if saw[id] != 101 {
				t.Errorf("fn was last called on %s at Frames %d, want 101 (the other Fleet's write)", id, saw[id])
			}
		}
		got, err := g.Drone(ctx, id)
		if err != nil || !sameRecord(written[id], want) || !sameRecord(got, want) {
			t.Errorf("drone %s: returned %+v, stored %+v (%v); want %+v", id, written[id], got, err, want)
		}
	}
	// One transaction failed whole on the stale drone, the next wrote all
	// 20; no drone was written alone.
	snap := requestKinds(&counter)
	if snap["table.batch"] != 2 || snap["table.get"] < 1 || snap["table.get"] > 20 || len(snap) != 2 {
		t.Errorf("UpdateDrones with one stale known record cost %s; want 2 transactions and 1 to 20 reads", &counter)
	}

	// What this Fleet wrote is known again: the next batch reads nothing.
	counter.Reset()
	mustUpdateDrones(t, ctx, f, ids, func(d *fleet.Drone) error { d.Frames++; return nil })
	wantRequests(t, "UpdateDrones after the stale record was settled", &counter, map[string]int64{"table.batch": 1})
}

// TestFleetBatchLostRaceOnFreshRecord: a drone in the middle of a batch,
// read fresh, is written by another Fleet before the transaction: the
// transaction's answer names it, it alone is updated again on its own
// (read, fn, write on top of the other Fleet's), and the other drones go
// in the next transaction as they were, without being read again. All of
// them are known afterwards.
func TestFleetBatchLostRaceOnFreshRecord(t *testing.T) {
	hub := testHub(t)
	var counter Counter
	f, g := openTestFleet(t, hub, &counter), openTestFleet(t, hub, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := batchIDs(20)
	addBatchDrones(t, ctx, g, ids) // f knows none of them
	const raced = "d-10"
	T := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	route := domain.Route{Pickup: domain.LatLon{Lat: 1}, Dropoff: domain.LatLon{Lat: 2}}
	counter.Reset()
	calls := map[string]int{}
	written := mustUpdateDrones(t, ctx, f, ids, func(d *fleet.Drone) error {
		if calls[d.ID]++; d.ID == raced && calls[d.ID] == 1 {
			if _, err := g.UpdateDrone(ctx, raced, func(o *fleet.Drone) error { o.Frames += 100; o.LastSignalKey = "g"; return nil }); err != nil {
				return err
			}
		}
		// Dispatched: each drone's row and its new quiet row.
		d.MissionID, d.Route, d.DispatchedAt = "m-"+d.ID, &route, T
		d.Frames++
		return nil
	})
	for _, id := range ids {
		want := fleet.Drone{ID: id, Frames: 1, MissionID: "m-" + id, Route: &route, DispatchedAt: T}
		if id == raced {
			want.Frames, want.LastSignalKey = 101, "g"
		}
		got, err := g.Drone(ctx, id)
		if err != nil || !sameRecord(written[id], want) || !sameRecord(got, want) {
			t.Errorf("drone %s: returned %+v, stored %+v (%v); want %+v", id, written[id], got, err, want)
		}
	}
	if calls[raced] != 2 {
		t.Errorf("fn ran %d times for the drone that lost the race, want 2", calls[raced])
	}
	// 20 reads, the transaction that lost, the raced drone read and
	// written alone (its row and quiet row), the transaction of the other 19.
	wantRequests(t, "UpdateDrones with one lost race on a fresh record", &counter,
		map[string]int64{"table.get": 21, "table.batch": 3})
	if ws, err := g.Watched(ctx, fleet.WatchQuery{QuietUntil: T}); err != nil || len(ws) != len(ids) {
		t.Errorf("Watched: %d drones, %v; want %d", len(ws), err, len(ids))
	}

	// The 19 and the one written alone are all known now.
	counter.Reset()
	mustUpdateDrones(t, ctx, f, ids, func(d *fleet.Drone) error { d.Frames++; return nil })
	wantRequests(t, "UpdateDrones after the race was settled", &counter, map[string]int64{"table.batch": 1})
}

// TestFleetBatchIndexRowGone: a drone whose index row was deleted behind
// the Fleet's back is still updated, its stale row no longer deleted
// (a delete of a missing row fails its transaction), whether this Fleet
// knew the drone or reads it fresh; its index is right afterwards.
func TestFleetBatchIndexRowGone(t *testing.T) {
	hub := testHub(t)
	f, g := openTestFleet(t, hub, nil), openTestFleet(t, hub, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	T := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	route := domain.Route{Pickup: domain.LatLon{Lat: 1}, Dropoff: domain.LatLon{Lat: 2}}
	ids := batchIDs(5)
	addBatchDrones(t, ctx, f, ids)
	mustUpdateDrones(t, ctx, f, ids, func(d *fleet.Drone) error {
		d.MissionID, d.Route, d.DispatchedAt, d.LastFrameAt = "m-"+d.ID, &route, T.Add(-time.Hour), T.Add(-30*time.Minute)
		return nil
	})
	deleteQuietRow := func(id string, quiet time.Time) {
		t.Helper()
		rk := watchQuiet + indexTime(quiet) + "|" + escapeKey(id)
		if _, err := f.drones.DeleteEntity(ctx, dronePartition, rk, nil); err != nil {
			t.Fatalf("delete the quiet row of %s: %v", id, err)
		}
	}
	for _, c := range []struct {
		name  string
		f     *Fleet
		id    string
		frame time.Time
	}{
		{"known to the Fleet", f, "d-02", T.Add(-20 * time.Minute)},
		{"read fresh by another Fleet", g, "d-03", T.Add(-10 * time.Minute)},
	} {
		prev, err := f.Drone(ctx, c.id)
		if err != nil {
			t.Fatal(err)
		}
		deleteQuietRow(c.id, prev.LastFrameAt)
		ups, err := c.f.UpdateDrones(ctx, ids, func(d *fleet.Drone) error { d.Frames++; d.LastFrameAt = c.frame; return nil })
		if err != nil {
			t.Fatalf("%s: UpdateDrones: %v", c.name, err)
		}
		for k, id := range ids {
			if ups[k].Err != nil || !ups[k].Drone.LastFrameAt.Equal(c.frame) {
				t.Errorf("%s: UpdateDrones result for %s: %+v, %v", c.name, id, ups[k].Drone, ups[k].Err)
			}
			if got, err := g.Drone(ctx, id); err != nil || !got.LastFrameAt.Equal(c.frame) {
				t.Errorf("%s: stored %s: %+v, %v", c.name, id, got, err)
			}
		}
		// Each drone has the one quiet row of its new frame time.
		var want []string
		for _, id := range ids {
			want = append(want, watchQuiet+indexTime(c.frame)+"|"+escapeKey(id))
		}
		if got := indexRowKeys(t, ctx, f); !slices.Equal(got, want) {
			t.Errorf("%s: index rows %v, want %v", c.name, got, want)
		}
		ws, err := f.Watched(ctx, fleet.WatchQuery{QuietUntil: T})
		if err != nil || len(ws) != len(ids) {
			t.Errorf("%s: Watched: %+v, %v", c.name, ws, err)
		}
		for _, w := range ws {
			if !w.LastFrameAt.Equal(c.frame) {
				t.Errorf("%s: Watched: %+v", c.name, w)
			}
		}
	}
}

// indexRowKeys lists the RowKeys of the watch index rows, but the marker.
func indexRowKeys(t *testing.T, ctx context.Context, f *Fleet) []string {
	t.Helper()
	filter := fmt.Sprintf("PartitionKey eq %s and RowKey ge %s and RowKey lt %s", quote(dronePartition), quote(watchPrefix), quote(watchEnd))
	pager := f.drones.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter})
	var rows []string
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, raw := range page.Entities {
			e, err := parseEntity(raw)
			if err != nil {
				t.Fatal(err)
			}
			if rk := e.str("RowKey"); rk != watchMarker {
				rows = append(rows, rk)
			}
		}
	}
	slices.Sort(rows)
	return rows
}

// TestChunkWrites: writes are packed in order into transactions of at most
// batchOps operations and batchBytes bytes (operation overhead counted),
// each drone's operations in one transaction, a new transaction started
// only when the next drone does not fit.
func TestChunkWrites(t *testing.T) {
	// write is drone i's write: ops operations of size bytes in all.
	write := func(i, ops, size int) batchWrite {
		acts := make([]aztables.TransactionAction, ops)
		for k := range acts {
			acts[k] = aztables.TransactionAction{ActionType: aztables.TransactionTypeInsertReplace, Entity: []byte(fmt.Sprintf(`{"RowKey":"%d/%d"}`, i, k))}
		}
		return batchWrite{i: i, droneWrite: droneWrite{actions: acts, size: size}}
	}
	writes := func(n int, ops func(i int) int, size func(i int) int) []batchWrite {
		var out []batchWrite
		for i := range n {
			out = append(out, write(i, ops(i), size(i)))
		}
		return out
	}
	const small = 300
	mib := 1 << 20
	for _, c := range []struct {
		name   string
		writes []batchWrite
		sizes  []int // drones per transaction
	}{
		{"none", nil, nil},
		{"one", writes(1, func(int) int { return 1 }, func(int) int { return small }), []int{1}},
		{"100 single operations fill one", writes(100, func(int) int { return 1 }, func(int) int { return small }), []int{100}},
		{"150 single operations", writes(150, func(int) int { return 1 }, func(int) int { return small }), []int{100, 50}},
		{"3 operations each: 33 fit", writes(70, func(int) int { return 3 }, func(int) int { return small }), []int{33, 33, 4}},
		{"mixed: a drone never split", writes(60, func(i int) int { return 1 + i%4 }, func(int) int { return small }), nil},
		{"4 operations, 97 in use", append(writes(97, func(int) int { return 1 }, func(int) int { return small }), write(97, 4, small), write(98, 1, small)), []int{97, 2}},
		{"1 MiB each: 2 fit in 3 MiB", writes(5, func(int) int { return 1 }, func(int) int { return mib }), []int{2, 2, 1}},
		{"bytes to the limit", writes(3, func(int) int { return 1 }, func(int) int { return mib - opOverhead }), []int{3}},
		{"a byte past the limit", writes(3, func(i int) int { return 1 }, func(i int) int { return mib - opOverhead + i/2 }), []int{2, 1}},
		{"a first drone over the limits goes alone", []batchWrite{write(0, 120, small), write(1, 1, small)}, []int{1, 1}},
		{"a drone over the limits goes alone", append(writes(2, func(int) int { return 1 }, func(int) int { return small }), write(2, 120, 5*mib), write(3, 1, small)), []int{2, 1, 1}},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			chunks := chunkWrites(c.writes)
			var order []int
			var sizes []int
			for k, chunk := range chunks {
				if len(chunk) == 0 {
					t.Fatalf("chunk %d is empty", k)
				}
				sizes = append(sizes, len(chunk))
				ops, bytes := 0, 0
				for _, w := range chunk {
					order = append(order, w.i)
					ops += len(w.actions)
					bytes += w.size + len(w.actions)*opOverhead
				}
				if len(chunk) > 1 && (ops > batchOps || bytes > batchBytes) {
					t.Errorf("chunk %d of %d drones has %d operations and %d bytes; the limits are %d and %d", k, len(chunk), ops, bytes, batchOps, batchBytes)
				}
				// Greedy: the next drone did not fit.
				if k+1 < len(chunks) {
					next := chunks[k+1][0]
					if ops+len(next.actions) <= batchOps && bytes+next.size+len(next.actions)*opOverhead <= batchBytes {
						t.Errorf("chunk %d ends with room for drone %d (%d operations, %d bytes in use)", k, next.i, ops, bytes)
					}
				}
			}
			want := make([]int, len(c.writes))
			for k, w := range c.writes {
				want[k] = w.i
			}
			if !slices.Equal(order, want) {
				t.Errorf("chunks hold drones %v, want each once in order %v", order, want)
			}
			if c.sizes != nil && !slices.Equal(sizes, c.sizes) {
				t.Errorf("chunks of %v drones, want %v", sizes, c.sizes)
			}
			// Each drone's operations are all in its chunk, in order.
			for _, chunk := range chunks {
				for _, w := range chunk {
					orig := c.writes[slices.IndexFunc(c.writes, func(o batchWrite) bool { return o.i == w.i })]
					if len(w.actions) != len(orig.actions) {
						t.Errorf("drone %d has %d operations in its chunk, want %d", w.i, len(w.actions), len(orig.actions))
					}
				}
			}
		})
	}
}
