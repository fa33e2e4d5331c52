package orchestrations_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/orchestrations"
)

// TestFaultSignalOvertakesThePickup: the signal of a drone that failed
// after its pickup reaches the mission before the signal that reported the
// pickup (signals overtake each other when a partition moves between
// workers, as an autoscaler makes them do). The mission must still confirm
// the pickup before it fails, so that the package is rescheduled: what is
// compensated is what happened, not the order the signals came in; and a
// faulted drone that flew on to the drop-off does not confirm a delivery.
// (Seen in e2e TestAutoscale: faulted missions ended without ConfirmPickup
// and without rescheduling their package.)
func TestFaultSignalOvertakesThePickup(t *testing.T) {
	t.Parallel()
	calls := &testkit.Calls{}
	cfg := testkit.Config(t)
	cfg.ActivityMiddleware = calls.Middleware()
	w := testkit.Start(t, cfg)
	ctx := context.Background()
	id, err := w.StartMission(ctx, testkit.Request("fault-overtakes"))
	if err != nil {
		t.Fatal(err)
	}
	st := testkit.AwaitDispatched(t, w, id)
	r := *st.Route
	// The gyrometer failed between pickup and drop-off, and the drone
	// flew on to the drop-off: the first signal the mission gets is from
	// there.
	faulty := droneAt(st.DroneID, 30, r.Dropoff, domain.ModeLanding)
	faulty.Health.GyrometerOK = false
	for _, sig := range []domain.Signal{
		{Kind: domain.SignalTelemetry, Phase: domain.PhaseDelivered, State: faulty}, // overtook the others
		{Kind: domain.SignalTelemetry, Phase: domain.PhasePickedUp, State: droneAt(st.DroneID, 10, r.Pickup, domain.ModeLanding)},
	} {
		payload, _ := json.Marshal(sig)
		if err := w.Client().RaiseEvent(ctx, api.InstanceID(id), domain.SignalEvent, api.WithRawEventData(string(payload))); err != nil {
			t.Fatal(err)
		}
	}
	out, _ := testkit.AwaitEnd(t, w, id, 30*time.Second)
	if out.Phase != domain.PhaseFailed || !strings.Contains(out.Failure, "fault: gyrometer") {
		t.Fatalf("phase %s, failure %q: want Failed with the gyrometer fault", out.Phase, out.Failure)
	}
	for _, a := range []string{activities.ConfirmPickup, activities.ReschedulePackage} {
		if n := calls.Count(a, id); n != 1 {
			t.Errorf("%s ran %d times, want 1 (phases %v)", a, n, phases(out))
		}
	}
	if n := calls.Count(activities.ConfirmDelivery, id); n != 0 {
		t.Errorf("ConfirmDelivery ran %d times on a faulted drone's telemetry: only a healthy drone's confirms a delivery", n)
	}
	rescheduled := false
	for _, c := range out.Compensations {
		if c.Step == orchestrations.StepReschedulePackage && c.Status == "compensated" {
			rescheduled = true
		}
	}
	if !rescheduled {
		t.Errorf("the package picked up was not rescheduled: compensations %+v", out.Compensations)
	}
}
