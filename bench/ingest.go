package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/simulator"
)

// W4: W4Drones drones, none on a mission, each report W4FramesPerDrone
// frames through POST /api/telemetry as fast as the worker takes them.
// Ingestion stores every accepted frame of an idle drone (it merges it
// into the drone's state; only the signal to a mission needs one), so no
// mission is started. The drones are dealt to min(Concurrency, W4Drones)
// bridges; each posts its drones' frames in order (a tick of all its drones,
// then the next), W4Batch frames a post, one post at a time, so a drone's
// frames reach the worker in order; the bridges post concurrently. At the
// end every drone's stored state must be the last frame sent to it.

// w4MismatchesShown is how many mismatching drones the error names.
const w4MismatchesShown = 5

// droneTruth is what the simulator sent one drone: the number of frames and
// the state they add up to (merged here, independently of ingestion).
type droneTruth struct {
	frames int
	state  domain.DroneState
}

func (t *droneTruth) apply(f domain.Frame) {
	t.frames++
	s := &t.state
	s.DeviceID, s.Seq, s.Timestamp = f.DeviceID, *f.Seq, *f.Timestamp
	if f.Battery != nil {
		s.Battery = *f.Battery
	}
	if f.FlightMode != nil {
		s.FlightMode = *f.FlightMode
	}
	if f.Position != nil {
		s.Position = *f.Position
	}
	if h := f.Health; h != nil {
		if h.GyrometerOK != nil {
			s.Health.GyrometerOK = *h.GyrometerOK
		}
		if h.AccelerometerOK != nil {
			s.Health.AccelerometerOK = *h.AccelerometerOK
		}
		if h.MagnetometerOK != nil {
			s.Health.MagnetometerOK = *h.MagnetometerOK
		}
	}
}

// ingest runs W4 on a fresh worker.
func (e *Engine) ingest(ctx context.Context) (res *Result, err error) {
	drones, perDrone := e.opts.W4Drones, e.opts.W4FramesPerDrone
	s, err := e.startSimWorker(ctx, drones, nil)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := s.close(ctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close the worker: %w", cerr))
		}
	}()
	bridges := min(e.opts.Concurrency, drones)
	truth := make([]droneTruth, drones)
	lats := make([][]time.Duration, bridges)
	errs := make([]error, bridges)
	var tally verdictTally
	var sent atomic.Int64
	total := drones * perDrone
	// The frames' timestamps end about now, one second apart.
	first := time.Now().UTC().Add(-time.Duration(perDrone) * time.Second).Truncate(time.Millisecond)

	w := beginWindow(s.counter)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for b := range bridges {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[b] = e.bridge(pctx, s, b, bridges, first, truth, &lats[b], &tally, &sent)
			if errs[b] != nil {
				cancel()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-t.C:
			e.progress(Progress{Engine: e.name, Workload: W4, Done: int(sent.Load()), Total: total, Unit: "frames", Elapsed: time.Since(w.began)})
		}
	}
	m := w.end(time.Now())
	if err := firstCause(errs); err != nil {
		return nil, fmt.Errorf("%d of %d frames posted: %w", sent.Load(), total, err)
	}

	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	posts := len(all)
	tally.mu.Lock()
	fig := &IngestFigures{
		Storage: s.storage, Drones: drones, FramesPerDrone: perDrone, Batch: e.opts.W4Batch, Bridges: bridges,
		Frames: total, Posts: posts, Retries: int(s.post.retries.Load()),
		PostLatencyMs: percentiles(all),
		Accepted:      tally.accepted, Duplicates: tally.duplicates, Stale: tally.stale, Rejected: tally.rejected,
	}
	tally.mu.Unlock()
	res = &Result{
		Engine: e.name, Workload: W4, Concurrency: e.opts.Concurrency, Seconds: m.window.Seconds(),
		CPUSeconds: m.cpu.Seconds(), PeakRSSBytes: m.peakRSS, PeakRSSOfProcess: m.peakRSS > 0 && !m.rssReset,
		Requests: requestsOf(m.requests, 0, 0, total),
		Ingest:   fig,
	}
	if m.window > 0 {
		fig.FramesPerSecond = float64(total) / m.window.Seconds()
		fig.PostsPerSecond = float64(posts) / m.window.Seconds()
	}
	fig.CPUPerFrameUs = float64(m.cpu.Nanoseconds()) / 1000 / float64(total)

	var check []error
	if err := tally.err(); err != nil {
		check = append(check, err)
	}
	verified, err := e.checkGroundTruth(ctx, s, truth)
	fig.VerifiedDrones = verified
	if err != nil {
		check = append(check, err)
	}
	return res, errors.Join(check...)
}

