package backendtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dronehub/dronehub/fleet"
)

// The fleet.Store.UpdateDrones cases, registered in RunFleet and
// RunFleetShared.

// sameDrone reports whether two records are the same, field for field (as
// their JSON encodings, which is how the stores keep them).
func sameDrone(a, b fleet.Drone) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}

// storedDrones returns every drone of s by id.
func storedDrones(t *testing.T, ctx context.Context, s fleet.Store) map[string]fleet.Drone {
	t.Helper()
	ds, err := s.Drones(ctx)
	if err != nil {
		t.Fatalf("Drones: %v", err)
	}
	out := make(map[string]fleet.Drone, len(ds))
	for _, d := range ds {
		out[d.ID] = d
	}
	return out
}

// updateDrones runs UpdateDrones and fails t on a call error or a result
// list that does not have one entry per id.
func updateDrones(t *testing.T, ctx context.Context, s fleet.Store, ids []string, fn func(*fleet.Drone) error) []fleet.DroneUpdate {
	t.Helper()
	ups, err := s.UpdateDrones(ctx, ids, fn)
	if err != nil {
		t.Fatalf("UpdateDrones(%d ids): %v", len(ids), err)
	}
	if len(ups) != len(ids) {
		t.Fatalf("UpdateDrones(%d ids) returned %d results", len(ids), len(ups))
	}
	return ups
}

// wantWritten checks that every result of ups (for ids) succeeded and is
// the record stored now.
func wantWritten(t *testing.T, ctx context.Context, s fleet.Store, ids []string, ups []fleet.DroneUpdate) {
	t.Helper()
	stored := storedDrones(t, ctx, s)
	for k, id := range ids {
		u := ups[k]
		if u.Err != nil {
			t.Errorf("UpdateDrones result %d (%s): %v", k, id, u.Err)
			continue
		}
		if u.Drone.ID != id {
			t.Errorf("UpdateDrones result %d is drone %q, want %q", k, u.Drone.ID, id)
		}
		if !sameDrone(u.Drone, stored[id]) {
			t.Errorf("UpdateDrones returned %+v for %s, the store has %+v", u.Drone, id, stored[id])
		}
	}
}

// testUpdateDronesApplies: fn is applied to each drone, one at a time; the
// results come in the order of ids, each the record as stored; an unknown
// id and a drone fn refuses fail alone, the refused drone left as it was.
func testUpdateDronesApplies(t *testing.T, ctx context.Context, s fleet.Store) {
	for _, id := range []string{"d-1", "d-2", "d-3", "d-4", "d-5"} {
		addDrone(t, ctx, s, id)
	}
	before := setDrone(t, ctx, s, "d-2", func(d *fleet.Drone) { d.Frames, d.LastSignalKey = 7, "before" })
	at := time.Date(2030, 1, 2, 3, 4, 5, 6000, time.UTC)
	refuse := errors.New("drone is busy")
	var (
		mu         sync.Mutex
		calls      = map[string]int{}
		running    atomic.Int32
		concurrent atomic.Bool
	)
	fn := func(d *fleet.Drone) error {
		if running.Add(1) > 1 {
			concurrent.Store(true)
		}
		defer running.Add(-1)
		mu.Lock()
		calls[d.ID]++
		mu.Unlock()
		d.Frames += 10
		d.LastSignalKey, d.LastSignalAt = "k-"+d.ID, at
		switch d.ID {
		case "d-2":
			d.MissionID = "m-2"
			return refuse
		case "d-4":
			dispatch(d) // index rows to write with the record
			d.DispatchedAt = at
		}
		return nil
	}
	ids := []string{"d-3", "d-1", "ghost", "d-5", "d-2", "d-4"}
	ups := updateDrones(t, ctx, s, ids, fn)
	if concurrent.Load() {
		t.Errorf("UpdateDrones called fn concurrently")
	}
	for id := range calls {
		if !slices.Contains([]string{"d-1", "d-2", "d-3", "d-4", "d-5"}, id) {
			t.Errorf("UpdateDrones called fn with drone %q", id)
		}
	}
	written := []string{"d-3", "d-1", "d-5", "d-4"}
	for _, id := range written {
		if calls[id] == 0 {
			t.Errorf("UpdateDrones wrote %s without calling fn for it", id)
		}
	}
	for k, id := range ids {
		u := ups[k]
		switch id {
		case "ghost":
			if !errors.Is(u.Err, fleet.ErrDroneNotFound) {
				t.Errorf("UpdateDrones result for an unknown id: %v, want an error wrapping fleet.ErrDroneNotFound", u.Err)
			}
		case "d-2":
			if !errors.Is(u.Err, refuse) {
				t.Errorf("UpdateDrones result for the drone fn refused: %v, want fn's error", u.Err)
			}
		default:
			if u.Err == nil && (u.Drone.Frames != 10 || u.Drone.LastSignalKey != "k-"+id || !u.Drone.LastSignalAt.Equal(at) || u.Drone.Home != home) {
				t.Errorf("UpdateDrones result %d (%s) = %+v, want fn applied to the added drone", k, id, u.Drone)
			}
			continue
		}
		if !sameDrone(u.Drone, fleet.Drone{}) {
			t.Errorf("UpdateDrones result %d (%s) failed with %v but has a drone: %+v; want the zero Drone", k, id, u.Err, u.Drone)
		}
	}
	wantWritten(t, ctx, s, written, []fleet.DroneUpdate{ups[0], ups[1], ups[3], ups[5]})
	if got := getDrone(t, ctx, s, "d-2"); !sameDrone(got, before) {
		t.Errorf("the drone fn refused was written: %+v, want %+v", got, before)
	}
	if _, err := s.Drone(ctx, "ghost"); !errors.Is(err, fleet.ErrDroneNotFound) {
		t.Errorf("UpdateDrones of an unknown id created it: %v", err)
	}
	wantIDs(t, "Watched after UpdateDrones dispatched d-4", watched(t, ctx, s, fleet.WatchQuery{QuietUntil: at, Attention: true}), "d-4")

	// Again, fn accepting all: each update starts from the last one.
	ids = []string{"d-4", "d-2", "d-5", "d-3", "d-1"}
	ups = updateDrones(t, ctx, s, ids, func(d *fleet.Drone) error { d.Frames++; return nil })
	wantWritten(t, ctx, s, ids, ups)
	for k, id := range ids {
		want := int64(11)
		if id == "d-2" {
			want = 8
		}
		if ups[k].Drone.Frames != want {
			t.Errorf("second UpdateDrones: %s has Frames %d, want %d", id, ups[k].Drone.Frames, want)
		}
	}
}

