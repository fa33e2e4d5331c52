package sqlite_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/backend/backendtest"
	"github.com/dronehub/dronehub/backend/sqlite"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/taskhub"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// open opens a task hub on path and closes it when the test ends.
func open(t *testing.T, path string, poll time.Duration) *sqlite.Backend {
	t.Helper()
	b, err := sqlite.Open(context.Background(), sqlite.Options{
		Path:         path,
		LockTimeout:  5 * time.Second,
		PollInterval: poll,
		Logger:       quietLogger(),
	})
	if err != nil {
		t.Fatalf("sqlite.Open(%s): %v", path, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func newBackend(t *testing.T) *sqlite.Backend {
	return open(t, filepath.Join(t.TempDir(), "hub.db"), 50*time.Millisecond)
}

// The conformance suite's backends: a 2 s lock (renewed while work is in
// progress) and a dead-letter limit of 3 failed deliveries.
const (
	conformanceLock  = 2 * time.Second
	conformanceLimit = 3
)

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) taskhub.Backend {
		b, err := sqlite.Open(context.Background(), sqlite.Options{
			Path:            filepath.Join(t.TempDir(), "hub.db"),
			LockTimeout:     conformanceLock,
			MaxDequeueCount: conformanceLimit,
			PollInterval:    50 * time.Millisecond,
			Logger:          quietLogger(),
		})
		if err != nil {
			t.Fatalf("sqlite.Open: %v", err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}, backendtest.LockTimeout(conformanceLock), backendtest.MaxDequeueCount(conformanceLimit))
}

func TestFleetConformance(t *testing.T) {
	backendtest.RunFleet(t, func(t *testing.T) fleet.Store { return newBackend(t).Fleet() })
}

func TestOpenRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	for name, opts := range map[string]sqlite.Options{
		"no path":               {},
		"query in path":         {Path: filepath.Join(dir, "hub.db?mode=memory")},
		"lock timeout too low":  {Path: filepath.Join(dir, "a.db"), LockTimeout: time.Millisecond},
		"poll interval too low": {Path: filepath.Join(dir, "b.db"), PollInterval: time.Microsecond},
	} {
		if b, err := sqlite.Open(context.Background(), opts); err == nil {
			b.Close()
			t.Errorf("%s: Open(%+v) succeeded", name, opts)
		} else if !strings.Contains(err.Error(), "sqlite:") {
			t.Errorf("%s: error %q does not name the backend", name, err)
		}
	}
}

// TestReopenKeepsState: instances and the fleet survive closing and
// reopening the file, and the schema is not recreated destructively.
func TestReopenKeepsState(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "hub.db")
	b, err := sqlite.Open(ctx, sqlite.Options{Path: path, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	c := dtbackend.NewTaskHubClient(b)
	if _, err := c.ScheduleNewOrchestration(ctx, "Anything", api.WithInstanceID("kept"), api.WithInput(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Fleet().AddDrone(ctx, "d-1", domain.LatLon{Lat: 1, Lon: 2}); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	b = open(t, path, 50*time.Millisecond)
	md, err := b.GetOrchestrationMetadata(ctx, "kept")
	if err != nil || md.RuntimeStatus != api.RUNTIME_STATUS_PENDING || md.SerializedInput != "1" {
		t.Fatalf("after reopening: %+v, %v", md, err)
	}
	page, err := b.ListInstances(ctx, taskhub.Query{})
	if err != nil || len(page.Instances) != 1 {
		t.Fatalf("listing after reopening: %+v, %v", page, err)
	}
	if d, err := b.Fleet().Drone(ctx, "d-1"); err != nil || d.Home.Lat != 1 {
		t.Fatalf("drone after reopening: %+v, %v", d, err)
	}
	if err := b.CreateTaskHub(ctx); err != dtbackend.ErrTaskHubExists {
		t.Errorf("CreateTaskHub on an open hub = %v, want ErrTaskHubExists unwrapped", err)
	}
	fetch, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	wi, err := b.GetOrchestrationWorkItem(fetch)
	if err != nil || wi.InstanceID != "kept" {
		t.Fatalf("work item after reopening: %v, %v", wi, err)
	}
}

// TestWakesOnEnqueue: a consumer waiting in GetOrchestrationWorkItem is woken
// by work this process enqueues, long before its poll interval.
func TestWakesOnEnqueue(t *testing.T) {
	ctx := context.Background()
	b := open(t, filepath.Join(t.TempDir(), "hub.db"), time.Minute)

	// Empty: it blocks until its context ends.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := b.GetOrchestrationWorkItem(short); !errors.Is(err, dtbackend.ErrNoWorkItems) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("empty hub: %v, want ErrNoWorkItems wrapping the deadline", err)
	}
	if short.Err() == nil {
		t.Errorf("returned after %s, before its context ended", time.Since(start))
	}

	type result struct {
		wi  *dtbackend.OrchestrationWorkItem
		err error
	}
	got := make(chan result, 1)
	waiting := make(chan struct{})
	long, cancelLong := context.WithTimeout(ctx, 10*time.Second)
	defer cancelLong()
	go func() {
		close(waiting)
		wi, err := b.GetOrchestrationWorkItem(long)
		got <- result{wi, err}
	}()
	<-waiting
	if _, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Anything", api.WithInstanceID("wake")); err != nil {
		t.Fatal(err)
	}
	enqueued := time.Now()
	select {
	case r := <-got:
		if r.err != nil || r.wi.InstanceID != "wake" {
			t.Fatalf("woken consumer got %v, %v", r.wi, r.err)
		}
		if latency := time.Since(enqueued); latency > 2*time.Second {
			t.Errorf("woken %s after the enqueue", latency)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the waiting consumer was not woken by the enqueue (poll interval 1m)")
	}
}

func TestDeleteTaskHub(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "hub.db")
	b := open(t, path, 50*time.Millisecond)
	if err := b.DeleteTaskHub(ctx); err != nil {
		t.Fatalf("DeleteTaskHub: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("database file still there after DeleteTaskHub: %v", err)
	}
	if err := b.DeleteTaskHub(ctx); !errors.Is(err, dtbackend.ErrTaskHubNotFound) {
		t.Errorf("second DeleteTaskHub: %v, want ErrTaskHubNotFound", err)
	}
}
