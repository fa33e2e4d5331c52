// Package activities holds dronehub's activities: the mission steps,
// their compensations, telemetry ingestion and status aggregation.
//
// Every activity is idempotent: durable execution is at-least-once, so an
// activity may run again after a crash. Side effects are recorded in the
// fleet store keyed by (mission run, kind), and a repeated run finds its
// record and does nothing more.
package activities

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/microsoft/durabletask-go/task"
	"go.opentelemetry.io/otel/trace"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/tracing"
)

// Activity names, as registered and as called by orchestrations.
const (
	AcceptMission          = "AcceptMission"
	ReserveDrone           = "ReserveDrone"
	DispatchDrone          = "DispatchDrone"
	ConfirmPickup          = "ConfirmPickup"
	ConfirmDelivery        = "ConfirmDelivery"
	CompleteMission        = "CompleteMission"
	RecallDrone            = "RecallDrone"
	ReleaseDrone           = "ReleaseDrone"
	ReschedulePackage      = "ReschedulePackage"
	NotifyCustomer         = "NotifyCustomer"
	IngestTelemetry        = "IngestTelemetry"
	AggregateMissionStatus = "AggregateMissionStatus"
	SummarizeFleet         = "SummarizeFleet"
)

// Effect kinds recorded in the fleet store, one per mission run at most.
const (
	EffectAccepted         = "accepted"
	EffectReserved         = "reserved"
	EffectDispatched       = "dispatched"
	EffectPickedUp         = "picked-up"
	EffectDelivered        = "delivered"
	EffectCompleted        = "completed"
	EffectRecalled         = "recalled"
	EffectReleased         = "released"
	EffectRescheduled      = "package-rescheduled"
	EffectCustomerNotified = "customer-notified"
)

// ErrNoDroneAvailable is returned by ReserveDrone when every drone is busy,
// faulted or low on battery.
var ErrNoDroneAvailable = errors.New("no drone available")

// ErrDroneBusy is returned when a requested drone is reserved by another mission.
var ErrDroneBusy = errors.New("drone is reserved by another mission")

// MissionRef identifies a mission to a step or compensation.
type MissionRef struct {
	MissionID string `json:"missionId"`
	DroneID   string `json:"droneId,omitempty"`
	PackageID string `json:"packageId,omitempty"`
	Reason    string `json:"reason,omitempty"`
	// Run tells apart missions that had the same id, one purged before the
	// next started (see EffectKey); "" for missions from before runs.
	Run string `json:"run,omitempty"`
}

// EffectKey is the key a mission run's effects are recorded under in the
// fleet store (fleet.Effect.MissionID): the mission id and its run. An id
// can be reused once its mission is purged; the new mission's run differs,
// so it starts with no effects instead of inheriting the old one's (its
// reservation above all). Missions without a run use their id alone.
func EffectKey(missionID, run string) string {
	if run == "" {
		return missionID
	}
	return missionID + "@" + run
}

// ReserveInput asks for a drone: DroneID if set, else any available one.
type ReserveInput struct {
	MissionID string `json:"missionId"`
	DroneID   string `json:"droneId,omitempty"`
	Run       string `json:"run,omitempty"`
}

// ReserveResult is the reserved drone.
type ReserveResult struct {
	DroneID string        `json:"droneId"`
	Home    domain.LatLon `json:"home"`
}

// DispatchInput sends a reserved drone on its route.
type DispatchInput struct {
	MissionID string       `json:"missionId"`
	DroneID   string       `json:"droneId"`
	Route     domain.Route `json:"route"`
	Deadline  time.Time    `json:"deadline"`
	Run       string       `json:"run,omitempty"`
}

// Options configures the activities. The zero value of each field means
// its default.
type Options struct {
	// BatteryFloor is the charge below which a drone is not reserved and a
	// mission in flight fails; default 0.2.
	BatteryFloor float64
	// Logger receives activity logs; default slog.Default().
	Logger *slog.Logger
}

// Activities implements the mission activities on a fleet store.
type Activities struct {
	store fleet.Store
	opts  Options
	log   *slog.Logger
}

