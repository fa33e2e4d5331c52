package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/simulator"
)

// W3: W3Missions delivery missions started at once on one dronehub worker,
// each naming its own drone, flown by the simulator: every
// W3FrameInterval each drone in the air reports one frame (one second of
// its flight at W3SpeedMps), and the frames of a tick are posted to the
// worker's POST /api/telemetry in posts of up to W3Batch frames, up to
// Concurrency posts at a time. A drone starts flying when its mission's
// DispatchDrone activity has returned (the dispatch order reaching the
// drone), seen through activity middleware.

// w3SampledMissions is how many missions have their status polled for the
// telemetry-to-status latency.
const w3SampledMissions = 20

// w3FailuresShown is how many failed missions an error and the result name.
const w3FailuresShown = 3

// endPollers bounds the end watcher's status reads in flight, and endQuiet
// is how long it waits with no mission ending before it polls every
// mission left.
const (
	endPollers = 4
	endQuiet   = 30 * time.Second
)

// missionRun is one run of W3.
type missionRun struct {
	e     *Engine
	s     *simWorker
	ids   []string
	index map[string]int // mission id to its index; read-only once built
	// starts[i] is when mission i's StartMission call began.
	starts []time.Time
	radius float64

	// dispatched receives each mission's index once its DispatchDrone
	// activity has returned; buffered for every mission.
	dispatched chan int
	ends       *endWatcher
	tally      verdictTally

	frames, posts atomic.Int64
	// ticks are the times from one tick's start to the next's (written by
	// fly only).
	ticks []time.Duration

	mu            sync.Mutex
	dispatchSeen  []bool
	acts, actsOK  int
	t2s, t2sSent  []time.Duration
	t2sByPhase    map[domain.Phase][]time.Duration
	t2sUnobserved int
	sampled       int // missions whose status is sampled
}

func newMissionRun(e *Engine, ids []string) *missionRun {
	r := &missionRun{
		e: e, ids: ids, index: make(map[string]int, len(ids)), starts: make([]time.Time, len(ids)),
		radius:     orchestrations.MissionSettings{}.WithDefaults().ArrivalRadiusM,
		dispatched: make(chan int, len(ids)), dispatchSeen: make([]bool, len(ids)),
	}
	for i, id := range ids {
		r.index[id] = i
	}
	return r
}

// missions runs W3 on a fresh worker.
func (e *Engine) missions(ctx context.Context) (res *Result, err error) {
	r := newMissionRun(e, e.newIDs(W3, e.opts.W3Missions))
	s, err := e.startSimWorker(ctx, len(r.ids), r.middleware)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := s.close(ctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close the worker: %w", cerr))
		}
	}()
	r.s = s
	r.ends = newEndWatcher(s, r.ids)
	return r.run(ctx)
}

// middleware watches the worker's activities: a returned DispatchDrone
// sends the drone flying; the last step of a mission, a compensation or a
// failed activity makes its end worth polling for.
func (r *missionRun) middleware(name string, next task.Activity) task.Activity {
	if name == activities.IngestTelemetry {
		return next
	}
	return func(ctx task.ActivityContext) (any, error) {
		out, err := next(ctx)
		var ref struct {
			MissionID string `json:"missionId"`
		}
		_ = ctx.GetInput(&ref) // every mission activity's input names its mission
		r.activityRan(name, ref.MissionID, err)
		return out, err
	}
}

func (r *missionRun) activityRan(name, missionID string, err error) {
	i, ok := r.index[missionID]
	r.mu.Lock()
	r.acts++
	if err == nil {
		r.actsOK++
	}
	first := ok && name == activities.DispatchDrone && err == nil && !r.dispatchSeen[i]
	if first {
		r.dispatchSeen[i] = true
	}
	r.mu.Unlock()
	switch {
	case !ok:
	case first:
		r.dispatched <- i // buffered for every mission, each sent once
	case err != nil, name == activities.CompleteMission, name == activities.ReleaseDrone,
		name == activities.RecallDrone, name == activities.NotifyCustomer, name == activities.ReschedulePackage:
		r.ends.watch(i)
	}
}

