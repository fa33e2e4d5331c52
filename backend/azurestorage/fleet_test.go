package azurestorage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dronehub/dronehub/backend/backendtest"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
)

func newTestFleet(t *testing.T) *Fleet {
	t.Helper()
	return openTestFleet(t, testHub(t), nil)
}

// openTestFleet opens the fleet of hub on the shared Azurite, counting its
// requests in counter if not nil.
func openTestFleet(t *testing.T, hub string, counter *Counter) *Fleet {
	t.Helper()
	srv := azr.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f, err := OpenFleet(ctx, Options{ConnectionString: srv.ConnectionString(), HubName: hub, Counter: counter})
	if err != nil {
		t.Fatalf("OpenFleet: %v", err)
	}
	return f
}

// TestFleetSharedConformance runs the two-store cases on two Fleets with
// their own clients on one hub, as two worker processes have.
func TestFleetSharedConformance(t *testing.T) {
	backendtest.RunFleetShared(t, func(t *testing.T) (fleet.Store, fleet.Store) {
		hub := testHub(t)
		return openTestFleet(t, hub, nil), openTestFleet(t, hub, nil)
	})
}

// TestFleetUpdatesDoNotRaceInProcess: concurrent updates of one drone
// through one Fleet are queued in the process, so none of them loses an
// ETag race to another and each writes exactly once.
func TestFleetUpdatesDoNotRaceInProcess(t *testing.T) {
	var counter Counter
	f := openTestFleet(t, testHub(t), &counter)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := f.AddDrone(ctx, "d-1", domain.LatLon{}); err != nil {
		t.Fatal(err)
	}
	counter.Reset()
	const workers, each = 16, 8
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				if _, err := f.UpdateDrone(ctx, "d-1", func(d *fleet.Drone) error { d.Frames++; return nil }); err != nil {
					t.Errorf("UpdateDrone: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if d, err := f.Drone(ctx, "d-1"); err != nil || d.Frames != workers*each {
		t.Fatalf("after %d updates: %+v, %v", workers*each, d, err)
	}
	snap := counter.Snapshot()
	if snap["table.replace"] != workers*each {
		t.Errorf("%d updates wrote %d times (requests: %s); want one write each, no lost ETag races", workers*each, snap["table.replace"], &counter)
	}
	t.Logf("requests for %d updates: %s", workers*each, &counter)
}

func TestFleet(t *testing.T) {
	f := newTestFleet(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	home := domain.LatLon{Lat: 47.6, Lon: -122.3}
	for _, id := range []string{"d2", "d1/x#?"} {
		if _, err := f.AddDrone(ctx, id, home); err != nil {
			t.Fatalf("AddDrone %s: %v", id, err)
		}
	}
	if _, err := f.AddDrone(ctx, "d2", home); !errors.Is(err, fleet.ErrDroneExists) {
		t.Fatalf("duplicate AddDrone: %v", err)
	}
	if _, err := f.Drone(ctx, "nope"); !errors.Is(err, fleet.ErrDroneNotFound) {
		t.Fatalf("Drone(nope): %v", err)
	}
	ds, err := f.Drones(ctx)
	if err != nil || len(ds) != 2 || ds[0].ID != "d1/x#?" || ds[1].ID != "d2" {
		t.Fatalf("Drones = %+v, %v", ds, err)
	}

	// Concurrent updates all land (ETag retry).
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := f.UpdateDrone(ctx, "d2", func(d *fleet.Drone) error { d.Frames++; return nil }); err != nil {
				t.Errorf("UpdateDrone: %v", err)
			}
		}()
	}
	wg.Wait()
	d, err := f.Drone(ctx, "d2")
	if err != nil || d.Frames != 8 || d.Home != home {
		t.Fatalf("after updates: %+v, %v", d, err)
	}
	sentinel := errors.New("abort")
	if _, err := f.UpdateDrone(ctx, "d2", func(*fleet.Drone) error { return sentinel }); err != sentinel {
		t.Fatalf("fn error not returned as is: %v", err)
	}
	if _, err := f.UpdateDrone(ctx, "nope", func(*fleet.Drone) error { return nil }); !errors.Is(err, fleet.ErrDroneNotFound) {
		t.Fatalf("UpdateDrone(nope): %v", err)
	}

	// Effects: recorded once per (mission, kind), numbered in order, even when racing.
	results := make(chan bool, 6)
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			isNew, err := f.RecordEffect(ctx, fleet.Effect{MissionID: "m/1", Kind: fmt.Sprintf("k%d", i%3), Detail: "x"})
			if err != nil {
				t.Errorf("RecordEffect: %v", err)
			}
			results <- isNew
		}(i)
	}
	wg.Wait()
	close(results)
	fresh := 0
	for r := range results {
		if r {
			fresh++
		}
	}
	if fresh != 3 {
		t.Fatalf("%d effects reported new, want 3", fresh)
	}
	es, err := f.Effects(ctx, "m/1")
	if err != nil || len(es) != 3 {
		t.Fatalf("Effects = %+v, %v", es, err)
	}
	for i, e := range es {
		if e.Seq != int64(i+1) || e.MissionID != "m/1" || e.At.IsZero() {
			t.Fatalf("effect %d = %+v", i, e)
		}
	}
	if es, _ := f.Effects(ctx, "other"); len(es) != 0 {
		t.Fatalf("other mission has effects: %+v", es)
	}
}