// New returns the activities backed by store.
func New(store fleet.Store, opts Options) *Activities {
	if opts.BatteryFloor == 0 {
		opts.BatteryFloor = 0.2
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Activities{store: store, opts: opts, log: opts.Logger}
}

// Middleware wraps an activity, e.g. for metrics or fault injection in tests.
type Middleware func(name string, next task.Activity) task.Activity

// Register adds every activity to r, each wrapped by mw when it is non-nil.
func (a *Activities) Register(r *task.TaskRegistry, mw Middleware) error {
	acts := map[string]task.Activity{
		AcceptMission:          typed(a.AcceptMission),
		ReserveDrone:           typed(a.ReserveDrone),
		DispatchDrone:          typed(a.DispatchDrone),
		ConfirmPickup:          typed(a.ConfirmPickup),
		ConfirmDelivery:        typed(a.ConfirmDelivery),
		CompleteMission:        typed(a.CompleteMission),
		RecallDrone:            typed(a.RecallDrone),
		ReleaseDrone:           typed(a.ReleaseDrone),
		ReschedulePackage:      typed(a.ReschedulePackage),
		NotifyCustomer:         typed(a.NotifyCustomer),
		AggregateMissionStatus: typed(aggregate),
		SummarizeFleet: typed(func(ctx context.Context, _ struct{}) (FleetSummary, error) {
			return Summarize(ctx, a.store, a.opts.BatteryFloor)
		}),
	}
	names := make([]string, 0, len(acts))
	for n := range acts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		act := acts[n]
		if mw != nil {
			act = mw(n, act)
		}
		if err := r.AddActivityN(n, act); err != nil {
			return fmt.Errorf("register activity %s: %w", n, err)
		}
	}
	return nil
}

// typed adapts a plain function to durabletask's activity signature.
func typed[In, Out any](fn func(context.Context, In) (Out, error)) task.Activity {
	return func(ctx task.ActivityContext) (any, error) {
		var in In
		if err := ctx.GetInput(&in); err != nil {
			return nil, fmt.Errorf("decode activity input: %w", err)
		}
		return fn(ctx.Context(), in)
	}
}

func (a *Activities) effect(ctx context.Context, m MissionRef, kind, detail string) error {
	recorded, err := a.store.RecordEffect(ctx, fleet.Effect{MissionID: EffectKey(m.MissionID, m.Run), Kind: kind, Detail: detail})
	if err != nil {
		return err
	}
	if recorded {
		a.log.InfoContext(ctx, "mission effect", "mission", m.MissionID, "run", m.Run, "effect", kind, "detail", detail)
	}
	return nil
}

// AcceptMission records that the mission and its package were accepted.
func (a *Activities) AcceptMission(ctx context.Context, m MissionRef) (struct{}, error) {
	return struct{}{}, a.effect(ctx, m, EffectAccepted, "package "+m.PackageID)
}

// ReserveDrone reserves the requested drone, or the first available one in
// id order. Reserving again for the same mission returns the same drone.
func (a *Activities) ReserveDrone(ctx context.Context, in ReserveInput) (ReserveResult, error) {
	// A redelivered reservation (its worker died, say) must return the drone
	// the first run reserved, even if the mission has freed it since: never
	// a second one, which nobody would release.
	key := EffectKey(in.MissionID, in.Run)
	if res, ok, err := a.reservedBefore(ctx, key); err != nil || ok {
		return res, err
	}
	res, err := a.reserveNew(ctx, in)
	if err != nil {
		return res, err
	}
	recorded, err := a.store.RecordEffect(ctx, fleet.Effect{MissionID: key, Kind: EffectReserved, Detail: res.DroneID})
	if err != nil || recorded {
		if recorded {
			a.log.Info("mission effect", "mission", in.MissionID, "run", in.Run, "effect", EffectReserved, "detail", res.DroneID)
		}
		return res, err
	}
	// A concurrent run recorded its reservation first: keep that one and
	// free the drone this run took.
	first, ok, err := a.reservedBefore(ctx, key)
	if err != nil || !ok || first.DroneID == res.DroneID {
		return res, err
	}
	if err := a.free(ctx, MissionRef{MissionID: in.MissionID, DroneID: res.DroneID}); err != nil {
		return ReserveResult{}, err
	}
	return first, nil
}

