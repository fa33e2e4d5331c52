package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/httpapi"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/simulator"
)

// Flight shape: a fast drone on short routes, so a flight is ~35 frames,
// sent a few frames per drone per tick in batches that mix drones, the way
// a telemetry gateway forwards them.
const (
	flightSpeedMps  = 100 // metres per simulated second
	framesPerTick   = 2   // frames of one drone per tick
	flyTick         = 200 * time.Millisecond
	maxBatchFrames  = 40 // frames per POST /api/telemetry
	pollDispatch    = 250 * time.Millisecond
	pollEnd         = 400 * time.Millisecond
	requestDeadline = 90 * time.Second // one request, retried, before a mission gives up
	// A mission gives up waiting for its dispatch, or for its end once its
	// drone has landed, after this long: well past a takeover (lease 30 s,
	// --lock-timeout 20s) and a 10 s storage outage, so a mission still
	// waiting then is stuck, not slow.
	stuckAfter = 90 * time.Second
)

// The steps every mission schedules, in order, and the compensations a
// mission whose drone fails between pickup and drop-off runs.
var (
	missionSteps = []string{
		activities.AcceptMission, activities.ReserveDrone, activities.DispatchDrone,
		activities.ConfirmPickup, activities.ConfirmDelivery, activities.CompleteMission,
	}
	stepsBeforeFault  = missionSteps[:4]
	stepsAfterFault   = missionSteps[4:]
	compensationSteps = map[string]string{ // saga step → activity
		orchestrations.StepRecallDrone:       activities.RecallDrone,
		orchestrations.StepReleaseDrone:      activities.ReleaseDrone,
		orchestrations.StepReschedulePackage: activities.ReschedulePackage,
		orchestrations.StepNotifyCustomer:    activities.NotifyCustomer,
	}
)

// plan describes a batch of missions to run against a cluster.
type plan struct {
	prefix      string // mission id prefix
	missions    int
	concurrency int // missions between start and end at once
	faultEvery  int // every faultEvery-th mission's drone fails (0: none)
	flyers      int // telemetry posters, each with its own drones
	// retriesAllowed accepts a step scheduled again after a recorded
	// failure (the mission's retry policy at work while storage is down);
	// without it every step must be scheduled exactly once and no activity
	// may fail.
	retriesAllowed bool
}

// mission is one mission's progress as the driver saw it.
type mission struct {
	id    string
	fault bool
	drone string

	started, dispatched, flown, ended time.Time
	retries                           int // failed requests retried
	err                               error
}

// driver starts missions over HTTP, flies their drones and waits for them
// to end, keeping at most plan.concurrency missions open so the task hub's
// queues stay short.
type driver struct {
	c      *cluster
	p      plan
	fly    []*flyer
	ms     []*mission
	start  time.Time
	counts struct{ started, dispatched, flown, ended atomic.Int64 }

	// openSince holds the missions started and not over yet, with their
	// start, for failure reports (the mission fields belong to the
	// goroutine that drives it).
	openMu    sync.Mutex
	openSince map[string]time.Time
}

// oldestOpen returns up to n missions started and not over yet, oldest first.
func (d *driver) oldestOpen(n int) []string {
	d.openMu.Lock()
	defer d.openMu.Unlock()
	ids := make([]string, 0, len(d.openSince))
	for id := range d.openSince {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return d.openSince[ids[i]].Before(d.openSince[ids[j]]) })
	if len(ids) > n {
		ids = ids[:n]
	}
	return ids
}

// setOpen records that mission id is open (since start) or over (zero time).
func (d *driver) setOpen(id string, start time.Time) {
	d.openMu.Lock()
	defer d.openMu.Unlock()
	if d.openSince == nil {
		d.openSince = map[string]time.Time{}
	}
	if start.IsZero() {
		delete(d.openSince, id)
	} else {
		d.openSince[id] = start
	}
}

func newDriver(c *cluster, p plan) *driver {
	d := &driver{c: c, p: p}
	for i := 0; i < p.missions; i++ {
		d.ms = append(d.ms, &mission{
			id:    fmt.Sprintf("%s-%03d", p.prefix, i),
			fault: p.faultEvery > 0 && i%p.faultEvery == p.faultEvery-1,
		})
	}
	for i := 0; i < p.flyers; i++ {
		d.fly = append(d.fly, &flyer{c: c, in: make(chan *flight, p.missions)})
	}
	return d
}

