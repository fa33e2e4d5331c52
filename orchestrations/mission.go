package orchestrations

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/domain"
)

// DeliveryMissionName is the registered name of DeliveryMission.
const DeliveryMissionName = "DeliveryMission"

// MissionSettings are the worker's mission timeouts and thresholds. They
// travel in the orchestration input, so a replay sees the values the
// mission started with even if the worker's settings change.
type MissionSettings struct {
	// Watchdog fails the mission as "drone lost" when its drone sends no
	// frame for this long (detected by the worker's activities.Watchdog).
	// Default 60s.
	Watchdog time.Duration `json:"watchdog"`
	// BatteryFloor fails the mission if the charge drops below it before
	// delivery. Default 0.2.
	BatteryFloor float64 `json:"batteryFloor"`
	// ArrivalRadiusM is how close to a target counts as there. Default 25.
	ArrivalRadiusM float64 `json:"arrivalRadiusM"`
	// CruiseSpeedMps is used for the ETA. Default 12.
	CruiseSpeedMps float64 `json:"cruiseSpeedMps"`
	// MaxSignalsPerExecution caps how many queued signals one execution
	// handles before it continues as new, which bounds its history when
	// signals arrive in a burst. Default 100.
	MaxSignalsPerExecution int `json:"maxSignalsPerExecution"`
	// ActivityAttempts and ActivityRetryInterval are the retry policy of the
	// mission's steps. Defaults 3 and 1s.
	ActivityAttempts      int           `json:"activityAttempts"`
	ActivityRetryInterval time.Duration `json:"activityRetryInterval"`
}

// WithDefaults fills unset fields.
func (s MissionSettings) WithDefaults() MissionSettings {
	if s.Watchdog == 0 {
		s.Watchdog = 60 * time.Second
	}
	if s.BatteryFloor == 0 {
		s.BatteryFloor = 0.2
	}
	if s.ArrivalRadiusM == 0 {
		s.ArrivalRadiusM = 25
	}
	if s.CruiseSpeedMps == 0 {
		s.CruiseSpeedMps = 12
	}
	if s.MaxSignalsPerExecution == 0 {
		s.MaxSignalsPerExecution = 100
	}
	if s.ActivityAttempts == 0 {
		s.ActivityAttempts = 3
	}
	if s.ActivityRetryInterval == 0 {
		s.ActivityRetryInterval = time.Second
	}
	return s
}

// Validate reports settings that cannot work.
func (s MissionSettings) Validate() error {
	switch {
	case s.Watchdog < 100*time.Millisecond:
		return fmt.Errorf("mission watchdog %s is below the 100ms minimum", s.Watchdog)
	case s.BatteryFloor < 0 || s.BatteryFloor >= 1:
		return fmt.Errorf("battery floor %g must be in [0, 1)", s.BatteryFloor)
	case s.ArrivalRadiusM <= 0:
		return fmt.Errorf("arrival radius %gm must be positive", s.ArrivalRadiusM)
	case s.MaxSignalsPerExecution < 1 || s.MaxSignalsPerExecution > 200:
		return fmt.Errorf("max signals per execution %d must be 1-200 to keep history under 1000 events", s.MaxSignalsPerExecution)
	case s.ActivityAttempts < 1:
		return fmt.Errorf("activity attempts %d must be at least 1", s.ActivityAttempts)
	}
	return nil
}

// MissionInput is DeliveryMission's input.
type MissionInput struct {
	Request  domain.MissionRequest `json:"request"`
	Settings MissionSettings       `json:"settings"`
	// Resume is set when the mission continues as new.
	Resume *MissionCheckpoint `json:"resume,omitempty"`
}

// MissionCheckpoint carries a mission across continue-as-new.
type MissionCheckpoint struct {
	Status domain.MissionStatus `json:"status"`
	Saga   []SagaStep           `json:"saga"`
	// LastEpoch and LastSeq order the telemetry the mission has handled
	// (see domain.DroneState.Newer).
	LastEpoch       int64     `json:"lastEpoch,omitempty"`
	LastSeq         int64     `json:"lastSeq"`
	LastTelemetryAt time.Time `json:"lastTelemetryAt"`
	Executions      int       `json:"executions"`
	// Run identifies this mission among the missions that ever had its id
	// (see activities.EffectKey); "" for missions started before runs
	// existed, whose effects are keyed by the mission id alone.
	Run string `json:"run,omitempty"`
}

