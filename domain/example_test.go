package domain_test

import (
	"fmt"
	"time"

	"github.com/dronehub/dronehub/domain"
)

func ExampleTracked_Apply() {
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	frame := func(seq int64) domain.Frame {
		ts := t0.Add(time.Duration(seq) * time.Second)
		return domain.Frame{DeviceID: "drone-7", Seq: &seq, Timestamp: &ts}
	}
	keyFrame := func(seq int64, battery float64, mode domain.FlightMode) domain.Frame {
		f := frame(seq)
		ok := true
		f.IsKeyFrame, f.Battery, f.FlightMode = true, &battery, &mode
		f.Position = &domain.Position{Lat: 47.64, Lon: -122.13, Alt: 120}
		f.Health = &domain.Health{GyrometerOK: &ok, AccelerometerOK: &ok, MagnetometerOK: &ok}
		return f
	}
	batteryDelta := func(seq int64, battery float64) domain.Frame {
		f := frame(seq)
		f.Battery = &battery
		return f
	}

	var tr domain.Tracked
	for _, f := range []domain.Frame{
		batteryDelta(2009, 0.95),                  // a delta with nothing to merge into
		keyFrame(2010, 0.90, domain.ModeInflight), // the first key frame
		keyFrame(2010, 0.90, domain.ModeInflight), // redelivered
		batteryDelta(2012, 0.85),                  // merges into the key frame
		keyFrame(2011, 0.88, domain.ModeLanding),  // arrives late: seen, not applied
		batteryDelta(2011, 0.88),                  // and is remembered
		keyFrame(900, 1, domain.ModeReady),        // behind the dedupe window
	} {
		verdict, reason := tr.Apply(f)
		fmt.Printf("seq %d: %s", *f.Seq, verdict)
		if reason != "" {
			fmt.Printf(" (%s)", reason)
		}
		fmt.Println()
	}
	s := tr.State
	fmt.Printf("state: seq %d, battery %.2f, %s\n", s.Seq, s.Battery, s.FlightMode)
	// Output:
	// seq 2009: rejected (a delta frame needs an earlier key frame to merge into; send a key frame first)
	// seq 2010: accepted
	// seq 2010: duplicate (seq 2010 was already received)
	// seq 2012: accepted
	// seq 2011: stale (seq 2011 is older than the stored state (seq 2012); not applied)
	// seq 2011: duplicate (seq 2011 was already received)
	// seq 900: stale (seq 900 is 1024 or more behind the newest seq 2012 and its timestamp is not newer than the stored state's)
	// state: seq 2012, battery 0.85, inflight
}
