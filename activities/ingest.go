package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/task"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/metrics"
	"github.com/dronehub/dronehub/taskhub"
	"github.com/dronehub/dronehub/tracing"
)

// Signaler raises an event on an orchestration instance. A durabletask-go
// TaskHubClient satisfies it.
type Signaler interface {
	RaiseEvent(ctx context.Context, id api.InstanceID, eventName string, opts ...api.RaiseEventOptions) error
}

// IngestOptions configures an Ingestor. The zero value of each field means
// its default.
type IngestOptions struct {
	// Heartbeat is the longest gap between signals to a mission while its
	// drone keeps reporting; it keeps the mission's watchdog fed when nothing
	// meaningful changes. Default 10s.
	Heartbeat time.Duration
	// BatteryFloor is the charge whose crossing is a meaningful change; default 0.2.
	BatteryFloor float64
	// ArrivalRadiusM is how close to a target counts as there; default 25.
	ArrivalRadiusM float64
	// Logger receives ingestion logs; default slog.Default().
	Logger *slog.Logger
	// Now is the clock; default time.Now. Tests set it.
	Now func() time.Time
	// Metrics receives the frames by verdict, the signals and the time
	// each batch took; nil records nothing.
	Metrics *metrics.Metrics
	// Tracer, when set, gets a span per batch, linked to the trace of each
	// mission the batch raised signals to (see fleet.Drone.MissionTrace);
	// nil traces nothing.
	Tracer trace.Tracer
	// Raiser, when set, raises all the signals a batch calls for in one
	// call (a backend's taskhub.EventRaiser: on Azure Storage a few queue
	// messages instead of one per signal); nil raises them one by one
	// through the Signaler.
	Raiser taskhub.EventRaiser
}

// Ingestor applies telemetry to drone state and raises meaningful changes to
// the drones' missions. It runs outside any orchestration: missions see only
// phase-relevant changes, faults, low battery and heartbeats, so their
// history stays bounded however fast drones report.
type Ingestor struct {
	store  fleet.Store
	signal Signaler
	opts   IngestOptions
	log    *slog.Logger
}

// NewIngestor returns an Ingestor. signal may be nil, in which case state is
// updated but no mission is told.
func NewIngestor(store fleet.Store, signal Signaler, opts IngestOptions) *Ingestor {
	if opts.Heartbeat == 0 {
		opts.Heartbeat = 10 * time.Second
	}
	if opts.BatteryFloor == 0 {
		opts.BatteryFloor = 0.2
	}
	if opts.ArrivalRadiusM == 0 {
		opts.ArrivalRadiusM = 25
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Ingestor{store: store, signal: signal, opts: opts, log: opts.Logger}
}

// FrameVerdict reports what happened to one frame of a batch.
type FrameVerdict struct {
	Index    int            `json:"index"`
	DeviceID string         `json:"deviceId,omitempty"`
	Seq      *int64         `json:"seq,omitempty"`
	Verdict  domain.Verdict `json:"verdict"`
	Reason   string         `json:"reason,omitempty"`
}

// IngestResult summarises a batch.
type IngestResult struct {
	Accepted   int            `json:"accepted"`
	Duplicates int            `json:"duplicates"`
	Stale      int            `json:"stale"`
	Rejected   int            `json:"rejected"`
	Signals    int            `json:"signals"`
	Frames     []FrameVerdict `json:"frames"`
}

func (r *IngestResult) count(v domain.Verdict) {
	switch v {
	case domain.VerdictAccepted:
		r.Accepted++
	case domain.VerdictDuplicate:
		r.Duplicates++
	case domain.VerdictStale:
		r.Stale++
	case domain.VerdictRejected:
		r.Rejected++
	}
}

// Ingest applies a decoded batch. Frames are grouped by drone and each
// drone's group is applied in one atomic update, in batch order. The result
// has one verdict per frame, in batch order. An error means storage failed:
// frames of drones already updated stay applied, and sending the batch again
// is safe because those frames now come back as duplicates.
func (in *Ingestor) Ingest(ctx context.Context, frames []domain.DecodedFrame) (IngestResult, error) {
	start := time.Now()
	var span trace.Span
	if in.opts.Tracer != nil {
		ctx, span = in.opts.Tracer.Start(ctx, "ingest_telemetry", trace.WithAttributes(attribute.Int("dronehub.telemetry.frames", len(frames))))
	}
	res, err := in.ingest(ctx, frames)
	if span != nil {
		span.SetAttributes(attribute.Int("dronehub.telemetry.accepted", res.Accepted), attribute.Int("dronehub.telemetry.duplicates", res.Duplicates),
			attribute.Int("dronehub.telemetry.stale", res.Stale), attribute.Int("dronehub.telemetry.rejected", res.Rejected),
			attribute.Int("dronehub.telemetry.signals", res.Signals))
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "storage failed")
		}
		span.End()
	}
	in.opts.Metrics.ObserveIngest(metrics.Batch{Accepted: res.Accepted, Duplicates: res.Duplicates, Stale: res.Stale,
		Rejected: res.Rejected, Signals: res.Signals, Took: time.Since(start)})
	return res, err
}

