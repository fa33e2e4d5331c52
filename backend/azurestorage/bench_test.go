package azurestorage

import (
	"context"
	"fmt"
	"testing"
	"time"

	"io"
	"log/slog"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

func quietSlog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// BenchmarkSequence runs b.N orchestrations of five sequential activities
// (the W1 shape), 16 at a time, and reports storage requests per activity
// and per orchestration beside the time per orchestration.
//
//	CI=true go test -run '^$' -bench BenchmarkSequence -benchtime 100x ./backend/azurestorage
func BenchmarkSequence(b *testing.B) {
	const steps = 5
	hub := testHub(b)
	be := openBench(b, hub)
	// The client has its own backend (and request counter): only the
	// worker's requests are counted.
	client := dtbackend.NewTaskHubClient(openBench(b, hub))
	exec := task.NewTaskExecutor(chainRegistry(steps, nil))
	gate := taskhub.NewGate(be)
	runner := taskhub.NewRunner(gate, quietSlog(), dtbackend.NewOrchestrationWorker(gate, exec, quietLogger(), dtbackend.WithMaxParallelism(16)),
		dtbackend.NewActivityTaskWorker(gate, exec, quietLogger(), dtbackend.WithMaxParallelism(16)))
	ctx := context.Background()
	if err := runner.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		runner.Shutdown(sctx)
	}()
	// Warm up: the first instance pays for lease claims and connections.
	warm, _ := client.ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID("warm"), api.WithInput(0))
	if _, err := client.WaitForOrchestrationCompletion(ctx, warm); err != nil {
		b.Fatal(err)
	}
	be.Counter().Reset()
	b.ResetTimer()
	ids := make([]api.InstanceID, b.N)
	sem := make(chan struct{}, 16)
	done := make(chan error, b.N)
	for i := range b.N {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			id, err := client.ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID(api.InstanceID(fmt.Sprint("seq-", i))), api.WithInput(0))
			if err == nil {
				ids[i] = id
				wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
				_, err = client.WaitForOrchestrationCompletion(wctx, id)
				cancel()
			}
			done <- err
		}()
	}
	for range b.N {
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	total := float64(be.Counter().Total())
	b.Logf("requests by kind: %s", be.Counter())
	b.ReportMetric(total/float64(b.N*steps), "requests/activity")
	b.ReportMetric(total/float64(b.N), "requests/orch")
}

func openBench(b *testing.B, hub string) *Backend {
	b.Helper()
	srv := azr.Get(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	be, err := Open(ctx, Options{ConnectionString: srv.ConnectionString(), HubName: hub, Partitions: 4, MaxPollInterval: 200 * time.Millisecond, Logger: quietSlog()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		be.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		be.DeleteTaskHub(ctx)
	})
	return be
}
