package orchestrations_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/taskhub"
)

// BenchmarkMission flies whole missions one after another: start, reserve,
// dispatch, about 40 telemetry frames (10 signals), pickup, delivery,
// return. ns/op is one mission's end-to-end latency; on Azure Storage it also
// reports the storage requests one mission costs.
func BenchmarkMission(b *testing.B) {
	for _, backend := range []string{"sqlite", "azurestorage"} {
		b.Run(backend, func(b *testing.B) {
			cfg := testkit.Config(b)
			cfg.SeedDrones = 2
			cfg.Mission.Watchdog = time.Minute
			cfg.Heartbeat = 10 * time.Second
			if backend == "azurestorage" {
				cfg.Storage = azr.Get(b).ConnectionString()
				cfg.HubName = testkit.HubName()
			}
			w := testkit.Start(b, cfg)
			ctx := context.Background()
			fly := func(i int) {
				id, err := w.StartMission(ctx, testkit.Request(fmt.Sprintf("bench-%d", i)))
				if err != nil {
					b.Fatal(err)
				}
				st := testkit.AwaitDispatched(b, w, id)
				if err := simulator.Fly(ctx, testkit.Sink(b, w), 0, testkit.Flight(b, w, st, simulator.FaultNone, 0)); err != nil {
					b.Fatal(err)
				}
				if out, _ := testkit.AwaitEnd(b, w, id, time.Minute); out.Phase != domain.PhaseCompleted {
					b.Fatalf("mission %s ended %s (%s)", id, out.Phase, out.Failure)
				}
			}
			fly(-1) // warm up: schema, hub resources, leases
			var before int64
			rc, counted := w.Backend().(taskhub.RequestCounter)
			if counted {
				before = total(rc.RequestCounts())
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				fly(i)
			}
			b.StopTimer()
			if counted {
				b.ReportMetric(float64(total(rc.RequestCounts())-before)/float64(b.N), "requests/mission")
			}
		})
	}
}

func total(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}
