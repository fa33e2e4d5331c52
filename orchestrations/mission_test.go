package orchestrations_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/worker"
)

func phases(st domain.MissionStatus) []domain.Phase {
	var out []domain.Phase
	for _, c := range st.Timeline {
		out = append(out, c.Phase)
	}
	return out
}

// effectKey is the key the mission's effects are recorded under: its id
// and its run, the time of its first turn (the timeline's first entry).
func effectKey(t *testing.T, w *worker.Worker, id string) string {
	t.Helper()
	st := testkit.Status(t, testkit.Metadata(t, w, id).SerializedCustomStatus)
	if len(st.Timeline) == 0 {
		t.Fatalf("mission %s has no timeline yet", id)
	}
	return activities.EffectKey(id, orchestrations.Run(st.Timeline[0].At))
}

func effectKinds(t *testing.T, w *worker.Worker, id string) []string {
	t.Helper()
	effects, err := w.Fleet().Effects(context.Background(), effectKey(t, w, id))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range effects {
		kinds = append(kinds, e.Kind)
	}
	return kinds
}

func TestMissionCompletes(t *testing.T) {
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		calls := &testkit.Calls{}
		cfg.ActivityMiddleware = calls.Middleware()
		w := testkit.Start(t, cfg)
		ctx := context.Background()

		id, err := w.StartMission(ctx, testkit.Request("happy"))
		if err != nil {
			t.Fatal(err)
		}
		st := testkit.AwaitDispatched(t, w, id)
		if err := simulator.Fly(ctx, testkit.Sink(t, w), 0, testkit.Flight(t, w, st, simulator.FaultNone, 0)); err != nil {
			t.Fatal(err)
		}
		out, md := testkit.AwaitEnd(t, w, id, 30*time.Second)
		if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
			t.Fatalf("runtime status %v, want Completed", md.RuntimeStatus)
		}
		want := []domain.Phase{domain.PhaseCreated, domain.PhaseDroneReserved, domain.PhaseHeadedToPickup, domain.PhasePickedUp,
			domain.PhaseHeadedToDropoff, domain.PhaseDelivered, domain.PhaseReturning, domain.PhaseCompleted}
		if got := phases(out); !slices.Equal(got, want) {
			t.Fatalf("phases %v, want %v", got, want)
		}
		if out.ProgressPct != 100 || out.DistanceLeftM != 0 || len(out.Compensations) != 0 || out.Failure != "" {
			t.Errorf("final status %+v: want 100%% progress, nothing left, no compensation", out)
		}
		if out.Battery == nil || *out.Battery >= 1 || out.LastPosition == nil || out.ETA == nil {
			t.Errorf("final status lacks battery, position or ETA: %+v", out)
		}
		wantEffects := []string{activities.EffectAccepted, activities.EffectReserved, activities.EffectDispatched,
			activities.EffectPickedUp, activities.EffectDelivered, activities.EffectCompleted}
		if got := effectKinds(t, w, id); !slices.Equal(got, wantEffects) {
			t.Errorf("effects %v, want %v", got, wantEffects)
		}
		for _, a := range []string{activities.ReserveDrone, activities.ConfirmPickup, activities.ConfirmDelivery, activities.CompleteMission} {
			if n := calls.Count(a, id); n != 1 {
				t.Errorf("%s ran %d times, want 1", a, n)
			}
		}
		d, err := w.Fleet().Drone(ctx, out.DroneID)
		if err != nil {
			t.Fatal(err)
		}
		if d.MissionID != "" || d.Route != nil {
			t.Errorf("drone %s still bound to %q after completion", d.ID, d.MissionID)
		}
	})
}

// failureCase is one way a mission can fail, and what compensation must run.
type failureCase struct {
	name         string
	fault        simulator.Fault
	at           float64
	failActivity string
	cancel       bool
	deadline     time.Duration
	wantPhase    domain.Phase
	wantFailure  string
	wantUndo     []string // compensation steps, in the order they must run
}

