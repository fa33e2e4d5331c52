package azurestorage

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

func newTestFleet(t *testing.T) *Fleet {
	t.Helper()
	srv := azr.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f, err := OpenFleet(ctx, Options{ConnectionString: srv.ConnectionString(), HubName: testHub(t)})
	if err != nil {
		t.Fatalf("OpenFleet: %v", err)
	}
	return f
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
