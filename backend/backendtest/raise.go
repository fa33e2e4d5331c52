package backendtest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

// RunEventRaiser checks a backend's taskhub.EventRaiser: many events for
// many instances in one call each reach their instance once, an instance's
// in the order given, and events raised one by one between the calls each
// once (in no promised order relative to the calls: a backend may deliver
// a later message before an earlier one sent another way); an event
// without a timestamp is refused before anything is added. f's backends
// must be EventRaisers.
func RunEventRaiser(t *testing.T, f Factory) {
	t.Helper()
	t.Parallel()
	be := f(t)
	er, ok := be.(taskhub.EventRaiser)
	if !ok {
		t.Fatalf("%T is not a taskhub.EventRaiser", be)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*caseTimeout)
	t.Cleanup(cancel)

	// Gather returns the "e" events it got, in order, until "stop".
	r := task.NewTaskRegistry()
	if err := r.AddOrchestratorN("Gather", func(ctx *task.OrchestrationContext) (any, error) {
		got := []string{}
		for {
			var v string
			if err := ctx.WaitForSingleEvent("e", -1).Await(&v); err != nil {
				return nil, err
			}
			if v == "stop" {
				return got, nil
			}
			got = append(got, v)
		}
	}); err != nil {
		t.Fatal(err)
	}
	startWorker(t, be, r)
	c := backend.NewTaskHubClient(be)
	var ids []api.InstanceID
	for i := range 6 {
		ids = append(ids, schedule(t, ctx, c, "Gather", api.WithInstanceID(api.InstanceID(fmt.Sprintf("gather-%d", i)))))
	}
	for _, id := range ids {
		waitForStatus(t, ctx, be, id, api.RUNTIME_STATUS_RUNNING)
	}
	raised := func(v string) *backend.HistoryEvent {
		p, _ := json.Marshal(v)
		return taskhub.NewEventRaisedEvent("e", string(p))
	}

	if err := er.AddNewOrchestrationEvents(ctx, []taskhub.RaisedEvent{
		{Instance: ids[0], Event: raised("never")},
		{Instance: ids[1], Event: &backend.HistoryEvent{}},
	}); err == nil {
		t.Fatal("an event without a timestamp was accepted")
	}
	want := map[api.InstanceID][]string{}
	for round := range 3 {
		var batch []taskhub.RaisedEvent
		for k := range 2 {
			for _, id := range ids {
				v := fmt.Sprintf("%s/%d.%d", id, round, k)
				batch = append(batch, taskhub.RaisedEvent{Instance: id, Event: raised(v)})
				want[id] = append(want[id], v)
			}
		}
		if err := er.AddNewOrchestrationEvents(ctx, batch); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for _, id := range ids {
			v := fmt.Sprintf("%s/%d.alone", id, round)
			p, _ := json.Marshal(v)
			if err := c.RaiseEvent(ctx, id, "e", api.WithRawEventData(string(p))); err != nil {
				t.Fatal(err)
			}
			want[id] = append(want[id], v)
		}
	}
	// Large events, and more events for one instance than a message holds.
	big := strings.Repeat("0123456789", 15000)
	var batch []taskhub.RaisedEvent
	for k, v := range []string{"before-big", big, "after-big"} {
		batch = append(batch, taskhub.RaisedEvent{Instance: ids[0], Event: raised(v)})
		want[ids[0]] = append(want[ids[0]], v)
		batch = append(batch, taskhub.RaisedEvent{Instance: ids[1], Event: raised(fmt.Sprintf("%s/beside-big.%d", ids[1], k))})
		want[ids[1]] = append(want[ids[1]], fmt.Sprintf("%s/beside-big.%d", ids[1], k))
	}
	for k := range 400 {
		v := fmt.Sprintf("%s/many.%03d", ids[2], k)
		batch = append(batch, taskhub.RaisedEvent{Instance: ids[2], Event: raised(v)})
		want[ids[2]] = append(want[ids[2]], v)
	}
	if err := er.AddNewOrchestrationEvents(ctx, batch); err != nil {
		t.Fatalf("large and many: %v", err)
	}
	if err := er.AddNewOrchestrationEvents(ctx, nil); err != nil {
		t.Errorf("no events: %v", err)
	}
	// "stop" only once everything arrived: a later message may overtake
	// earlier ones sent another way.
	for _, id := range ids {
		eventually(t, settleTimeout, func() bool {
			return count(history(t, ctx, be, id), isEventRaised) == len(want[id])
		}, id, " to receive ", len(want[id]), " events")
	}
	for _, id := range ids {
		if err := c.RaiseEvent(ctx, id, "e", api.WithEventPayload("stop")); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		md := waitForCompletion(t, ctx, be, id)
		if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
			t.Fatalf("%s: %s", id, describe(md))
		}
		var got []string
		if err := json.Unmarshal([]byte(md.SerializedOutput), &got); err != nil {
			t.Fatalf("%s output %s: %v", id, md.SerializedOutput, err)
		}
		var bundled, alone []string
		for _, v := range got {
			if strings.HasSuffix(v, ".alone") {
				alone = append(alone, v)
			} else {
				bundled = append(bundled, v)
			}
		}
		var wantBundled, wantAlone []string
		for _, v := range want[id] {
			if strings.HasSuffix(v, ".alone") {
				wantAlone = append(wantAlone, v)
			} else {
				wantBundled = append(wantBundled, v)
			}
		}
		slices.Sort(alone)
		if !slices.Equal(bundled, wantBundled) || !slices.Equal(alone, wantAlone) {
			t.Errorf("%s received %d events, want %d: the raised-together ones in order (first difference at %d) and each of %v once (got %v)",
				id, len(got), len(want[id]), firstDifference(bundled, wantBundled), wantAlone, alone)
		}
	}
}

// firstDifference is the first index where a and b differ.
func firstDifference(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
