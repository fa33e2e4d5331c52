package worker_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/backend"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/taskhub"
	"github.com/dronehub/dronehub/worker"
)

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		edit func(*worker.Config)
		want string
	}{
		{"heartbeat", func(c *worker.Config) { c.Heartbeat = c.Mission.Watchdog / 2 }, "heartbeat"},
		{"watchdog interval", func(c *worker.Config) { c.WatchdogInterval = -time.Second }, "watchdog interval"},
		{"watchdog", func(c *worker.Config) { c.Mission.Watchdog = time.Millisecond }, "watchdog"},
		{"battery", func(c *worker.Config) { c.Mission.BatteryFloor = 1.5 }, "battery floor"},
		{"concurrency", func(c *worker.Config) { c.ActivityConcurrency = -1 }, "concurrency"},
		{"dashboard interval", func(c *worker.Config) { c.DashboardInterval = time.Millisecond }, "dashboard interval"},
		{"api key", func(c *worker.Config) { c.APIKeys = []string{"abc"} }, "at least 16"},
		{"storage", func(c *worker.Config) { c.Storage = "mysql://db" }, "unsupported connection string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := testkit.Config(t)
			tc.edit(&cfg)
			_, err := worker.New(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
	cfg := testkit.Config(t)
	cfg.Storage = "mysql://db"
	if _, err := worker.New(context.Background(), cfg); !errors.Is(err, backend.ErrUnsupportedConnectionString) {
		t.Errorf("bad storage error %v does not wrap ErrUnsupportedConnectionString", err)
	}
}

func TestDemoFleetIsSeededOnce(t *testing.T) {
	t.Parallel()
	cfg := testkit.Config(t)
	cfg.Storage = filepath.Join(t.TempDir(), "fleet.db")
	cfg.SeedDrones = 4
	ctx := context.Background()
	w := testkit.Start(t, cfg)
	if _, err := w.Fleet().AddDrone(ctx, "extra", domain.LatLon{Lat: 47.64, Lon: -122.13}); err != nil {
		t.Fatal(err)
	}
	testkit.Stop(t, w)
	w2 := testkit.Start(t, cfg)
	drones, err := w2.Fleet().Drones(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(drones) != 5 {
		t.Fatalf("%d drones after restart, want the 4 seeded plus 1 added, seeded once", len(drones))
	}
}

func TestStartMissionValidates(t *testing.T) {
	t.Parallel()
	w := testkit.Start(t, testkit.Config(t))
	req := testkit.Request("bad")
	req.Package.WeightKg = 0
	if _, err := w.StartMission(context.Background(), req); err == nil || !strings.Contains(err.Error(), "package.weightKg") {
		t.Fatalf("StartMission: %v, want a validation error naming package.weightKg", err)
	}
	id, err := w.StartMission(context.Background(), testkit.Request(""))
	if err != nil || len(id) != 36 {
		t.Fatalf("StartMission without an id: %q, %v; want a UUID", id, err)
	}
	md := testkit.Metadata(t, w, id)
	if md.Name != orchestrations.DeliveryMissionName {
		t.Fatalf("started %q, want %s", md.Name, orchestrations.DeliveryMissionName)
	}
}

// TestPanickingOrchestratorDoesNotKillTheWorker registers a user
// orchestration with a bug: the worker must survive it, set its work aside
// as a dead letter, and keep flying missions.
func TestPanickingOrchestratorDoesNotKillTheWorker(t *testing.T) {
	t.Parallel()
	cfg := testkit.Config(t)
	cfg.LockTimeout = time.Second
	cfg.MaxDequeueCount = 3
	cfg.Register = func(r *task.TaskRegistry) error {
		return r.AddOrchestratorN("Buggy", func(ctx *task.OrchestrationContext) (any, error) {
			panic("a bug in a user's orchestration")
		})
	}
	w := testkit.Start(t, cfg)
	ctx := context.Background()
	if _, err := w.Client().ScheduleNewOrchestration(ctx, "Buggy", api.WithInstanceID("buggy-1")); err != nil {
		t.Fatal(err)
	}
	dl := w.Backend().(taskhub.DeadLetterer)
	testkit.Eventually(t, 90*time.Second, "the panicking instance's work to be dead-lettered", func() bool {
		letters, err := dl.DeadLetters(ctx)
		return err == nil && len(letters) == 1 && letters[0].InstanceID == "buggy-1"
	})
	id, err := w.StartMission(ctx, testkit.Request("after-the-bug"))
	if err != nil {
		t.Fatal(err)
	}
	if st := testkit.AwaitDispatched(t, w, id); st.DroneID == "" {
		t.Fatal("the worker stopped working after the panic")
	}
}