// testUpdateDronesDistinct: ids listing a drone twice are refused whole;
// no ids is no work.
func testUpdateDronesDistinct(t *testing.T, ctx context.Context, s fleet.Store) {
	addDrone(t, ctx, s, "d-1")
	addDrone(t, ctx, s, "d-2")
	set := func(d *fleet.Drone) error { d.Frames, d.MissionID = 99, "m"; return nil }
	for _, ids := range [][]string{{"d-1", "d-2", "d-1"}, {"d-2", "d-2"}, {"d-1", "ghost", "ghost"}} {
		if _, err := s.UpdateDrones(ctx, ids, set); !errors.Is(err, fleet.ErrDuplicateDrone) {
			t.Errorf("UpdateDrones(%q): %v, want an error wrapping fleet.ErrDuplicateDrone", ids, err)
		}
	}
	for _, id := range []string{"d-1", "d-2"} {
		if got := getDrone(t, ctx, s, id); got.Frames != 0 || got.MissionID != "" {
			t.Errorf("a refused UpdateDrones wrote %s: %+v", id, got)
		}
	}
	for _, ids := range [][]string{nil, {}} {
		called := false
		ups, err := s.UpdateDrones(ctx, ids, func(*fleet.Drone) error { called = true; return nil })
		if err != nil || len(ups) != 0 || called {
			t.Errorf("UpdateDrones(%#v) = %v, %v (fn called: %v); want no results, no error, no call", ids, ups, err, called)
		}
	}
}

