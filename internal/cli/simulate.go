package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/simulator"
)

func (a *App) simulate(ctx context.Context, args []string) error {
	fs := a.flagSet("simulate", "simulate [flags]")
	f := a.apiFlags(fs)
	var (
		missions, keyEvery, faulty int
		attach, faultName          string
		fps, speed, faultAt        float64
		step, timeout              time.Duration
	)
	fs.IntVar(&missions, "missions", 1, "missions to start and fly (one drone each)")
	fs.StringVar(&attach, "attach", "", "comma-separated ids of running missions to fly instead of starting new ones")
	fs.Float64Var(&fps, "fps", 5, "frames per second sent per drone")
	fs.DurationVar(&step, "step", time.Second, "simulated flight time per frame (step × fps = time compression)")
	fs.Float64Var(&speed, "speed", 15, "cruise speed in m/s")
	fs.IntVar(&keyEvery, "key-every", 10, "send a key frame every N frames, deltas in between")
	fs.StringVar(&faultName, "fault", "none", "inject a failure: none, fault (sensor), silence (drone lost) or low-battery")
	fs.Float64Var(&faultAt, "fault-at", 0.3, "fraction of the route flown (0-1) when the failure strikes")
	fs.IntVar(&faulty, "faulty", 0, "how many of the drones get the failure (default all)")
	fs.DurationVar(&timeout, "timeout", 10*time.Minute, "give up after this long")
	fs.Lookup("url").Usage = "dronehub HTTP API base URL; several, comma-separated, to fail over between workers"
	if err := a.parse(fs, args); err != nil {
		return err
	}
	fault, err := simulator.ParseFault(faultName)
	switch {
	case err != nil:
		return fmt.Errorf("--fault: %w", err)
	case fps <= 0 || fps > 1000:
		return fmt.Errorf("--fps %g must be in (0, 1000]", fps)
	case missions < 0 || missions > 1000:
		return fmt.Errorf("--missions %d must be 0-1000", missions)
	case faultAt < 0 || faultAt > 1:
		return fmt.Errorf("--fault-at %g must be in [0, 1]", faultAt)
	case keyEvery < 1:
		return fmt.Errorf("--key-every %d must be at least 1", keyEvery)
	case speed <= 0:
		return fmt.Errorf("--speed %g must be positive", speed)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// Every request survives a worker restart, a storage outage (503) or
	// load shedding (429): it is resent, to the next --url when there are
	// several, with back-off, until --timeout. Each is idempotent: missions
	// get an id here, and a resent telemetry batch comes back as duplicates.
	// Retry notices come from the flights' goroutines while this one
	// prints progress: one lock for everything simulate writes to stderr.
	stderr := &lockedWriter{w: a.Stderr}
	// On a terminal, progress is a bar redrawn in place (line); elsewhere
	// a line every 2 s.
	var line *statusLine
	if isTerminal(a.Stderr) {
		line = newStatusLine(stderr)
		defer line.Clear()
	}
	var retries atomic.Int64
	var lastNotice atomic.Int64
	notice := func(err error) {
		retries.Add(1)
		if now := time.Now().UnixNano(); now-lastNotice.Load() > int64(time.Second) {
			lastNotice.Store(now)
			if line != nil {
				line.Println("retrying: " + firstLine(err))
				return
			}
			fmt.Fprintf(stderr, "retrying: %v\n", firstLine(err))
		}
	}
	c, err := f.dial(client.Options{
		Retry:   client.RetryPolicy{MaxAttempts: -1, MaxBackoff: 2 * time.Second},
		OnRetry: notice,
	})
	if err != nil {
		return err
	}

	var missionsFlown []*client.MissionHandle
	if attach != "" {
		for _, id := range strings.Split(attach, ",") {
			if id = strings.TrimSpace(id); id != "" {
				missionsFlown = append(missionsFlown, c.Mission(id))
			}
		}
	} else {
		run := strconv.FormatInt(time.Now().Unix(), 36) + "-" + uuid.NewString()[:8]
		for i := 0; i < missions; i++ {
			req := demoRequest(i)
			req.MissionID = fmt.Sprintf("sim-%s-%d", run, i+1)
			m, err := c.StartMission(ctx, req)
			if err != nil {
				return fmt.Errorf("start mission %d: %w", i+1, err)
			}
			missionsFlown = append(missionsFlown, m)
		}
		fmt.Fprintf(stderr, "started %d missions\n", len(missionsFlown))
	}
	if len(missionsFlown) == 0 {
		return errors.New("nothing to fly: give --missions N or --attach IDS")
	}
	if faulty <= 0 || faulty > len(missionsFlown) {
		faulty = len(missionsFlown)
	}

	var flights []*simulator.Flight
	planned := 0 // frames the flights will send, about
	for i, m := range missionsFlown {
		st, err := m.WaitPhase(ctx, domain.PhaseHeadedToPickup)
		if errors.Is(err, client.ErrGone) {
			fmt.Fprintf(stderr, "mission %s ended before its drone left (%s: %s)\n", m.ID(), st.Status.Phase, st.Status.Failure)
			continue
		}
		if err != nil {
			return fmt.Errorf("mission %s never dispatched a drone: %w", m.ID(), err)
		}
		d, err := c.Drone(ctx, st.Status.DroneID)
		if err != nil {
			return err
		}
		fo := simulator.FlightOptions{DroneID: d.DroneID, Route: *st.Status.Route, SpeedMps: speed, Step: step, KeyFrameEvery: keyEvery, FirstSeq: d.NextSeq()}
		if i < faulty {
			fo.Fault, fo.FaultAt = fault, faultAt
		}
		flights = append(flights, simulator.NewFlight(fo))
		planned += plannedFrames(fo.Route, speed, step)
	}

	var sent, accepted atomic.Int64
	sink := simulator.SinkFunc(func(ctx context.Context, frames []domain.Frame) error {
		res, err := c.Ingest(ctx, frames)
		if err != nil {
			return fmt.Errorf("post telemetry: %w", err)
		}
		sent.Add(int64(len(frames)))
		accepted.Add(int64(res.Accepted))
		return nil
	})
	start := time.Now()
	every := 2 * time.Second
	if line != nil {
		every = 200 * time.Millisecond
	}
	progress := time.NewTicker(every)
	defer progress.Stop()
	flown := make(chan error, 1)
	go func() { flown <- simulator.Fly(ctx, sink, time.Duration(float64(time.Second)/fps), flights...) }()
	for waiting := true; waiting; {
		select {
		case err := <-flown:
			if err != nil {
				return err
			}
			waiting = false
		case <-progress.C:
			if line != nil {
				n := int(sent.Load())
				line.Draw(fmt.Sprintf("flying %s %3.0f%%  %d/~%d frames sent, %d accepted%s, %.0fs", bar(fraction(n, planned), 30),
					100*min(fraction(n, planned), 1), n, max(planned, n), accepted.Load(), retried(&retries), time.Since(start).Seconds()))
				continue
			}
			fmt.Fprintf(stderr, "%4.0fs  %d frames sent, %d accepted%s\n", time.Since(start).Seconds(), sent.Load(), accepted.Load(), retried(&retries))
		}
	}
	if line != nil {
		line.Clear()
	}
	fmt.Fprintf(stderr, "flights over after %.0fs: %d frames sent, %d accepted%s; waiting for missions to end\n", time.Since(start).Seconds(), sent.Load(), accepted.Load(), retried(&retries))

	results := make([]client.Mission, 0, len(missionsFlown))
	for _, m := range missionsFlown {
		st, err := m.Wait(ctx)
		var ended *client.InstanceError
		if err != nil && !errors.As(err, &ended) {
			return err
		}
		results = append(results, st)
	}
	if f.asJSON {
		return f.printJSON(results)
	}
	sort.Slice(results, func(i, j int) bool { return results[i].InstanceID < results[j].InstanceID })
	tw := tabwriter.NewWriter(a.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MISSION\tDRONE\tPHASE\tFAILURE\tCOMPENSATED")
	for _, st := range results {
		ms := st.Status
		var steps []string
		for _, comp := range ms.Compensations {
			steps = append(steps, comp.Step)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", st.InstanceID, orDash(ms.DroneID), ms.Phase, orDash(ms.Failure), orDash(strings.Join(steps, ", ")))
	}
	return tw.Flush()
}

// plannedFrames is about how many frames simulator.NewFlight sends on
// route at speed, one per step: one per step of each leg flown, and the
// ground frames (ready, take-off, landing, two dwelling at pickup and at
// drop-off, two at home). A flight that goes silent sends fewer.
func plannedFrames(route domain.Route, speed float64, step time.Duration) int {
	const ground = 13
	stride := speed * step.Seconds()
	n := ground
	for _, leg := range [][2]domain.LatLon{{route.Home, route.Pickup}, {route.Pickup, route.Dropoff}, {route.Dropoff, route.Home}} {
		n += max(1, int(math.Ceil(domain.DistanceM(leg[0], leg[1])/stride)))
	}
	return n
}

// demoRequest is the i-th demo delivery around the demo fleet's base.
func demoRequest(i int) domain.MissionRequest {
	dx := float64(i%5) * 0.002
	dy := float64(i/5%5) * 0.002
	pickup := domain.LatLon{Lat: 47.6440 + dy, Lon: -122.1300 + dx}
	dropoff := domain.LatLon{Lat: 47.6480 + dy, Lon: -122.1370 + dx}
	return domain.MissionRequest{
		Pickup: &pickup, Dropoff: &dropoff,
		Package:  &domain.Package{ID: fmt.Sprintf("sim-pkg-%d", i+1), WeightKg: 1.2, Size: domain.SizeSmall},
		Deadline: time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second),
	}
}

func retried(n *atomic.Int64) string {
	if v := n.Load(); v > 0 {
		return fmt.Sprintf(", %d requests resent", v)
	}
	return ""
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
