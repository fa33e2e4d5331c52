package orchestrations_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/worker"
)

// A Relocate orchestration moves a drone to another hangar: it reserves a
// slot there, then an airspace corridor, then takes off. Take-off fails, so
// the saga undoes the two reservations, newest first.
func ExampleSaga() {
	relocate := func(ctx *task.OrchestrationContext) (any, error) {
		saga := orchestrations.NewSaga(ctx, orchestrations.SagaOptions{})
		if err := ctx.CallActivity("ReserveSlot", task.WithActivityInput("hangar-b")).Await(nil); err != nil {
			return nil, err // nothing to undo yet
		}
		_ = saga.Add("slot", "ReleaseSlot", "hangar-b") // right after the step succeeded
		if err := ctx.CallActivity("ReserveAirspace", task.WithActivityInput("corridor-7")).Await(nil); err != nil {
			return saga.Compensate(), nil
		}
		_ = saga.Add("airspace", "ReleaseAirspace", "corridor-7")
		if err := ctx.CallActivity("TakeOff").Await(nil); err != nil {
			return saga.Compensate(), nil // explicitly, never in a defer
		}
		return []domain.CompensationResult{}, nil
	}

	// The activities record what they ran.
	var mu sync.Mutex
	var done []string
	activity := func(name string, err error) task.Activity {
		return func(ctx task.ActivityContext) (any, error) {
			var in string
			_ = ctx.GetInput(&in)
			mu.Lock()
			defer mu.Unlock()
			done = append(done, strings.TrimSpace(name+" "+in))
			return nil, err
		}
	}
	register := func(r *task.TaskRegistry) error {
		return errors.Join(
			r.AddOrchestratorN("Relocate", relocate),
			r.AddActivityN("ReserveSlot", activity("ReserveSlot", nil)),
			r.AddActivityN("ReleaseSlot", activity("ReleaseSlot", nil)),
			r.AddActivityN("ReserveAirspace", activity("ReserveAirspace", nil)),
			r.AddActivityN("ReleaseAirspace", activity("ReleaseAirspace", nil)),
			r.AddActivityN("TakeOff", activity("TakeOff", errors.New("gusts above limits"))),
		)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "saga-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	w, err := worker.New(ctx, worker.Config{
		Storage:    filepath.Join(dir, "hub.db"),
		SeedDrones: -1,
		Register:   register,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer w.Shutdown(context.Background())
	if err := w.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}

	id, err := w.Client().ScheduleNewOrchestration(ctx, "Relocate", api.WithInstanceID("relocate-1"))
	if err != nil {
		fmt.Println(err)
		return
	}
	md, err := w.Client().WaitForOrchestrationCompletion(ctx, id)
	if err != nil {
		fmt.Println(err)
		return
	}
	var record []domain.CompensationResult
	if err := json.Unmarshal([]byte(md.SerializedOutput), &record); err != nil {
		fmt.Println(err)
		return
	}
	mu.Lock()
	for _, d := range done {
		fmt.Println("ran:", d)
	}
	mu.Unlock()
	for _, r := range record {
		fmt.Printf("undo %s: %s %s\n", r.Step, r.Activity, r.Status)
	}
	// Output:
	// ran: ReserveSlot hangar-b
	// ran: ReserveAirspace corridor-7
	// ran: TakeOff
	// ran: ReleaseAirspace corridor-7
	// ran: ReleaseSlot hangar-b
	// undo airspace: ReleaseAirspace compensated
	// undo slot: ReleaseSlot compensated
}