// firstCause returns the first error that is not a bridge cancelled
// because another failed, or else the first error.
func firstCause(errs []error) error {
	var first error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if !errors.Is(err, context.Canceled) {
			return err
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// bridge posts the frames of drones b, b+bridges, b+2·bridges … in order:
// one frame of each, then the next, W4Batch frames a post.
func (e *Engine) bridge(ctx context.Context, s *simWorker, b, bridges int, first time.Time, truth []droneTruth,
	lats *[]time.Duration, tally *verdictTally, sent *atomic.Int64) error {
	var drones []int
	for j := b; j < len(truth); j += bridges {
		drones = append(drones, j)
	}
	flights := make([]*simulator.Flight, len(truth))
	for _, j := range drones {
		flights[j] = simulator.NewFlight(simulator.FlightOptions{DroneID: simDroneID(j), Route: simRoute(j), Start: first})
	}
	batch := make([]domain.Frame, 0, e.opts.W4Batch)
	post := func() error {
		began := time.Now()
		v, resent, at, err := s.post.send(ctx, batch)
		if err != nil {
			return err
		}
		*lats = append(*lats, at.Sub(began))
		tally.add(v, resent)
		sent.Add(int64(len(batch)))
		batch = batch[:0]
		return nil
	}
	for range e.opts.W4FramesPerDrone {
		for _, j := range drones {
			fr, ok := flights[j].Next()
			if !ok {
				// Landed home: the next flight goes on with the drone's
				// sequence numbers and clock, starting with a key frame.
				t := &truth[j].state
				flights[j] = simulator.NewFlight(simulator.FlightOptions{DroneID: simDroneID(j), Route: simRoute(j + 1),
					FirstSeq: t.Seq + 1, Start: t.Timestamp.Add(time.Second)})
				fr, _ = flights[j].Next()
			}
			truth[j].apply(fr)
			batch = append(batch, fr)
			if len(batch) == e.opts.W4Batch {
				if err := post(); err != nil {
					return err
				}
			}
		}
	}
	if len(batch) > 0 {
		return post()
	}
	return nil
}

// checkGroundTruth reads every drone back (fleet.Store.Drone) and compares
// its stored state with what was sent to it: the number of frames and the
// state of the last one (sequence number, timestamp, battery, flight mode,
// position, health). It returns how many drones matched.
func (e *Engine) checkGroundTruth(ctx context.Context, s *simWorker, truth []droneTruth) (int, error) {
	var (
		next       atomic.Int64
		wg         sync.WaitGroup
		mu         sync.Mutex
		matched    int
		mismatches []string
		bad        int
		readErr    error
	)
	for range min(e.opts.Concurrency, len(truth)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				j := int(next.Add(1) - 1)
				if j >= len(truth) || ctx.Err() != nil {
					return
				}
				id := simDroneID(j)
				d, err := s.w.Fleet().Drone(ctx, id)
				mu.Lock()
				switch {
				case err != nil:
					if readErr == nil {
						readErr = fmt.Errorf("read drone %s back: %w", id, err)
					}
				default:
					if diff := stateDiff(truth[j], d.Tracked.State, d.Frames); diff != "" {
						bad++
						if len(mismatches) < w4MismatchesShown {
							mismatches = append(mismatches, id+": "+diff)
						}
					} else {
						matched++
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if readErr != nil {
		return matched, fmt.Errorf("ground truth check: %w", readErr)
	}
	if bad > 0 {
		return matched, fmt.Errorf("ground truth check failed: %d of %d drones' stored state is not the last frame sent to them (frames lost or misordered): %s",
			bad, len(truth), strings.Join(mismatches, "; "))
	}
	return matched, nil
}

// stateDiff describes how the stored state (and accepted-frame count)
// differs from what was sent; "" if it does not.
func stateDiff(t droneTruth, got *domain.DroneState, frames int64) string {
	want := t.state
	if got == nil {
		return fmt.Sprintf("no stored state, %d frames counted; sent %d frames, the last %s", frames, t.frames, describeState(want))
	}
	g := *got
	same := g.DeviceID == want.DeviceID && g.Seq == want.Seq && g.Timestamp.Equal(want.Timestamp) && g.Battery == want.Battery &&
		g.FlightMode == want.FlightMode && g.Position == want.Position && g.Health == want.Health
	if same && frames == int64(t.frames) {
		return ""
	}
	return fmt.Sprintf("stored %s after %d accepted frames; sent %d frames, the last %s", describeState(g), frames, t.frames, describeState(want))
}

func describeState(s domain.DroneState) string {
	return fmt.Sprintf("seq %d at %s, battery %g, %s at %g,%g,%g, health %+v", s.Seq, s.Timestamp.UTC().Format(time.RFC3339Nano),
		s.Battery, s.FlightMode, s.Position.Lat, s.Position.Lon, s.Position.Alt, s.Health)
}
