package domain

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Route is the three legs of a mission: base → pickup → drop-off → base.
type Route struct {
	Home    LatLon `json:"home"`
	Pickup  LatLon `json:"pickup"`
	Dropoff LatLon `json:"dropoff"`
}

// TotalM is the length of the whole route in metres.
func (r Route) TotalM() float64 {
	return DistanceM(r.Home, r.Pickup) + DistanceM(r.Pickup, r.Dropoff) + DistanceM(r.Dropoff, r.Home)
}

// Target is where the drone is headed during phase p.
func (r Route) Target(p Phase) LatLon {
	switch p {
	case PhasePickedUp, PhaseHeadedToDropoff:
		return r.Dropoff
	case PhaseDelivered, PhaseReturning, PhaseCompleted:
		return r.Home
	default:
		return r.Pickup
	}
}

// RemainingM is the distance left to fly from pos in phase p.
func (r Route) RemainingM(p Phase, pos LatLon) float64 {
	switch p {
	case PhaseCompleted:
		return 0
	case PhaseDelivered, PhaseReturning:
		return DistanceM(pos, r.Home)
	case PhasePickedUp, PhaseHeadedToDropoff:
		return DistanceM(pos, r.Dropoff) + DistanceM(r.Dropoff, r.Home)
	default:
		return DistanceM(pos, r.Pickup) + DistanceM(r.Pickup, r.Dropoff) + DistanceM(r.Dropoff, r.Home)
	}
}

// NextPhase derives the phase that follows p given drone state s, or p when
// s does not move the mission on. It steps one phase at a time so the caller
// can act on each transition; call it until it returns its argument.
// Transitions only go forward, so a late or repeated signal can never move a
// mission backwards. radiusM is how close to a target counts as "there".
func NextPhase(p Phase, r Route, s DroneState, radiusM float64) Phase {
	pos := s.Position.LatLon()
	near := func(t LatLon) bool { return DistanceM(pos, t) <= radiusM }
	switch {
	case p == PhaseDroneReserved:
		return PhaseHeadedToPickup
	case p == PhaseHeadedToPickup && near(r.Pickup) && s.FlightMode.Grounded():
		return PhasePickedUp
	case p == PhasePickedUp && s.FlightMode.Airborne():
		return PhaseHeadedToDropoff
	case p == PhaseHeadedToDropoff && near(r.Dropoff) && s.FlightMode.Grounded():
		return PhaseDelivered
	case p == PhaseDelivered && s.FlightMode.Airborne():
		return PhaseReturning
	case p == PhaseReturning && near(r.Home) && s.FlightMode.Grounded():
		return PhaseCompleted
	}
	return p
}

// Successor is the phase after p on a successful mission's path, or p when
// p is not on that path or is its end.
func Successor(p Phase) Phase {
	order := []Phase{PhaseCreated, PhaseDroneReserved, PhaseHeadedToPickup, PhasePickedUp,
		PhaseHeadedToDropoff, PhaseDelivered, PhaseReturning, PhaseCompleted}
	for i := 0; i < len(order)-1; i++ {
		if order[i] == p {
			return order[i+1]
		}
	}
	return p
}

// Advance applies NextPhase until state s moves the mission no further.
func Advance(p Phase, r Route, s DroneState, radiusM float64) Phase {
	for {
		n := NextPhase(p, r, s, radiusM)
		if n == p {
			return p
		}
		p = n
	}
}

// CompensationResult records how one undo step went.
type CompensationResult struct {
	Step     string `json:"step"`
	Activity string `json:"activity"`
	Status   string `json:"status"` // "compensated" or "failed"
	Error    string `json:"error,omitempty"`
}

// MissionStatus is a mission's custom status and, once it ends, its output.
type MissionStatus struct {
	MissionID     string     `json:"missionId"`
	DroneID       string     `json:"droneId,omitempty"`
	Route         *Route     `json:"route,omitempty"`
	Phase         Phase      `json:"phase"`
	ProgressPct   float64    `json:"progressPct"`
	DistanceLeftM float64    `json:"distanceLeftM"`
	ETA           *time.Time `json:"eta,omitempty"`
	LastPosition  *Position  `json:"lastPosition,omitempty"`
	Battery       *float64   `json:"battery,omitempty"`
	// BatteryTrendPerMin is the change in charge per minute over the last two
	// signals: negative while draining.
	BatteryTrendPerMin *float64   `json:"batteryTrendPerMin,omitempty"`
	Health             string     `json:"health,omitempty"`
	LastTelemetryAt    *time.Time `json:"lastTelemetryAt,omitempty"`
	UpdatedAt          time.Time  `json:"updatedAt"`
	// Failure says why a Failed or Cancelled mission ended.
	Failure       string               `json:"failure,omitempty"`
	Compensations []CompensationResult `json:"compensations,omitempty"`
	// Timeline lists every phase the mission entered, in order.
	Timeline []PhaseChange `json:"timeline,omitempty"`
}