func (r *missionRun) run(ctx context.Context) (*Result, error) {
	n := len(r.ids)
	ctx, cancel := context.WithCancel(ctx)
	var bg, sampling sync.WaitGroup
	samples := make([]chan phaseSample, n)
	closeSamples := sync.OnceFunc(func() {
		for _, ch := range samples {
			if ch != nil {
				close(ch)
			}
		}
	})
	defer func() {
		cancel()
		closeSamples()
		sampling.Wait()
		bg.Wait()
	}()
	bg.Add(1)
	go func() { defer bg.Done(); r.ends.loop(ctx, endPollers) }()
	// The telemetry-to-status samplers, one per sampled mission.
	every := max(1, (n+w3SampledMissions-1)/w3SampledMissions)
	for i := 0; i < n; i += every {
		samples[i] = make(chan phaseSample, 16)
		r.sampled++
		sampling.Add(1)
		go func() { defer sampling.Done(); r.sampleStatus(ctx, i, samples[i]) }()
	}

	w := beginWindow(r.s.counter)
	rss := startRSSSampler()
	started := make(chan error, 1)
	bg.Add(1)
	go func() { defer bg.Done(); started <- r.startAll(ctx) }()
	err := r.fly(ctx, w.began, started, samples)
	if err == nil {
		err = r.awaitEnds(ctx, w.began)
	}
	if err != nil {
		rss.finish(time.Now())
		return nil, err
	}
	// Every mission has ended: the samplers finish their last samples.
	closeSamples()
	sampling.Wait()
	m := w.end(r.ends.last())
	return r.result(m, rss.finish(w.began.Add(m.window/2)))
}

