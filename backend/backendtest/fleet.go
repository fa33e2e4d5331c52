package backendtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
)

// RunFleet runs the fleet.Store conformance suite against stores made by f,
// each fresh and empty, cleaned up by f through t.Cleanup.
func RunFleet(t *testing.T, f func(t *testing.T) fleet.Store) {
	t.Helper()
	cases := []struct {
		name string
		f    func(t *testing.T, ctx context.Context, s fleet.Store)
	}{
		{"AddDrone_ThenDrone", testAddDrone},
		{"AddDrone_ExistingID", testAddDroneExists},
		{"Drone_NotFound", testDroneNotFound},
		{"Drones_OrderedByID", testDronesOrdered},
		{"UpdateDrone_Applies", testUpdateDrone},
		{"UpdateDrone_ConcurrentLosesNothing", testUpdateDroneConcurrent},
		{"UpdateDrone_ErrorAborts", testUpdateDroneError},
		{"RecordEffect_Once", testRecordEffectOnce},
		{"Effects_InRecordOrder", testEffectsOrder},
		{"Watched_SelectsByKeys", testWatchedSelects},
		{"Watched_FollowsUpdates", testWatchedFollows},
		{"Watched_Limit", testWatchedLimit},
		{"UpdateDrones_AppliesInOrder", testUpdateDronesApplies},
		{"UpdateDrones_DistinctIDs", testUpdateDronesDistinct},
		{"UpdateDrones_ManyDronesKeepTheIndex", testUpdateDronesMany},
		{"UpdateDrones_MixedWithUpdateDroneLosesNothing", testUpdateDronesMixedConcurrent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := f(t)
			ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
			t.Cleanup(cancel)
			tc.f(t, ctx, s)
		})
	}
}

// RunFleetShared runs the fleet.Store cases that need two stores on one
// storage, the way two worker processes see it. f returns two Store
// instances on the same fresh, empty storage that share no in-process state
// (separate clients or connection pools); f cleans them up through t.Cleanup.
func RunFleetShared(t *testing.T, f func(t *testing.T) (fleet.Store, fleet.Store)) {
	t.Helper()
	cases := []struct {
		name string
		f    func(t *testing.T, ctx context.Context, a, b fleet.Store)
	}{
		{"AddDrone_ExistingInOtherStore", testSharedAddDrone},
		{"UpdateDrone_AlternatingStores", testSharedAlternating},
		{"UpdateDrone_ConcurrentTwoStoresLoseNothing", testSharedConcurrent},
		{"Watched_SeesTheOtherStoresWrites", testSharedWatched},
		{"UpdateDrones_AlternatingStores", testSharedUpdateDronesAlternating},
		{"UpdateDrones_DecidesOnTheStoredRecord", testSharedUpdateDronesDecideOnStored},
		{"UpdateDrones_ConcurrentTwoStoresLoseNothing", testSharedUpdateDronesConcurrent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, b := f(t)
			ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
			t.Cleanup(cancel)
			tc.f(t, ctx, a, b)
		})
	}
}

func testSharedAddDrone(t *testing.T, ctx context.Context, a, b fleet.Store) {
	addDrone(t, ctx, a, "d-1")
	if _, err := b.AddDrone(ctx, "d-1", home); !errors.Is(err, fleet.ErrDroneExists) {
		t.Fatalf("AddDrone through the other store: %v, want an error wrapping fleet.ErrDroneExists", err)
	}
	if got := getDrone(t, ctx, b, "d-1"); got.ID != "d-1" || got.Home != home {
		t.Errorf("the other store reads %+v", got)
	}
}

// testSharedAlternating: updates alternate between the stores, each must
// see the one before it, whatever either store remembers of the drone.
func testSharedAlternating(t *testing.T, ctx context.Context, a, b fleet.Store) {
	addDrone(t, ctx, a, "d-1")
	stores := []fleet.Store{a, b}
	for i := range 12 {
		want := int64(i)
		d, err := stores[i%2].UpdateDrone(ctx, "d-1", func(d *fleet.Drone) error {
			if d.Frames != want {
				return fmt.Errorf("fn saw Frames %d, want %d", d.Frames, want)
			}
			d.Frames++
			d.LastSignalKey = fmt.Sprint("k", i)
			return nil
		})
		if err != nil {
			t.Fatalf("update %d through store %d: %v", i, i%2, err)
		}
		if d.Frames != want+1 {
			t.Fatalf("update %d returned Frames %d, want %d", i, d.Frames, want+1)
		}
		if other := getDrone(t, ctx, stores[1-i%2], "d-1"); other.Frames != want+1 || other.LastSignalKey != d.LastSignalKey {
			t.Fatalf("after update %d the other store reads %+v", i, other)
		}
	}
}

