// Package fleet defines dronehub's domain state — the drone registry, each
// drone's merged telemetry and dedupe window, and the record of side effects
// activities performed — behind a small Store interface. Each task hub
// backend ships a Store on the same storage: SQLite tables on the embedded
// default, Azure tables on Azure Storage.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dronehub/dronehub/domain"
)

// Errors callers branch on.
var (
	ErrDroneNotFound = errors.New("drone not found")
	ErrDroneExists   = errors.New("drone already exists")
	// ErrConflict means a concurrent writer changed the record; UpdateDrone
	// retries it internally and returns it only when it keeps losing.
	ErrConflict = errors.New("concurrent update conflict")
)

// Drone is one drone's record.
type Drone struct {
	ID   string        `json:"id"`
	Home domain.LatLon `json:"home"`
	// MissionID is the mission holding the drone's reservation, "" when idle.
	MissionID string `json:"missionId,omitempty"`
	// Route is the mission's route while the drone is dispatched on it; the
	// ingestion path uses it to tell when the drone reaches a target.
	Route *domain.Route `json:"route,omitempty"`
	// Tracked is the merged telemetry state and dedupe window.
	Tracked domain.Tracked `json:"tracked"`
	// LastSignalKey and LastSignalAt record the last change raised to the
	// drone's mission, so only meaningful changes and heartbeats are raised.
	LastSignalKey string    `json:"lastSignalKey,omitempty"`
	LastSignalAt  time.Time `json:"lastSignalAt,omitempty"`
	// SignalPending is set with the state a signal is computed from and
	// cleared once the signal was raised; a pending signal is raised again
	// by the next batch or, if no frame comes, by the watchdog.
	SignalPending bool `json:"signalPending,omitempty"`
	// Frames counts accepted frames.
	Frames int64 `json:"frames"`
	// DispatchedAt, Deadline and Delivered describe the mission the drone
	// flies; LastFrameAt is when its last frame was accepted (receive time)
	// and LastAlarmAt when the watchdog last raised an alarm for it.
	DispatchedAt time.Time `json:"dispatchedAt,omitempty"`
	// RoutePhase is how far along Route the drone has flown, advanced by
	// ingestion frame by frame; signals carry it to the mission.
	RoutePhase  domain.Phase `json:"routePhase,omitempty"`
	Deadline    time.Time    `json:"deadline,omitempty"`
	Delivered   bool         `json:"delivered,omitempty"`
	LastFrameAt time.Time    `json:"lastFrameAt,omitempty"`
	LastAlarmAt time.Time    `json:"lastAlarmAt,omitempty"`
	// MissionTrace is the W3C traceparent of the span that dispatched the
	// drone, in its mission's trace, when tracing was on: telemetry
	// ingestion links its spans to the mission's trace with it.
	MissionTrace string `json:"missionTrace,omitempty"`
}

// Effect is a side effect an activity performed for a mission, recorded
// once per (MissionID, Kind) so that redelivered activities do not repeat it.
type Effect struct {
	// MissionID is the key of the mission run the effect belongs to: the
	// mission id qualified by its run (activities.EffectKey), so that a
	// mission id reused after a purge starts with no effects.
	MissionID string    `json:"missionId"`
	Kind      string    `json:"kind"`
	Detail    string    `json:"detail,omitempty"`
	Seq       int64     `json:"seq"`
	At        time.Time `json:"at"`
}

// Store keeps domain state. Implementations are safe for concurrent use by
// many goroutines and, where the storage allows, many processes.
type Store interface {
	// AddDrone registers a drone. It returns ErrDroneExists if the id is taken.
	AddDrone(ctx context.Context, id string, home domain.LatLon) (Drone, error)
	// Drone returns one drone or ErrDroneNotFound.
	Drone(ctx context.Context, id string) (Drone, error)
	// Drones returns every drone, ordered by id.
	Drones(ctx context.Context) ([]Drone, error)
	// UpdateDrone reads a drone, applies fn and writes the result atomically.
	// fn may run more than once when writers race, so it must depend only on
	// its argument. An error from fn aborts the update and is returned as is.
	UpdateDrone(ctx context.Context, id string, fn func(*Drone) error) (Drone, error)
	// UpdateDrones applies fn to each drone of ids as UpdateDrone would, in
	// as few storage round trips as the store can: each drone's update is
	// atomic, the set is not (a store may write it in several
	// transactions). fn is called for one drone at a time, never
	// concurrently, and may be called more than once for a drone (the last
	// call is the one written), so per-drone results belong in a map keyed
	// by Drone.ID, overwritten on each call.
	// The result has one DroneUpdate per id, in order; its Err is nil (the
	// update was written), ErrDroneNotFound, fn's error, or the storage
	// error that kept it from being written. The error is for the call
	// itself (ids not distinct): then nothing was written.
	UpdateDrones(ctx context.Context, ids []string, fn func(*Drone) error) ([]DroneUpdate, error)
	// RecordEffect stores e unless an effect with the same (MissionID, Kind)
	// exists; it reports whether e was new. Seq and At are assigned.
	RecordEffect(ctx context.Context, e Effect) (bool, error)
	// Effects returns a mission's effects in the order they were recorded.
	Effects(ctx context.Context, missionID string) ([]Effect, error)
	// Watched returns the Watch of each drone q selects, each drone once,
	// in no particular order. It looks them up in an index the store keeps
	// with every write of a drone (UpdateDrone, AddDrone), so its cost
	// follows the drones selected, not the size of the fleet.
	//
	// A store may keep a Watch's LastFrameAt, and with it Quiet, up to
	// WatchSlack behind the record's as frames arrive (never ahead of it),
	// to spare index writes: Watched may then return a drone whose record
	// no longer matches by up to WatchSlack, and QuietAfter may miss a drone
	// ahead by less than WatchSlack. Every other field is the record's as of
	// some moment during the call.
	Watched(ctx context.Context, q WatchQuery) ([]Watch, error)
}