// startAll starts every mission, Concurrency at a time, through the
// worker's Go API (what POST /api/missions calls).
func (r *missionRun) startAll(ctx context.Context) error {
	deadline := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, r.e.opts.Concurrency)
	for g := range min(r.e.opts.Concurrency, len(r.ids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(r.ids) || ctx.Err() != nil {
					return
				}
				route := simRoute(i)
				req := domain.MissionRequest{
					MissionID: r.ids[i], DroneID: simDroneID(i), Pickup: &route.Pickup, Dropoff: &route.Dropoff,
					Package:  &domain.Package{ID: "pkg-" + r.ids[i], WeightKg: 1.2, Size: domain.SizeSmall},
					Deadline: deadline,
				}
				r.starts[i] = time.Now()
				if _, err := r.s.w.StartMission(ctx, req); err != nil {
					errs[g] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// simFlight is one drone in the air, with the ground truth the bench needs
// to tell which of its frames move its mission to a new phase.
type simFlight struct {
	i      int
	f      *simulator.Flight
	route  domain.Route
	state  domain.DroneState // merged from the frames sent
	phase  domain.Phase      // the route phase those frames imply
	sample chan<- phaseSample
}

// phaseSample is a frame that moved its mission to phase, and when its post
// was sent and answered.
type phaseSample struct {
	phase    domain.Phase
	sent, at time.Time
}

// next returns the flight's next frame, stamped at, and the phase it moves
// the mission to ("" if none).
func (f *simFlight) next(at time.Time, radius float64) (domain.Frame, domain.Phase, bool) {
	fr, ok := f.f.Next()
	if !ok {
		return fr, "", false
	}
	fr.Timestamp = &at
	if fr.FlightMode != nil {
		f.state.FlightMode = *fr.FlightMode
	}
	if fr.Position != nil {
		f.state.Position = *fr.Position
	}
	p := domain.Advance(f.phase, f.route, f.state, radius)
	if p == f.phase {
		return fr, "", true
	}
	f.phase = p
	return fr, p, true
}

// fly runs the ticks until every mission's flight is over (or the mission
// ended before its drone was dispatched).
func (r *missionRun) fly(ctx context.Context, began time.Time, started <-chan error, samples []chan phaseSample) error {
	e, n := r.e, len(r.ids)
	tick := time.NewTicker(e.opts.W3FrameInterval)
	defer tick.Stop()
	over := make([]bool, n) // the mission's flight is over
	var active []*simFlight
	var lastProgress, lastTick time.Time
	for {
		for more := true; more; {
			select {
			case i := <-r.dispatched:
				route := simRoute(i)
				active = append(active, &simFlight{
					i: i, route: route, phase: domain.PhaseHeadedToPickup, sample: samples[i],
					f: simulator.NewFlight(simulator.FlightOptions{DroneID: simDroneID(i), Route: route, SpeedMps: e.opts.W3SpeedMps}),
				})
			default:
				more = false
			}
		}
		select {
		case err := <-started:
			if err != nil {
				return fmt.Errorf("start missions: %w", err)
			}
			started = nil
		default:
		}
		at := time.Now().UTC()
		if len(active) > 0 && !lastTick.IsZero() {
			r.ticks = append(r.ticks, at.Sub(lastTick))
		}
		lastTick = time.Time{}
		if len(active) > 0 {
			lastTick = at
		}
		batch := make([]domain.Frame, 0, len(active))
		owners := make([]*simFlight, 0, len(active))
		phases := make([]domain.Phase, 0, len(active))
		keep := active[:0]
		for _, f := range active {
			fr, p, ok := f.next(at, r.radius)
			if !ok {
				over[f.i] = true
				continue
			}
			keep = append(keep, f)
			batch, owners, phases = append(batch, fr), append(owners, f), append(phases, p)
		}
		clear(active[len(keep):])
		active = keep
		if len(batch) > 0 {
			if err := r.postTick(ctx, batch, owners, phases); err != nil {
				return err
			}
		}
		if len(active) == 0 && started == nil && len(r.dispatched) == 0 && r.allFlown(over) {
			return nil
		}
		if time.Since(lastProgress) >= 250*time.Millisecond {
			lastProgress = time.Now()
			e.progress(Progress{Engine: e.name, Workload: W3, Done: r.ends.count(), Total: n, Unit: "missions", Elapsed: time.Since(began)})
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%d of %d missions ended, %d frames posted: %w", r.ends.count(), n, r.frames.Load(), ctx.Err())
		}
	}
}

// allFlown reports whether every mission's flight is over or the mission
// ended without being dispatched.
func (r *missionRun) allFlown(over []bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, o := range over {
		if !o && (r.dispatchSeen[i] || !r.ends.ended(i)) {
			return false
		}
	}
	return true
}

// postTick posts one tick's frames in posts of up to W3Batch frames,
// Concurrency at a time, and hands the phase changes of sampled missions
// to their samplers once their post was answered.
func (r *missionRun) postTick(ctx context.Context, batch []domain.Frame, owners []*simFlight, phases []domain.Phase) error {
	size := r.e.opts.W3Batch
	nPosts := (len(batch) + size - 1) / size
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, min(r.e.opts.Concurrency, nPosts))
	for g := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1) - 1)
				if k >= nPosts || ctx.Err() != nil {
					return
				}
				lo, hi := k*size, min((k+1)*size, len(batch))
				sent := time.Now()
				v, resent, at, err := r.s.post.send(ctx, batch[lo:hi])
				if err != nil {
					errs[g] = err
					return
				}
				r.tally.add(v, resent)
				r.frames.Add(int64(hi - lo))
				r.posts.Add(1)
				for j := lo; j < hi; j++ {
					if phases[j] == "" || owners[j].sample == nil {
						continue
					}
					if j-lo < len(v.Frames) && v.Frames[j-lo].Verdict != domain.VerdictAccepted && !resent {
						continue
					}
					select {
					case owners[j].sample <- phaseSample{phases[j], sent, at}:
					case <-ctx.Done():
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("post telemetry: %w", err)
	}
	return nil
}

// sampleStatus measures, for each phase change of mission i, the time
// from the answer to the post that carried the frame to the first status
// poll that shows the mission in that phase or later. A sample whose
// mission ends without showing it (a mission that failed) is counted as
// unobserved.
func (r *missionRun) sampleStatus(ctx context.Context, i int, samples <-chan phaseSample) {
	id := api.InstanceID(r.ids[i])
	for smp := range samples {
		for {
			md, err := r.s.status.FetchOrchestrationMetadata(ctx, id)
			got := time.Now()
			if err == nil {
				var st domain.MissionStatus
				_ = json.Unmarshal([]byte(md.SerializedCustomStatus), &st)
				if st.Phase != "" && !st.Phase.Before(smp.phase) {
					r.mu.Lock()
					r.t2s = append(r.t2s, got.Sub(smp.at))
					r.t2sSent = append(r.t2sSent, got.Sub(smp.sent))
					if r.t2sByPhase == nil {
						r.t2sByPhase = map[domain.Phase][]time.Duration{}
					}
					r.t2sByPhase[smp.phase] = append(r.t2sByPhase[smp.phase], got.Sub(smp.at))
					r.mu.Unlock()
					break
				}
				if md.IsComplete() {
					r.mu.Lock()
					r.t2sUnobserved++
					r.mu.Unlock()
					break
				}
			}
			if !sleepCtx(ctx, r.s.pollEvery) {
				return
			}
		}
	}
}

// awaitEnds waits until the end watcher has seen every mission end.
func (r *missionRun) awaitEnds(ctx context.Context, began time.Time) error {
	e, n := r.e, len(r.ids)
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	done, progressed := r.ends.count(), time.Now()
	for {
		switch cur := r.ends.count(); {
		case cur == n:
			return nil
		case cur > done:
			done, progressed = cur, time.Now()
		case time.Since(progressed) > endQuiet:
			// Every mission ends with an activity that makes its end worth
			// polling for; should one not, poll every mission left.
			for i := range r.ids {
				r.ends.watch(i)
			}
			progressed = time.Now()
		}
		e.progress(Progress{Engine: e.name, Workload: W3, Done: done, Total: n, Unit: "missions", Elapsed: time.Since(began)})
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("%d of %d missions ended after their flights: %w", r.ends.count(), n, ctx.Err())
		}
	}
}

