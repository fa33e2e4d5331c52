// Package testkit starts real workers on real storage for tests and waits
// for conditions with deadlines instead of sleeps.
package testkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/azurite"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/worker"
)

// Logger discards logs unless DRONEHUB_TEST_LOG is set.
func Logger() *slog.Logger {
	if os.Getenv("DRONEHUB_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Config returns a worker config for tests: a fresh SQLite file, three demo
// drones, timeouts small enough for tests.
//
// Its watchdog silence is a minute, far longer than any test, so that a
// scheduler stall on a loaded machine (a telemetry post held up for
// seconds under -race) cannot get a healthy mission declared lost. Tests of
// silence set ExternalWatchdog and drive a Watchdog, which decides when
// time passes. The scan interval stays short for deadlines and freed
// drones.
func Config(t testing.TB) worker.Config {
	return worker.Config{
		Storage:          filepath.Join(t.TempDir(), "hub.db"),
		SeedDrones:       3,
		LockTimeout:      5 * time.Second,
		WatchdogInterval: 250 * time.Millisecond,
		Mission: orchestrations.MissionSettings{
			Watchdog:              time.Minute,
			ActivityAttempts:      2,
			ActivityRetryInterval: 100 * time.Millisecond,
		},
		Heartbeat: 500 * time.Millisecond,
		// The API's storage deadline (1.2 s by default) is for production
		// storage; on a loaded 2-core test machine with Azurite sharing
		// the cores a healthy request can take longer. Tests of the
		// deadline itself set their own.
		StorageTimeout: 20 * time.Second,
		Logger:         Logger(),
	}
}

// Start creates and starts a worker and stops it when the test ends.
func Start(t testing.TB, cfg worker.Config) *worker.Worker {
	t.Helper()
	ctx := context.Background()
	w, err := worker.New(ctx, cfg)
	if err != nil {
		t.Fatalf("new worker: %v", err)
	}
	if err := w.Start(ctx); err != nil {
		t.Fatalf("start worker: %v", err)
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { Stop(t, w) }) })
	return w
}

// Stop shuts a worker down, failing the test if that takes over 20 s.
func Stop(t testing.TB, w *worker.Worker) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// Watchdog is a drone watchdog a test drives: it scans only when the test
// says so, on a clock the test sets, so a scheduler stall can neither raise
// an alarm nor hold one back. The worker must run with
// worker.Config.ExternalWatchdog.
type Watchdog struct {
	silence time.Duration
	wd      *activities.Watchdog
	mu      sync.Mutex
	now     time.Time
}

// NewWatchdog returns a watchdog over w's fleet with the given silence (the
// worker's Mission.Watchdog). Its clock starts at the current time.
func NewWatchdog(t testing.TB, w *worker.Worker, silence time.Duration) *Watchdog {
	t.Helper()
	if silence <= 0 {
		t.Fatalf("watchdog silence %s must be positive", silence)
	}
	d := &Watchdog{silence: silence, now: time.Now()}
	d.wd = activities.NewWatchdog(w.Fleet(), w.Client(), activities.WatchdogOptions{
		Silence: silence, Now: d.clock, Logger: Logger(),
	})
	return d
}

func (d *Watchdog) clock() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.now
}

// Now is the watchdog's clock.
func (d *Watchdog) Now() time.Time { return d.clock() }

// ScanAt moves the clock to at (never back: a clock set back looks to the
// watchdog like a stepped wall clock) and scans once.
func (d *Watchdog) ScanAt(t testing.TB, at time.Time) {
	t.Helper()
	d.mu.Lock()
	if at.After(d.now) {
		d.now = at
	}
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := d.wd.Scan(ctx); err != nil {
		t.Fatalf("watchdog scan: %v", err)
	}
}

// Advance lets watchdog time pass until cond holds: each round moves the
// clock half a silence period past the later of itself and the wall clock
// and scans, so a drone silent in real time is silent for the watchdog
// within two rounds, whatever the scheduler does. It fails the test after
// timeout of real time.
func (d *Watchdog) Advance(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	Eventually(t, timeout, what, func() bool {
		now := d.Now()
		if wall := time.Now(); wall.After(now) {
			now = wall
		}
		d.ScanAt(t, now.Add(d.silence/2))
		return cond()
	})
}

// Eventually polls cond until it holds or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Route is a test delivery a few hundred metres from the demo base.
func Route() (pickup, dropoff domain.LatLon) {
	return domain.LatLon{Lat: 47.6440, Lon: -122.1300}, domain.LatLon{Lat: 47.6470, Lon: -122.1360}
}

// Request is a valid mission request with the given id.
func Request(id string) domain.MissionRequest {
	p, d := Route()
	return domain.MissionRequest{
		MissionID: id, Pickup: &p, Dropoff: &d,
		Package:  &domain.Package{ID: "pkg-" + id, WeightKg: 1.5, Size: domain.SizeSmall},
		Deadline: time.Now().Add(time.Hour).UTC().Truncate(time.Second),
	}
}