func (in *Ingestor) ingest(ctx context.Context, frames []domain.DecodedFrame) (IngestResult, error) {
	res := IngestResult{Frames: make([]FrameVerdict, len(frames))}
	byDrone := map[string][]int{}
	var order []string
	now := in.opts.Now()
	for i, df := range frames {
		fv := FrameVerdict{Index: i, DeviceID: df.Frame.DeviceID, Seq: df.Frame.Seq}
		err := df.Err
		if err == nil {
			// Frames from Go callers have not been through DecodeFrame.
			err = df.Frame.Validate()
		}
		if err == nil {
			// A timestamp far ahead would hold the drone's real frames
			// back until the clock caught up (see domain.Tracked.Apply).
			err = df.Frame.CheckTime(now)
		}
		if err != nil {
			fv.Verdict, fv.Reason = domain.VerdictRejected, err.Error()
			res.Frames[i] = fv
			continue
		}
		res.Frames[i] = fv
		if _, ok := byDrone[df.Frame.DeviceID]; !ok {
			order = append(order, df.Frame.DeviceID)
		}
		byDrone[df.Frame.DeviceID] = append(byDrone[df.Frame.DeviceID], i)
	}
	if len(order) > 0 {
		n, err := in.ingestDrones(ctx, order, byDrone, frames, res.Frames)
		res.Signals = n
		if err != nil {
			for _, fv := range res.Frames {
				res.count(fv.Verdict)
			}
			return res, err
		}
	}
	for _, fv := range res.Frames {
		res.count(fv.Verdict)
	}
	return res, nil
}

// maxSignalsPerBatch bounds the signals one drone's part of a batch raises;
// past it only the latest state is raised, which the mission can still act
// on because phases advance on the newest state.
const maxSignalsPerBatch = 16

// signalsAtOnce bounds the drones whose signals are being raised at once.
const signalsAtOnce = 8

// droneOutcome is what applying a batch's frames to one drone decided.
type droneOutcome struct {
	signals   []domain.Signal
	key       string // the signal key after the frames
	missionID string
	// trace is the mission's traceparent (fleet.Drone.MissionTrace), when
	// tracing is on and the drone's dispatch was traced; parsed only for
	// the drones whose signals are raised (link).
	trace string
}