// testUpdateDronesMany: a batch larger than one storage transaction holds
// (150 drones, with index rows coming, moving and going) is written whole,
// and the watch index follows every record.
func testUpdateDronesMany(t *testing.T, ctx context.Context, s fleet.Store) {
	const n = 150
	T := watchT
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("b-%03d", i)
	}
	addAll(t, ctx, s, ids)
	num := func(d *fleet.Drone) int { i, _ := strconv.Atoi(d.ID[2:]); return i }

	// Round 1: a third dispatched (quiet and, for half of them, deadline
	// rows), a third reserved (attention rows), a third left idle.
	ups := updateDrones(t, ctx, s, ids, func(d *fleet.Drone) error {
		i := num(d)
		d.Frames++
		switch i % 3 {
		case 0:
			dispatch(d)
			d.DispatchedAt, d.LastFrameAt = T.Add(-time.Hour), T.Add(-time.Duration(i)*time.Second)
			if i%2 == 0 {
				d.Deadline = T.Add(time.Duration(i) * time.Minute)
			}
		case 1:
			d.MissionID = "m-" + d.ID
		}
		return nil
	})
	wantWritten(t, ctx, s, ids, ups)
	wantIndexed(t, ctx, s, n)

	// Round 2, in another order: quiet rows move, deadline rows go with
	// delivery, some drones are released (all rows go), reserved drones
	// are dispatched (attention goes, quiet comes).
	rev := slices.Clone(ids)
	slices.Reverse(rev)
	ups = updateDrones(t, ctx, s, rev, func(d *fleet.Drone) error {
		i := num(d)
		d.Frames++
		switch i % 3 {
		case 0:
			d.LastFrameAt = T.Add(5*time.Minute - time.Duration(i)*time.Second)
			if i%4 == 0 {
				d.Delivered = true
			}
			if i%9 == 0 {
				d.MissionID, d.Route = "", nil
			}
		case 1:
			dispatch(d)
			d.DispatchedAt = T.Add(-time.Duration(i) * time.Second)
		case 2:
			d.SignalPending = true
		}
		return nil
	})
	wantWritten(t, ctx, s, rev, ups)
	for k, u := range ups {
		if u.Err == nil && u.Drone.Frames != 2 {
			t.Errorf("after two UpdateDrones %s has Frames %d, want 2", rev[k], u.Drone.Frames)
		}
	}
	wantIndexed(t, ctx, s, n)
}

// addAll adds the drones ids, a few at a time.
func addAll(t *testing.T, ctx context.Context, s fleet.Store, ids []string) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, len(ids))
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(ids); i = int(next.Add(1) - 1) {
				_, errs[i] = s.AddDrone(ctx, ids[i], home)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("AddDrone: %v", err)
	}
}

// wantIndexed checks that Watched selects, for each condition, exactly the
// drones whose records match it, each with its record's Watch, and that
// the store holds n drones.
func wantIndexed(t *testing.T, ctx context.Context, s fleet.Store, n int) {
	t.Helper()
	stored := storedDrones(t, ctx, s)
	if len(stored) != n {
		t.Errorf("Drones returned %d drones, want %d", len(stored), n)
	}
	far := watchT.Add(1000 * time.Hour)
	mid := watchT.Add(-time.Minute)
	for _, c := range []struct {
		name  string
		q     fleet.WatchQuery
		match func(w fleet.Watch) bool
	}{
		{"QuietUntil far", fleet.WatchQuery{QuietUntil: far}, func(w fleet.Watch) bool { return !w.Quiet().IsZero() }},
		{"QuietUntil T-1m", fleet.WatchQuery{QuietUntil: mid}, func(w fleet.Watch) bool { return !w.Quiet().IsZero() && !w.Quiet().After(mid) }},
		{"QuietAfter T-1m", fleet.WatchQuery{QuietAfter: mid}, func(w fleet.Watch) bool { return w.Quiet().After(mid) }},
		{"DeadlineUntil far", fleet.WatchQuery{DeadlineUntil: far}, func(w fleet.Watch) bool { return !w.DeadlineKey().IsZero() }},
		{"Attention", fleet.WatchQuery{Attention: true}, func(w fleet.Watch) bool { return w.Attention() }},
	} {
		ws, err := s.Watched(ctx, c.q)
		if err != nil {
			t.Fatalf("Watched(%s): %v", c.name, err)
		}
		var got, want []string
		for _, w := range ws {
			got = append(got, w.ID)
			if d, ok := stored[w.ID]; !ok {
				t.Errorf("Watched(%s) returned %q, not a drone", c.name, w.ID)
			} else if !sameWatch(w, d.Watch()) {
				t.Errorf("Watched(%s) returned %+v for %s, its record's Watch is %+v", c.name, w, w.ID, d.Watch())
			}
		}
		for id, d := range stored {
			if c.match(d.Watch()) {
				want = append(want, id)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("Watched(%s) selected %d drones %v; the records select %d: %v", c.name, len(got), got, len(want), want)
		}
	}
}

// testUpdateDronesMixedConcurrent: UpdateDrone and UpdateDrones of the
// same drones at once, through one store, in various orders: no increment
// is lost or fails, and each is returned once.
func testUpdateDronesMixedConcurrent(t *testing.T, ctx context.Context, s fleet.Store) {
	ids := []string{"d-0", "d-1", "d-2", "d-3"}
	for _, id := range ids {
		addDrone(t, ctx, s, id)
	}
	inc := func(d *fleet.Drone) error { d.Frames++; return nil }
	r := newIncrements()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for range 10 {
				d, err := s.UpdateDrone(ctx, ids[w], inc)
				r.add(ids[w], d, err)
			}
		})
		wg.Go(func() {
			for it := range 10 {
				batch := rotated(ids, w+it)
				if (w+it)%2 == 1 {
					slices.Reverse(batch)
				}
				ups, err := s.UpdateDrones(ctx, batch, inc)
				r.addBatch(batch, ups, err)
			}
		})
	}
	wg.Wait()
	r.check(t, ctx, s)
}

