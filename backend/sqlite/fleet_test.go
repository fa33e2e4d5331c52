package sqlite_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/dronehub/dronehub/backend/backendtest"
	"github.com/dronehub/dronehub/backend/sqlite"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
)

// TestFleetSharedConformance runs the two-store cases on two backends
// opened on one file: two connection pools, as two worker processes have.
func TestFleetSharedConformance(t *testing.T) {
	backendtest.RunFleetShared(t, func(t *testing.T) (fleet.Store, fleet.Store) {
		path := filepath.Join(t.TempDir(), "hub.db")
		return open(t, path, 50*time.Millisecond).Fleet(), open(t, path, 50*time.Millisecond).Fleet()
	})
}

// BenchmarkWatchdogScan measures a watchdog scan at 10,000 drones, alone
// and with a second worker's (a second connection pool on the file) at
// once (see docs/performance.md).
func BenchmarkWatchdogScan(b *testing.B) {
	path := filepath.Join(b.TempDir(), "hub.db")
	var stores []fleet.Store
	for range 2 {
		s, err := sqlite.Open(context.Background(), sqlite.Options{Path: path, Logger: quietLogger()})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		stores = append(stores, s.Fleet())
	}
	backendtest.BenchmarkWatchdogScan(b, stores[0], 10000, nil, stores[1])
}

// TestFleetIndexesDronesOfEarlierFiles: a file written before the watch
// index existed gets it at open, its dispatched drones included.
func TestFleetIndexesDronesOfEarlierFiles(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "hub.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	T := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	route := domain.Route{Pickup: domain.LatLon{Lat: 1}, Dropoff: domain.LatLon{Lat: 2}}
	silent, _ := json.Marshal(fleet.Drone{ID: "silent", MissionID: "m-1", Route: &route, DispatchedAt: T.Add(-time.Hour)})
	idle, _ := json.Marshal(fleet.Drone{ID: "idle"})
	for _, q := range []string{
		`CREATE TABLE DronehubDrones (ID TEXT PRIMARY KEY NOT NULL, Version INTEGER NOT NULL, Data TEXT NOT NULL)`,
		`INSERT INTO DronehubDrones VALUES ('silent', 3, '` + string(silent) + `')`,
		`INSERT INTO DronehubDrones VALUES ('idle', 1, '` + string(idle) + `')`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	f := open(t, path, 50*time.Millisecond).Fleet()
	ws, err := f.Watched(ctx, fleet.WatchQuery{QuietUntil: T, Attention: true})
	if err != nil || len(ws) != 1 || ws[0].ID != "silent" || !ws[0].DispatchedAt.Equal(T.Add(-time.Hour)) {
		t.Fatalf("Watched on a file of an earlier version: %+v, %v", ws, err)
	}
	if ds, err := f.Drones(ctx); err != nil || len(ds) != 2 {
		t.Fatalf("Drones: %+v, %v", ds, err)
	}
	// Opening it again changes nothing.
	if ws, err := open(t, path, 50*time.Millisecond).Fleet().Watched(ctx, fleet.WatchQuery{QuietUntil: T}); err != nil || len(ws) != 1 {
		t.Fatalf("Watched after a second open: %+v, %v", ws, err)
	}
}