func TestMissionFailuresCompensate(t *testing.T) {
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		early := []string{"recall-drone", "release-drone", "notify-customer"}
		afterPickup := append([]string{"reschedule-package"}, early...)
		cases := []failureCase{
			{name: "fault-before-pickup", fault: simulator.FaultHealth, at: 0.1, wantPhase: domain.PhaseFailed, wantFailure: "fault: gyrometer", wantUndo: early},
			{name: "fault-after-pickup", fault: simulator.FaultHealth, at: 0.45, wantPhase: domain.PhaseFailed, wantFailure: "fault: gyrometer", wantUndo: afterPickup},
			{name: "low-battery", fault: simulator.FaultLowBattery, at: 0.1, wantPhase: domain.PhaseFailed, wantFailure: "below the 20% floor", wantUndo: early},
			{name: "deadline", deadline: 1500 * time.Millisecond, wantPhase: domain.PhaseFailed, wantFailure: "deadline", wantUndo: early},
			{name: "activity-fails", failActivity: activities.ConfirmPickup, wantPhase: domain.PhaseFailed, wantFailure: "confirm pickup failed", wantUndo: early},
			{name: "operator-cancel", cancel: true, wantPhase: domain.PhaseCancelled, wantFailure: "customer changed plans", wantUndo: early},
		}
		calls := &testkit.Calls{Fail: func(activity, missionID string) error {
			if activity == activities.ConfirmPickup && missionID == "activity-fails" {
				return errors.New("injected: pickup scanner offline")
			}
			return nil
		}}
		cfg.SeedDrones = len(cases)
		cfg.ActivityMiddleware = calls.Middleware()
		w := testkit.Start(t, cfg)
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				flyFailure(t, w, calls, tc, nil)
			})
		}
	})
}

// TestLostDroneFailsItsMission: a drone that stops reporting after pickup
// is declared lost by the watchdog, and the mission compensates. The test
// drives the watchdog, so only the drone's silence, not a stall of the
// machine, can raise the alarm; the mission still checks the alarm against
// its own clock (no telemetry for half its watchdog period).
func TestLostDroneFailsItsMission(t *testing.T) {
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		cfg.ExternalWatchdog = true
		cfg.Mission.Watchdog = 2 * time.Second
		calls := &testkit.Calls{}
		cfg.ActivityMiddleware = calls.Middleware()
		w := testkit.Start(t, cfg)
		wd := testkit.NewWatchdog(t, w, cfg.Mission.Watchdog)
		tc := failureCase{name: "drone-lost", fault: simulator.FaultSilence, at: 0.45, wantPhase: domain.PhaseFailed, wantFailure: "lost: no telemetry",
			wantUndo: []string{"reschedule-package", "recall-drone", "release-drone", "notify-customer"}}
		flyFailure(t, w, calls, tc, func(id string) {
			// While the drone flew, no scan ran: nothing but its silence
			// now can end the mission.
			if md := testkit.Metadata(t, w, id); md.RuntimeStatus != api.RUNTIME_STATUS_RUNNING {
				t.Fatalf("mission %s is %v before the watchdog ran, want Running", id, md.RuntimeStatus)
			}
			wd.Advance(t, 30*time.Second, "the watchdog to declare the drone lost", func() bool {
				return testkit.Metadata(t, w, id).RuntimeStatus != api.RUNTIME_STATUS_RUNNING
			})
		})
	})
}

