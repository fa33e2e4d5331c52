package taskhub

import (
	"context"
	"fmt"
	"testing"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ev decodes a history event from its JSON form (durabletask-go keeps its
// constructors internal).
func ev(t *testing.T, body string) *dtbackend.HistoryEvent {
	t.Helper()
	e := &dtbackend.HistoryEvent{}
	if err := protojson.Unmarshal([]byte(fmt.Sprintf(`{"eventId":-1,%s}`, body)), e); err != nil {
		t.Fatalf("event %s: %v", body, err)
	}
	e.Timestamp = timestamppb.Now()
	return e
}

// waiter waits for a "go" event and returns its payload.
func waiterExecutor(t *testing.T) dtbackend.Executor {
	t.Helper()
	r := task.NewTaskRegistry()
	if err := r.AddOrchestratorN("Waiter", func(ctx *task.OrchestrationContext) (any, error) {
		var s string
		err := ctx.WaitForSingleEvent("go", -1).Await(&s)
		return s, err
	}); err != nil {
		t.Fatal(err)
	}
	return task.NewTaskExecutor(r)
}

// TestTerminateWhileSuspended runs work items that hold a termination
// through the plain executor and through TerminateExecutor, and derives the
// runtime status the backends would store, with and without
// ResumeTerminated.
func TestTerminateWhileSuspended(t *testing.T) {
	started := func() *dtbackend.HistoryEvent { return ev(t, `"orchestratorStarted":{}`) }
	start := ev(t, `"executionStarted":{"name":"Waiter","orchestrationInstance":{"instanceId":"i-1"}}`)
	suspend := ev(t, `"executionSuspended":{"input":"weather"}`)
	held := ev(t, `"eventRaised":{"name":"go","input":"\"held\""}`)
	term := ev(t, `"executionTerminated":{"input":"\"stop\""}`)
	resume := ev(t, `"executionResumed":{}`)

	cases := []struct {
		name     string
		old, new []*dtbackend.HistoryEvent
		// plainEnds: what durabletask-go alone does (nil: no completion).
		plainEnds []api.OrchestrationStatus
	}{
		{"terminate a suspended instance",
			[]*dtbackend.HistoryEvent{started(), start, started(), suspend},
			[]*dtbackend.HistoryEvent{started(), term}, nil},
		{"terminate a suspended instance holding an event",
			[]*dtbackend.HistoryEvent{started(), start, started(), suspend, started(), held},
			[]*dtbackend.HistoryEvent{started(), term}, nil},
		{"resume an instance terminated while suspended before the fix",
			[]*dtbackend.HistoryEvent{started(), start, started(), suspend, started(), held, started(), term},
			[]*dtbackend.HistoryEvent{started(), resume},
			// the held event completes it, and the termination as well
			[]api.OrchestrationStatus{api.RUNTIME_STATUS_COMPLETED, api.RUNTIME_STATUS_TERMINATED}},
		{"terminate with an event in the same work item",
			[]*dtbackend.HistoryEvent{started(), start},
			[]*dtbackend.HistoryEvent{started(), held, term},
			[]api.OrchestrationStatus{api.RUNTIME_STATUS_COMPLETED, api.RUNTIME_STATUS_TERMINATED}},
	}
	plain := waiterExecutor(t)
	fixed := TerminateExecutor(waiterExecutor(t))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ends := func(ex dtbackend.Executor, newEvents []*dtbackend.HistoryEvent) (*dtbackend.ExecutionResults, []api.OrchestrationStatus) {
				res, err := ex.ExecuteOrchestrator(context.Background(), "i-1", tc.old, newEvents)
				if err != nil {
					t.Fatal(err)
				}
				var out []api.OrchestrationStatus
				for _, a := range res.Response.GetActions() {
					co := a.GetCompleteOrchestration()
					if co == nil {
						t.Fatalf("unexpected action %v", a)
					}
					out = append(out, co.GetOrchestrationStatus())
				}
				return res, out
			}
			if _, got := ends(plain, tc.new); len(got) != len(tc.plainEnds) {
				t.Fatalf("durabletask-go alone ends with %v, this test expects %v", got, tc.plainEnds)
			}

			newEvents := ResumeTerminated(tc.old, tc.new)
			res, got := ends(fixed, newEvents)
			if len(got) != 1 || got[0] != api.RUNTIME_STATUS_TERMINATED {
				t.Fatalf("TerminateExecutor ends with %v, want only Terminated", got)
			}
			if r := res.Response.GetActions()[0].GetCompleteOrchestration().GetResult().GetValue(); r != `"stop"` {
				t.Errorf("output %s, want the reason", r)
			}
			// The runtime status the backends derive and store.
			state := dtbackend.NewOrchestrationRuntimeState("i-1", tc.old)
			for _, e := range newEvents {
				if err := state.AddEvent(e); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := state.ApplyActions(res.Response.GetActions(), nil); err != nil {
				t.Fatal(err)
			}
			if st := state.RuntimeStatus(); st != api.RUNTIME_STATUS_TERMINATED {
				t.Errorf("runtime status %s, want Terminated", StatusName(st))
			}
		})
	}

	t.Run("nothing to terminate", func(t *testing.T) {
		newEvents := []*dtbackend.HistoryEvent{started(), held}
		old := []*dtbackend.HistoryEvent{started(), start, started(), suspend, started(), resume}
		if got := ResumeTerminated(old, newEvents); len(got) != len(newEvents) {
			t.Fatalf("ResumeTerminated added events without a termination: %d", len(got))
		}
		res, err := fixed.ExecuteOrchestrator(context.Background(), "i-1", old, newEvents)
		if err != nil {
			t.Fatal(err)
		}
		if a := res.Response.GetActions(); len(a) != 1 || a[0].GetCompleteOrchestration().GetOrchestrationStatus() != api.RUNTIME_STATUS_COMPLETED {
			t.Fatalf("actions %v, want the orchestrator's own completion", a)
		}
	})
}