// ingestDrones applies each drone's frames in one update of all the
// drones (fleet.Store.UpdateDrones), raises the signals the updates
// decided, each drone's in order, and records in one more update which
// drones' signals were raised. It returns the signals raised.
//
// Invariant: a drone's SignalPending is set by the update that decides a
// signal and cleared only after the signal was raised, by an update that
// finds no newer frame; so a crash or a failed raise between the two
// leaves it set, and the drone's next frame raises its state again.
func (in *Ingestor) ingestDrones(ctx context.Context, ids []string, byDrone map[string][]int, frames []domain.DecodedFrame, out []FrameVerdict) (int, error) {
	now := in.opts.Now()
	outcomes := make(map[string]droneOutcome, len(ids))
	ups, err := in.store.UpdateDrones(ctx, ids, func(d *fleet.Drone) error {
		// fn may run again for a drone on a lost race: compute everything afresh.
		outcomes[d.ID] = in.apply(d, frames, byDrone[d.ID], out, now)
		return nil
	})
	if err != nil {
		for _, id := range ids {
			for _, i := range byDrone[id] {
				out[i].Verdict, out[i].Reason = domain.VerdictRejected, "storage error; send the batch again"
			}
		}
		return 0, fmt.Errorf("ingest telemetry: %w", err)
	}
	var errs []error
	var raise []string
	for k, id := range ids {
		switch err := ups[k].Err; {
		case errors.Is(err, fleet.ErrDroneNotFound):
			for _, i := range byDrone[id] {
				out[i].Verdict = domain.VerdictRejected
				out[i].Reason = fmt.Sprintf("drone %q is not in the fleet; register it with POST /api/drones", id)
			}
		case err != nil:
			for _, i := range byDrone[id] {
				out[i].Verdict, out[i].Reason = domain.VerdictRejected, "storage error; send the batch again"
			}
			errs = append(errs, fmt.Errorf("ingest telemetry for drone %s: %w", id, err))
		case len(outcomes[id].signals) > 0 && in.signal != nil:
			raise = append(raise, id)
		}
	}
	if len(raise) == 0 {
		return 0, errors.Join(errs...)
	}
	// Signals are raised after the state commit and recorded only once all
	// of a drone's were raised: if raising fails, the next frame raises the
	// change again.
	raised := make([]bool, len(raise))
	if in.opts.Raiser != nil {
		ok := in.raiseAll(ctx, raise, outcomes)
		for k, id := range raise {
			raised[k] = ok
			if ok {
				in.link(ctx, id, outcomes[id])
			}
		}
	} else {
		sem := make(chan struct{}, signalsAtOnce)
		var wg sync.WaitGroup
		for k, id := range raise {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				raised[k] = in.raise(ctx, id, outcomes[id])
			}()
		}
		wg.Wait()
	}
	var record []string
	signals := 0
	for k, id := range raise {
		if raised[k] {
			record = append(record, id)
			signals += len(outcomes[id].signals)
		}
	}
	if len(record) == 0 {
		return 0, errors.Join(errs...)
	}
	ups, err = in.store.UpdateDrones(ctx, record, func(d *fleet.Drone) error {
		o := outcomes[d.ID]
		if d.MissionID == o.missionID && now.After(d.LastSignalAt) {
			d.LastSignalKey, d.LastSignalAt = o.key, now
			// Only if no newer frame came meanwhile: its signal is its own.
			if !d.LastFrameAt.After(now) {
				d.SignalPending = false
			}
		}
		return nil
	})
	for k, id := range record {
		if err == nil {
			err = ups[k].Err
		}
		if err != nil {
			in.log.Warn("record telemetry signal failed", "drone", id, "err", err)
		}
	}
	return signals, errors.Join(errs...)
}

// raise raises a drone's signals in order; false if one failed.
func (in *Ingestor) raise(ctx context.Context, id string, o droneOutcome) bool {
	for _, sig := range o.signals {
		payload, _ := json.Marshal(sig)
		if err := in.signal.RaiseEvent(ctx, api.InstanceID(o.missionID), domain.SignalEvent, api.WithRawEventData(string(payload))); err != nil {
			in.log.WarnContext(ctx, "raise telemetry signal failed; it is raised again with the next frame", "drone", id, "mission", o.missionID, "err", err)
			return false
		}
	}
	in.link(ctx, id, o)
	return true
}

// raiseAll raises the signals of the drones ids, each drone's in order, in
// one call of the Raiser; false if it failed (some may have been raised:
// the drones' next frames raise their states again).
func (in *Ingestor) raiseAll(ctx context.Context, ids []string, outcomes map[string]droneOutcome) bool {
	var events []taskhub.RaisedEvent
	for _, id := range ids {
		o := outcomes[id]
		for _, sig := range o.signals {
			payload, _ := json.Marshal(sig)
			events = append(events, taskhub.RaisedEvent{Instance: api.InstanceID(o.missionID),
				Event: taskhub.NewEventRaisedEvent(domain.SignalEvent, string(payload))})
		}
	}
	if err := in.opts.Raiser.AddNewOrchestrationEvents(ctx, events); err != nil {
		in.log.WarnContext(ctx, "raise telemetry signals failed; they are raised again with the drones' next frames", "drones", len(ids), "signals", len(events), "err", err)
		return false
	}
	return true
}

// link links the batch's span to the trace of the mission o signalled.
func (in *Ingestor) link(ctx context.Context, id string, o droneOutcome) {
	if sc := tracing.SpanContextOf(o.trace); sc.IsValid() {
		// The batch advanced the mission: link its span to the mission's
		// trace, which lives on in other spans (a signal event carries no
		// trace context in durabletask-go).
		trace.SpanFromContext(ctx).AddLink(trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{
			attribute.String("dronehub.mission.id", o.missionID), attribute.String("dronehub.drone.id", id),
			attribute.Int("dronehub.telemetry.signals", len(o.signals)),
		}})
	}
}