// reservedBefore returns the drone recorded by an earlier reservation of the
// mission run whose effects are under key.
func (a *Activities) reservedBefore(ctx context.Context, key string) (ReserveResult, bool, error) {
	effects, err := a.store.Effects(ctx, key)
	if err != nil {
		return ReserveResult{}, false, err
	}
	for _, e := range effects {
		if e.Kind != EffectReserved {
			continue
		}
		d, err := a.store.Drone(ctx, e.Detail)
		if err != nil {
			return ReserveResult{}, false, err
		}
		return ReserveResult{DroneID: d.ID, Home: d.Home}, true, nil
	}
	return ReserveResult{}, false, nil
}

func (a *Activities) reserveNew(ctx context.Context, in ReserveInput) (ReserveResult, error) {
	if in.DroneID != "" {
		d, err := a.reserve(ctx, in.MissionID, in.DroneID)
		if err != nil {
			return ReserveResult{}, err
		}
		return ReserveResult{DroneID: d.ID, Home: d.Home}, nil
	}
	drones, err := a.store.Drones(ctx)
	if err != nil {
		return ReserveResult{}, err
	}
	// A run that reserved a drone but died before recording it holds it. So
	// may an earlier mission with this id, terminated and purged before the
	// watchdog freed its drone: its drone is kept only if it can still fly.
	for _, d := range drones {
		if d.MissionID != in.MissionID {
			continue
		}
		if a.fit(d) {
			return ReserveResult{DroneID: d.ID, Home: d.Home}, nil
		}
		if err := a.free(ctx, MissionRef{MissionID: in.MissionID, DroneID: d.ID}); err != nil {
			return ReserveResult{}, err
		}
	}
	for _, d := range drones {
		if !a.available(d) {
			continue
		}
		got, err := a.reserve(ctx, in.MissionID, d.ID)
		if errors.Is(err, ErrDroneBusy) {
			continue // another mission won the race for this drone
		}
		if err != nil {
			return ReserveResult{}, err
		}
		return ReserveResult{DroneID: got.ID, Home: got.Home}, nil
	}
	return ReserveResult{}, fmt.Errorf("%w: all %d drones are reserved, faulted or below %.0f%% battery", ErrNoDroneAvailable, len(drones), a.opts.BatteryFloor*100)
}

func (a *Activities) available(d fleet.Drone) bool {
	return d.MissionID == "" && a.fit(d)
}

// fit reports whether the drone can fly a mission: no fault, enough charge,
// not offline (as far as its telemetry tells).
func (a *Activities) fit(d fleet.Drone) bool {
	if s := d.Tracked.State; s != nil {
		if s.Health.Fault() != "" || s.Battery < a.opts.BatteryFloor || s.FlightMode == domain.ModeOffline {
			return false
		}
	}
	return true
}

func (a *Activities) reserve(ctx context.Context, missionID, droneID string) (fleet.Drone, error) {
	return a.store.UpdateDrone(ctx, droneID, func(d *fleet.Drone) error {
		if d.MissionID != "" && d.MissionID != missionID {
			return fmt.Errorf("%w: drone %s is on mission %s", ErrDroneBusy, d.ID, d.MissionID)
		}
		d.MissionID = missionID
		return nil
	})
}

// DispatchDrone sends the reserved drone on the mission's route. From then
// on its telemetry is forwarded to the mission.
func (a *Activities) DispatchDrone(ctx context.Context, in DispatchInput) (struct{}, error) {
	now := time.Now().UTC()
	_, err := a.store.UpdateDrone(ctx, in.DroneID, func(d *fleet.Drone) error {
		if d.MissionID != in.MissionID {
			return fmt.Errorf("drone %s is not reserved for mission %s", in.DroneID, in.MissionID)
		}
		route := in.Route
		d.Route = &route
		d.LastSignalKey = ""
		if d.DispatchedAt.IsZero() || d.Delivered {
			d.DispatchedAt = now
		}
		d.Deadline, d.Delivered, d.LastAlarmAt = in.Deadline, false, time.Time{}
		d.RoutePhase = domain.PhaseHeadedToPickup
		// The dispatch's span is in the mission's trace: ingestion links
		// to it ("" when tracing is off).
		d.MissionTrace = tracing.TraceParent(trace.SpanContextFromContext(ctx))
		return nil
	})
	if err != nil {
		return struct{}{}, err
	}
	return struct{}{}, a.effect(ctx, MissionRef{MissionID: in.MissionID, Run: in.Run}, EffectDispatched, in.DroneID)
}