// result computes W3's figures; it fails the workload if a mission did not
// complete its delivery or a frame was not accepted, returning the figures
// with the error.
func (r *missionRun) result(m measured, rss RSSFigures) (*Result, error) {
	e, n := r.e, len(r.ids)
	lat := make([]time.Duration, n)
	var failures []string
	failed := 0
	for i := range r.ids {
		end := r.ends.end(i)
		lat[i] = end.at.Sub(r.starts[i])
		if end.failure != "" {
			failed++
			if len(failures) < w3FailuresShown {
				failures = append(failures, end.failure)
			}
		}
	}
	frames, posts := int(r.frames.Load()), int(r.posts.Load())
	r.mu.Lock()
	acts, actsOK, t2s, t2sSent, unobserved := r.acts, r.actsOK, percentiles(r.t2s), percentiles(r.t2sSent), r.t2sUnobserved
	byPhase := map[string]Percentiles{}
	for p, d := range r.t2sByPhase {
		byPhase[string(p)] = percentiles(d)
	}
	r.mu.Unlock()
	r.tally.mu.Lock()
	signals, dups := r.tally.signals, r.tally.duplicates
	r.tally.mu.Unlock()
	res := &Result{
		Engine: e.name, Workload: W3,
		Orchestrations: n, Activities: actsOK, ActivityExecutions: acts,
		Concurrency: e.opts.Concurrency, Seconds: m.window.Seconds(),
		LatencyMs:  percentiles(lat),
		CPUSeconds: m.cpu.Seconds(), PeakRSSBytes: m.peakRSS, PeakRSSOfProcess: m.peakRSS > 0 && !m.rssReset,
		Requests: requestsOf(m.requests, actsOK, n, frames),
		Missions: &MissionFigures{
			Storage: r.s.storage, Missions: n, Failed: failed, Failures: failures,
			FrameIntervalMs: float64(e.opts.W3FrameInterval) / float64(time.Millisecond), SpeedMps: e.opts.W3SpeedMps, Batch: e.opts.W3Batch,
			TelemetryToStatusMs: t2s, TelemetryToStatusFromSendMs: t2sSent, TelemetryToStatusUnobserved: unobserved,
			TelemetryToStatusByPhaseMs: byPhase,
			SampledMissions:            r.sampled, StatusPollMs: float64(r.s.pollEvery) / float64(time.Millisecond),
			TickMs: percentiles(r.ticks), MaxTickMs: maxMillis(r.ticks),
			Frames: frames, Posts: posts, Signals: signals, Duplicates: dups, Retries: int(r.s.post.retries.Load()),
			RSS: rss,
		},
	}
	if m.window > 0 {
		res.OrchestrationsPerSecond = float64(n) / m.window.Seconds()
		res.ActivitiesPerSecond = float64(actsOK) / m.window.Seconds()
		res.Missions.FramesPerSecond = float64(frames) / m.window.Seconds()
	}
	if actsOK > 0 {
		res.CPUPerActivityUs = float64(m.cpu.Microseconds()) / float64(actsOK)
	}
	res.Missions.CPUPerMissionMs = float64(m.cpu.Microseconds()) / 1000 / float64(n)
	var errs []error
	if failed > 0 {
		errs = append(errs, fmt.Errorf("%d of %d missions did not complete their delivery: %s", failed, n, strings.Join(failures, "; ")))
	}
	if err := r.tally.err(); err != nil {
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

// endWatcher polls the status of missions that may have ended (their last
// step, a compensation or a failed step ran) until they have, with a
// back-off from 100 ms to 2 s, endPollers at a time, and records how each
// ended. The polls are the bench's, not the worker's: on Azure Storage they
// go to the same emulator, so they are kept few (a mission is polled from
// its last step on, about twice).
type endWatcher struct {
	s   *simWorker
	ids []string

	mu   sync.Mutex
	due  map[int]*endPoll
	ends []missionEnd
	done int
}

type endPoll struct {
	next  time.Time
	every time.Duration
	busy  bool
}

// missionEnd is how a mission ended.
type missionEnd struct {
	ended bool
	// at is the orchestration time of the turn that ended the mission (the
	// terminal entry of its timeline), or, without one, the instance's last
	// update.
	at time.Time
	// failure says why the mission is not a completed delivery; "" if it is.
	failure string
}

func newEndWatcher(s *simWorker, ids []string) *endWatcher {
	return &endWatcher{s: s, ids: ids, due: map[int]*endPoll{}, ends: make([]missionEnd, len(ids))}
}

// watch starts polling mission i's status, unless it has ended or is
// polled already.
func (w *endWatcher) watch(i int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ends[i].ended || w.due[i] != nil {
		return
	}
	w.due[i] = &endPoll{next: time.Now().Add(100 * time.Millisecond), every: 100 * time.Millisecond}
}

func (w *endWatcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.done
}

func (w *endWatcher) ended(i int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ends[i].ended
}

func (w *endWatcher) end(i int) missionEnd {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ends[i]
}

// last is when the last mission ended.
func (w *endWatcher) last() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	var l time.Time
	for _, e := range w.ends {
		if e.at.After(l) {
			l = e.at
		}
	}
	return l
}

// loop polls the due missions, parallel at a time, until ctx ends.
func (w *endWatcher) loop(ctx context.Context, parallel int) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		var todo []int
		w.mu.Lock()
		for i, p := range w.due {
			if !p.busy && !p.next.After(now) {
				p.busy = true
				todo = append(todo, i)
			}
		}
		w.mu.Unlock()
		for _, i := range todo {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				w.poll(ctx, i)
			}()
		}
	}
}