// DroneUpdate is the outcome of one drone's update in Store.UpdateDrones.
type DroneUpdate struct {
	// Drone is the record as written; zero unless Err is nil.
	Drone Drone
	Err   error
}

// ErrDuplicateDrone is returned by Store.UpdateDrones when ids repeat one.
var ErrDuplicateDrone = errors.New("drone listed twice in one batch update")

// CheckDistinct returns ErrDuplicateDrone, naming the id, if ids are not
// distinct; stores call it before UpdateDrones writes anything.
func CheckDistinct(ids []string) error {
	seen := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		if _, ok := seen[id]; ok {
			return fmt.Errorf("%w: %s", ErrDuplicateDrone, id)
		}
		seen[id] = struct{}{}
	}
	return nil
}

// WatchSlack is how far a store's index may keep a drone's LastFrameAt
// behind its record (see Store.Watched).
const WatchSlack = 2 * time.Second

// Watch is the part of a drone's record the watchdog acts on; stores index
// drones by its keys (Quiet, DeadlineKey, Attention).
type Watch struct {
	ID        string `json:"id"`
	MissionID string `json:"m,omitempty"`
	// Dispatched: the drone flies its mission's route (Route is set).
	Dispatched    bool      `json:"r,omitempty"`
	SignalPending bool      `json:"p,omitempty"`
	Delivered     bool      `json:"v,omitempty"`
	LastFrameAt   time.Time `json:"f,omitzero"`
	DispatchedAt  time.Time `json:"s,omitzero"`
	LastAlarmAt   time.Time `json:"a,omitzero"`
	Deadline      time.Time `json:"d,omitzero"`
}

// Watch returns the drone's Watch.
// ClearMission unbinds d from its mission: every field that describes the
// mission it flies goes, in one place, so that a field added later is
// cleared by every path that frees a drone.
func (d *Drone) ClearMission() {
	d.MissionID, d.Route, d.RoutePhase, d.MissionTrace = "", nil, "", ""
	d.DispatchedAt, d.Deadline, d.Delivered = time.Time{}, time.Time{}, false
}

// Conditions a drone is in, by its last telemetry (Condition).
const (
	ConditionOK          = "ok"
	ConditionNoTelemetry = "no_telemetry"
	ConditionFaulted     = "faulted"
	ConditionLowBattery  = "low_battery"
)

// Condition is d's condition by its last telemetry, batteryFloor the
// charge below which it is low: no telemetry before a fault, a fault
// before a low battery.
func (d Drone) Condition(batteryFloor float64) string {
	switch st := d.Tracked.State; {
	case st == nil:
		return ConditionNoTelemetry
	case st.Health.Fault() != "":
		return ConditionFaulted
	case st.Battery < batteryFloor:
		return ConditionLowBattery
	}
	return ConditionOK
}

func (d Drone) Watch() Watch {
	return Watch{
		ID: d.ID, MissionID: d.MissionID, Dispatched: d.MissionID != "" && d.Route != nil,
		SignalPending: d.SignalPending, Delivered: d.Delivered,
		LastFrameAt: d.LastFrameAt, DispatchedAt: d.DispatchedAt, LastAlarmAt: d.LastAlarmAt, Deadline: d.Deadline,
	}
}

// Quiet is, for a dispatched drone that was dispatched or has reported,
// the latest of LastFrameAt, DispatchedAt and LastAlarmAt: the time since
// which the drone has been silent and its mission not alarmed. Zero for
// other drones.
func (w Watch) Quiet() time.Time {
	if !w.Dispatched || (w.LastFrameAt.IsZero() && w.DispatchedAt.IsZero()) {
		return time.Time{}
	}
	q := w.LastFrameAt
	for _, t := range []time.Time{w.DispatchedAt, w.LastAlarmAt} {
		if t.After(q) {
			q = t
		}
	}
	return q
}

// DeadlineKey is the deadline of a dispatched drone that has not delivered
// yet; zero for other drones, and when the mission has no deadline.
func (w Watch) DeadlineKey() time.Time {
	if !w.Dispatched || w.Delivered {
		return time.Time{}
	}
	return w.Deadline
}

// Attention reports whether a drone bound to a mission needs looking at
// whatever its times say: reserved but not dispatched (its mission may have
// ended without freeing it), or with a signal pending.
func (w Watch) Attention() bool {
	return w.MissionID != "" && (!w.Dispatched || w.SignalPending)
}

// WatchQuery selects drones for Store.Watched: a drone is selected if any
// of the conditions set holds. A zero time sets no condition.
type WatchQuery struct {
	// QuietUntil selects drones whose Quiet is set and not after it.
	QuietUntil time.Time
	// QuietAfter selects drones whose Quiet is after it.
	QuietAfter time.Time
	// DeadlineUntil selects drones whose DeadlineKey is set and not after it.
	DeadlineUntil time.Time
	// Attention selects drones whose Attention is true.
	Attention bool
	// Limit bounds the drones each condition selects: those with the
	// earliest key (ids for Attention) first. Zero or less means 1000.
	Limit int
}

// Limited returns q's Limit, the default applied.
func (q WatchQuery) Limited() int {
	if q.Limit <= 0 {
		return 1000
	}
	return q.Limit
}
