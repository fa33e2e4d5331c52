package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/taskhub"
)

// Autoscaling on the scale signal: a loop in the test plays the autoscaler
// (what KEDA does with GET /api/hub/scale in production), starting and
// SIGTERMing real worker processes to follow the recommendation while a
// load ramp runs.

// The scale settings the autoscaled workers run with: samples every
// second, and short windows, so that a CI run sees a whole cycle (up,
// down, to zero) within a minute.
const (
	asInterval    = time.Second
	asCalm        = 6 * time.Second
	asIdleAfter   = 4 * time.Second
	asHighLatency = 500 * time.Millisecond
	asPoll        = 500 * time.Millisecond // how often the autoscaler reads the signal
	asMax         = 3                      // the autoscaler's ceiling (KEDA's maxReplicaCount)
)

// scaleReading is one answer of GET /api/hub/scale.
type scaleReading struct {
	at time.Time
	taskhub.ScaleStatus
}

// scaleStep is a change the autoscaler made.
type scaleStep struct {
	decided time.Time // the reading that asked for it
	reading scaleReading
	from    int
	worker  *worker
	up      bool
	ready   time.Duration // up: from the decision to the new worker's readiness
	handed  handover      // down: what the scale-in did
}

// autoscaler follows the scale signal between min and max workers, one
// worker at a time, and only on a reading taken with the current count
// (currentWorkers equals the live workers): a reading from before its last
// step says nothing about that step.
type autoscaler struct {
	t        *testing.T
	c        *cluster
	v        *hubView
	min, max int
	seed     int
	started  int
	steps    []scaleStep
	readings []scaleReading
	peak     int
	began    time.Time // the load step, for the log
}

// read asks a live worker for the scale signal.
func (a *autoscaler) read(ctx context.Context) (scaleReading, error) {
	var r scaleReading
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, _, err := a.c.call(rctx, http.MethodGet, "/api/hub/scale", nil, &r.ScaleStatus, http.StatusOK)
	r.at = time.Now()
	return r, err
}

// step reads the signal once and, if it asks for another count, starts or
// stops one worker. It reports whether the count changed.
func (a *autoscaler) step(ctx context.Context) bool {
	t := a.t
	t.Helper()
	live := a.c.liveWorkers()
	if len(live) == 0 {
		return false
	}
	r, err := a.read(ctx)
	if err != nil {
		t.Logf("autoscaler: read the scale signal: %v", err)
		return false
	}
	if n := len(a.readings); n == 0 || a.readings[n-1].RecommendedWorkers != r.RecommendedWorkers || a.readings[n-1].Reason != r.Reason && !strings.HasPrefix(r.Reason, "idle for") {
		t.Logf("autoscaler %+6.1fs: signal %d (current %d, live %d): %s [control depth %d, oldest %.1fs; work items %d, oldest %.1fs; idle %.1fs]",
			r.at.Sub(a.began).Seconds(), r.RecommendedWorkers, r.CurrentWorkers, len(live), r.Reason, r.ControlQueueDepth, r.OldestControlMessageAgeSeconds,
			r.WorkItemQueueDepth, r.OldestWorkItemAgeSeconds, r.IdleSeconds)
	}
	a.readings = append(a.readings, r)
	if r.CurrentWorkers != len(live) {
		return false // the signal has not seen the last step yet
	}
	want := min(max(r.RecommendedWorkers, a.min), a.max)
	switch {
	case want > len(live):
		a.started++
		name := fmt.Sprintf("worker-%d", a.started)
		w := a.c.start(name, 0)
		s := scaleStep{decided: r.at, reading: r, from: len(live), worker: w, up: true, ready: time.Since(r.at)}
		a.steps = append(a.steps, s)
		t.Logf("autoscaler: %d → %d workers: started %s, ready %s after the reading", len(live), len(live)+1, name, s.ready.Round(time.Millisecond))
		a.peak = max(a.peak, len(live)+1)
		return true
	case want < len(live):
		w := live[len(live)-1] // the newest goes first
		h, err := scaleIn(a.c, a.v, w, stopWithin+5*time.Second)
		if err != nil {
			t.Error(err)
		}
		a.steps = append(a.steps, scaleStep{decided: r.at, reading: r, from: len(live), worker: w, handed: h})
		t.Logf("autoscaler: %d → %d workers: SIGTERMed %s: %s", len(live), len(live)-1, w.name, h)
		return true
	}
	return false
}