// Status decodes a mission's custom status (or output when given).
func Status(t testing.TB, raw string) domain.MissionStatus {
	t.Helper()
	var s domain.MissionStatus
	if raw == "" {
		return s
	}
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		t.Fatalf("decode mission status %q: %v", raw, err)
	}
	return s
}

// Metadata fetches an instance's metadata, failing the test on error.
func Metadata(t testing.TB, w *worker.Worker, id string) *api.OrchestrationMetadata {
	t.Helper()
	md, err := w.Client().FetchOrchestrationMetadata(context.Background(), api.InstanceID(id))
	if err != nil {
		t.Fatalf("fetch %s: %v", id, err)
	}
	return md
}

// AwaitDispatched waits until the mission's drone is on its way and returns
// the mission status, which carries the drone and route.
func AwaitDispatched(t testing.TB, w *worker.Worker, id string) domain.MissionStatus {
	t.Helper()
	var st domain.MissionStatus
	Eventually(t, 15*time.Second, "mission "+id+" to dispatch its drone", func() bool {
		md := Metadata(t, w, id)
		st = Status(t, md.SerializedCustomStatus)
		return st.Route != nil && (st.Phase == domain.PhaseHeadedToPickup || st.Phase.Terminal())
	})
	return st
}

// AwaitEnd waits for the mission to finish and returns its output.
func AwaitEnd(t testing.TB, w *worker.Worker, id string, timeout time.Duration) (domain.MissionStatus, *api.OrchestrationMetadata) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	md, err := w.Client().WaitForOrchestrationCompletion(ctx, api.InstanceID(id))
	if err != nil {
		cur := Metadata(t, w, id)
		t.Fatalf("mission %s did not end within %s: %v (status %v, custom status %s)", id, timeout, err, cur.RuntimeStatus, cur.SerializedCustomStatus)
	}
	return Status(t, md.SerializedOutput), md
}

// Flight plans the simulated flight of a dispatched mission. Its frames
// continue the drone's sequence numbers, as a real drone's do.
func Flight(t testing.TB, w *worker.Worker, st domain.MissionStatus, fault simulator.Fault, at float64) *simulator.Flight {
	t.Helper()
	d, err := w.Fleet().Drone(context.Background(), st.DroneID)
	if err != nil {
		t.Fatal(err)
	}
	return simulator.NewFlight(simulator.FlightOptions{
		DroneID: st.DroneID, Route: *st.Route, SpeedMps: 40, Fault: fault, FaultAt: at, FirstSeq: d.Tracked.Window.Last + 1,
	})
}

// Sink ingests frames through the worker's ingestion path, failing the test
// on a storage error.
func Sink(t testing.TB, w *worker.Worker) simulator.Sink {
	return simulator.SinkFunc(func(ctx context.Context, frames []domain.Frame) error {
		dfs := make([]domain.DecodedFrame, len(frames))
		for i, f := range frames {
			dfs[i] = domain.DecodedFrame{Frame: f}
		}
		_, err := w.Ingestor().Ingest(ctx, dfs)
		return err
	})
}

// Calls counts activity invocations per (activity, mission), as activity
// middleware.
type Calls struct {
	mu sync.Mutex
	n  map[[2]string]int
	// Fail makes an activity fail for a mission when it returns an error.
	Fail func(activity, missionID string) error
}

// Middleware returns the counting middleware.
func (c *Calls) Middleware() activities.Middleware {
	return func(name string, next task.Activity) task.Activity {
		return func(ctx task.ActivityContext) (any, error) {
			var ref struct {
				MissionID string `json:"missionId"`
			}
			_ = ctx.GetInput(&ref)
			c.mu.Lock()
			if c.n == nil {
				c.n = map[[2]string]int{}
			}
			c.n[[2]string{name, ref.MissionID}]++
			c.mu.Unlock()
			if c.Fail != nil {
				if err := c.Fail(name, ref.MissionID); err != nil {
					return nil, err
				}
			}
			return next(ctx)
		}
	}
}

// Count returns how often activity ran for mission.
func (c *Calls) Count(activity, mission string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[[2]string{activity, mission}]
}

// EachBackend runs f as parallel subtests "sqlite" and "azurestorage", each
// with a worker config on that backend: a fresh SQLite file, or a fresh hub
// on the test binary's shared Azurite.
func EachBackend(t *testing.T, azr *azurite.Shared, f func(t *testing.T, cfg worker.Config)) {
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		f(t, Config(t))
	})
	t.Run("azurestorage", func(t *testing.T) {
		t.Parallel()
		cfg := Config(t)
		cfg.Storage = azr.Get(t).ConnectionString()
		cfg.HubName = HubName()
		f(t, cfg)
	})
}

// HubName returns a fresh task hub name, so tests sharing storage never meet.
func HubName() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "t" + hex.EncodeToString(b)
}