// run drives every mission to its end (or ctx's) and returns when all are
// over; per-mission failures are recorded in d.ms.
func (d *driver) run(ctx context.Context) {
	d.start = time.Now()
	fctx, stopFlyers := context.WithCancel(ctx)
	var fwg sync.WaitGroup
	for _, f := range d.fly {
		fwg.Add(1)
		go func() { defer fwg.Done(); f.run(fctx) }()
	}
	sem := make(chan struct{}, d.p.concurrency)
	var wg sync.WaitGroup
	for i, m := range d.ms {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			m.err = fmt.Errorf("never started: %w", ctx.Err())
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := d.drive(ctx, i, m); err != nil {
				m.err = err
			}
		}()
	}
	wg.Wait()
	stopFlyers()
	fwg.Wait()
}

// progressMark changes whenever a mission moves on or a frame is posted.
func (d *driver) progressMark() int64 {
	n := d.counts.started.Load() + d.counts.dispatched.Load() + d.counts.flown.Load() + d.counts.ended.Load()
	for _, f := range d.fly {
		n += f.frames.Load()
	}
	return n
}

// progress is a one-line summary of the counters.
func (d *driver) progress() string {
	return fmt.Sprintf("%5.1fs: %d started, %d dispatched, %d flown, %d ended of %d",
		time.Since(d.start).Seconds(), d.counts.started.Load(), d.counts.dispatched.Load(),
		d.counts.flown.Load(), d.counts.ended.Load(), len(d.ms))
}

// route is mission i's delivery: a few hundred metres from the demo fleet's
// base, varied so that missions do not share one route.
func route(i int) (pickup, dropoff domain.LatLon) {
	dx := float64(i%5) * 0.001
	dy := float64(i/5%5) * 0.001
	return domain.LatLon{Lat: 47.6440 + dy, Lon: -122.1300 + dx}, domain.LatLon{Lat: 47.6470 + dy, Lon: -122.1360 + dx}
}

