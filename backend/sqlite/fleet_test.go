package sqlite_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/dronehub/dronehub/backend/backendtest"
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