// Run formats the time of a mission's first turn as its run (see
// MissionCheckpoint.Run). A mission's status records the same time as the
// timeline's first entry, so Run(status.Timeline[0].At) names its run.
func Run(firstTurn time.Time) string { return firstTurn.UTC().Format(time.RFC3339Nano) }

// Compensation step names in a mission's saga.
const (
	StepNotifyCustomer    = "notify-customer"
	StepReleaseDrone      = "release-drone"
	StepRecallDrone       = "recall-drone"
	StepReschedulePackage = "reschedule-package"
)

// DeliveryMission flies one delivery: reserve a drone, dispatch it, follow
// its telemetry through pickup, drop-off and return, and on any failure undo
// the completed steps in reverse order.
//
// Its output is the final domain.MissionStatus: phase Completed, Failed or
// Cancelled, with the failure and the compensation record. A failed
// delivery is a business outcome, not a crashed workflow, so the
// orchestration itself completes; read output.phase for the delivery result.
// Terminating the instance stops it without compensation; cancel it with a
// SignalCancel signal to compensate.
func DeliveryMission(ctx *task.OrchestrationContext) (any, error) {
	var in MissionInput
	if err := ctx.GetInput(&in); err != nil {
		return nil, fmt.Errorf("decode mission input: %w", err)
	}
	// Validate structure only, not the deadline against now: this must give
	// the same answer on every replay. Starts through the API are fully
	// validated before they get here; this guards other callers, since a
	// panic in an orchestrator takes the whole worker down.
	if r := in.Request; r.Pickup == nil || r.Dropoff == nil || r.Package == nil || r.Deadline.IsZero() {
		return nil, errors.New("invalid mission input: request needs pickup, dropoff, package and deadline; start missions with POST /api/missions or worker.StartMission")
	}
	m := &mission{ctx: ctx, req: in.Request, set: in.Settings.WithDefaults()}
	if r := in.Resume; r != nil {
		m.status, m.lastEpoch, m.lastSeq, m.lastTelemetryAt, m.executions = r.Status, r.LastEpoch, r.LastSeq, r.LastTelemetryAt, r.Executions+1
		m.run = r.Run
		m.saga = RestoreSaga(ctx, r.Saga, SagaOptions{})
		// Each execution reports its own custom status: without this, one
		// that handles no signal would clear it.
		m.publish()
		return m.fly()
	}
	m.saga = NewSaga(ctx, SagaOptions{})
	// The run is the time of the mission's first turn, the same on every
	// replay: a mission started under the id of a purged one gets a run of
	// its own, so it never finds the other's effects (see
	// activities.EffectKey).
	m.run = Run(ctx.CurrentTimeUtc)
	m.status = domain.MissionStatus{MissionID: string(ctx.ID)}
	m.enter(domain.PhaseCreated)

	ref := m.ref("")
	if err := m.call(activities.AcceptMission, ref, nil); err != nil {
		return m.fail("accept mission", err)
	}
	m.undo(StepNotifyCustomer, activities.NotifyCustomer)

	var res activities.ReserveResult
	if err := m.call(activities.ReserveDrone, activities.ReserveInput{MissionID: string(ctx.ID), DroneID: m.req.DroneID, Run: m.run}, &res); err != nil {
		return m.fail("reserve drone", err)
	}
	m.status.DroneID = res.DroneID
	m.status.Route = &domain.Route{Home: res.Home, Pickup: *m.req.Pickup, Dropoff: *m.req.Dropoff}
	m.status.DistanceLeftM = m.status.Route.TotalM()
	m.undo(StepReleaseDrone, activities.ReleaseDrone)
	m.enter(domain.PhaseDroneReserved)

	dispatch := activities.DispatchInput{MissionID: string(ctx.ID), DroneID: res.DroneID, Route: *m.status.Route, Deadline: m.req.Deadline, Run: m.run}
	if err := m.call(activities.DispatchDrone, dispatch, nil); err != nil {
		return m.fail("dispatch drone", err)
	}
	m.lastTelemetryAt = ctx.CurrentTimeUtc
	m.undo(StepRecallDrone, activities.RecallDrone)
	m.enter(domain.PhaseHeadedToPickup)
	return m.fly()
}

type mission struct {
	ctx        *task.OrchestrationContext
	req        domain.MissionRequest
	set        MissionSettings
	status     domain.MissionStatus
	saga       *Saga
	run        string
	lastEpoch  int64
	lastSeq    int64
	executions int
	// lastTelemetryAt is the orchestration time of the last telemetry signal.
	lastTelemetryAt time.Time
}

