package backendtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

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