// flyFailure runs one failure case on w and checks its outcome and
// compensations; afterFlight, when set, runs once the simulated flight
// ended.
func flyFailure(t *testing.T, w *worker.Worker, calls *testkit.Calls, tc failureCase, afterFlight func(id string)) {
	ctx := context.Background()
	req := testkit.Request(tc.name)
	if tc.deadline > 0 {
		req.Deadline = time.Now().Add(tc.deadline)
	}
	id, err := w.StartMission(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	st := testkit.AwaitDispatched(t, w, id)
	switch {
	case tc.cancel:
		payload, _ := json.Marshal(domain.Signal{Kind: domain.SignalCancel, Reason: "customer changed plans"})
		if err := w.Client().RaiseEvent(ctx, api.InstanceID(id), domain.SignalEvent, api.WithRawEventData(string(payload))); err != nil {
			t.Fatal(err)
		}
	case tc.deadline > 0:
		// No telemetry: the deadline passes before the watchdog.
	default:
		if err := simulator.Fly(ctx, testkit.Sink(t, w), 0, testkit.Flight(t, w, st, tc.fault, tc.at)); err != nil {
			t.Fatal(err)
		}
	}
	if afterFlight != nil {
		afterFlight(id)
	}
	out, md := testkit.AwaitEnd(t, w, id, 30*time.Second)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("runtime status %v, want Completed (the outcome is in output.phase)", md.RuntimeStatus)
	}
	if out.Phase != tc.wantPhase || !strings.Contains(out.Failure, tc.wantFailure) {
		t.Fatalf("phase %s failure %q, want %s containing %q; status %+v", out.Phase, out.Failure, tc.wantPhase, tc.wantFailure, out)
	}
	var steps []string
	for _, c := range out.Compensations {
		steps = append(steps, c.Step)
		if c.Status != "compensated" {
			t.Errorf("compensation %s: %s %s", c.Step, c.Status, c.Error)
		}
	}
	if !slices.Equal(steps, tc.wantUndo) {
		t.Fatalf("compensations %v, want %v", steps, tc.wantUndo)
	}
	undoActivity := map[string]string{
		"reschedule-package": activities.ReschedulePackage, "recall-drone": activities.RecallDrone,
		"release-drone": activities.ReleaseDrone, "notify-customer": activities.NotifyCustomer,
	}
	for _, s := range tc.wantUndo {
		if n := calls.Count(undoActivity[s], id); n != 1 {
			t.Errorf("%s ran %d times, want exactly 1", undoActivity[s], n)
		}
	}
	// The recorded side effects show the undos ran in reverse order.
	undoEffect := map[string]string{
		"reschedule-package": activities.EffectRescheduled, "recall-drone": activities.EffectRecalled,
		"release-drone": activities.EffectReleased, "notify-customer": activities.EffectCustomerNotified,
	}
	var want []string
	for _, s := range tc.wantUndo {
		want = append(want, undoEffect[s])
	}
	kinds := effectKinds(t, w, id)
	if got := kinds[len(kinds)-len(want):]; !slices.Equal(got, want) {
		t.Errorf("last effects %v, want %v", got, want)
	}
	d, err := w.Fleet().Drone(ctx, st.DroneID)
	if err != nil {
		t.Fatal(err)
	}
	if d.MissionID == id {
		t.Errorf("drone %s still reserved by %s after compensation", d.ID, id)
	}
}

func TestMissionSurvivesWorkerRestart(t *testing.T) {
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		ctx := context.Background()
		w1 := testkit.Start(t, cfg)
		id, err := w1.StartMission(ctx, testkit.Request("restart"))
		if err != nil {
			t.Fatal(err)
		}
		st := testkit.AwaitDispatched(t, w1, id)
		flight := testkit.Flight(t, w1, st, simulator.FaultNone, 0)
		// Fly until the drone takes off from the pickup, then stop the worker
		// mid-mission.
		sink := testkit.Sink(t, w1)
		landings := 0
		for {
			fr, ok := flight.Next()
			if !ok {
				t.Fatal("flight ended before pickup")
			}
			if err := sink.Send(ctx, []domain.Frame{fr}); err != nil {
				t.Fatal(err)
			}
			if fr.FlightMode != nil && *fr.FlightMode == domain.ModeLanding {
				landings++
			}
			if landings == 1 && fr.FlightMode != nil && *fr.FlightMode == domain.ModeTakeoff {
				break
			}
		}
		testkit.Eventually(t, 15*time.Second, "the mission to head to the drop-off", func() bool {
			return testkit.Status(t, testkit.Metadata(t, w1, id).SerializedCustomStatus).Phase == domain.PhaseHeadedToDropoff
		})
		testkit.Stop(t, w1)

		w2 := testkit.Start(t, cfg)
		if err := simulator.Fly(ctx, testkit.Sink(t, w2), 0, flight); err != nil {
			t.Fatal(err)
		}
		out, _ := testkit.AwaitEnd(t, w2, id, 30*time.Second)
		if out.Phase != domain.PhaseCompleted {
			t.Fatalf("phase %s (%s), want Completed after restart", out.Phase, out.Failure)
		}
		if kinds := effectKinds(t, w2, id); slices.Contains(kinds, activities.EffectRescheduled) || len(kinds) != 6 {
			t.Errorf("effects after restart %v: want each step once", kinds)
		}
	})
}