// Aggregate derives a mission's status from its previous status and the
// drone's latest state. speedMps is the cruise speed used for the ETA.
func Aggregate(prev MissionStatus, r Route, s DroneState, now time.Time, speedMps float64) MissionStatus {
	st := prev
	pos := s.Position
	st.LastPosition = &pos
	battery := s.Battery
	if prev.Battery != nil && prev.LastTelemetryAt != nil {
		if dt := s.Timestamp.Sub(*prev.LastTelemetryAt).Minutes(); dt > 0 {
			trend := round((battery-*prev.Battery)/dt, 4)
			st.BatteryTrendPerMin = &trend
		}
	}
	st.Battery = &battery
	ts := s.Timestamp
	st.LastTelemetryAt = &ts
	if f := s.Health.Fault(); f != "" {
		st.Health = "fault: " + f
	} else {
		st.Health = "ok"
	}
	left := r.RemainingM(st.Phase, pos.LatLon())
	st.DistanceLeftM = round(left, 1)
	if total := r.TotalM(); total > 0 {
		pct := round(math.Max(0, math.Min(100, 100*(1-left/total))), 1)
		// Progress only moves forward: GPS jitter must not make a client's
		// progress bar shrink.
		st.ProgressPct = math.Max(prev.ProgressPct, pct)
	}
	if speedMps > 0 {
		eta := now.Add(time.Duration(left / speedMps * float64(time.Second))).UTC().Truncate(time.Second)
		st.ETA = &eta
	}
	st.UpdatedAt = now
	return st
}

func round(v float64, places int) float64 {
	p := math.Pow(10, float64(places))
	return math.Round(v*p) / p
}

// SignalEvent is the one external event name the DeliveryMission
// orchestration waits on. durabletask-go can wait on one event name at a
// time, so telemetry updates and operator cancels share it and differ by
// Signal.Kind.
const SignalEvent = "signal"

// Signal kinds.
const (
	SignalTelemetry = "telemetry"
	SignalCancel    = "cancel"
	// SignalWatchdog and SignalDeadline are alarms raised by the worker's
	// watchdog; the mission checks them against its own clock.
	SignalWatchdog = "watchdog"
	SignalDeadline = "deadline"
)

// Signal is the payload of a SignalEvent.
type Signal struct {
	Kind  string      `json:"kind"`
	State *DroneState `json:"state,omitempty"`
	// Phase is how far along its route the drone has flown, derived by
	// ingestion from every accepted frame in order. It only grows, so a
	// mission that receives signals out of order (queues do not guarantee
	// order) still learns every milestone from the newest one.
	Phase  Phase  `json:"phase,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// CheckTelemetry reports why s cannot be a telemetry signal about drone
// droneID: a mission acts only on signals that name its own drone and whose
// values are within the bounds ingestion enforces on frames.
func (s Signal) CheckTelemetry(droneID string) error {
	st := s.State
	switch {
	case s.Kind != SignalTelemetry:
		return fmt.Errorf("signal kind %q is not %q", s.Kind, SignalTelemetry)
	case st == nil:
		return errors.New("telemetry signal without a state")
	case droneID == "" || st.DeviceID != droneID:
		return fmt.Errorf("telemetry signal about drone %q, not %q", st.DeviceID, droneID)
	case st.Seq < 0 || st.Seq > MaxSeq || st.Epoch < 0:
		return fmt.Errorf("telemetry signal with epoch %d, seq %d out of bounds", st.Epoch, st.Seq)
	case st.Timestamp.Before(MinFrameTime):
		return fmt.Errorf("telemetry signal with timestamp %s before %s", st.Timestamp.Format(time.RFC3339), MinFrameTime.Format(time.RFC3339))
	case st.Battery < 0 || st.Battery > 1 || math.IsNaN(st.Battery):
		return fmt.Errorf("telemetry signal with battery %g", st.Battery)
	case !st.FlightMode.valid():
		return fmt.Errorf("telemetry signal with flight mode %q", st.FlightMode)
	case st.Position.Lat < -90 || st.Position.Lat > 90 || st.Position.Lon < -180 || st.Position.Lon > 180:
		return fmt.Errorf("telemetry signal with position %g,%g", st.Position.Lat, st.Position.Lon)
	}
	if _, ok := phaseOrder[s.Phase]; s.Phase != "" && !ok {
		return fmt.Errorf("telemetry signal with route phase %q", s.Phase)
	}
	return nil
}

// PhaseChange is one entry in a mission's timeline.
type PhaseChange struct {
	Phase Phase     `json:"phase"`
	At    time.Time `json:"at"`
}