func (w *endWatcher) poll(ctx context.Context, i int) {
	md, err := w.s.status.FetchOrchestrationMetadata(ctx, api.InstanceID(w.ids[i]))
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.due[i]
	if err != nil || !md.IsComplete() {
		p.busy, p.every = false, min(2*p.every, 2*time.Second)
		p.next = time.Now().Add(p.every)
		return
	}
	delete(w.due, i)
	w.ends[i] = endOf(w.ids[i], md)
	w.done++
}

// endOf reads how a mission ended from its metadata.
func endOf(id string, md *api.OrchestrationMetadata) missionEnd {
	end := missionEnd{ended: true, at: md.LastUpdatedAt}
	var st domain.MissionStatus
	raw := md.SerializedOutput
	if raw == "" {
		raw = md.SerializedCustomStatus
	}
	_ = json.Unmarshal([]byte(raw), &st)
	for k := len(st.Timeline) - 1; k >= 0; k-- {
		if st.Timeline[k].Phase.Terminal() {
			end.at = st.Timeline[k].At
			break
		}
	}
	switch {
	case md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED:
		msg := ""
		if fd := md.FailureDetails; fd != nil {
			msg = ": " + fd.GetErrorMessage()
		}
		end.failure = fmt.Sprintf("%s ended %s%s", id, md.RuntimeStatus.String(), msg)
	case st.Phase != domain.PhaseCompleted:
		from := ""
		if n := len(st.Timeline); n >= 2 {
			from = fmt.Sprintf(" (from %s)", st.Timeline[n-2].Phase)
		}
		end.failure = fmt.Sprintf("%s ended in phase %s%s: %s", id, st.Phase, from, st.Failure)
	}
	return end
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// maxMillis is the largest of d in milliseconds.
func maxMillis(d []time.Duration) float64 {
	var m time.Duration
	for _, x := range d {
		m = max(m, x)
	}
	return float64(m) / float64(time.Millisecond)
}