// TestMissionHistoryStaysBounded flies a long mission whose drone signals on
// every frame and checks no execution's history passes 1,000 events.
func TestMissionHistoryStaysBounded(t *testing.T) {
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		cfg.Heartbeat = time.Nanosecond // every accepted frame is a signal
		w := testkit.Start(t, cfg)
		ctx := context.Background()
		req := testkit.Request("long-flight")
		far := domain.LatLon{Lat: req.Pickup.Lat + 0.03, Lon: req.Pickup.Lon} // ~3.3 km legs
		req.Dropoff = &far
		id, err := w.StartMission(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		st := testkit.AwaitDispatched(t, w, id)
		// Some 12 minutes of flight sent at once: start it in the past, or
		// its last frames would be too far ahead of the clock to accept.
		flight := simulator.NewFlight(simulator.FlightOptions{DroneID: st.DroneID, Route: *st.Route, SpeedMps: 15, KeyFrameEvery: 20,
			Start: time.Now().Add(-20 * time.Minute)})
		sink := testkit.Sink(t, w)
		maxHistory, frames := 0, 0
		for {
			fr, ok := flight.Next()
			if !ok {
				break
			}
			if err := sink.Send(ctx, []domain.Frame{fr}); err != nil {
				t.Fatal(err)
			}
			frames++
			if frames%50 == 0 {
				state, err := w.Backend().GetOrchestrationRuntimeState(ctx, &dtbackend.OrchestrationWorkItem{InstanceID: api.InstanceID(id)})
				if err != nil {
					t.Fatal(err)
				}
				maxHistory = max(maxHistory, len(state.OldEvents()))
			}
		}
		out, _ := testkit.AwaitEnd(t, w, id, 60*time.Second)
		if out.Phase != domain.PhaseCompleted {
			t.Fatalf("phase %s (%s), want Completed", out.Phase, out.Failure)
		}
		if frames < 500 {
			t.Fatalf("only %d frames: the flight is too short to test the bound", frames)
		}
		if maxHistory > 1000 || maxHistory == 0 {
			t.Fatalf("largest history seen %d events over %d frames, want 1-1000", maxHistory, frames)
		}
		t.Logf("%d frames, largest history %d events", frames, maxHistory)
		if got := fmt.Sprint(phases(out)); !strings.HasSuffix(got, "Returning Completed]") {
			t.Errorf("timeline %s lost phases across continue-as-new", got)
		}
	})
}