// TestFleetUpdateOutlastsConflicts: an update that keeps losing its ETag
// race to another process is retried for as long as its context allows,
// past any fixed number of attempts, and when the context ends it gives up
// without writing.
func TestFleetUpdateOutlastsConflicts(t *testing.T) {
	hub := testHub(t)
	a, b := openTestFleet(t, hub, nil), openTestFleet(t, hub, nil)
	a.backoff = backoffPolicy{first: time.Millisecond, max: 4 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := a.AddDrone(ctx, "d-1", domain.LatLon{}); err != nil {
		t.Fatal(err)
	}
	// b writes the drone while a's fn runs, so a's write loses: losses times.
	const losses = 80
	calls := 0
	d, err := a.UpdateDrone(ctx, "d-1", func(d *fleet.Drone) error {
		if calls++; calls <= losses {
			if _, err := b.UpdateDrone(ctx, "d-1", func(o *fleet.Drone) error { o.Frames++; return nil }); err != nil {
				return err
			}
		}
		d.MissionID = "m-1"
		return nil
	})
	if err != nil {
		t.Fatalf("UpdateDrone after %d lost races: %v", calls-1, err)
	}
	if calls != losses+1 || d.MissionID != "m-1" || d.Frames != losses {
		t.Fatalf("UpdateDrone ran fn %d times and returned %+v; want %d runs, m-1 on top of %d frames", calls, d, losses+1, losses)
	}
	if got, err := b.Drone(ctx, "d-1"); err != nil || got.MissionID != "m-1" || got.Frames != losses {
		t.Fatalf("stored drone %+v, %v", got, err)
	}

	// Endless interference: the context ends the retries.
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	_, err = a.UpdateDrone(short, "d-1", func(d *fleet.Drone) error {
		if _, err := b.UpdateDrone(ctx, "d-1", func(o *fleet.Drone) error { o.Frames++; return nil }); err != nil {
			return err
		}
		d.MissionID = "m-2"
		return nil
	})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("UpdateDrone losing until its context ended: %v, want an error wrapping context.DeadlineExceeded", err)
	}
	t.Logf("gave up with: %.200v", err)
	if got, err := b.Drone(ctx, "d-1"); err != nil || got.MissionID != "m-1" {
		t.Fatalf("stored drone after the abandoned update: %+v, %v", got, err)
	}
}