// rotated returns a copy of ids rotated left by k.
func rotated(ids []string, k int) []string {
	k %= len(ids)
	return append(slices.Clone(ids[k:]), ids[:k]...)
}

// increments collects concurrent increments of drones' Frames (from 0).
type increments struct {
	mu   sync.Mutex
	seen map[string]map[int64]int // drone → returned Frames → times
	errs []error
}

func newIncrements() *increments { return &increments{seen: map[string]map[int64]int{}} }

func (r *increments) add(id string, d fleet.Drone, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("drone %s: %w", id, err))
		return
	}
	if d.ID != id {
		r.errs = append(r.errs, fmt.Errorf("update of drone %s returned drone %q", id, d.ID))
	}
	if r.seen[id] == nil {
		r.seen[id] = map[int64]int{}
	}
	r.seen[id][d.Frames]++
}

func (r *increments) addBatch(ids []string, ups []fleet.DroneUpdate, err error) {
	if err == nil && len(ups) != len(ids) {
		err = fmt.Errorf("UpdateDrones of %d ids returned %d results", len(ids), len(ups))
	}
	if err != nil {
		r.add("(batch)", fleet.Drone{}, err)
		return
	}
	for k, id := range ids {
		r.add(id, ups[k].Drone, ups[k].Err)
	}
}

// check fails t on any failed update, and unless each drone's stored
// Frames is the number of its increments, each of 1..n returned once.
func (r *increments) check(t *testing.T, ctx context.Context, s fleet.Store) {
	t.Helper()
	for i, err := range r.errs {
		if i == 3 {
			t.Errorf("... and %d more failed updates", len(r.errs)-3)
			break
		}
		t.Errorf("concurrent update: %v", err)
	}
	stored := storedDrones(t, ctx, s)
	for id, seen := range r.seen {
		n := int64(0)
		for _, c := range seen {
			n += int64(c)
		}
		if got := stored[id].Frames; got != n {
			t.Errorf("after %d increments %s has Frames %d", n, id, got)
		}
		for v, c := range seen {
			if v < 1 || v > n || c != 1 {
				t.Errorf("updates of %s returned Frames %d %d times; want each of 1..%d exactly once", id, v, c, n)
			}
		}
	}
}

// testSharedUpdateDronesAlternating: UpdateDrones alternate between the
// stores over the same drones, each seeing the call before it, whatever
// either store remembers of the drones; the other store reads what was
// written, index included.
func testSharedUpdateDronesAlternating(t *testing.T, ctx context.Context, a, b fleet.Store) {
	T := watchT
	ids := []string{"s-0", "s-1", "s-2", "s-3", "s-4", "s-5"}
	for _, id := range ids {
		addDrone(t, ctx, a, id)
	}
	for _, id := range ids[:2] {
		setDrone(t, ctx, a, id, func(d *fleet.Drone) { dispatch(d); d.DispatchedAt = T.Add(-time.Hour) })
	}
	stores := []fleet.Store{a, b}
	for i := range 10 {
		s, other := stores[i%2], stores[1-i%2]
		saw := map[string]int64{}
		batch := rotated(ids, i)
		ups := updateDrones(t, ctx, s, batch, func(d *fleet.Drone) error {
			saw[d.ID] = d.Frames // the last call is the one written
			d.Frames++
			d.LastSignalKey = fmt.Sprint("k", i)
			if i%2 == 1 && d.Route != nil {
				d.LastAlarmAt = T.Add(time.Duration(i) * time.Minute) // the quiet row moves
			}
			return nil
		})
		for k, id := range batch {
			if ups[k].Err != nil {
				t.Fatalf("UpdateDrones %d through store %d, drone %s: %v", i, i%2, id, ups[k].Err)
			}
			if saw[id] != int64(i) || ups[k].Drone.Frames != int64(i+1) {
				t.Fatalf("UpdateDrones %d through store %d: fn last saw %s at Frames %d and it was written at %d; want %d then %d",
					i, i%2, id, saw[id], ups[k].Drone.Frames, i, i+1)
			}
			if got := getDrone(t, ctx, other, id); !sameDrone(got, ups[k].Drone) {
				t.Fatalf("after UpdateDrones %d the other store reads %+v, want %+v", i, got, ups[k].Drone)
			}
		}
		wantIDs(t, fmt.Sprint("Watched through the other store after UpdateDrones ", i),
			watched(t, ctx, other, fleet.WatchQuery{QuietUntil: T.Add(time.Hour), Attention: true}), "s-0", "s-1")
	}
}