// TestMissionOutlivesItsWatchdog flies in real time for several watchdog
// periods with telemetry flowing all along: the mission must complete, not
// be declared lost. (Waits with a timeout in durabletask-go v0.6.0 broke
// exactly this; see the fly method.) After every post the watchdog scans
// at a tenth of a period before the drone would count as silent, on a
// clock set from the frame's stored receive time, so the check is as tight
// as it can be and still independent of how the machine schedules the test.
func TestMissionOutlivesItsWatchdog(t *testing.T) {
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		cfg.ExternalWatchdog = true
		cfg.Mission.Watchdog = time.Second
		cfg.Heartbeat = 200 * time.Millisecond
		w := testkit.Start(t, cfg)
		wd := testkit.NewWatchdog(t, w, cfg.Mission.Watchdog)
		ctx := context.Background()
		id, err := w.StartMission(ctx, testkit.Request("paced"))
		if err != nil {
			t.Fatal(err)
		}
		st := testkit.AwaitDispatched(t, w, id)
		wd.ScanAt(t, time.Now())
		flight := testkit.Flight(t, w, st, simulator.FaultNone, 0)
		sink := testkit.Sink(t, w)
		scans := 0
		scanning := simulator.SinkFunc(func(ctx context.Context, frames []domain.Frame) error {
			if err := sink.Send(ctx, frames); err != nil {
				return err
			}
			d, err := w.Fleet().Drone(ctx, st.DroneID)
			if err != nil {
				return err
			}
			wd.ScanAt(t, d.LastFrameAt.Add(cfg.Mission.Watchdog*9/10))
			scans++
			return nil
		})
		start := time.Now()
		if err := simulator.Fly(ctx, scanning, 50*time.Millisecond, flight); err != nil {
			t.Fatal(err)
		}
		if flown := time.Since(start); flown < 3*cfg.Mission.Watchdog {
			t.Fatalf("flight took %s; it must outlast the %s watchdog several times to test anything", flown, cfg.Mission.Watchdog)
		}
		if span := wd.Now().Sub(start); span < 2*cfg.Mission.Watchdog {
			t.Fatalf("the watchdog's clock moved %s over %d scans; it must hear the drone for over a period to test anything", span, scans)
		}
		out, _ := testkit.AwaitEnd(t, w, id, 30*time.Second)
		if out.Phase != domain.PhaseCompleted {
			t.Fatalf("phase %s (%s), want Completed", out.Phase, out.Failure)
		}
		d, err := w.Fleet().Drone(ctx, st.DroneID)
		if err != nil {
			t.Fatal(err)
		}
		if !d.LastAlarmAt.IsZero() {
			t.Fatalf("the watchdog raised an alarm at %s for a drone reporting all along", d.LastAlarmAt)
		}
	})
}

// TestMissionCompletesWithBatchedTelemetry sends frames ten at a time, so a
// landing and the takeoff after it often share a batch: each meaningful
// change must still reach the mission.
func TestMissionCompletesWithBatchedTelemetry(t *testing.T) {
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		w := testkit.Start(t, cfg)
		ctx := context.Background()
		id, err := w.StartMission(ctx, testkit.Request("batched"))
		if err != nil {
			t.Fatal(err)
		}
		st := testkit.AwaitDispatched(t, w, id)
		flight := testkit.Flight(t, w, st, simulator.FaultNone, 0)
		sink := testkit.Sink(t, w)
		var batch []domain.Frame
		for {
			fr, ok := flight.Next()
			if ok {
				batch = append(batch, fr)
			}
			if len(batch) == 10 || (!ok && len(batch) > 0) {
				if err := sink.Send(ctx, batch); err != nil {
					t.Fatal(err)
				}
				batch = nil
			}
			if !ok {
				break
			}
		}
		out, _ := testkit.AwaitEnd(t, w, id, 30*time.Second)
		if out.Phase != domain.PhaseCompleted || len(out.Timeline) != 8 {
			t.Fatalf("phase %s (%s), timeline %v: want Completed through all 8 phases", out.Phase, out.Failure, phases(out))
		}
	})
}