func (d *driver) drive(ctx context.Context, i int, m *mission) error {
	c := d.c
	pickup, dropoff := route(i)
	req := domain.MissionRequest{
		MissionID: m.id, Pickup: &pickup, Dropoff: &dropoff,
		Package:  &domain.Package{ID: "pkg-" + m.id, WeightKg: 1.5, Size: domain.SizeSmall},
		Deadline: time.Now().Add(time.Hour).UTC().Truncate(time.Second),
	}
	// Starts are idempotent by mission id, so a start whose answer was lost
	// can be sent again.
	rctx, cancel := context.WithTimeout(ctx, requestDeadline)
	_, n, err := c.call(rctx, http.MethodPost, "/api/missions", req, nil, http.StatusAccepted)
	cancel()
	m.retries += n
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	m.started = time.Now()
	d.counts.started.Add(1)
	d.setOpen(m.id, m.started)
	defer d.setOpen(m.id, time.Time{})

	// Wait for the drone to be dispatched: the custom status then names the
	// drone and carries the route to fly.
	var ms domain.MissionStatus
	wctx, wcancel := context.WithTimeout(ctx, stuckAfter)
	defer wcancel()
	for {
		st, err := d.status(wctx, m, false)
		if err != nil {
			return fmt.Errorf("await dispatch: %w", err)
		}
		ms = domain.MissionStatus{}
		_ = json.Unmarshal(st.CustomStatus, &ms)
		if ended(st.RuntimeStatus) {
			return fmt.Errorf("ended (%s) before its drone was dispatched: output %s", st.RuntimeStatus, truncate(st.Output, 400))
		}
		if ms.Route != nil && ms.DroneID != "" && !ms.Phase.Before(domain.PhaseHeadedToPickup) {
			break
		}
		if ms.DroneID != "" {
			// A real drone takes off when it is dispatched (the fleet's
			// record), not when the mission's status says so: after a
			// worker is killed between the dispatch and the mission's
			// next commit, the status waits for the takeover, longer
			// than the watchdog lets a dispatched drone stay silent.
			var ds httpapi.DroneStatus
			rctx, cancel := context.WithTimeout(wctx, requestDeadline)
			_, n, err := c.call(rctx, http.MethodGet, "/api/drones/"+url.PathEscape(ms.DroneID)+"/status", nil, &ds, http.StatusOK)
			cancel()
			m.retries += n
			if err == nil && ds.MissionID == m.id && ds.Route != nil {
				ms.Route = ds.Route
				break
			}
		}
		if err := sleep(wctx, pollDispatch); err != nil {
			return fmt.Errorf("await dispatch (last phase %q): %w", ms.Phase, err)
		}
	}
	m.drone, m.dispatched = ms.DroneID, time.Now()
	d.counts.dispatched.Add(1)

	// A real drone's frames carry on from its last sequence number.
	var ds httpapi.DroneStatus
	rctx, cancel = context.WithTimeout(ctx, requestDeadline)
	_, n, err = c.call(rctx, http.MethodGet, "/api/drones/"+url.PathEscape(m.drone)+"/status", nil, &ds, http.StatusOK)
	cancel()
	m.retries += n
	if err != nil {
		return fmt.Errorf("drone status: %w", err)
	}
	first := int64(1)
	if ds.State != nil {
		first = ds.State.Seq + 1
	}
	opts := simulator.FlightOptions{
		DroneID: m.drone, Route: *ms.Route, SpeedMps: flightSpeedMps, FirstSeq: first,
	}
	if m.fault {
		// Halfway between pickup and drop-off: after ConfirmPickup, before
		// ConfirmDelivery.
		r := *ms.Route
		opts.Fault = simulator.FaultHealth
		opts.FaultAt = (domain.DistanceM(r.Home, r.Pickup) + domain.DistanceM(r.Pickup, r.Dropoff)/2) / r.TotalM()
	}
	fl := &flight{mission: m.id, f: simulator.NewFlight(opts), done: make(chan error, 1)}
	d.fly[i%len(d.fly)].in <- fl
	select {
	case err := <-fl.done:
		if err != nil {
			return fmt.Errorf("fly %s: %w", m.drone, err)
		}
	case <-ctx.Done():
		return fmt.Errorf("fly %s: %w", m.drone, ctx.Err())
	}
	m.flown = time.Now()
	d.counts.flown.Add(1)

	ectx, ecancel := context.WithTimeout(ctx, stuckAfter)
	defer ecancel()
	for {
		st, err := d.status(ectx, m, false)
		if err != nil {
			return fmt.Errorf("await end: %w", err)
		}
		if ended(st.RuntimeStatus) {
			break
		}
		if err := sleep(ectx, pollEnd); err != nil {
			ms = domain.MissionStatus{}
			_ = json.Unmarshal(st.CustomStatus, &ms)
			return fmt.Errorf("await end: still %s in phase %q %s after its drone landed (last update %s): %w",
				st.RuntimeStatus, ms.Phase, time.Since(m.flown).Round(time.Second), st.LastUpdatedTime.UTC().Format("15:04:05.000"), err)
		}
	}
	m.ended = time.Now()
	d.counts.ended.Add(1)
	return nil
}

// status fetches GET /api/missions/{id}, retrying storage and transport
// errors.
func (d *driver) status(ctx context.Context, m *mission, history bool) (httpapi.Status, error) {
	path := "/api/missions/" + url.PathEscape(m.id)
	if history {
		path += "?showHistory=true"
	}
	var st httpapi.Status
	rctx, cancel := context.WithTimeout(ctx, requestDeadline)
	defer cancel()
	_, n, err := d.c.call(rctx, http.MethodGet, path, nil, &st, http.StatusOK, http.StatusAccepted)
	m.retries += n
	return st, err
}