// testSharedConcurrent: goroutines of two stores (two workers) increment
// one counter; none of the increments may be lost or fail.
func testSharedConcurrent(t *testing.T, ctx context.Context, a, b fleet.Store) {
	addDrone(t, ctx, a, "d-1")
	concurrentIncrements(t, ctx, "d-1", []fleet.Store{a, b}, 8, 25)
}

var home = domain.LatLon{Lat: 47.6205, Lon: -122.3493}

func addDrone(t *testing.T, ctx context.Context, s fleet.Store, id string) fleet.Drone {
	t.Helper()
	d, err := s.AddDrone(ctx, id, home)
	if err != nil {
		t.Fatalf("AddDrone(%s): %v", id, err)
	}
	return d
}

func getDrone(t *testing.T, ctx context.Context, s fleet.Store, id string) fleet.Drone {
	t.Helper()
	d, err := s.Drone(ctx, id)
	if err != nil {
		t.Fatalf("Drone(%s): %v", id, err)
	}
	return d
}

func testAddDrone(t *testing.T, ctx context.Context, s fleet.Store) {
	added := addDrone(t, ctx, s, "d-1")
	if added.ID != "d-1" || added.Home != home || added.MissionID != "" || added.Frames != 0 {
		t.Errorf("AddDrone returned %+v", added)
	}
	got := getDrone(t, ctx, s, "d-1")
	if got.ID != "d-1" || got.Home != home || got.MissionID != "" || got.Route != nil || got.Frames != 0 {
		t.Errorf("Drone returned %+v", got)
	}
}

func testAddDroneExists(t *testing.T, ctx context.Context, s fleet.Store) {
	addDrone(t, ctx, s, "d-1")
	if _, err := s.UpdateDrone(ctx, "d-1", func(d *fleet.Drone) error { d.Frames = 7; return nil }); err != nil {
		t.Fatalf("UpdateDrone: %v", err)
	}
	_, err := s.AddDrone(ctx, "d-1", domain.LatLon{Lat: 1, Lon: 2})
	if !errors.Is(err, fleet.ErrDroneExists) {
		t.Fatalf("AddDrone of an existing id: %v, want an error wrapping fleet.ErrDroneExists", err)
	}
	if got := getDrone(t, ctx, s, "d-1"); got.Home != home || got.Frames != 7 {
		t.Errorf("the refused AddDrone changed the drone: %+v", got)
	}
}

func testDroneNotFound(t *testing.T, ctx context.Context, s fleet.Store) {
	if _, err := s.Drone(ctx, "ghost"); !errors.Is(err, fleet.ErrDroneNotFound) {
		t.Errorf("Drone(unknown): %v, want an error wrapping fleet.ErrDroneNotFound", err)
	}
	called := false
	_, err := s.UpdateDrone(ctx, "ghost", func(*fleet.Drone) error { called = true; return nil })
	if !errors.Is(err, fleet.ErrDroneNotFound) {
		t.Errorf("UpdateDrone(unknown): %v, want an error wrapping fleet.ErrDroneNotFound", err)
	}
	if called {
		t.Errorf("UpdateDrone(unknown) called fn")
	}
	if ds, err := s.Drones(ctx); err != nil || len(ds) != 0 {
		t.Errorf("UpdateDrone(unknown) created something: %v, %v", ds, err)
	}
}

func testDronesOrdered(t *testing.T, ctx context.Context, s fleet.Store) {
	if ds, err := s.Drones(ctx); err != nil || len(ds) != 0 {
		t.Fatalf("empty store: Drones = %v, %v", ds, err)
	}
	for _, id := range []string{"d-3", "d-10", "d-1", "d-2"} {
		addDrone(t, ctx, s, id)
	}
	ds, err := s.Drones(ctx)
	if err != nil {
		t.Fatalf("Drones: %v", err)
	}
	var ids []string
	for _, d := range ds {
		ids = append(ids, d.ID)
	}
	if want := []string{"d-1", "d-10", "d-2", "d-3"}; fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Errorf("Drones ids %v, want %v", ids, want)
	}
}