// TestTerminatedMissionFreesItsDrone terminates a mission mid-flight, which
// runs no compensation: the watchdog must free the drone it held.
func TestTerminatedMissionFreesItsDrone(t *testing.T) {
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		cfg.ExternalWatchdog = true
		w := testkit.Start(t, cfg)
		wd := testkit.NewWatchdog(t, w, cfg.Mission.Watchdog)
		ctx := context.Background()
		id, err := w.StartMission(ctx, testkit.Request("terminated"))
		if err != nil {
			t.Fatal(err)
		}
		st := testkit.AwaitDispatched(t, w, id)
		if err := w.Client().TerminateOrchestration(ctx, api.InstanceID(id)); err != nil {
			t.Fatal(err)
		}
		wd.Advance(t, 15*time.Second, "the terminated mission's drone to be freed", func() bool {
			d, err := w.Fleet().Drone(ctx, st.DroneID)
			return err == nil && d.MissionID == "" && d.Route == nil
		})
	})
}

// TestInvalidMissionInputFailsCleanly starts DeliveryMission around the
// validation of StartMission: it must fail, not crash the worker.
func TestInvalidMissionInputFailsCleanly(t *testing.T) {
	t.Parallel()
	w := testkit.Start(t, testkit.Config(t))
	ctx := context.Background()
	id, err := w.Client().ScheduleNewOrchestration(ctx, orchestrations.DeliveryMissionName, api.WithInput(map[string]any{"request": map[string]any{}}))
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	md, err := w.Client().WaitForOrchestrationCompletion(cctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if md.RuntimeStatus != api.RUNTIME_STATUS_FAILED || !strings.Contains(md.FailureDetails.GetErrorMessage(), "invalid mission input") {
		t.Fatalf("status %v, failure %q: want Failed with invalid mission input", md.RuntimeStatus, md.FailureDetails.GetErrorMessage())
	}
}

// TestMissionToleratesReorderedSignals delivers the newest telemetry signal
// first and the older ones after it, as queues may: the route progress each
// signal carries still walks the mission through every phase, once each.
func TestMissionToleratesReorderedSignals(t *testing.T) {
	t.Parallel()
	calls := &testkit.Calls{}
	cfg := testkit.Config(t)
	cfg.ActivityMiddleware = calls.Middleware()
	w := testkit.Start(t, cfg)
	ctx := context.Background()
	id, err := w.StartMission(ctx, testkit.Request("reordered"))
	if err != nil {
		t.Fatal(err)
	}
	st := testkit.AwaitDispatched(t, w, id)
	at := func(seq int64, p domain.LatLon, mode domain.FlightMode, phase domain.Phase) domain.Signal {
		return domain.Signal{Kind: domain.SignalTelemetry, Phase: phase, State: &domain.DroneState{
			DeviceID: st.DroneID, Seq: seq, Timestamp: time.Now().UTC(), Battery: 0.8, FlightMode: mode,
			Position: domain.Position{Lat: p.Lat, Lon: p.Lon},
			Health:   domain.HealthState{GyrometerOK: true, AccelerometerOK: true, MagnetometerOK: true},
		}}
	}
	r := *st.Route
	for _, sig := range []domain.Signal{
		at(40, r.Home, domain.ModeReady, domain.PhaseCompleted), // newest first
		at(10, r.Pickup, domain.ModeLanding, domain.PhasePickedUp),
		at(20, r.Dropoff, domain.ModeLanding, domain.PhaseDelivered),
	} {
		payload, _ := json.Marshal(sig)
		if err := w.Client().RaiseEvent(ctx, api.InstanceID(id), domain.SignalEvent, api.WithRawEventData(string(payload))); err != nil {
			t.Fatal(err)
		}
	}
	out, _ := testkit.AwaitEnd(t, w, id, 30*time.Second)
	if out.Phase != domain.PhaseCompleted || len(out.Timeline) != 8 {
		t.Fatalf("phase %s (%s), timeline %v: want Completed through all 8 phases", out.Phase, out.Failure, phases(out))
	}
	for _, a := range []string{activities.ConfirmPickup, activities.ConfirmDelivery, activities.CompleteMission} {
		if n := calls.Count(a, id); n != 1 {
			t.Errorf("%s ran %d times, want 1", a, n)
		}
	}
}

// raiseSignals raises signals on a mission from Go, as the worker's
// ingestion and watchdog do, and waits until the mission has processed them
// all (they are in its history).
func raiseSignals(t *testing.T, w *worker.Worker, id string, sigs ...domain.Signal) {
	t.Helper()
	ctx := context.Background()
	raised := func() int {
		state, err := w.Backend().GetOrchestrationRuntimeState(ctx, &dtbackend.OrchestrationWorkItem{InstanceID: api.InstanceID(id)})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range state.OldEvents() {
			if e.GetEventRaised() != nil {
				n++
			}
		}
		return n
	}
	before := raised()
	for _, sig := range sigs {
		payload, _ := json.Marshal(sig)
		if err := w.Client().RaiseEvent(ctx, api.InstanceID(id), domain.SignalEvent, api.WithRawEventData(string(payload))); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, 15*time.Second, "the mission to process the signals", func() bool { return raised() >= before+len(sigs) })
}

// droneAt is a healthy drone's state at p.
func droneAt(drone string, seq int64, p domain.LatLon, mode domain.FlightMode) *domain.DroneState {
	return &domain.DroneState{
		DeviceID: drone, Seq: seq, Timestamp: time.Now().UTC(), Battery: 0.8, FlightMode: mode,
		Position: domain.Position{Lat: p.Lat, Lon: p.Lon},
		Health:   domain.HealthState{GyrometerOK: true, AccelerometerOK: true, MagnetometerOK: true},
	}
}

// TestMissionActsOnlyOnItsOwnDrone delivers telemetry signals that do not
// come from the mission's drone or are out of bounds, among them the forgery
// of issue #7 that completed a mission whose drone never moved and the seq
// 2^63-1 that made it ignore every later frame: none may move the mission,
// and its drone's real telemetry must still be heard afterwards.
func TestMissionActsOnlyOnItsOwnDrone(t *testing.T) {
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		cfg.Mission.Watchdog = 2 * time.Minute // no alarm while the test runs
		cfg.Heartbeat = time.Second
		calls := &testkit.Calls{}
		cfg.ActivityMiddleware = calls.Middleware()
		w := testkit.Start(t, cfg)
		id, err := w.StartMission(context.Background(), testkit.Request("own-drone"))
		if err != nil {
			t.Fatal(err)
		}
		st := testkit.AwaitDispatched(t, w, id)
		r := *st.Route
		home := droneAt(st.DroneID, 5, r.Home, domain.ModeReady)
		outOfBounds := func(f func(s *domain.DroneState)) *domain.DroneState {
			s := droneAt(st.DroneID, 6, r.Pickup, domain.ModeLanding)
			f(s)
			return s
		}
		tel := func(phase domain.Phase, s *domain.DroneState) domain.Signal {
			return domain.Signal{Kind: domain.SignalTelemetry, Phase: phase, State: s}
		}
		raiseSignals(t, w, id,
			tel(domain.PhaseCompleted, &domain.DroneState{Seq: 1}), // issue #7's payload
			tel(domain.PhaseCompleted, droneAt("drone-elsewhere", 5, r.Home, domain.ModeReady)),
			tel(domain.PhaseCompleted, outOfBounds(func(s *domain.DroneState) { s.Seq = math.MaxInt64 })),
			tel(domain.PhaseCompleted, outOfBounds(func(s *domain.DroneState) { s.Epoch = -1 })),
			tel(domain.PhaseCompleted, outOfBounds(func(s *domain.DroneState) { s.Battery = 7 })),
			tel(domain.PhaseCompleted, outOfBounds(func(s *domain.DroneState) { s.Position.Lat = 123 })),
			tel(domain.PhaseCompleted, outOfBounds(func(s *domain.DroneState) { s.FlightMode = "warp" })),
			tel(domain.PhaseCompleted, outOfBounds(func(s *domain.DroneState) { s.Timestamp = time.Time{} })),
			tel("Teleported", home),
		)
		md := testkit.Metadata(t, w, id)
		if got := testkit.Status(t, md.SerializedCustomStatus); md.RuntimeStatus != api.RUNTIME_STATUS_RUNNING || got.Phase != domain.PhaseHeadedToPickup || got.LastTelemetryAt != nil {
			t.Fatalf("after forged signals: runtime status %v, phase %s, last telemetry %v; want Running, HeadedToPickup, none", md.RuntimeStatus, got.Phase, got.LastTelemetryAt)
		}
		for _, a := range []string{activities.ConfirmPickup, activities.ConfirmDelivery, activities.CompleteMission} {
			if n := calls.Count(a, id); n != 0 {
				t.Errorf("%s ran %d times on forged signals", a, n)
			}
		}
		// The drone's own telemetry, with a low seq and no route phase: had
		// the forged seq been taken, the mission would ignore its state.
		raiseSignals(t, w, id, tel("", droneAt(st.DroneID, 1, r.Pickup, domain.ModeLanding)))
		testkit.Eventually(t, 15*time.Second, "the mission to confirm the pickup", func() bool {
			return testkit.Status(t, testkit.Metadata(t, w, id).SerializedCustomStatus).Phase == domain.PhasePickedUp
		})
		if n := calls.Count(activities.ConfirmPickup, id); n != 1 {
			t.Errorf("ConfirmPickup ran %d times, want 1", n)
		}
	})
}

