package domain

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// HealthState is a drone's last known sensor self-check.
type HealthState struct {
	GyrometerOK     bool `json:"gyrometerOk"`
	AccelerometerOK bool `json:"accelerometerOk"`
	MagnetometerOK  bool `json:"magnetometerOk"`
}

// Fault names the failed sensors, or "" when all are fine.
func (h HealthState) Fault() string {
	var bad []string
	if !h.GyrometerOK {
		bad = append(bad, "gyrometer")
	}
	if !h.AccelerometerOK {
		bad = append(bad, "accelerometer")
	}
	if !h.MagnetometerOK {
		bad = append(bad, "magnetometer")
	}
	return strings.Join(bad, ", ")
}

// DroneState is the merged result of a drone's key frame and the deltas that
// followed it.
type DroneState struct {
	DeviceID   string      `json:"deviceId"`
	Seq        int64       `json:"seq"`
	Timestamp  time.Time   `json:"timestamp"`
	Battery    float64     `json:"battery"`
	FlightMode FlightMode  `json:"flightMode"`
	Position   Position    `json:"position"`
	Health     HealthState `json:"health"`
}

// Verdict is what ingestion did with one frame.
type Verdict string

// Verdicts reported per frame by POST /api/telemetry.
const (
	// VerdictAccepted: the frame was newer than the stored state and was applied.
	VerdictAccepted Verdict = "accepted"
	// VerdictDuplicate: a frame with this (deviceId, seq) was seen before.
	VerdictDuplicate Verdict = "duplicate"
	// VerdictStale: the frame is older than the stored state; it was recorded
	// as seen but did not overwrite newer state.
	VerdictStale Verdict = "stale"
	// VerdictRejected: the frame is invalid, or a delta arrived before any key
	// frame it could merge into.
	VerdictRejected Verdict = "rejected"
)

// SeqWindowSize is how many sequence numbers behind the newest one a drone's
// dedupe window remembers. Frames further back are reported stale.
const SeqWindowSize = 1024

// SeqWindow remembers which recent sequence numbers were seen, in a fixed 128
// bytes per drone, so dedupe state never grows.
type SeqWindow struct {
	// Last is the newest sequence number seen. The zero value is an empty
	// window: with no bits set, nothing counts as seen.
	Last int64 `json:"last"`
	// Bits holds one bit per sequence number in (Last-SeqWindowSize, Last];
	// bit i stands for Last-i.
	Bits [SeqWindowSize / 64]uint64 `json:"bits"`
}

func (w *SeqWindow) seen(seq int64) bool {
	if seq > w.Last || seq <= w.Last-SeqWindowSize {
		return false
	}
	i := w.Last - seq
	return w.Bits[i/64]&(1<<(i%64)) != 0
}

func (w *SeqWindow) mark(seq int64) {
	if seq > w.Last {
		w.shift(seq - w.Last)
		w.Last = seq
	}
	i := w.Last - seq
	if i < SeqWindowSize {
		w.Bits[i/64] |= 1 << (i % 64)
	}
}

// shift moves every bit n places towards older sequence numbers.
func (w *SeqWindow) shift(n int64) {
	if n >= SeqWindowSize {
		w.Bits = [SeqWindowSize / 64]uint64{}
		return
	}
	words, bits := int(n/64), uint(n%64)
	var out [SeqWindowSize / 64]uint64
	for i := len(w.Bits) - 1; i >= words; i-- {
		v := w.Bits[i-words] << bits
		if bits > 0 && i-words-1 >= 0 {
			v |= w.Bits[i-words-1] >> (64 - bits)
		}
		out[i] = v
	}
	w.Bits = out
}

// Tracked is the ingestion state of one drone: its merged state (nil before
// the first key frame) and its dedupe window.
type Tracked struct {
	State  *DroneState `json:"state,omitempty"`
	Window SeqWindow   `json:"window"`
}

// Apply ingests one validated frame. It is a pure function of (t, f), so
// applying the same frames again, in any order, gives the same state: that is
// what makes ingestion idempotent under redelivery.
func (t *Tracked) Apply(f Frame) (Verdict, string) {
	seq := *f.Seq
	switch {
	case t.Window.seen(seq):
		return VerdictDuplicate, fmt.Sprintf("seq %d was already received", seq)
	case seq <= t.Window.Last-SeqWindowSize:
		return VerdictStale, fmt.Sprintf("seq %d is %d or more behind the newest seq %d", seq, SeqWindowSize, t.Window.Last)
	case seq < t.Window.Last:
		t.Window.mark(seq)
		return VerdictStale, fmt.Sprintf("seq %d is older than the stored state (seq %d); not applied", seq, t.Window.Last)
	}
	if !f.IsKeyFrame && t.State == nil {
		return VerdictRejected, "a delta frame needs an earlier key frame to merge into; send a key frame first"
	}
	t.Window.mark(seq)
	if f.IsKeyFrame {
		t.State = &DroneState{
			DeviceID:   f.DeviceID,
			Seq:        seq,
			Timestamp:  f.Timestamp.UTC(),
			Battery:    *f.Battery,
			FlightMode: *f.FlightMode,
			Position:   *f.Position,
			Health: HealthState{
				GyrometerOK:     *f.Health.GyrometerOK,
				AccelerometerOK: *f.Health.AccelerometerOK,
				MagnetometerOK:  *f.Health.MagnetometerOK,
			},
		}
		return VerdictAccepted, ""
	}
	s := t.State
	s.Seq = seq
	s.Timestamp = f.Timestamp.UTC()
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
	return VerdictAccepted, ""
}

const earthRadiusM = 6371000.0

// DistanceM is the great-circle distance between two points in metres.
func DistanceM(a, b LatLon) float64 {
	rad := math.Pi / 180
	dLat := (b.Lat - a.Lat) * rad
	dLon := (b.Lon - a.Lon) * rad
	h := math.Sin(dLat/2)*math.Sin(dLat/2) + math.Cos(a.Lat*rad)*math.Cos(b.Lat*rad)*math.Sin(dLon/2)*math.Sin(dLon/2)
	return 2 * earthRadiusM * math.Asin(math.Min(1, math.Sqrt(h)))
}

// Interpolate returns the point a fraction f of the way from a to b. It is
// linear in degrees, which is accurate enough over a delivery's few
// kilometres.
func Interpolate(a, b LatLon, f float64) LatLon {
	return LatLon{Lat: a.Lat + (b.Lat-a.Lat)*f, Lon: a.Lon + (b.Lon-a.Lon)*f}
}
