package sqlite

import (
	"context"
	"errors"
	"github.com/dronehub/dronehub/internal/keyed"
	"path/filepath"
	"testing"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
)

// TestFleetUpdateOutlastsConflicts: an update that keeps losing to another
// process (a second connection pool on the file) is retried for as long as
// its context allows, past any fixed number of attempts, and when the
// context ends it gives up without writing.
func TestFleetUpdateOutlastsConflicts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "hub.db")
	open := func() *Fleet {
		b, err := Open(ctx, Options{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b.Fleet()
	}
	a, b := open(), open()
	a.backoff = keyed.Backoff{First: time.Millisecond, Max: 2 * time.Millisecond}
	if _, err := a.AddDrone(ctx, "d-1", domain.LatLon{}); err != nil {
		t.Fatal(err)
	}
	const losses = 120
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

	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
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
	t.Logf("gave up with: %v", err)
	if got, err := b.Drone(ctx, "d-1"); err != nil || got.MissionID != "m-1" {
		t.Fatalf("stored drone after the abandoned update: %+v, %v", got, err)
	}
}

// TestFleetUpdateWaitEndsWithContext: an update queued behind another one
// of the same drone gives up when its context ends, and the queue is gone
// once nobody uses it.
func TestFleetUpdateWaitEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, Options{Path: filepath.Join(t.TempDir(), "hub.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	f := b.Fleet()
	for _, id := range []string{"d-1", "d-2"} {
		if _, err := f.AddDrone(ctx, id, domain.LatLon{}); err != nil {
			t.Fatal(err)
		}
	}
	holding, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := f.UpdateDrone(ctx, "d-1", func(d *fleet.Drone) error {
			close(holding)
			<-release
			d.Frames++
			return nil
		})
		done <- err
	}()
	<-holding
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	called := false
	if _, err := f.UpdateDrone(short, "d-1", func(*fleet.Drone) error { called = true; return nil }); !errors.Is(err, context.DeadlineExceeded) || called {
		t.Fatalf("queued UpdateDrone whose context ended: %v (fn called: %v)", err, called)
	}
	// Other drones do not wait.
	if _, err := f.UpdateDrone(ctx, "d-2", func(d *fleet.Drone) error { d.Frames++; return nil }); err != nil {
		t.Fatalf("UpdateDrone of another drone: %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("the holding update: %v", err)
	}
	if d, err := f.Drone(ctx, "d-1"); err != nil || d.Frames != 1 {
		t.Fatalf("d-1 = %+v, %v", d, err)
	}
	if left := f.locks.Len(); left != 0 {
		t.Fatalf("%d drone queues left with no one using them", left)
	}
}
