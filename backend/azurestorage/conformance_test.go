package azurestorage

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/dronehub/dronehub/backend/backendtest"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/taskhub"
)

// openTest opens a backend on a fresh hub of the shared Azurite and deletes
// the hub when the test ends.
func openTest(t *testing.T, opts Options) *Backend {
	t.Helper()
	srv := azr.Get(t)
	if opts.ConnectionString == "" {
		opts.ConnectionString = srv.ConnectionString()
	}
	if opts.HubName == "" {
		opts.HubName = testHub(t)
	}
	if opts.MaxPollInterval == 0 {
		opts.MaxPollInterval = 200 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		b.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b.DeleteTaskHub(ctx)
	})
	return b
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) taskhub.Backend {
		return openTest(t, Options{Partitions: 2, LockTimeout: 2 * time.Second, MaxDequeueCount: 3})
	}, backendtest.LockTimeout(2*time.Second), backendtest.MaxDequeueCount(3))
}

func TestFleetConformance(t *testing.T) {
	backendtest.RunFleet(t, func(t *testing.T) fleet.Store { return newTestFleet(t) })
}
