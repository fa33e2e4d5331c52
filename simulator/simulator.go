// Package simulator flies simulated drones along real mission routes and
// produces their telemetry: key frames and deltas, with faults, silence or
// a failing battery injected on demand. Tests drive missions with it, and
// "dronehub simulate" posts its frames to a running worker.
package simulator

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/dronehub/dronehub/domain"
)

// Fault is a failure to inject into a flight.
type Fault string

// Faults the simulator can inject.
const (
	FaultNone       Fault = ""
	FaultHealth     Fault = "fault"       // the gyrometer fails
	FaultSilence    Fault = "silence"     // the drone stops reporting
	FaultLowBattery Fault = "low-battery" // the charge collapses to 10%
)

// ParseFault accepts the names above ("" or "none" for no fault).
func ParseFault(s string) (Fault, error) {
	switch Fault(s) {
	case FaultNone, "none":
		return FaultNone, nil
	case FaultHealth, FaultSilence, FaultLowBattery:
		return Fault(s), nil
	}
	return "", fmt.Errorf("unknown fault %q: use none, fault, silence or low-battery", s)
}

// FlightOptions describes one flight. The zero value of each field but
// DroneID and Route means its default.
type FlightOptions struct {
	DroneID string
	Route   domain.Route
	// SpeedMps is the cruise speed; default 15.
	SpeedMps float64
	// Step is the simulated time between frames; default 1s.
	Step time.Duration
	// KeyFrameEvery sends a key frame every this many frames; default 10.
	KeyFrameEvery int
	// FirstSeq is the first frame's sequence number; default 1.
	FirstSeq int64
	// Start is the first frame's timestamp; default time.Now().
	Start time.Time
	// DwellFrames is how many frames the drone waits on the ground at pickup
	// and drop-off; default 2.
	DwellFrames int
	// Fault is injected once FaultAt (0-1) of the route has been flown.
	Fault   Fault
	FaultAt float64
}

// Flight generates a flight's frames one at a time.
type Flight struct {
	o        FlightOptions
	seq      int64
	now      time.Time
	pos      domain.LatLon
	alt      float64
	mode     domain.FlightMode
	battery  float64
	healthOK bool
	flown    float64
	total    float64
	faulted  bool
	silent   bool
	plan     []stage
	last     *domain.DroneState
	n        int
}

type stage struct {
	mode  domain.FlightMode
	to    *domain.LatLon // for inflight: fly until there
	count int            // for other modes: frames to spend
}

// NewFlight plans a flight home → pickup → drop-off → home.
func NewFlight(o FlightOptions) *Flight {
	if o.SpeedMps == 0 {
		o.SpeedMps = 15
	}
	if o.Step == 0 {
		o.Step = time.Second
	}
	if o.KeyFrameEvery == 0 {
		o.KeyFrameEvery = 10
	}
	if o.FirstSeq == 0 {
		o.FirstSeq = 1
	}
	if o.Start.IsZero() {
		o.Start = time.Now().UTC()
	}
	if o.DwellFrames == 0 {
		o.DwellFrames = 2
	}
	r := o.Route
	pickup, dropoff, home := r.Pickup, r.Dropoff, r.Home
	f := &Flight{
		o: o, seq: o.FirstSeq, now: o.Start, pos: r.Home, mode: domain.ModeReady,
		battery: 1, healthOK: true, total: r.TotalM(),
		plan: []stage{
			{mode: domain.ModeReady, count: 1},
			{mode: domain.ModeTakeoff, count: 1},
			{mode: domain.ModeInflight, to: &pickup},
			{mode: domain.ModeLanding, count: 1},
			{mode: domain.ModeReady, count: o.DwellFrames},
			{mode: domain.ModeTakeoff, count: 1},
			{mode: domain.ModeInflight, to: &dropoff},
			{mode: domain.ModeLanding, count: 1},
			{mode: domain.ModeReady, count: o.DwellFrames},
			{mode: domain.ModeTakeoff, count: 1},
			{mode: domain.ModeInflight, to: &home},
			{mode: domain.ModeLanding, count: 1},
			{mode: domain.ModeReady, count: 2},
		},
	}
	return f
}

// Silenced reports whether the flight stopped because of FaultSilence.
func (f *Flight) Silenced() bool { return f.silent }

