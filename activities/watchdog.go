package activities

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/microsoft/durabletask-go/api"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
)

// WatchdogOptions configures a Watchdog. Zero values mean defaults.
type WatchdogOptions struct {
	// Silence is how long a dispatched drone may go without an accepted
	// frame before its mission is alarmed; default 60s.
	Silence time.Duration
	// Interval is how often the fleet is scanned; default Silence/4,
	// between 250ms and 5s.
	Interval time.Duration
	// Logger receives watchdog logs; default slog.Default().
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Watchdog raises SignalWatchdog to missions whose drone went silent and
// SignalDeadline to missions past their deadline before delivery.
//
// Missions wait for signals without a timeout because durabletask-go v0.6.0
// mishandles wait timeouts: when an event completes a timed wait, the wait's
// timer still fires later and unregisters whichever wait on the same event
// name is pending then, so the mission stops hearing signals. The watchdog
// keeps the timeouts out of the orchestration; the mission still decides,
// on its own deterministic clock, whether an alarm is real.
//
// Every worker may run one: each alarm is claimed in the fleet store first,
// so only one worker raises it, at most once per Silence period per drone.
//
// A drone whose mission ended without freeing it (terminated, or purged) is
// freed by the watchdog instead of alarmed.
type Watchdog struct {
	store  fleet.Store
	signal MissionClient
	opts   WatchdogOptions
	log    *slog.Logger
}

// MissionClient raises events and reads instance status. A durabletask-go
// TaskHubClient satisfies it.
type MissionClient interface {
	Signaler
	FetchOrchestrationMetadata(ctx context.Context, id api.InstanceID) (*api.OrchestrationMetadata, error)
}

// NewWatchdog returns a watchdog over store that raises alarms through client.
func NewWatchdog(store fleet.Store, client MissionClient, opts WatchdogOptions) *Watchdog {
	signal := client
	if opts.Silence == 0 {
		opts.Silence = 60 * time.Second
	}
	if opts.Interval == 0 {
		opts.Interval = min(max(opts.Silence/4, 250*time.Millisecond), 5*time.Second)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Watchdog{store: store, signal: signal, opts: opts, log: opts.Logger}
}

// Run scans until ctx ends.
func (w *Watchdog) Run(ctx context.Context) {
	t := time.NewTicker(w.opts.Interval)
	defer t.Stop()
	for {
		if err := w.Scan(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn("watchdog scan failed; retrying next interval", "err", err)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// Scan checks every dispatched drone once and raises the alarms due.
func (w *Watchdog) Scan(ctx context.Context) error {
	drones, err := w.store.Drones(ctx)
	if err != nil {
		return err
	}
	now := w.opts.Now().UTC()
	for _, d := range drones {
		if d.MissionID != "" && d.Route == nil {
			// Reserved but not flying: normal for a moment before dispatch
			// and during compensation, a leak if the mission has ended.
			w.freeIfEnded(ctx, d)
			continue
		}
		if d.MissionID == "" {
			continue
		}
		if d.SignalPending && d.Tracked.State != nil && now.Sub(d.LastFrameAt) >= pendingGrace {
			w.flush(ctx, d)
		}
		if now.Sub(d.LastAlarmAt) < w.opts.Silence {
			continue
		}
		sig := domain.Signal{}
		last := d.LastFrameAt
		if d.DispatchedAt.After(last) {
			last = d.DispatchedAt
		}
		switch {
		case !d.Delivered && !d.Deadline.IsZero() && !now.Before(d.Deadline):
			sig = domain.Signal{Kind: domain.SignalDeadline, Reason: "deadline " + d.Deadline.UTC().Format(time.RFC3339) + " passed"}
		case !last.IsZero() && now.Sub(last) >= w.opts.Silence:
			sig = domain.Signal{Kind: domain.SignalWatchdog, Reason: "no telemetry since " + last.Format(time.RFC3339)}
		default:
			continue
		}
		if w.freeIfEnded(ctx, d) || !w.claim(ctx, d, sig.Kind, now) {
			continue
		}
		payload, _ := json.Marshal(sig)
		if err := w.signal.RaiseEvent(ctx, api.InstanceID(d.MissionID), domain.SignalEvent, api.WithRawEventData(string(payload))); err != nil {
			w.log.Warn("raise watchdog alarm failed", "drone", d.ID, "mission", d.MissionID, "err", err)
			continue
		}
		w.log.Info("watchdog alarm", "drone", d.ID, "mission", d.MissionID, "kind", sig.Kind, "reason", sig.Reason)
	}
	return nil
}

var errNotClaimed = errors.New("alarm already raised or no longer due")

// pendingGrace is how long a pending telemetry signal is left to the
// ingestion that computed it before the watchdog raises it instead.
const pendingGrace = 2 * time.Second

// flush raises a telemetry signal that ingestion computed but could not
// raise (storage failed, or its worker died): without it a mission whose
// drone sent its last frames would never learn of them.
func (w *Watchdog) flush(ctx context.Context, seen fleet.Drone) {
	_, err := w.store.UpdateDrone(ctx, seen.ID, func(d *fleet.Drone) error {
		if !d.SignalPending || !d.LastFrameAt.Equal(seen.LastFrameAt) || d.MissionID != seen.MissionID {
			return errNotClaimed
		}
		d.SignalPending = false
		return nil
	})
	if err != nil {
		return
	}
	payload, _ := json.Marshal(telemetrySignal(*seen.Tracked.State, seen.RoutePhase))
	if err := w.signal.RaiseEvent(ctx, api.InstanceID(seen.MissionID), domain.SignalEvent, api.WithRawEventData(string(payload))); err != nil {
		// Put the flag back so the next scan tries again.
		_, _ = w.store.UpdateDrone(ctx, seen.ID, func(d *fleet.Drone) error {
			d.SignalPending = d.MissionID == seen.MissionID
			return nil
		})
		w.log.Warn("raise pending telemetry signal failed; retrying next scan", "drone", seen.ID, "mission", seen.MissionID, "err", err)
		return
	}
	w.log.Info("raised a pending telemetry signal", "drone", seen.ID, "mission", seen.MissionID)
}

// claim records the alarm so that no other worker raises it too. It checks
// the fresh record: a frame accepted since the scan read it cancels a
// silence alarm.
func (w *Watchdog) claim(ctx context.Context, seen fleet.Drone, kind string, now time.Time) bool {
	_, err := w.store.UpdateDrone(ctx, seen.ID, func(d *fleet.Drone) error {
		if d.MissionID != seen.MissionID || !d.LastAlarmAt.Equal(seen.LastAlarmAt) {
			return errNotClaimed
		}
		if kind == domain.SignalWatchdog && d.LastFrameAt.After(seen.LastFrameAt) {
			return errNotClaimed
		}
		d.LastAlarmAt = now
		return nil
	})
	return err == nil
}

// freeIfEnded frees a drone still bound to a mission that has ended or no
// longer exists, and reports whether it did.
func (w *Watchdog) freeIfEnded(ctx context.Context, d fleet.Drone) bool {
	md, err := w.signal.FetchOrchestrationMetadata(ctx, api.InstanceID(d.MissionID))
	switch {
	case errors.Is(err, api.ErrInstanceNotFound):
	case err != nil:
		return false
	case md.IsComplete():
	default:
		return false
	}
	_, err = w.store.UpdateDrone(ctx, d.ID, func(cur *fleet.Drone) error {
		if cur.MissionID != d.MissionID {
			return errNotClaimed
		}
		cur.MissionID, cur.Route, cur.RoutePhase = "", nil, ""
		cur.DispatchedAt, cur.Deadline, cur.Delivered = time.Time{}, time.Time{}, false
		return nil
	})
	if err == nil {
		w.log.Info("freed drone of an ended mission", "drone", d.ID, "mission", d.MissionID)
	}
	return true
}