func testUpdateDrone(t *testing.T, ctx context.Context, s fleet.Store) {
	addDrone(t, ctx, s, "d-1")
	addDrone(t, ctx, s, "d-2")
	route := &domain.Route{Home: home, Pickup: domain.LatLon{Lat: 47.61, Lon: -122.33}, Dropoff: domain.LatLon{Lat: 47.60, Lon: -122.32}}
	at := time.Date(2030, 1, 2, 3, 4, 5, 6000, time.UTC)
	updated, err := s.UpdateDrone(ctx, "d-1", func(d *fleet.Drone) error {
		if d.ID != "d-1" {
			return fmt.Errorf("fn got drone %q", d.ID)
		}
		d.MissionID = "m-1"
		d.Route = route
		d.LastSignalKey = "phase:pickup"
		d.LastSignalAt = at
		d.Frames += 3
		return nil
	})
	if err != nil {
		t.Fatalf("UpdateDrone: %v", err)
	}
	for what, d := range map[string]fleet.Drone{"returned": updated, "stored": getDrone(t, ctx, s, "d-1")} {
		if d.ID != "d-1" || d.Home != home || d.MissionID != "m-1" || d.Route == nil || *d.Route != *route ||
			d.LastSignalKey != "phase:pickup" || !d.LastSignalAt.Equal(at) || d.Frames != 3 {
			t.Errorf("%s drone after UpdateDrone: %+v", what, d)
		}
	}
	if other := getDrone(t, ctx, s, "d-2"); other.MissionID != "" || other.Frames != 0 {
		t.Errorf("UpdateDrone of d-1 changed d-2: %+v", other)
	}
}

// testUpdateDroneConcurrent: many goroutines increment one counter through
// one store; none of the increments may be lost or fail.
func testUpdateDroneConcurrent(t *testing.T, ctx context.Context, s fleet.Store) {
	addDrone(t, ctx, s, "d-1")
	concurrentIncrements(t, ctx, "d-1", []fleet.Store{s}, 8, 25)
}

