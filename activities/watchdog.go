package activities

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
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
	// Now is the wall clock, which stored times (frames, dispatch, alarms,
	// deadlines) are compared with; default time.Now.
	Now func() time.Time
	// Elapsed is a monotonic clock: the time passed since some fixed
	// moment. Silence is only judged on time the watchdog could have heard
	// drones by it, and a wall clock that moves differently from it was
	// stepped. Default: the process's monotonic clock, or, when only Now is
	// set, the time Now moved since the first reading (a test clock that is
	// never stepped).
	Elapsed func() time.Duration
	// MaxPerScan bounds the drones one scan takes per selection (silent,
	// late, ahead of the clock, needing attention); the rest wait for the
	// next scans. Default 1000.
	MaxPerScan int
	// Concurrency bounds the drones a scan handles at once; default 8.
	Concurrency int
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
// A scan reads only the drones that may need something (fleet.Store.Watched,
// an index lookup): dispatched drones silent and not alarmed for Silence,
// past their deadline, with times ahead of the clock, and drones needing
// attention (reserved but not dispatched, or with a signal pending). Its
// work follows those drones, not the size of the fleet, and is bounded by
// MaxPerScan per selection.
//
// Silence is judged only on time this watchdog could have heard drones:
// there are no silence alarms until it has been up for Silence, on the
// monotonic clock, nor for Silence after a pause longer than Silence
// between its scans (the process stopped, storage failing), nor for Silence
// after the wall clock was stepped (it moved more than a second away from
// the monotonic clock between two scans). Times a drone's record holds
// ahead of the wall clock (written before the clock was set back, or by a
// worker whose clock is ahead) are brought back to the clock, so that they
// hide neither silence nor the next alarm.
//
// Every worker may run one: each alarm is claimed in the fleet store first
// (an update that checks, on the fresh record, that the alarm is still due),
// so only one worker raises it, at most once per Silence period per drone.
//
// A drone whose mission ended without freeing it (terminated, or purged) is
// freed by the watchdog instead of alarmed. Its mission's status is read
// when an alarm is due; when the drone is silent by the wall clock while
// silence alarms wait (at most every Silence/2); and for a reservation not
// dispatched, from the second scan that sees it, then every Silence/2.
type Watchdog struct {
	store  fleet.Store
	signal MissionClient
	opts   WatchdogOptions
	log    *slog.Logger

	mu    sync.Mutex
	clock watchClock
	// statusReads remembers the drones whose mission status the scans read
	// without an alarm being due (reserved but not dispatched, or silent
	// while the watchdog is not hearing), so that it is read now and then,
	// not at every scan.
	statusReads map[reservation]*statusRead
	scans       uint64
}

// watchClock is what the watchdog knows of its clocks.
type watchClock struct {
	started bool
	// hearingSince is the monotonic time since which the watchdog could
	// hear drones: its start, or the end of its last deaf spell.
	hearingSince time.Duration
	// prevWall and prevMono are the clocks at the last scan's start.
	prevWall time.Time
	prevMono time.Duration
	// lastOK is the monotonic time the last successful scan ended.
	lastOK time.Duration
	// lastSweep is when the last scan looked for times ahead of the clock;
	// sweep asks the next scan to.
	lastSweep time.Duration
	sweep     bool
}

type reservation struct{ drone, mission string }

type statusRead struct {
	read bool
	at   time.Duration // monotonic time of the last read
	scan uint64        // the last scan that saw the drone so
}

const (
	// pendingGrace is how long a pending telemetry signal is left to the
	// ingestion that computed it before the watchdog raises it instead.
	pendingGrace = 2 * time.Second
	// stepTolerance is how far the wall clock may drift from the monotonic
	// clock between two scans before it counts as stepped.
	stepTolerance = time.Second
	// aheadTolerance is how far ahead of the wall clock a stored time may
	// be (clocks of workers differ a little) before the watchdog brings it
	// back.
	aheadTolerance = 2 * time.Second
)

// MissionClient raises events and reads instance status. A durabletask-go
// TaskHubClient satisfies it.
type MissionClient interface {
	Signaler
	FetchOrchestrationMetadata(ctx context.Context, id api.InstanceID) (*api.OrchestrationMetadata, error)
}

