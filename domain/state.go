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
	DeviceID string `json:"deviceId"`
	// Boot is the boot count the drone reported (Frame.Boot).
	Boot int64 `json:"boot,omitempty"`
	// Epoch counts the sequence windows ingestion started for the drone
	// after its first: one per reboot, counter wrap or jump (see
	// Tracked.Apply). States compare by (Epoch, Seq).
	Epoch      int64       `json:"epoch,omitempty"`
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
// dedupe window remembers. Frames further back are stale unless they start
// a new epoch (see Tracked.Apply).
const SeqWindowSize = 1024

// MaxSeq is the largest sequence number a frame may carry: 2^53-1, the
// largest integer every JSON client (JavaScript included) represents exactly.
const MaxSeq = 1<<53 - 1

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

// empty reports whether no sequence number was ever marked.
func (w *SeqWindow) empty() bool {
	return w.Bits == [SeqWindowSize / 64]uint64{}
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

// restart forgets every sequence number and starts the window at seq.
func (w *SeqWindow) restart(seq int64) {
	*w = SeqWindow{Last: seq}
	w.Bits[0] = 1
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
// applying the same frames again gives the same state: that is what makes
// ingestion idempotent under redelivery.
//
// Within one boot of the drone (Frame.Boot) and one window of sequence
// numbers, frames are ordered by seq: a frame already seen is a duplicate,
// one older than the newest is stale, and one newer is applied. Sequence
// numbers are not trusted to grow forever, though: drones reboot, counters
// wrap, and frames can be forged or corrupt. A discontinuity, that is a
// boot other than the stored state's or a seq more than SeqWindowSize away
// from the newest, is settled by the frame's timestamp against the stored
// state's:
//   - a higher boot, or a seq more than SeqWindowSize ahead, starts a new
//     epoch unless its timestamp is older;
//   - a lower boot, or a seq SeqWindowSize or more behind, starts a new
//     epoch only if its timestamp is newer (a reboot without a boot count,
//     a wrapped counter, or the real counter after a forged jump).
//
// A new epoch restarts the window at the frame's seq and applies the frame;
// any other discontinuity is stale. A forged frame can therefore hold a
// drone's real frames back only until their timestamps pass the forged
// one, and Frame.CheckTime bounds how far ahead that can be.
func (t *Tracked) Apply(f Frame) (Verdict, string) {
	seq, last := *f.Seq, t.Window.Last
	if t.Window.empty() || t.State == nil {
		return t.apply(f, false)
	}
	ts, stored, boot := f.Timestamp.UTC(), t.State.Timestamp, t.State.Boot
	switch {
	case f.Boot > boot || seq > last+SeqWindowSize:
		if ts.Before(stored) {
			return VerdictStale, fmt.Sprintf("boot %d, seq %d is ahead of the newest frame (boot %d, seq %d) by more than the window but its timestamp is older than the stored state's; not applied",
				f.Boot, seq, boot, last)
		}
		return t.apply(f, true)
	case f.Boot < boot || seq <= last-SeqWindowSize:
		if !ts.After(stored) {
			if f.Boot < boot {
				return VerdictStale, fmt.Sprintf("boot %d is older than the drone's boot %d and its timestamp is not newer than the stored state's", f.Boot, boot)
			}
			return VerdictStale, fmt.Sprintf("seq %d is %d or more behind the newest seq %d and its timestamp is not newer than the stored state's", seq, SeqWindowSize, last)
		}
		return t.apply(f, true)
	case t.Window.seen(seq):
		return VerdictDuplicate, fmt.Sprintf("seq %d was already received", seq)
	case seq < last:
		t.Window.mark(seq)
		return VerdictStale, fmt.Sprintf("seq %d is older than the stored state (seq %d); not applied", seq, last)
	}
	return t.apply(f, false)
}

// apply records f as the newest frame, in a new epoch when restart is set.
func (t *Tracked) apply(f Frame, restart bool) (Verdict, string) {
	seq := *f.Seq
	if !f.IsKeyFrame && t.State == nil {
		return VerdictRejected, "a delta frame needs an earlier key frame to merge into; send a key frame first"
	}
	var epoch int64
	if t.State != nil {
		epoch = t.State.Epoch
	}
	if restart {
		t.Window.restart(seq)
		epoch++
	} else {
		t.Window.mark(seq)
	}
	if f.IsKeyFrame {
		t.State = &DroneState{
			DeviceID:   f.DeviceID,
			Boot:       f.Boot,
			Epoch:      epoch,
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
	s.Boot, s.Epoch = f.Boot, epoch
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

// Newer reports whether s is a later report of the drone than (epoch, seq).
func (s DroneState) Newer(epoch, seq int64) bool {
	return s.Epoch > epoch || (s.Epoch == epoch && s.Seq > seq)
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
