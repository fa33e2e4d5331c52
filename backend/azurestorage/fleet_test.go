package azurestorage

import (
	"context"
	"errors"
	"fmt"
	"github.com/dronehub/dronehub/internal/keyed"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

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
func openTestFleet(t testing.TB, hub string, counter *Counter) *Fleet {
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
	a.backoff = keyed.Backoff{First: time.Millisecond, Max: 4 * time.Millisecond}
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

// BenchmarkWatchdogScan measures a watchdog scan at 10,000 drones, alone
// and with a second worker's (a Fleet with its own clients) at once, and
// counts their storage requests (see docs/performance.md).
func BenchmarkWatchdogScan(b *testing.B) {
	var counter Counter
	hub := testHub(b)
	f := openTestFleet(b, hub, &counter)
	backendtest.BenchmarkWatchdogScan(b, f, 10000, counter.Total, openTestFleet(b, hub, &counter))
}

// TestFleetWatchIndex: the index rows of dispatched drones are indexed
// from rows written before the index existed (once per hub), Watched costs
// one query per condition, and frames that move LastFrameAt by less than
// the slack write the drone row alone.
func TestFleetWatchIndex(t *testing.T) {
	hub := testHub(t)
	var counter Counter
	f := openTestFleet(t, hub, &counter)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	T := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

	// A hub of an earlier version: no marker, and a row as it wrote it,
	// with no index state nor index rows.
	if _, err := f.drones.DeleteEntity(ctx, dronePartition, watchMarker, nil); err != nil {
		t.Fatal(err)
	}
	f.legacy.done = false
	route := domain.Route{Pickup: domain.LatLon{Lat: 1}, Dropoff: domain.LatLon{Lat: 2}}
	old := fleet.Drone{ID: "old/1", MissionID: "m-old", Route: &route, DispatchedAt: T.Add(-time.Hour), LastFrameAt: T.Add(-time.Hour)}
	e, err := droneEntity(old, indexState{})
	if err != nil {
		t.Fatal(err)
	}
	delete(e, watchProp)
	if _, err := f.drones.AddEntity(ctx, e.marshal(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.AddDrone(ctx, "idle", domain.LatLon{}); err != nil {
		t.Fatal(err)
	}
	q := fleet.WatchQuery{QuietUntil: T, QuietAfter: T.Add(time.Hour), DeadlineUntil: T, Attention: true}
	ws, err := f.Watched(ctx, q)
	if err != nil || len(ws) != 1 || ws[0].ID != "old/1" || ws[0].MissionID != "m-old" || !ws[0].Dispatched {
		t.Fatalf("Watched after an upgrade: %+v, %v; want the dispatched drone written before the index", ws, err)
	}
	if ds, err := f.Drones(ctx); err != nil || len(ds) != 2 {
		t.Fatalf("Drones: %+v, %v; want the 2 drones, no index rows", ds, err)
	}

	// Another process on the hub: the marker spares it the listing.
	var counter2 Counter
	g := openTestFleet(t, hub, &counter2)
	counter2.Reset()
	if ws, err := g.Watched(ctx, q); err != nil || len(ws) != 1 {
		t.Fatalf("Watched in a second process: %+v, %v", ws, err)
	}
	if snap := counter2.Snapshot(); snap["table.get"] != 1 || snap["table.query"] != 4 || counter2.Total() != 5 {
		t.Errorf("first Watched of a process on an indexed hub: %s; want the marker read and 4 queries", &counter2)
	}
	counter2.Reset()
	if _, err := g.Watched(ctx, q); err != nil {
		t.Fatal(err)
	}
	if counter2.Total() != 4 {
		t.Errorf("Watched with 4 conditions: %s; want 4 queries", &counter2)
	}

	// Frames: within the slack, one replace; past it, the row and its
	// index in one batch.
	counter.Reset()
	for i := 1; i <= 3; i++ {
		at := T.Add(time.Duration(i) * 500 * time.Millisecond)
		if _, err := f.UpdateDrone(ctx, "old/1", func(d *fleet.Drone) error { d.LastFrameAt = at; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if snap := counter.Snapshot(); snap["table.batch"] != 1 || snap["table.replace"] != 2 {
		t.Errorf("3 frames 0.5 s apart, an hour after the last: %s; want one batch (the index moves an hour), then 2 replaces", &counter)
	}
	counter.Reset()
	if _, err := f.UpdateDrone(ctx, "old/1", func(d *fleet.Drone) error { d.LastFrameAt = T.Add(5 * time.Second); return nil }); err != nil {
		t.Fatal(err)
	}
	if snap := counter.Snapshot(); snap["table.batch"] != 1 {
		t.Errorf("a frame 3.5 s after the indexed one: %s; want a batch", &counter)
	}
	ws, err = f.Watched(ctx, fleet.WatchQuery{QuietUntil: T.Add(time.Hour)})
	if err != nil || len(ws) != 1 || !ws[0].LastFrameAt.Equal(T.Add(5*time.Second)) {
		t.Fatalf("Watched: %+v, %v", ws, err)
	}
	// Released: its index rows go with it.
	if _, err := f.UpdateDrone(ctx, "old/1", func(d *fleet.Drone) error { d.MissionID, d.Route = "", nil; return nil }); err != nil {
		t.Fatal(err)
	}
	filter := "PartitionKey eq 'drone' and RowKey ge '%~' and RowKey lt '%~~'"
	pager := f.drones.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter})
	var rows []string
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, raw := range page.Entities {
			e, _ := parseEntity(raw)
			rows = append(rows, e.str("RowKey"))
		}
	}
	if len(rows) != 1 || rows[0] != watchMarker {
		t.Errorf("index rows left after the drone was released: %v", rows)
	}
}