// concurrentIncrements runs workers goroutines per store, each incrementing
// drone id's Frames each times, and checks that every update succeeded,
// that each returned the drone with its own increment applied (the returned
// counters are exactly 1..n, each once, on top of the starting value) and
// that the stored counter went up by n.
func concurrentIncrements(t *testing.T, ctx context.Context, id string, stores []fleet.Store, workers, each int) {
	t.Helper()
	start := getDrone(t, ctx, stores[0], id).Frames
	n := len(stores) * workers * each
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := make(map[int64]int, n)
	var errs []error
	for _, s := range stores {
		for range workers {
			wg.Go(func() {
				for range each {
					d, err := s.UpdateDrone(ctx, id, func(d *fleet.Drone) error { d.Frames++; return nil })
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else {
						seen[d.Frames-start]++
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	for i, err := range errs {
		if i == 3 {
			t.Errorf("... and %d more failed updates", len(errs)-3)
			break
		}
		t.Errorf("concurrent UpdateDrone: %v", err)
	}
	got := getDrone(t, ctx, stores[0], id).Frames - start
	if got != int64(n) || len(errs) > 0 {
		t.Errorf("after %d concurrent increments (%d failed) the counter went up by %d", n, len(errs), got)
	}
	for v, c := range seen {
		if v < 1 || v > int64(n) || c != 1 {
			t.Errorf("UpdateDrone returned counter +%d %d times; want each of +1..+%d exactly once", v, c, n)
		}
	}
}

func testUpdateDroneError(t *testing.T, ctx context.Context, s fleet.Store) {
	addDrone(t, ctx, s, "d-1")
	if _, err := s.UpdateDrone(ctx, "d-1", func(d *fleet.Drone) error { d.Frames = 1; return nil }); err != nil {
		t.Fatalf("UpdateDrone: %v", err)
	}
	refuse := errors.New("drone is busy")
	_, err := s.UpdateDrone(ctx, "d-1", func(d *fleet.Drone) error {
		d.MissionID = "m-1"
		d.Frames = 99
		return refuse
	})
	if !errors.Is(err, refuse) {
		t.Fatalf("UpdateDrone with a failing fn: %v, want fn's error", err)
	}
	if got := getDrone(t, ctx, s, "d-1"); got.MissionID != "" || got.Frames != 1 {
		t.Errorf("a failed update was written: %+v", got)
	}
}

func testRecordEffectOnce(t *testing.T, ctx context.Context, s fleet.Store) {
	record := func(e fleet.Effect) bool {
		t.Helper()
		isNew, err := s.RecordEffect(ctx, e)
		if err != nil {
			t.Fatalf("RecordEffect(%+v): %v", e, err)
		}
		return isNew
	}
	if !record(fleet.Effect{MissionID: "m-1", Kind: "charge", Detail: "card 1"}) {
		t.Errorf("first RecordEffect(m-1, charge) = false, want true")
	}
	if record(fleet.Effect{MissionID: "m-1", Kind: "charge", Detail: "card 2"}) {
		t.Errorf("second RecordEffect(m-1, charge) = true, want false")
	}
	if record(fleet.Effect{MissionID: "m-1", Kind: "charge"}) {
		t.Errorf("third RecordEffect(m-1, charge) = true, want false")
	}
	if !record(fleet.Effect{MissionID: "m-1", Kind: "refund"}) {
		t.Errorf("RecordEffect(m-1, refund) = false, want true")
	}
	if !record(fleet.Effect{MissionID: "m-2", Kind: "charge"}) {
		t.Errorf("RecordEffect(m-2, charge) = false, want true")
	}
	effects, err := s.Effects(ctx, "m-1")
	if err != nil {
		t.Fatalf("Effects: %v", err)
	}
	if len(effects) != 2 || effects[0].Kind != "charge" || effects[0].Detail != "card 1" {
		t.Errorf("Effects(m-1) = %+v, want charge (card 1) then refund", effects)
	}
}

func testEffectsOrder(t *testing.T, ctx context.Context, s fleet.Store) {
	if effects, err := s.Effects(ctx, "m-1"); err != nil || len(effects) != 0 {
		t.Fatalf("Effects of an unknown mission = %v, %v; want none", effects, err)
	}
	kinds := []string{"reserve", "dispatch", "charge", "notify", "release"}
	before := time.Now().Add(-time.Minute)
	for i, kind := range kinds {
		if _, err := s.RecordEffect(ctx, fleet.Effect{MissionID: "m-1", Kind: kind, Detail: fmt.Sprint(i)}); err != nil {
			t.Fatalf("RecordEffect: %v", err)
		}
		// Interleave another mission's effects.
		if _, err := s.RecordEffect(ctx, fleet.Effect{MissionID: "m-2", Kind: kind}); err != nil {
			t.Fatalf("RecordEffect: %v", err)
		}
	}
	effects, err := s.Effects(ctx, "m-1")
	if err != nil {
		t.Fatalf("Effects: %v", err)
	}
	if len(effects) != len(kinds) {
		t.Fatalf("Effects(m-1) returned %d effects, want %d: %+v", len(effects), len(kinds), effects)
	}
	for i, e := range effects {
		if e.MissionID != "m-1" || e.Kind != kinds[i] || e.Detail != fmt.Sprint(i) {
			t.Errorf("effect %d = %+v, want m-1 %s", i, e, kinds[i])
		}
		if i > 0 && e.Seq <= effects[i-1].Seq {
			t.Errorf("effect %d has Seq %d after Seq %d: want increasing", i, e.Seq, effects[i-1].Seq)
		}
		if e.At.Before(before) || e.At.After(time.Now().Add(time.Minute)) {
			t.Errorf("effect %d recorded At %s, want about now", i, e.At)
		}
	}
}

// watchT is the time the Watched cases set drone times around.
var watchT = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

// setDrone adds drone id (unless it exists) and applies set to it.
func setDrone(t *testing.T, ctx context.Context, s fleet.Store, id string, set func(d *fleet.Drone)) fleet.Drone {
	t.Helper()
	if _, err := s.AddDrone(ctx, id, home); err != nil && !errors.Is(err, fleet.ErrDroneExists) {
		t.Fatalf("AddDrone(%s): %v", id, err)
	}
	d, err := s.UpdateDrone(ctx, id, func(d *fleet.Drone) error { set(d); return nil })
	if err != nil {
		t.Fatalf("UpdateDrone(%s): %v", id, err)
	}
	return d
}

// dispatch binds d to mission "m-"+id and gives it a route.
func dispatch(d *fleet.Drone) {
	route := domain.Route{Home: home, Pickup: domain.LatLon{Lat: 47.61, Lon: -122.33}, Dropoff: domain.LatLon{Lat: 47.60, Lon: -122.32}}
	d.MissionID, d.Route, d.RoutePhase = "m-"+d.ID, &route, domain.PhaseHeadedToPickup
}

// watched runs Watched and returns the ids it selected, sorted; it fails t
// if a drone comes twice or its Watch is not its record's.
func watched(t *testing.T, ctx context.Context, s fleet.Store, q fleet.WatchQuery) []string {
	t.Helper()
	ws, err := s.Watched(ctx, q)
	if err != nil {
		t.Fatalf("Watched(%+v): %v", q, err)
	}
	var ids []string
	for _, w := range ws {
		if slices.Contains(ids, w.ID) {
			t.Errorf("Watched(%+v) returned %s twice", q, w.ID)
		}
		ids = append(ids, w.ID)
		if want := getDrone(t, ctx, s, w.ID).Watch(); !sameWatch(w, want) {
			t.Errorf("Watched returned %+v for %s, its record's Watch is %+v", w, w.ID, want)
		}
	}
	slices.Sort(ids)
	return ids
}

func sameWatch(a, b fleet.Watch) bool {
	return a.ID == b.ID && a.MissionID == b.MissionID && a.Dispatched == b.Dispatched && a.SignalPending == b.SignalPending &&
		a.Delivered == b.Delivered && a.LastFrameAt.Equal(b.LastFrameAt) && a.DispatchedAt.Equal(b.DispatchedAt) &&
		a.LastAlarmAt.Equal(b.LastAlarmAt) && a.Deadline.Equal(b.Deadline)
}

func wantIDs(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: %v, want %v", what, got, want)
	}
}

// testWatchedSelects: each condition selects the drones whose Watch keys
// match, a drone at most once, and the index rows do not show as drones.
func testWatchedSelects(t *testing.T, ctx context.Context, s fleet.Store) {
	T := watchT
	if ids := watched(t, ctx, s, fleet.WatchQuery{QuietUntil: T.Add(time.Hour), QuietAfter: T, DeadlineUntil: T, Attention: true}); len(ids) != 0 {
		t.Errorf("Watched of an empty fleet: %v", ids)
	}
	addDrone(t, ctx, s, "idle")
	setDrone(t, ctx, s, "reserved", func(d *fleet.Drone) { d.MissionID = "m-reserved" })
	setDrone(t, ctx, s, "silent", func(d *fleet.Drone) {
		dispatch(d)
		d.DispatchedAt, d.LastFrameAt = T.Add(-10*time.Minute), T.Add(-5*time.Minute)
	})
	setDrone(t, ctx, s, "never", func(d *fleet.Drone) { dispatch(d); d.DispatchedAt = T.Add(-10 * time.Minute) })
	setDrone(t, ctx, s, "fresh", func(d *fleet.Drone) { dispatch(d); d.DispatchedAt, d.LastFrameAt = T.Add(-10*time.Minute), T })
	setDrone(t, ctx, s, "alarmed", func(d *fleet.Drone) {
		dispatch(d)
		d.DispatchedAt, d.LastFrameAt, d.LastAlarmAt = T.Add(-10*time.Minute), T.Add(-5*time.Minute), T.Add(-time.Second)
	})
	setDrone(t, ctx, s, "ahead", func(d *fleet.Drone) {
		dispatch(d)
		d.DispatchedAt, d.LastFrameAt = T.Add(-10*time.Minute), T.Add(time.Hour)
	})
	setDrone(t, ctx, s, "late", func(d *fleet.Drone) {
		dispatch(d)
		d.DispatchedAt, d.LastFrameAt, d.Deadline = T.Add(-10*time.Minute), T, T.Add(-time.Minute)
	})
	setDrone(t, ctx, s, "delivered", func(d *fleet.Drone) {
		dispatch(d)
		d.DispatchedAt, d.LastFrameAt, d.Deadline, d.Delivered = T.Add(-10*time.Minute), T, T.Add(-time.Minute), true
	})
	setDrone(t, ctx, s, "pending", func(d *fleet.Drone) {
		dispatch(d)
		d.DispatchedAt, d.LastFrameAt, d.SignalPending = T.Add(-10*time.Minute), T, true
	})
	setDrone(t, ctx, s, "released", func(d *fleet.Drone) {
		d.LastFrameAt, d.Deadline, d.SignalPending, d.LastAlarmAt = T.Add(-5*time.Minute), T.Add(-time.Minute), true, T.Add(-time.Hour)
	})

	wantIDs(t, "QuietUntil T-1m", watched(t, ctx, s, fleet.WatchQuery{QuietUntil: T.Add(-time.Minute)}), "never", "silent")
	wantIDs(t, "QuietUntil T", watched(t, ctx, s, fleet.WatchQuery{QuietUntil: T}),
		"alarmed", "delivered", "fresh", "late", "never", "pending", "silent")
	wantIDs(t, "QuietAfter T+1m", watched(t, ctx, s, fleet.WatchQuery{QuietAfter: T.Add(time.Minute)}), "ahead")
	wantIDs(t, "QuietAfter T-1s", watched(t, ctx, s, fleet.WatchQuery{QuietAfter: T.Add(-time.Second)}),
		"ahead", "delivered", "fresh", "late", "pending")
	wantIDs(t, "DeadlineUntil T", watched(t, ctx, s, fleet.WatchQuery{DeadlineUntil: T}), "late")
	wantIDs(t, "DeadlineUntil T-2m", watched(t, ctx, s, fleet.WatchQuery{DeadlineUntil: T.Add(-2 * time.Minute)}))
	wantIDs(t, "Attention", watched(t, ctx, s, fleet.WatchQuery{Attention: true}), "pending", "reserved")
	wantIDs(t, "all conditions", watched(t, ctx, s, fleet.WatchQuery{QuietUntil: T.Add(-time.Minute), QuietAfter: T.Add(time.Minute), DeadlineUntil: T, Attention: true}),
		"ahead", "late", "never", "pending", "reserved", "silent")
	wantIDs(t, "no condition", watched(t, ctx, s, fleet.WatchQuery{}))

	ds, err := s.Drones(ctx)
	if err != nil {
		t.Fatalf("Drones: %v", err)
	}
	var ids []string
	for _, d := range ds {
		ids = append(ids, d.ID)
	}
	wantIDs(t, "Drones", ids, "ahead", "alarmed", "delivered", "fresh", "idle", "late", "never", "pending", "released", "reserved", "silent")
}

// testWatchedFollows: a drone moves between selections as its record
// changes, whoever changes it.
func testWatchedFollows(t *testing.T, ctx context.Context, s fleet.Store) {
	T := watchT
	all := func() fleet.WatchQuery {
		return fleet.WatchQuery{QuietUntil: T.Add(-time.Minute), DeadlineUntil: T, Attention: true}
	}
	setDrone(t, ctx, s, "d", func(d *fleet.Drone) { d.MissionID = "m-d" })
	wantIDs(t, "reserved", watched(t, ctx, s, all()), "d")
	setDrone(t, ctx, s, "d", func(d *fleet.Drone) {
		dispatch(d)
		d.DispatchedAt, d.Deadline = T.Add(-10*time.Minute), T.Add(time.Hour)
	})
	wantIDs(t, "dispatched 10 minutes ago, never heard", watched(t, ctx, s, all()), "d")
	setDrone(t, ctx, s, "d", func(d *fleet.Drone) { d.LastFrameAt = T })
	wantIDs(t, "a frame now", watched(t, ctx, s, all()))
	setDrone(t, ctx, s, "d", func(d *fleet.Drone) { d.LastFrameAt = T.Add(-5 * time.Minute) })
	wantIDs(t, "the frame time set back", watched(t, ctx, s, all()), "d")
	setDrone(t, ctx, s, "d", func(d *fleet.Drone) { d.LastAlarmAt = T })
	wantIDs(t, "alarmed now", watched(t, ctx, s, all()))
	setDrone(t, ctx, s, "d", func(d *fleet.Drone) { d.Deadline = T.Add(-time.Second) })
	wantIDs(t, "deadline passed", watched(t, ctx, s, all()), "d")
	setDrone(t, ctx, s, "d", func(d *fleet.Drone) { d.Delivered = true })
	wantIDs(t, "delivered", watched(t, ctx, s, all()))
	setDrone(t, ctx, s, "d", func(d *fleet.Drone) { d.SignalPending = true })
	wantIDs(t, "signal pending", watched(t, ctx, s, all()), "d")
	setDrone(t, ctx, s, "d", func(d *fleet.Drone) { d.SignalPending = false; d.Route = nil })
	wantIDs(t, "recalled", watched(t, ctx, s, all()), "d")
	setDrone(t, ctx, s, "d", func(d *fleet.Drone) { d.MissionID = "" })
	wantIDs(t, "released", watched(t, ctx, s, all()))
	if ids := watched(t, ctx, s, fleet.WatchQuery{QuietUntil: T.Add(time.Hour), QuietAfter: T.Add(-time.Hour), DeadlineUntil: T.Add(time.Hour), Attention: true}); len(ids) != 0 {
		t.Errorf("a released drone is watched: %v", ids)
	}

	// Frames: the index may keep LastFrameAt behind by fleet.WatchSlack.
	setDrone(t, ctx, s, "f", func(d *fleet.Drone) { dispatch(d); d.DispatchedAt, d.LastFrameAt = T.Add(-10*time.Minute), T })
	for i := 1; i <= 10; i++ {
		at := T.Add(time.Duration(i) * 300 * time.Millisecond)
		setDrone(t, ctx, s, "f", func(d *fleet.Drone) { d.LastFrameAt = at })
		ws, err := s.Watched(ctx, fleet.WatchQuery{QuietUntil: T.Add(time.Hour)})
		if err != nil || len(ws) != 1 {
			t.Fatalf("Watched: %v, %v", ws, err)
		}
		if lf := ws[0].LastFrameAt; lf.After(at) || lf.Before(at.Add(-fleet.WatchSlack)) {
			t.Fatalf("after a frame at %s the index has LastFrameAt %s: more than fleet.WatchSlack behind, or ahead", at, lf)
		}
	}
}

// testWatchedLimit: Limit bounds each condition, earliest keys first.
func testWatchedLimit(t *testing.T, ctx context.Context, s fleet.Store) {
	T := watchT
	for i := range 6 {
		setDrone(t, ctx, s, fmt.Sprint("q", i), func(d *fleet.Drone) {
			dispatch(d)
			d.DispatchedAt, d.LastFrameAt = T.Add(-time.Hour), T.Add(-time.Duration(10-i)*time.Minute)
		})
		setDrone(t, ctx, s, fmt.Sprint("r", i), func(d *fleet.Drone) { d.MissionID = "m" })
	}
	wantIDs(t, "QuietUntil T, limit 2", watched(t, ctx, s, fleet.WatchQuery{QuietUntil: T, Limit: 2}), "q0", "q1")
	wantIDs(t, "Attention, limit 3", watched(t, ctx, s, fleet.WatchQuery{Attention: true, Limit: 3}), "r0", "r1", "r2")
	wantIDs(t, "both, limit 1", watched(t, ctx, s, fleet.WatchQuery{QuietUntil: T, Attention: true, Limit: 1}), "q0", "r0")
	if ids := watched(t, ctx, s, fleet.WatchQuery{QuietUntil: T, Attention: true}); len(ids) != 12 {
		t.Errorf("no limit: %v", ids)
	}
}

// testSharedWatched: the index one store writes is the one the other reads.
func testSharedWatched(t *testing.T, ctx context.Context, a, b fleet.Store) {
	T := watchT
	q := fleet.WatchQuery{QuietUntil: T.Add(-time.Minute), Attention: true}
	setDrone(t, ctx, a, "d", func(d *fleet.Drone) {
		dispatch(d)
		d.DispatchedAt, d.LastFrameAt = T.Add(-time.Hour), T.Add(-time.Hour)
	})
	wantIDs(t, "silent, written by a, read by b", watched(t, ctx, b, q), "d")
	setDrone(t, ctx, b, "d", func(d *fleet.Drone) { d.LastFrameAt = T })
	wantIDs(t, "heard, written by b, read by a", watched(t, ctx, a, q))
	setDrone(t, ctx, a, "d", func(d *fleet.Drone) { d.Route = nil })
	wantIDs(t, "recalled, written by a, read by b", watched(t, ctx, b, q), "d")
	setDrone(t, ctx, b, "d", func(d *fleet.Drone) { d.MissionID = "" })
	wantIDs(t, "released, written by b, read by a", watched(t, ctx, a, q))
}

// BenchmarkWatchdogScan measures activities.Watchdog.Scan over a fleet of n
// drones put in s, which must be empty: 70% dispatched and reporting, 1%
// dispatched and silent for longer than the watchdog's timeout, 0.5%
// reserved before their dispatch, the rest idle. "due=0" scans with no
// alarm due (the steady state); "due=1%" makes the silent drones due again
// before each scan, so that each scan raises an alarm for 1% of the fleet
// (the mission client is a fake: raising costs no storage request). With
// others (stores on the same storage, as other workers have),
// "due=1%/workers=N" runs a watchdog on each store and s at once and checks
// that each alarm is raised once. requests, if not nil, returns the storage
// requests made so far (by all the stores); they are reported per scan
// (per round of scans with others), with the time of the scan alone.
func BenchmarkWatchdogScan(b *testing.B, s fleet.Store, n int, requests func() int64, others ...fleet.Store) {
	ctx := context.Background()
	w := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	flying, silent, reserved := n*70/100, n/100, n/200
	var silentIDs []string
	parallel(b, n, func(i int) error {
		id := fmt.Sprintf("drone-%05d", i)
		if _, err := s.AddDrone(ctx, id, home); err != nil {
			return err
		}
		if i >= flying+silent+reserved {
			return nil
		}
		_, err := s.UpdateDrone(ctx, id, func(d *fleet.Drone) error {
			d.MissionID = "m-" + id
			if i >= flying+silent {
				return nil // reserved, not yet dispatched
			}
			route := domain.Route{Home: home, Pickup: domain.LatLon{Lat: 47.61, Lon: -122.33}, Dropoff: domain.LatLon{Lat: 47.60, Lon: -122.32}}
			d.Route, d.RoutePhase = &route, domain.PhaseHeadedToPickup
			d.DispatchedAt, d.Deadline = w.Add(-10*time.Minute), w.Add(2*time.Hour)
			d.LastFrameAt, d.Frames = w.Add(time.Second), 100
			if i >= flying {
				d.LastFrameAt = w.Add(-time.Hour)
			}
			return nil
		})
		return err
	})
	for i := flying; i < flying+silent; i++ {
		silentIDs = append(silentIDs, fmt.Sprintf("drone-%05d", i))
	}
	client := &fakeMissions{}
	var mu sync.Mutex
	now := w
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	var wds []*activities.Watchdog
	for _, st := range append([]fleet.Store{s}, others...) {
		wds = append(wds, activities.NewWatchdog(st, client, activities.WatchdogOptions{
			Silence: time.Minute, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: clock,
		}))
	}
	// Up for the timeout: reporting drones are quiet for 59 s, silent ones
	// for an hour.
	for i := range 3 {
		mu.Lock()
		now = w.Add(time.Duration(i) * 30 * time.Second)
		mu.Unlock()
		for _, wd := range wds {
			if err := wd.Scan(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	run := func(b *testing.B, due bool, wds []*activities.Watchdog) {
		var reqs, alarms int64
		for b.Loop() {
			b.StopTimer()
			if due {
				parallel(b, len(silentIDs), func(i int) error {
					_, err := s.UpdateDrone(ctx, silentIDs[i], func(d *fleet.Drone) error { d.LastAlarmAt = time.Time{}; return nil })
					return err
				})
			}
			before, raised := int64(0), client.raised.Load()
			if requests != nil {
				before = requests()
			}
			b.StartTimer()
			var wg sync.WaitGroup
			for _, wd := range wds {
				wg.Go(func() {
					if err := wd.Scan(ctx); err != nil {
						b.Error(err)
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			if requests != nil {
				reqs += requests() - before
			}
			alarms += client.raised.Load() - raised
			b.StartTimer()
		}
		want := int64(0)
		if due {
			want = int64(b.N * len(silentIDs))
		}
		if alarms != want {
			b.Fatalf("%d rounds of scans raised %d alarms, want %d", b.N, alarms, want)
		}
		b.ReportMetric(float64(alarms)/float64(b.N), "alarms/scan")
		if requests != nil {
			b.ReportMetric(float64(reqs)/float64(b.N), "requests/scan")
		}
	}
	b.Run("due=0", func(b *testing.B) { run(b, false, wds[:1]) })
	b.Run("due=1%", func(b *testing.B) { run(b, true, wds[:1]) })
	if len(wds) > 1 {
		b.Run(fmt.Sprintf("due=1%%/workers=%d", len(wds)), func(b *testing.B) { run(b, true, wds) })
	}
}

// parallel runs f(0) … f(n-1) on 16 goroutines and fails b on an error.
func parallel(b *testing.B, n int, f func(i int) error) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}

// fakeMissions is an activities.MissionClient whose missions all run and
// which counts the events raised.
type fakeMissions struct{ raised atomic.Int64 }

func (m *fakeMissions) RaiseEvent(context.Context, api.InstanceID, string, ...api.RaiseEventOptions) error {
	m.raised.Add(1)
	return nil
}

func (m *fakeMissions) FetchOrchestrationMetadata(_ context.Context, id api.InstanceID) (*api.OrchestrationMetadata, error) {
	return &api.OrchestrationMetadata{InstanceID: id, RuntimeStatus: api.RUNTIME_STATUS_RUNNING}, nil
}