// testSharedUpdateDronesDecideOnStored: fn decides on the stored record,
// not on what a store last wrote: a drone the other store changed so that
// fn refuses it is refused, and left as the other store wrote it.
func testSharedUpdateDronesDecideOnStored(t *testing.T, ctx context.Context, a, b fleet.Store) {
	ids := []string{"d-1", "d-2", "d-3"}
	for _, id := range ids {
		addDrone(t, ctx, a, id)
	}
	wantWritten(t, ctx, a, ids, updateDrones(t, ctx, a, ids, func(d *fleet.Drone) error { d.Frames++; return nil }))
	taken := setDrone(t, ctx, b, "d-2", func(d *fleet.Drone) { d.MissionID = "m-b" })
	busy := errors.New("drone is reserved")
	ups := updateDrones(t, ctx, a, ids, func(d *fleet.Drone) error {
		if d.MissionID != "" {
			return busy
		}
		d.MissionID = "m-a"
		d.Frames++
		return nil
	})
	if !errors.Is(ups[1].Err, busy) {
		t.Errorf("UpdateDrones of a drone the other store reserved: %v, want fn's error", ups[1].Err)
	}
	if !sameDrone(ups[1].Drone, fleet.Drone{}) {
		t.Errorf("UpdateDrones refused d-2 (%v) but returned a drone: %+v; want the zero Drone", ups[1].Err, ups[1].Drone)
	}
	for _, s := range []fleet.Store{a, b} {
		if got := getDrone(t, ctx, s, "d-2"); !sameDrone(got, taken) {
			t.Errorf("the refused drone reads %+v, want the other store's write %+v", got, taken)
		}
	}
	wantWritten(t, ctx, b, []string{"d-1", "d-3"}, []fleet.DroneUpdate{ups[0], ups[2]})
	for _, k := range []int{0, 2} {
		if d := ups[k].Drone; ups[k].Err == nil && (d.MissionID != "m-a" || d.Frames != 2) {
			t.Errorf("UpdateDrones returned %+v, want m-a and Frames 2", d)
		}
	}

	// The other way round: the other store frees d-1, which a last wrote
	// reserved; fn takes it (and refuses d-2 and d-3, still reserved).
	freed := setDrone(t, ctx, b, "d-1", func(d *fleet.Drone) { d.MissionID = "" })
	ups = updateDrones(t, ctx, a, ids, func(d *fleet.Drone) error {
		if d.MissionID != "" {
			return busy
		}
		d.MissionID = "m-a2"
		d.Frames++
		return nil
	})
	if d := ups[0].Drone; ups[0].Err != nil || d.MissionID != "m-a2" || d.Frames != freed.Frames+1 {
		t.Errorf("UpdateDrones of a drone the other store freed: %+v, %v; want it taken (m-a2, Frames %d)", d, ups[0].Err, freed.Frames+1)
	}
	for _, k := range []int{1, 2} {
		if !errors.Is(ups[k].Err, busy) {
			t.Errorf("UpdateDrones of reserved %s: %v, want fn's error", ids[k], ups[k].Err)
		}
	}
	wantWritten(t, ctx, b, ids[:1], ups[:1])
}

// testSharedUpdateDronesConcurrent: UpdateDrones of overlapping sets of
// drones through both stores at once (two workers): no increment is lost
// or fails, and each is returned once.
func testSharedUpdateDronesConcurrent(t *testing.T, ctx context.Context, a, b fleet.Store) {
	ids := []string{"c-0", "c-1", "c-2", "c-3", "c-4", "c-5"}
	for _, id := range ids {
		addDrone(t, ctx, a, id)
	}
	inc := func(d *fleet.Drone) error { d.Frames++; return nil }
	r := newIncrements()
	var wg sync.WaitGroup
	for si, s := range []fleet.Store{a, b} {
		for w := range 3 {
			wg.Go(func() {
				for it := range 8 {
					batch := rotated(ids, 2*w+si+it)[:4]
					if it%2 == 1 {
						slices.Reverse(batch)
					}
					ups, err := s.UpdateDrones(ctx, batch, inc)
					r.addBatch(batch, ups, err)
				}
			})
		}
	}
	wg.Wait()
	r.check(t, ctx, a)
}