// apply applies the frames idx of a batch to d, records their verdicts in
// out, and returns the signals they call for.
func (in *Ingestor) apply(d *fleet.Drone, frames []domain.DecodedFrame, idx []int, out []FrameVerdict, now time.Time) droneOutcome {
	o := droneOutcome{key: d.LastSignalKey, missionID: d.MissionID}
	bound := d.MissionID != "" && d.Route != nil
	if bound && in.opts.Tracer != nil {
		o.trace = d.MissionTrace
	}
	for _, i := range idx {
		v, reason := d.Tracked.Apply(frames[i].Frame)
		out[i].Verdict, out[i].Reason = v, reason
		if v != domain.VerdictAccepted {
			continue
		}
		d.Frames++
		d.LastFrameAt = now
		if !bound {
			continue
		}
		if d.RoutePhase == "" {
			d.RoutePhase = domain.PhaseHeadedToPickup
		}
		d.RoutePhase = domain.Advance(d.RoutePhase, *d.Route, *d.Tracked.State, in.opts.ArrivalRadiusM)
		// Every meaningful change within the batch is raised, in order:
		// a landing and a takeoff in one batch are both phase changes.
		if k := in.signalKey(*d.Tracked.State, *d.Route) + "|" + string(d.RoutePhase); k != o.key {
			o.key = k
			o.signals = append(o.signals, telemetrySignal(*d.Tracked.State, d.RoutePhase))
		}
	}
	if bound && len(o.signals) == 0 && d.Tracked.State != nil && (d.SignalPending || now.Sub(d.LastSignalAt) >= in.opts.Heartbeat) {
		o.signals = append(o.signals, telemetrySignal(*d.Tracked.State, d.RoutePhase))
	}
	d.SignalPending = len(o.signals) > 0
	if len(o.signals) > maxSignalsPerBatch {
		o.signals = append(o.signals[:maxSignalsPerBatch-1], o.signals[len(o.signals)-1])
	}
	return o
}

func telemetrySignal(s domain.DroneState, p domain.Phase) domain.Signal {
	return domain.Signal{Kind: domain.SignalTelemetry, State: &s, Phase: p}
}

// signalKey summarises what a mission cares about in a drone's state; a
// change of key is a meaningful change.
func (in *Ingestor) signalKey(s domain.DroneState, r domain.Route) string {
	target := "none"
	pos := s.Position.LatLon()
	switch {
	case domain.DistanceM(pos, r.Pickup) <= in.opts.ArrivalRadiusM:
		target = "pickup"
	case domain.DistanceM(pos, r.Dropoff) <= in.opts.ArrivalRadiusM:
		target = "dropoff"
	case domain.DistanceM(pos, r.Home) <= in.opts.ArrivalRadiusM:
		target = "home"
	}
	return fmt.Sprintf("%s|%s|%t|%s", s.FlightMode, s.Health.Fault(), s.Battery < in.opts.BatteryFloor, target)
}

// IngestActivity is the IngestTelemetry activity: it applies frames given as
// raw JSON objects, for orchestrations that ingest telemetry themselves.
func (in *Ingestor) IngestActivity(ctx context.Context, raw []json.RawMessage) (IngestResult, error) {
	frames := make([]domain.DecodedFrame, len(raw))
	for i, r := range raw {
		f, err := domain.DecodeFrame(r)
		frames[i] = domain.DecodedFrame{Frame: f, Err: err}
	}
	return in.Ingest(ctx, frames)
}

// FleetSummary is the fleet at a glance.
type FleetSummary struct {
	Drones      int `json:"drones"`
	Idle        int `json:"idle"`
	OnMission   int `json:"onMission"`
	Faulted     int `json:"faulted"`
	LowBattery  int `json:"lowBattery"`
	NoTelemetry int `json:"noTelemetry"`
}

// Summarize counts the fleet's drones by condition.
func Summarize(ctx context.Context, store fleet.Store, batteryFloor float64) (FleetSummary, error) {
	drones, err := store.Drones(ctx)
	if err != nil {
		return FleetSummary{}, err
	}
	var s FleetSummary
	for _, d := range drones {
		s.Drones++
		if d.MissionID == "" {
			s.Idle++
		} else {
			s.OnMission++
		}
		switch d.Condition(batteryFloor) {
		case fleet.ConditionNoTelemetry:
			s.NoTelemetry++
		case fleet.ConditionFaulted:
			s.Faulted++
		case fleet.ConditionLowBattery:
			s.LowBattery++
		}
	}
	return s, nil
}

// Register adds the IngestTelemetry activity to r, wrapped by mw when it is
// non-nil.
func (in *Ingestor) Register(r *task.TaskRegistry, mw Middleware) error {
	act := typed(in.IngestActivity)
	if mw != nil {
		act = mw(IngestTelemetry, act)
	}
	return r.AddActivityN(IngestTelemetry, act)
}