// ConfirmPickup records that the package is on board.
func (a *Activities) ConfirmPickup(ctx context.Context, m MissionRef) (struct{}, error) {
	return struct{}{}, a.effect(ctx, m, EffectPickedUp, "package "+m.PackageID)
}

// ConfirmDelivery records that the package reached its drop-off; the
// mission's deadline no longer applies.
func (a *Activities) ConfirmDelivery(ctx context.Context, m MissionRef) (struct{}, error) {
	_, err := a.store.UpdateDrone(ctx, m.DroneID, func(d *fleet.Drone) error {
		if d.MissionID == m.MissionID {
			d.Delivered = true
		}
		return nil
	})
	if err != nil && !errors.Is(err, fleet.ErrDroneNotFound) {
		return struct{}{}, err
	}
	return struct{}{}, a.effect(ctx, m, EffectDelivered, "package "+m.PackageID)
}

// CompleteMission frees the drone once it is home.
func (a *Activities) CompleteMission(ctx context.Context, m MissionRef) (struct{}, error) {
	if err := a.free(ctx, m); err != nil {
		return struct{}{}, err
	}
	return struct{}{}, a.effect(ctx, m, EffectCompleted, m.DroneID)
}

// RecallDrone orders the drone back to base and stops forwarding its
// telemetry to the mission. Compensation for DispatchDrone.
func (a *Activities) RecallDrone(ctx context.Context, m MissionRef) (struct{}, error) {
	_, err := a.store.UpdateDrone(ctx, m.DroneID, func(d *fleet.Drone) error {
		if d.MissionID == m.MissionID {
			d.Route = nil
		}
		return nil
	})
	if err != nil && !errors.Is(err, fleet.ErrDroneNotFound) {
		return struct{}{}, err
	}
	return struct{}{}, a.effect(ctx, m, EffectRecalled, "drone "+m.DroneID+" ordered back to base")
}

// ReleaseDrone frees the reservation. Compensation for ReserveDrone.
func (a *Activities) ReleaseDrone(ctx context.Context, m MissionRef) (struct{}, error) {
	if err := a.free(ctx, m); err != nil {
		return struct{}{}, err
	}
	return struct{}{}, a.effect(ctx, m, EffectReleased, m.DroneID)
}

func (a *Activities) free(ctx context.Context, m MissionRef) error {
	_, err := a.store.UpdateDrone(ctx, m.DroneID, func(d *fleet.Drone) error {
		if d.MissionID == m.MissionID {
			d.ClearMission()
		}
		return nil
	})
	if errors.Is(err, fleet.ErrDroneNotFound) {
		return nil // removed from the fleet: nothing left to free
	}
	return err
}

// ReschedulePackage puts a picked-up package back in the dispatch queue.
// Compensation for ConfirmPickup.
func (a *Activities) ReschedulePackage(ctx context.Context, m MissionRef) (struct{}, error) {
	return struct{}{}, a.effect(ctx, m, EffectRescheduled, "package "+m.PackageID)
}

// NotifyCustomer tells the customer the delivery will not arrive as
// planned. Compensation for AcceptMission.
func (a *Activities) NotifyCustomer(ctx context.Context, m MissionRef) (struct{}, error) {
	return struct{}{}, a.effect(ctx, m, EffectCustomerNotified, m.Reason)
}

// AggregateInput is the input of the AggregateMissionStatus activity.
type AggregateInput struct {
	Previous domain.MissionStatus `json:"previous"`
	Route    domain.Route         `json:"route"`
	State    domain.DroneState    `json:"state"`
	SpeedMps float64              `json:"speedMps"`
}

// aggregate exposes domain.Aggregate as an activity for orchestrations that
// prefer not to run it inline. DeliveryMission runs it inline: it is pure,
// and an activity per telemetry signal would double the history.
func aggregate(_ context.Context, in AggregateInput) (domain.MissionStatus, error) {
	return domain.Aggregate(in.Previous, in.Route, in.State, in.State.Timestamp, in.SpeedMps), nil
}
