package orchestrations_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/simulator"
)

var update = flag.Bool("update", false, "record new mission histories into testdata/histories")

// recorded is a mission history as stored in testdata: each event is the
// base64 of its protobuf encoding, which is what backends store.
type recorded struct {
	Name       string   `json:"name"`
	InstanceID string   `json:"instanceId"`
	Events     []string `json:"events"`
}

// TestRecordHistories flies missions and saves their histories; it runs only
// with -update. Re-record when a change to DeliveryMission is meant to
// change its history, after checking no mission in flight would still need
// the old code.
func TestRecordHistories(t *testing.T) {
	if !*update {
		t.Skip("run with -update to record histories")
	}
	cfg := testkit.Config(t)
	cfg.ExternalWatchdog = true
	cfg.Mission.Watchdog = 2 * time.Second
	w := testkit.Start(t, cfg)
	wd := testkit.NewWatchdog(t, w, cfg.Mission.Watchdog)
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		fault simulator.Fault
	}{{"completed", simulator.FaultNone}, {"fault-after-pickup", simulator.FaultHealth}, {"drone-lost", simulator.FaultSilence}} {
		id, err := w.StartMission(ctx, testkit.Request("replay-"+tc.name))
		if err != nil {
			t.Fatal(err)
		}
		st := testkit.AwaitDispatched(t, w, id)
		if err := simulator.Fly(ctx, testkit.Sink(t, w), 0, testkit.Flight(t, w, st, tc.fault, 0.45)); err != nil {
			t.Fatal(err)
		}
		if tc.fault == simulator.FaultSilence {
			wd.Advance(t, 30*time.Second, "the watchdog to declare the drone lost", func() bool {
				return testkit.Metadata(t, w, id).RuntimeStatus != api.RUNTIME_STATUS_RUNNING
			})
		}
		testkit.AwaitEnd(t, w, id, 30*time.Second)
		state, err := w.Backend().GetOrchestrationRuntimeState(ctx, &dtbackend.OrchestrationWorkItem{InstanceID: api.InstanceID(id)})
		if err != nil {
			t.Fatal(err)
		}
		rec := recorded{Name: orchestrations.DeliveryMissionName, InstanceID: id}
		for _, e := range state.OldEvents() {
			b, err := dtbackend.MarshalHistoryEvent(e)
			if err != nil {
				t.Fatal(err)
			}
			rec.Events = append(rec.Events, base64.StdEncoding.EncodeToString(b))
		}
		data, _ := json.MarshalIndent(rec, "", " ")
		if err := os.WriteFile(filepath.Join("testdata", "histories", tc.name+".json"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReplayRecordedHistories runs recorded histories through the current
// DeliveryMission code. A change that breaks determinism (a step added,
// removed or reordered without versioning) makes the replay fail or end
// with a different result, which would corrupt missions in flight.
func TestReplayRecordedHistories(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "histories", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no recorded histories (err %v): run go test -run TestRecordHistories -update", err)
	}
	reg := task.NewTaskRegistry()
	if err := reg.AddOrchestratorN(orchestrations.DeliveryMissionName, orchestrations.DeliveryMission); err != nil {
		t.Fatal(err)
	}
	exec := task.NewTaskExecutor(reg)
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var rec recorded
			if err := json.Unmarshal(data, &rec); err != nil {
				t.Fatal(err)
			}
			var history []*dtbackend.HistoryEvent
			var completed *dtbackend.HistoryEvent
			for _, s := range rec.Events {
				b, err := base64.StdEncoding.DecodeString(s)
				if err != nil {
					t.Fatal(err)
				}
				e, err := dtbackend.UnmarshalHistoryEvent(b)
				if err != nil {
					t.Fatal(err)
				}
				// The completion is what the last turn's actions produced;
				// the replay must produce it again.
				if e.GetExecutionCompleted() != nil {
					completed = e
					continue
				}
				history = append(history, e)
			}
			if completed == nil {
				t.Fatal("recorded history has no completion")
			}
			res, err := replay(exec, api.InstanceID(rec.InstanceID), history)
			if err != nil {
				t.Fatal(err)
			}
			var done int
			for _, a := range res.Response.GetActions() {
				co := a.GetCompleteOrchestration()
				if co == nil {
					t.Errorf("replay scheduled new work (%v): the orchestration no longer matches its history", a)
					continue
				}
				done++
				if co.GetOrchestrationStatus() != completed.GetExecutionCompleted().GetOrchestrationStatus() {
					t.Fatalf("replay ended %v (%s), recorded %v", co.GetOrchestrationStatus(), co.GetFailureDetails().GetErrorMessage(),
						completed.GetExecutionCompleted().GetOrchestrationStatus())
				}
				if got, want := co.GetResult().GetValue(), completed.GetExecutionCompleted().GetResult().GetValue(); got != want {
					t.Fatalf("replay output differs:\n got  %s\n want %s", got, want)
				}
			}
			if done != 1 {
				t.Fatalf("replay produced %d completions, want 1", done)
			}
		})
	}
}

// replay runs history through exec. durabletask-go reports some mismatches
// between code and history by panicking out of the orchestrator; those
// become errors here.
func replay(exec dtbackend.Executor, id api.InstanceID, history []*dtbackend.HistoryEvent) (res *dtbackend.ExecutionResults, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("replay failed: the orchestration no longer matches its history: %v", v)
		}
	}()
	return exec.ExecuteOrchestrator(context.Background(), id, history, nil)
}