// Next returns the next frame, or false when the flight is over (landed
// home) or silenced.
func (f *Flight) Next() (domain.Frame, bool) {
	if f.silent || len(f.plan) == 0 {
		return domain.Frame{}, false
	}
	st := &f.plan[0]
	f.mode = st.mode
	switch {
	case st.to != nil:
		f.alt = 120
		step := f.o.SpeedMps * f.o.Step.Seconds()
		d := domain.DistanceM(f.pos, *st.to)
		if d <= step {
			f.flown += d
			f.pos = *st.to
			f.plan = f.plan[1:]
		} else {
			f.flown += step
			f.pos = domain.Interpolate(f.pos, *st.to, step/d)
		}
		// 2% of charge per kilometre flown.
		f.battery = math.Max(0, 1-0.02*f.flown/1000)
	default:
		if st.mode == domain.ModeReady || st.mode == domain.ModeLanding {
			f.alt = 0
		} else {
			f.alt = 10
		}
		st.count--
		if st.count <= 0 {
			f.plan = f.plan[1:]
		}
	}
	if !f.faulted && f.o.Fault != FaultNone && f.total > 0 && f.flown/f.total >= f.o.FaultAt {
		f.faulted = true
		switch f.o.Fault {
		case FaultHealth:
			f.healthOK = false
		case FaultLowBattery:
			f.battery = 0.1
		case FaultSilence:
			f.silent = true
			return domain.Frame{}, false
		}
	}
	if f.o.Fault == FaultLowBattery && f.faulted {
		f.battery = math.Min(f.battery, 0.1)
	}
	frame := f.frame()
	f.seq++
	f.now = f.now.Add(f.o.Step)
	f.n++
	return frame, true
}

func (f *Flight) frame() domain.Frame {
	seq, ts := f.seq, f.now
	cur := domain.DroneState{
		DeviceID: f.o.DroneID, Seq: seq, Timestamp: ts, Battery: round(f.battery), FlightMode: f.mode,
		Position: domain.Position{Lat: f.pos.Lat, Lon: f.pos.Lon, Alt: f.alt},
		Health:   domain.HealthState{GyrometerOK: f.healthOK, AccelerometerOK: true, MagnetometerOK: true},
	}
	fr := domain.Frame{DeviceID: f.o.DroneID, Seq: &seq, Timestamp: &ts}
	key := f.last == nil || f.n%f.o.KeyFrameEvery == 0
	prev := f.last
	f.last = &cur
	if key {
		fr.IsKeyFrame = true
		b, m, p := cur.Battery, cur.FlightMode, cur.Position
		g, a, mg := cur.Health.GyrometerOK, cur.Health.AccelerometerOK, cur.Health.MagnetometerOK
		fr.Battery, fr.FlightMode, fr.Position = &b, &m, &p
		fr.Health = &domain.Health{GyrometerOK: &g, AccelerometerOK: &a, MagnetometerOK: &mg}
		return fr
	}
	if cur.Battery != prev.Battery {
		b := cur.Battery
		fr.Battery = &b
	}
	if cur.FlightMode != prev.FlightMode {
		m := cur.FlightMode
		fr.FlightMode = &m
	}
	if cur.Position != prev.Position {
		p := cur.Position
		fr.Position = &p
	}
	if cur.Health != prev.Health {
		g := cur.Health.GyrometerOK
		fr.Health = &domain.Health{GyrometerOK: &g}
	}
	return fr
}

func round(v float64) float64 { return math.Round(v*1000) / 1000 }

// Sink receives batches of frames.
type Sink interface {
	Send(ctx context.Context, frames []domain.Frame) error
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(ctx context.Context, frames []domain.Frame) error

// Send implements Sink.
func (f SinkFunc) Send(ctx context.Context, frames []domain.Frame) error { return f(ctx, frames) }

// Fly sends every frame of the flights to sink, one batch per tick holding
// the next frame of each flight still in the air, one tick every interval
// (0 for as fast as the sink takes them). It returns when all flights are
// over, or with the first error.
func Fly(ctx context.Context, sink Sink, interval time.Duration, flights ...*Flight) error {
	var tick *time.Ticker
	if interval > 0 {
		tick = time.NewTicker(interval)
		defer tick.Stop()
	}
	for {
		batch := make([]domain.Frame, 0, len(flights))
		for _, f := range flights {
			if fr, ok := f.Next(); ok {
				batch = append(batch, fr)
			}
		}
		if len(batch) == 0 {
			return nil
		}
		if err := sink.Send(ctx, batch); err != nil {
			return err
		}
		if tick != nil {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		} else if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