// TestMissionFollowsARebootedDrone: the drone reboots on its way back
// and numbers its frames from 1 again, with a higher boot count. Ingestion
// starts a new epoch, and the mission must act on the new frames although
// their seq stays below the last one it saw: here a fault after the reboot
// fails it.
func TestMissionFollowsARebootedDrone(t *testing.T) {
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		w := testkit.Start(t, cfg)
		ctx := context.Background()
		id, err := w.StartMission(ctx, testkit.Request("rebooted"))
		if err != nil {
			t.Fatal(err)
		}
		st := testkit.AwaitDispatched(t, w, id)
		flight := testkit.Flight(t, w, st, simulator.FaultHealth, 0.75)
		sink := testkit.Sink(t, w)
		rebooted, takeoffs := false, 0
		var seq, lastSeq int64
		for {
			fr, ok := flight.Next()
			if !ok {
				break
			}
			if rebooted {
				seq++
				fr.Boot, fr.Seq = 1, &seq
			}
			if err := sink.Send(ctx, []domain.Frame{fr}); err != nil {
				t.Fatal(err)
			}
			if fr.FlightMode != nil && *fr.FlightMode == domain.ModeTakeoff {
				takeoffs++
			}
			if takeoffs == 3 && !rebooted {
				testkit.Eventually(t, 15*time.Second, "the mission to head home", func() bool {
					return testkit.Status(t, testkit.Metadata(t, w, id).SerializedCustomStatus).Phase == domain.PhaseReturning
				})
				rebooted, lastSeq = true, *fr.Seq
			}
		}
		if !rebooted || seq >= lastSeq {
			t.Fatalf("rebooted %t, %d frames after the reboot, %d before: the frames after it must keep a lower seq", rebooted, seq, lastSeq)
		}
		d, err := w.Fleet().Drone(ctx, st.DroneID)
		if err != nil {
			t.Fatal(err)
		}
		if s := d.Tracked.State; s == nil || s.Boot != 1 || s.Epoch != 1 || s.Seq != seq {
			t.Fatalf("drone state after the reboot %+v: want boot 1, epoch 1, seq %d", s, seq)
		}
		out, _ := testkit.AwaitEnd(t, w, id, 30*time.Second)
		if out.Phase != domain.PhaseFailed || !strings.Contains(out.Failure, "fault: gyrometer") {
			t.Fatalf("phase %s (%s), want Failed on the gyrometer fault reported after the reboot", out.Phase, out.Failure)
		}
	})
}