func (m *mission) ref(reason string) activities.MissionRef {
	return activities.MissionRef{MissionID: string(m.ctx.ID), DroneID: m.status.DroneID, PackageID: m.req.Package.ID, Reason: reason, Run: m.run}
}

func (m *mission) publish() {
	m.status.UpdatedAt = m.ctx.CurrentTimeUtc
	b, _ := json.Marshal(m.status)
	m.ctx.SetCustomStatus(string(b))
}

func (m *mission) enter(p domain.Phase) {
	m.status.Phase = p
	m.status.Timeline = append(m.status.Timeline, domain.PhaseChange{Phase: p, At: m.ctx.CurrentTimeUtc})
	if r := m.status.Route; r != nil && m.status.LastPosition != nil {
		m.status.DistanceLeftM = r.RemainingM(p, m.status.LastPosition.LatLon())
	}
	if p == domain.PhaseCompleted {
		m.status.ProgressPct, m.status.DistanceLeftM = 100, 0
	}
	m.publish()
}

func (m *mission) undo(step, activity string) {
	// The input is a fixed struct: encoding cannot fail.
	_ = m.saga.Add(step, activity, m.ref(""))
}

func (m *mission) call(activity string, input, output any) error {
	return m.ctx.CallActivity(activity,
		task.WithActivityInput(input),
		task.WithActivityRetryPolicy(&task.RetryPolicy{
			MaxAttempts:          m.set.ActivityAttempts,
			InitialRetryInterval: m.set.ActivityRetryInterval,
			BackoffCoefficient:   2,
			MaxRetryInterval:     30 * time.Second,
		}),
	).Await(output)
}

// fly follows the drone until the mission ends, continuing as new every
// MaxSignalsPerExecution signals to keep each execution's history short.
//
// The waits have no timeout. durabletask-go v0.6.0 mishandles wait
// timeouts: a timed wait that an event completes leaves its timer running,
// and when it fires it unregisters whichever wait on the same event name is
// pending then, so the mission would stop hearing signals. Silence and
// deadlines are therefore detected by the worker's watchdog
// (activities.Watchdog), which raises alarm signals; the mission checks each
// alarm against its own deterministic clock before acting on it.
func (m *mission) fly() (any, error) {
	for n := 0; n < m.set.MaxSignalsPerExecution; n++ {
		var sig domain.Signal
		if err := m.ctx.WaitForSingleEvent(domain.SignalEvent, -1).Await(&sig); err != nil {
			continue // a malformed signal: drop it
		}
		if done, out, err := m.onSignal(sig); done {
			return out, err
		}
	}
	m.ctx.ContinueAsNew(MissionInput{
		Request:  m.req,
		Settings: m.set,
		Resume: &MissionCheckpoint{Status: m.status, Saga: m.saga.Steps(), LastEpoch: m.lastEpoch, LastSeq: m.lastSeq,
			LastTelemetryAt: m.lastTelemetryAt, Executions: m.executions, Run: m.run},
	}, task.WithKeepUnprocessedEvents())
	return nil, nil
}

// clockSkew is how far apart worker clocks may be when an alarm raised by
// one worker's watchdog is checked on another's orchestration clock.
const clockSkew = 2 * time.Second

func (m *mission) onSignal(sig domain.Signal) (bool, any, error) {
	now := m.ctx.CurrentTimeUtc
	switch sig.Kind {
	case domain.SignalCancel:
		reason := sig.Reason
		if reason == "" {
			reason = "cancelled by operator"
		}
		out, err := m.end(domain.PhaseCancelled, reason)
		return true, out, err
	case domain.SignalTelemetry:
		if sig.CheckTelemetry(m.status.DroneID) != nil {
			// Not about this mission's drone, or out of bounds: only its
			// own drone's telemetry may move a mission.
			return false, nil, nil
		}
		m.lastTelemetryAt = now
		if !sig.State.Newer(m.lastEpoch, m.lastSeq) {
			// Late (signals can overtake each other in queues): its state is
			// stale, but the route progress it carries may still be news.
			return m.advanceTo(sig.Phase)
		}
		return m.onTelemetry(*sig.State, sig.Phase)
	case domain.SignalWatchdog:
		// A telemetry signal handled recently means frames are flowing again.
		if now.Sub(m.lastTelemetryAt) < m.set.Watchdog/2 {
			return false, nil, nil
		}
		out, err := m.end(domain.PhaseFailed, fmt.Sprintf("drone %s lost: no telemetry for %s", m.status.DroneID, m.set.Watchdog))
		return true, out, err
	case domain.SignalDeadline:
		deadline := m.req.Deadline
		if !m.status.Phase.Before(domain.PhaseDelivered) || now.Before(deadline.Add(-clockSkew)) {
			return false, nil, nil
		}
		out, err := m.end(domain.PhaseFailed, fmt.Sprintf("deadline %s passed before delivery", deadline.UTC().Format(time.RFC3339)))
		return true, out, err
	}
	return false, nil, nil
}