func ended(runtimeStatus string) bool {
	switch runtimeStatus {
	case "Completed", "Failed", "Terminated", "Canceled":
		return true
	}
	return false
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// flight is one drone's flight handed to a flyer.
type flight struct {
	mission string
	f       *simulator.Flight
	done    chan error
	// Owned by the flyer goroutine:
	bad      []string // frames the API did not accept
	finished bool
}

// flyer posts the frames of its flights, a few frames per drone per tick,
// mixed into batches of up to maxBatchFrames. A drone's frames are posted in
// order, each batch only after the previous one was applied: a batch that
// fails (a dead worker, a 503 during a storage outage) is sent again whole,
// which dedupe makes safe.
type flyer struct {
	c  *cluster
	in chan *flight

	batches, frames, resent atomic.Int64
}

type queued struct {
	fl     *flight
	frames []domain.Frame
	last   bool // the flight is over after these frames
}

func (f *flyer) run(ctx context.Context) {
	var active []*flight
	tick := time.NewTicker(flyTick)
	defer tick.Stop()
	for {
		// Take new flights; wait for one when idle.
		for more := true; more; {
			if len(active) == 0 {
				select {
				case fl := <-f.in:
					active = append(active, fl)
				case <-ctx.Done():
					return
				}
			}
			select {
			case fl := <-f.in:
				active = append(active, fl)
			default:
				more = false
			}
		}
		var work []queued
		for _, fl := range active {
			q := queued{fl: fl}
			for len(q.frames) < framesPerTick {
				fr, ok := fl.f.Next()
				if !ok {
					q.last = true
					break
				}
				q.frames = append(q.frames, fr)
			}
			work = append(work, q)
		}
		// Batches of whole per-drone groups, at most maxBatchFrames frames.
		for len(work) > 0 {
			n, size := 0, 0
			for n < len(work) && (n == 0 || size+len(work[n].frames) <= maxBatchFrames) {
				size += len(work[n].frames)
				n++
			}
			if err := f.post(ctx, work[:n]); err != nil {
				f.fail(ctx, active, err)
				return
			}
			work = work[n:]
		}
		kept := active[:0]
		for _, fl := range active {
			if !fl.finished {
				kept = append(kept, fl)
			}
		}
		active = kept
		select {
		case <-tick.C:
		case <-ctx.Done():
			for _, fl := range active {
				fl.finish(ctx.Err())
			}
			return
		}
	}
}

// fail ends every flight, including those handed over later, with err.
func (f *flyer) fail(ctx context.Context, active []*flight, err error) {
	for _, fl := range active {
		fl.finish(err)
	}
	for {
		select {
		case fl := <-f.in:
			fl.finish(err)
		case <-ctx.Done():
			return
		}
	}
}

// finish reports the flight's end once.
func (fl *flight) finish(err error) {
	if !fl.finished {
		fl.finished = true
		fl.done <- err
	}
}

// post sends one batch until a worker applies it, then finishes the flights
// that are over.
func (f *flyer) post(ctx context.Context, group []queued) error {
	var frames []domain.Frame
	for _, q := range group {
		frames = append(frames, q.frames...)
	}
	if len(frames) > 0 {
		var res activities.IngestResult
		rctx, cancel := context.WithTimeout(ctx, requestDeadline)
		_, n, err := f.c.call(rctx, http.MethodPost, "/api/telemetry", map[string]any{"frames": frames}, &res, http.StatusOK)
		cancel()
		f.resent.Add(int64(n))
		if err != nil {
			return fmt.Errorf("post telemetry: %w", err)
		}
		f.batches.Add(1)
		f.frames.Add(int64(len(frames)))
		// Map verdicts back to flights: accepted, or duplicate when a retried
		// batch had been applied before its answer was lost.
		i := 0
		for _, q := range group {
			for range q.frames {
				if i < len(res.Frames) {
					v := res.Frames[i]
					if v.Verdict != domain.VerdictAccepted && v.Verdict != domain.VerdictDuplicate {
						q.fl.bad = append(q.fl.bad, fmt.Sprintf("seq %v: %s (%s)", deref(v.Seq), v.Verdict, v.Reason))
					}
				}
				i++
			}
		}
		if len(res.Frames) != len(frames) {
			return fmt.Errorf("post telemetry: %d verdicts for %d frames", len(res.Frames), len(frames))
		}
	}
	for _, q := range group {
		if q.last {
			var err error
			if len(q.fl.bad) > 0 {
				err = fmt.Errorf("%d frames not accepted: %s", len(q.fl.bad), strings.Join(q.fl.bad[:min(5, len(q.fl.bad))], "; "))
			}
			q.fl.finish(err)
		}
	}
	return nil
}

func deref(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

// flyerStats sums the flyers' counters.
func (d *driver) flyerStats() string {
	var b, fr, r int64
	for _, f := range d.fly {
		b += f.batches.Load()
		fr += f.frames.Load()
		r += f.resent.Load()
	}
	return fmt.Sprintf("%d frames in %d batches, %d posts retried", fr, b, r)
}

// timings summarises how long missions took, start to end.
func (d *driver) timings() string {
	var total []time.Duration
	for _, m := range d.ms {
		if !m.ended.IsZero() {
			total = append(total, m.ended.Sub(m.started))
		}
	}
	if len(total) == 0 {
		return "no mission ended"
	}
	sort.Slice(total, func(i, j int) bool { return total[i] < total[j] })
	q := func(p float64) time.Duration { return total[int(p*float64(len(total)-1))].Round(10 * time.Millisecond) }
	return fmt.Sprintf("mission start→end p50 %s, p90 %s, max %s", q(0.5), q(0.9), q(1))
}
