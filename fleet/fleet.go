// Package fleet defines dronehub's domain state — the drone registry, each
// drone's merged telemetry and dedupe window, and the record of side effects
// activities performed — behind a small Store interface. Each task hub
// backend ships a Store on the same storage: SQLite tables on the embedded
// default, Azure tables on Azure Storage.
package fleet

import (
	"context"
	"errors"
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
	// RecordEffect stores e unless an effect with the same (MissionID, Kind)
	// exists; it reports whether e was new. Seq and At are assigned.
	RecordEffect(ctx context.Context, e Effect) (bool, error)
	// Effects returns a mission's effects in the order they were recorded.
	Effects(ctx context.Context, missionID string) ([]Effect, error)
}