func (m *mission) onTelemetry(s domain.DroneState, reported domain.Phase) (bool, any, error) {
	m.lastEpoch, m.lastSeq = s.Epoch, s.Seq
	route := *m.status.Route
	m.status = domain.Aggregate(m.status, route, s, m.ctx.CurrentTimeUtc, m.set.CruiseSpeedMps)
	if fault := s.Health.Fault(); fault != "" {
		// The signals that reported the drone's earlier progress may come
		// after this one, or never (signals overtake each other in queues,
		// e.g. when a partition moves, and once the mission has ended the
		// late ones are dropped): take the steps up to where this signal
		// says the drone is first, so that what is compensated is what
		// happened (a package picked up is rescheduled). A faulted drone
		// may fly on, so its telemetry confirms a pickup but never a
		// delivery: only a healthy drone's does.
		target := reported
		if domain.PhaseHeadedToDropoff.Before(target) {
			target = domain.PhaseHeadedToDropoff
		}
		if done, out, err := m.advanceTo(target); done {
			return done, out, err
		}
		out, err := m.end(domain.PhaseFailed, fmt.Sprintf("drone %s fault: %s", m.status.DroneID, fault))
		return true, out, err
	}
	if m.status.Phase.Before(domain.PhaseDelivered) && s.Battery < m.set.BatteryFloor {
		out, err := m.end(domain.PhaseFailed, fmt.Sprintf("drone %s battery %.0f%% is below the %.0f%% floor before delivery",
			m.status.DroneID, s.Battery*100, m.set.BatteryFloor*100))
		return true, out, err
	}
	target := domain.Advance(m.status.Phase, route, s, m.set.ArrivalRadiusM)
	if target.Before(reported) {
		target = reported
	}
	if done, out, err := m.advanceTo(target); done {
		return done, out, err
	}
	m.publish()
	return false, nil, nil
}

// advanceTo moves the mission along its path up to target, one phase at a
// time, running each phase's step.
func (m *mission) advanceTo(target domain.Phase) (bool, any, error) {
	for m.status.Phase.Before(target) && !m.status.Phase.Terminal() {
		next := domain.Successor(m.status.Phase)
		if next == m.status.Phase {
			break
		}
		switch next {
		case domain.PhasePickedUp:
			if err := m.call(activities.ConfirmPickup, m.ref(""), nil); err != nil {
				out, err := m.fail("confirm pickup", err)
				return true, out, err
			}
			m.undo(StepReschedulePackage, activities.ReschedulePackage)
		case domain.PhaseDelivered:
			if err := m.call(activities.ConfirmDelivery, m.ref(""), nil); err != nil {
				out, err := m.fail("confirm delivery", err)
				return true, out, err
			}
			// The package arrived: there is nothing left to reschedule and
			// the customer has nothing to be warned about.
			m.saga.Remove(StepReschedulePackage)
			m.saga.Remove(StepNotifyCustomer)
		case domain.PhaseCompleted:
			if err := m.call(activities.CompleteMission, m.ref(""), nil); err != nil {
				out, err := m.fail("complete mission", err)
				return true, out, err
			}
			m.enter(domain.PhaseCompleted)
			return true, m.status, nil
		}
		m.enter(next)
	}
	return false, nil, nil
}

// fail ends the mission after a step failed for good.
func (m *mission) fail(step string, err error) (any, error) {
	return m.end(domain.PhaseFailed, fmt.Sprintf("%s failed: %v", step, err))
}

// end compensates and finishes the mission in a Failed or Cancelled phase.
func (m *mission) end(p domain.Phase, reason string) (any, error) {
	m.status.Failure = reason
	m.enter(p)
	// The customer notification carries the reason.
	_ = m.saga.Update(StepNotifyCustomer, m.ref(reason))
	m.status.Compensations = m.saga.Compensate()
	m.publish()
	return m.status, nil
}