// firstEffect is when worker w's log first records a mission effect (an
// activity it ran changed the fleet): the moment it did work.
func firstEffect(w *worker) (time.Time, bool) {
	f, err := os.Open(w.logPath)
	if err != nil {
		return time.Time{}, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var line struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "mission effect" {
			return line.Time, true
		}
	}
	return time.Time{}, false
}

// TestAutoscale runs a load ramp on workers an autoscaler starts and stops
// by the scale signal: a step of 80 missions at once on one worker, a
// trickle of 20 more (4 at a time) as the step's missions end, then
// nothing. The worker count must rise (it reaches the autoscaler's ceiling
// of 3), fall (while the trickle runs, when the signal says so) and reach
// zero once the hub is idle; every mission must end as its flight decided
// with each step once; and the time from the load step to an added worker
// doing work, and how long each scale-in leaves partitions unowned, are
// logged (docs/performance.md, "Autoscaling on Azurite"). The ramp
// (300 missions in flight) is scaled down to 80 with small workers, so
// that the run takes 30-45 s on the 2-core CI machine.
func TestAutoscale(t *testing.T) {
	az := shared.Get(t)
	c := newCluster(t, az.ConnectionString(), "autoscale")
	c.args = []string{
		"--shutdown-grace", stopGrace.String(),
		"--scale-interval", asInterval.String(),
		"--scale-calm", asCalm.String(),
		"--scale-idle-after", asIdleAfter.String(),
		// Small workers, chatty missions (a signal to its mission for
		// every telemetry post of a drone) and a threshold for missions
		// that last seconds: a step of 80 missions is then more than one
		// worker can take on (its control messages wait over
		// asHighLatency), on a CI machine that could not fly 300 drones.
		"--orchestration-concurrency", "1",
		"--activity-concurrency", "2",
		"--heartbeat", "100ms",
		"--scale-high-latency", asHighLatency.String(),
	}
	const peakMissions, tailMissions = 80, 20
	a := &autoscaler{t: t, c: c, min: 1, max: asMax, started: 1, peak: 1}
	c.start("worker-1", peakMissions+tailMissions)
	a.v = openHubView(t, c)

	peak := newDriver(c, plan{prefix: "peak", missions: peakMissions, concurrency: peakMissions, faultEvery: 10, flyers: 3})
	tail := newDriver(c, plan{prefix: "tail", missions: tailMissions, concurrency: 4, faultEvery: 10, flyers: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	loadAt := time.Now()
	a.began = loadAt
	peakDone := runAsync(t, ctx, peak)
	var tailDone <-chan struct{}
	over := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	mark, moved := peak.progressMark(), time.Now()
	lastLog := time.Now()
	for !(over(peakDone) && tailDone != nil && over(tailDone)) {
		if tailDone == nil && peak.counts.started.Load() == peakMissions {
			t.Logf("the step's missions have all started (%s); the trickle begins", peak.progress())
			tailDone = runAsync(t, ctx, tail)
		}
		a.step(ctx)
		if m := peak.progressMark() + tail.progressMark(); m != mark {
			mark, moved = m, time.Now()
		} else if time.Since(moved) > stuckAfter {
			t.Fatalf("nothing moved for %s (%s; %s)\n%s", stuckAfter, peak.progress(), tail.progress(), c.failureReport(append(peak.oldestOpen(3), tail.oldestOpen(3)...)))
		}
		if ctx.Err() != nil {
			t.Fatalf("the load did not end in time (%s; %s)\n%s", peak.progress(), tail.progress(), c.failureReport(append(peak.oldestOpen(3), tail.oldestOpen(3)...)))
		}
		if time.Since(lastLog) >= 10*time.Second {
			t.Logf("%s; %s; %d workers", peak.progress(), tail.progress(), len(c.liveWorkers()))
			lastLog = time.Now()
		}
		time.Sleep(asPoll) // the autoscaler's polling interval; ctx bounds the loop
	}
	loadOver := time.Now()
	t.Logf("load over after %s: %s, %s; %s", loadOver.Sub(loadAt).Round(time.Second), peak.timings(), tail.timings(), peak.flyerStats())

	vctx, vcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer vcancel()
	verify(t, vctx, peak)
	verify(t, vctx, tail)

	// Nothing queued, no drone on a mission: the signal goes to zero and
	// the autoscaler follows it down.
	a.min = 0
	idleBy := time.Now().Add(asIdleAfter + 30*time.Second)
	for len(c.liveWorkers()) > 0 {
		if time.Now().After(idleBy) {
			t.Fatalf("still %d workers %s after the load ended; last signal %+v", len(c.liveWorkers()), time.Since(loadOver).Round(time.Second), a.readings[len(a.readings)-1])
		}
		if !a.step(ctx) {
			time.Sleep(asPoll) // the autoscaler's polling interval; idleBy bounds the loop
		}
	}
	t.Logf("zero workers %s after the load ended", time.Since(loadOver).Round(100*time.Millisecond))
	c.checkWorkers()

	// Each mission's side effects were recorded once, and, since no worker
	// was killed, every one is in some worker's log.
	wantEffects, gotEffects := 0, 0
	for _, d := range []*driver{peak, tail} {
		for _, m := range d.ms {
			wantEffects += len(missionSteps)
			if m.fault {
				wantEffects += len(compensationSteps) - len(stepsAfterFault)
			}
		}
	}
	for _, w := range c.all {
		_, n := w.logStats()
		gotEffects += n
	}
	if gotEffects != wantEffects {
		t.Errorf("the workers logged %d recorded mission effects, want %d (one per step and compensation)", gotEffects, wantEffects)
	}

	// What the autoscaler did, and how fast.
	if a.peak < 2 {
		t.Errorf("the worker count never rose above 1 under a step of %d missions", peakMissions)
	}
	var ups, downs, downsInFlight int
	var longestGap time.Duration
	for _, s := range a.steps {
		if s.up {
			ups++
			first, ok := firstEffect(s.worker)
			work := "did no mission work"
			if ok {
				work = fmt.Sprintf("first mission effect %s after the decision, %s after the load step", first.Sub(s.decided).Round(10*time.Millisecond), first.Sub(loadAt).Round(10*time.Millisecond))
			}
			t.Logf("scale-out %d → %d decided %s after the load step (%s); ready %s later; %s",
				s.from, s.from+1, s.decided.Sub(loadAt).Round(10*time.Millisecond), s.reading.Reason, s.ready.Round(time.Millisecond), work)
			continue
		}
		downs++
		if s.decided.Before(loadOver) {
			downsInFlight++
		}
		if s.from > 1 {
			longestGap = max(longestGap, s.handed.longestGap())
		}
		t.Logf("scale-in %d → %d decided %s after the load step (%s); %s", s.from, s.from-1, s.decided.Sub(loadAt).Round(10*time.Millisecond), s.reading.Reason, s.handed)
	}
	t.Logf("autoscaler: %d scale-outs, %d scale-ins (%d with missions in flight), peak %d workers; longest a partition stayed unowned in a scale-in: %s",
		ups, downs, downsInFlight, a.peak, longestGap.Round(time.Millisecond))
	if longestGap > 2*time.Second {
		t.Errorf("a scale-in left a partition unowned for %s; the survivors should claim released partitions within a second or so", longestGap.Round(time.Millisecond))
	}
	if downs < a.peak {
		t.Errorf("%d scale-ins from a peak of %d workers: the count did not come back to zero step by step", downs, a.peak)
	}
}