// NewWatchdog returns a watchdog over store that raises alarms through client.
func NewWatchdog(store fleet.Store, client MissionClient, opts WatchdogOptions) *Watchdog {
	if opts.Silence == 0 {
		opts.Silence = 60 * time.Second
	}
	if opts.Interval == 0 {
		opts.Interval = min(max(opts.Silence/4, 250*time.Millisecond), 5*time.Second)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Elapsed == nil {
		if opts.Now == nil {
			origin := time.Now()
			opts.Elapsed = func() time.Duration { return time.Since(origin) }
		} else {
			now := opts.Now
			var once sync.Once
			var origin time.Time
			opts.Elapsed = func() time.Duration {
				t := now()
				once.Do(func() { origin = t })
				return t.Sub(origin)
			}
		}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxPerScan <= 0 {
		opts.MaxPerScan = 1000
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	return &Watchdog{store: store, signal: client, opts: opts, log: opts.Logger, statusReads: map[reservation]*statusRead{}}
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

// Scan looks at the drones that may need something once and raises the
// alarms due.
func (w *Watchdog) Scan(ctx context.Context) error {
	wall := w.opts.Now().UTC()
	mono := w.opts.Elapsed()
	w.mu.Lock()
	hearing, sweep := w.observe(wall, mono)
	w.scans++
	scan := w.scans
	w.mu.Unlock()

	// Drones silent by the wall clock are selected while the watchdog is
	// not hearing too: it raises no silence alarm for them then, but frees
	// those whose mission has ended.
	q := fleet.WatchQuery{QuietUntil: wall.Add(-w.opts.Silence), DeadlineUntil: wall, Attention: true, Limit: w.opts.MaxPerScan}
	if sweep {
		q.QuietAfter = wall.Add(aheadTolerance)
	}
	watched, err := w.store.Watched(ctx, q)
	if err != nil {
		if sweep {
			w.mu.Lock()
			w.clock.sweep = true
			w.mu.Unlock()
		}
		return err
	}
	// Workers scanning at once take the drones in different orders, so
	// that they mostly claim different ones.
	rand.Shuffle(len(watched), func(i, j int) { watched[i], watched[j] = watched[j], watched[i] })
	sem := make(chan struct{}, w.opts.Concurrency)
	var wg sync.WaitGroup
	for _, wv := range watched {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			w.check(ctx, wv, wall, mono, hearing, scan)
		})
	}
	wg.Wait()

	w.mu.Lock()
	defer w.mu.Unlock()
	w.clock.lastOK = w.opts.Elapsed()
	for r, s := range w.statusReads {
		if s.scan != scan {
			delete(w.statusReads, r) // no longer reserved, or silent
		}
	}
	return nil
}

// observe updates the clock state at the start of a scan and reports
// whether silence can be judged (the watchdog has been hearing drones for
// Silence) and whether to look for times ahead of the clock. w.mu is held.
func (w *Watchdog) observe(wall time.Time, mono time.Duration) (hearing, sweep bool) {
	c := &w.clock
	if !c.started {
		c.started, c.hearingSince, c.lastOK, c.sweep = true, mono, mono, true
		w.log.Debug("watchdog started: silence alarms once it has been up for the timeout", "timeout", w.opts.Silence)
	} else {
		if drift := wall.Sub(c.prevWall) - (mono - c.prevMono); drift > stepTolerance || drift < -stepTolerance {
			w.log.Warn("the wall clock was stepped; no silence alarms until the watchdog has heard drones for the timeout on the new time",
				"step", drift.String(), "timeout", w.opts.Silence)
			c.hearingSince, c.sweep = mono, true
		}
		if gap := mono - c.lastOK; gap > max(w.opts.Silence, 4*w.opts.Interval) {
			w.log.Warn("the watchdog did not complete a scan for longer than the timeout; no silence alarms until it has heard drones for the timeout again",
				"gap", gap.String(), "timeout", w.opts.Silence)
			c.hearingSince = mono
		}
	}
	c.prevWall, c.prevMono = wall, mono
	if c.sweep || mono-c.lastSweep >= w.opts.Silence/2 {
		sweep, c.sweep, c.lastSweep = true, false, mono
	}
	return mono-c.hearingSince >= w.opts.Silence, sweep
}

// check handles one drone the scan selected.
func (w *Watchdog) check(ctx context.Context, wv fleet.Watch, wall time.Time, mono time.Duration, hearing bool, scan uint64) {
	switch {
	case wv.MissionID == "":
		return
	case !wv.Dispatched:
		// Reserved but not flying: normal for a moment before dispatch
		// and during compensation, a leak if the mission has ended. A
		// dispatch normally follows at once: read the status from the
		// second scan that sees the drone so.
		if w.statusReadDue(wv, mono, scan, true) {
			w.freeIfEnded(ctx, wv.ID, wv.MissionID)
		}
		return
	}
	if wv.SignalPending && wall.Sub(wv.LastFrameAt) >= pendingGrace {
		w.flush(ctx, wv, wall)
	}
	if ahead(wv, wall) {
		w.rebase(ctx, wv, wall)
		return
	}
	if _, ok := w.due(wv, wall, hearing); !ok {
		if _, silent := w.due(wv, wall, true); silent && w.statusReadDue(wv, mono, scan, false) {
			// Silent by the wall clock while the watchdog is not hearing:
			// no alarm, but a drone of an ended mission is freed.
			w.freeIfEnded(ctx, wv.ID, wv.MissionID)
		}
		return
	}
	if w.freeIfEnded(ctx, wv.ID, wv.MissionID) {
		return
	}
	sig, prev, ok := w.claim(ctx, wv, wall, hearing)
	if !ok {
		return
	}
	payload, _ := json.Marshal(sig)
	if err := w.signal.RaiseEvent(ctx, api.InstanceID(wv.MissionID), domain.SignalEvent, api.WithRawEventData(string(payload))); err != nil {
		w.log.Warn("raise watchdog alarm failed; retrying next scan", "drone", wv.ID, "mission", wv.MissionID, "err", err)
		w.unclaim(ctx, wv, wall, prev)
		return
	}
	w.log.Info("watchdog alarm", "drone", wv.ID, "mission", wv.MissionID, "kind", sig.Kind, "reason", sig.Reason)
}

// due returns the alarm due for a dispatched drone, if any: a deadline
// alarm once the deadline passed before delivery, a silence alarm once no
// frame was accepted for Silence since the last frame or the dispatch
// (only while hearing), and neither within Silence of the last alarm.
func (w *Watchdog) due(wv fleet.Watch, wall time.Time, hearing bool) (domain.Signal, bool) {
	if !wv.Dispatched || wall.Sub(wv.LastAlarmAt) < w.opts.Silence {
		return domain.Signal{}, false
	}
	if dl := wv.DeadlineKey(); !dl.IsZero() && !wall.Before(dl) {
		return domain.Signal{Kind: domain.SignalDeadline, Reason: "deadline " + dl.UTC().Format(time.RFC3339) + " passed"}, true
	}
	last := wv.LastFrameAt
	if wv.DispatchedAt.After(last) {
		last = wv.DispatchedAt
	}
	if hearing && !last.IsZero() && wall.Sub(last) >= w.opts.Silence {
		return domain.Signal{Kind: domain.SignalWatchdog, Reason: "no telemetry since " + last.UTC().Format(time.RFC3339)}, true
	}
	return domain.Signal{}, false
}

// ahead reports whether a time the watchdog judges the drone by is ahead of
// the wall clock by more than aheadTolerance.
func ahead(wv fleet.Watch, wall time.Time) bool {
	limit := wall.Add(aheadTolerance)
	return wv.LastFrameAt.After(limit) || wv.DispatchedAt.After(limit) || wv.LastAlarmAt.After(limit)
}

var errNotClaimed = errors.New("alarm already raised or no longer due")

// rebase brings the drone's times that are ahead of the wall clock back to
// it. They were written before the clock was set back, or by a worker whose
// clock is ahead; left alone, a last frame ahead would hide the drone's
// silence and an alarm time ahead would hold back its next alarm. Counting
// them from now delays a due alarm by at most Silence.
func (w *Watchdog) rebase(ctx context.Context, wv fleet.Watch, wall time.Time) {
	var was time.Time
	_, err := w.store.UpdateDrone(ctx, wv.ID, func(d *fleet.Drone) error {
		if d.MissionID != wv.MissionID {
			return errNotClaimed
		}
		// The clock as of this update, not of the scan's start: a scan
		// can take long on slow storage, and a frame accepted meanwhile
		// is not ahead of the clock.
		if now := w.opts.Now().UTC(); now.After(wall) {
			wall = now
		}
		limit := wall.Add(aheadTolerance)
		changed := false
		for _, t := range []*time.Time{&d.LastFrameAt, &d.DispatchedAt, &d.LastAlarmAt, &d.LastSignalAt} {
			if t.After(limit) {
				if t.After(was) {
					was = *t
				}
				*t, changed = wall, true
			}
		}
		if !changed {
			return errNotClaimed
		}
		return nil
	})
	if err == nil {
		w.log.Warn("drone's times were ahead of this worker's clock; counting them from now", "drone", wv.ID, "mission", wv.MissionID,
			"ahead", was.Sub(wall).String())
	}
}

// flush raises a telemetry signal that ingestion computed but could not
// raise (storage failed, or its worker died): without it a mission whose
// drone sent its last frames would never learn of them.
func (w *Watchdog) flush(ctx context.Context, wv fleet.Watch, wall time.Time) {
	var sig domain.Signal
	_, err := w.store.UpdateDrone(ctx, wv.ID, func(d *fleet.Drone) error {
		if !d.SignalPending || d.MissionID != wv.MissionID || d.Route == nil || d.Tracked.State == nil || wall.Sub(d.LastFrameAt) < pendingGrace {
			return errNotClaimed // raised since, or a frame came: ingestion raises it
		}
		d.SignalPending = false
		sig = telemetrySignal(*d.Tracked.State, d.RoutePhase)
		return nil
	})
	if err != nil {
		return
	}
	payload, _ := json.Marshal(sig)
	if err := w.signal.RaiseEvent(ctx, api.InstanceID(wv.MissionID), domain.SignalEvent, api.WithRawEventData(string(payload))); err != nil {
		// Put the flag back so the next scan tries again.
		_, _ = w.store.UpdateDrone(ctx, wv.ID, func(d *fleet.Drone) error {
			d.SignalPending = d.MissionID == wv.MissionID
			return nil
		})
		w.log.Warn("raise pending telemetry signal failed; retrying next scan", "drone", wv.ID, "mission", wv.MissionID, "err", err)
		return
	}
	w.log.Info("raised a pending telemetry signal", "drone", wv.ID, "mission", wv.MissionID)
}

// claim records the alarm due on the fresh record, so that no other worker
// raises it too, and returns it with the alarm time it replaced. A frame
// accepted since the scan read the drone cancels a silence alarm, and an
// alarm another worker claimed meanwhile cancels this one.
func (w *Watchdog) claim(ctx context.Context, wv fleet.Watch, wall time.Time, hearing bool) (domain.Signal, time.Time, bool) {
	var sig domain.Signal
	var prev time.Time
	_, err := w.store.UpdateDrone(ctx, wv.ID, func(d *fleet.Drone) error {
		cur := d.Watch()
		if cur.MissionID != wv.MissionID {
			return errNotClaimed
		}
		s, ok := w.due(cur, wall, hearing)
		if !ok {
			return errNotClaimed
		}
		sig, prev = s, d.LastAlarmAt
		d.LastAlarmAt = wall
		return nil
	})
	return sig, prev, err == nil
}

// unclaim gives back an alarm claimed but not raised, so that the next scan
// raises it.
func (w *Watchdog) unclaim(ctx context.Context, wv fleet.Watch, claimed, prev time.Time) {
	_, _ = w.store.UpdateDrone(ctx, wv.ID, func(d *fleet.Drone) error {
		if d.MissionID != wv.MissionID || !d.LastAlarmAt.Equal(claimed) {
			return errNotClaimed
		}
		d.LastAlarmAt = prev
		return nil
	})
}

// statusReadDue reports whether to read the mission status of a drone no
// alarm is due for: at the first scan that sees it so (or the second, if
// second), then every Silence/2.
func (w *Watchdog) statusReadDue(wv fleet.Watch, mono time.Duration, scan uint64, second bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := reservation{wv.ID, wv.MissionID}
	s := w.statusReads[r]
	if s == nil {
		s = &statusRead{}
		w.statusReads[r] = s
		if second {
			s.scan = scan
			return false
		}
	}
	s.scan = scan
	if s.read && mono-s.at < max(w.opts.Silence/2, w.opts.Interval) {
		return false
	}
	s.read, s.at = true, mono
	return true
}

// freeIfEnded frees a drone still bound to a mission that has ended or no
// longer exists, and reports whether it did.
func (w *Watchdog) freeIfEnded(ctx context.Context, droneID, missionID string) bool {
	md, err := w.signal.FetchOrchestrationMetadata(ctx, api.InstanceID(missionID))
	switch {
	case errors.Is(err, api.ErrInstanceNotFound):
	case err != nil:
		return false
	case md.IsComplete():
	default:
		return false
	}
	_, err = w.store.UpdateDrone(ctx, droneID, func(cur *fleet.Drone) error {
		if cur.MissionID != missionID {
			return errNotClaimed
		}
		cur.ClearMission()
		return nil
	})
	if err == nil {
		w.log.Info("freed drone of an ended mission", "drone", droneID, "mission", missionID)
	}
	return true
}
