package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/domain"
)

// The ground truth check names what differs: a lost last frame, or a frame
// lost earlier (the count), or no state at all.
func TestStateDiff(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	var truth droneTruth
	for i, b := range []float64{0.9, 0.8} {
		seq, ts, bat, mode := int64(i+1), at.Add(time.Duration(i)*time.Second), b, domain.ModeInflight
		pos := domain.Position{Lat: 47.6, Lon: -122.1 + float64(i)*0.001, Alt: 120}
		ok := true
		truth.apply(domain.Frame{DeviceID: "drone-1", Seq: &seq, Timestamp: &ts, Battery: &bat, FlightMode: &mode, Position: &pos,
			Health: &domain.Health{GyrometerOK: &ok, AccelerometerOK: &ok, MagnetometerOK: &ok}, IsKeyFrame: true})
	}
	same := truth.state
	if d := stateDiff(truth, &same, 2); d != "" {
		t.Errorf("equal state: %q", d)
	}
	older := same
	older.Seq, older.Battery = 1, 0.9
	for _, tc := range []struct {
		name   string
		state  *domain.DroneState
		frames int64
		want   []string
	}{
		{"last frame lost", &older, 1, []string{"stored seq 1", "battery 0.9", "after 1 accepted frames", "sent 2 frames, the last seq 2", "battery 0.8"}},
		{"a frame lost earlier", &same, 1, []string{"after 1 accepted frames", "sent 2 frames"}},
		{"nothing stored", nil, 0, []string{"no stored state", "sent 2 frames"}},
	} {
		d := stateDiff(truth, tc.state, tc.frames)
		for _, w := range tc.want {
			if !strings.Contains(d, w) {
				t.Errorf("%s: %q does not say %q", tc.name, d, w)
			}
		}
	}
}
