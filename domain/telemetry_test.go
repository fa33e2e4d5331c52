package domain

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func ptr[T any](v T) *T { return &v }

func keyFrame(seq int64, battery float64, mode FlightMode, lat float64) Frame {
	ts := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC).Add(time.Duration(seq) * time.Second)
	return Frame{
		DeviceID: "drone-7", Seq: ptr(seq), Timestamp: &ts, IsKeyFrame: true,
		Battery: ptr(battery), FlightMode: ptr(mode), Position: &Position{Lat: lat, Lon: -122.13, Alt: 120},
		Health: &Health{GyrometerOK: ptr(true), AccelerometerOK: ptr(true), MagnetometerOK: ptr(true)},
	}
}

func delta(seq int64) Frame {
	ts := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC).Add(time.Duration(seq) * time.Second)
	return Frame{DeviceID: "drone-7", Seq: ptr(seq), Timestamp: &ts}
}

func TestApplyDedupesAndGuardsOrder(t *testing.T) {
	var tr Tracked
	steps := []struct {
		frame   Frame
		want    Verdict
		battery float64 // stored battery after the step
	}{
		{delta(1), VerdictRejected, 0}, // no key frame to merge into yet
		{keyFrame(10, 0.9, ModeInflight, 47.64), VerdictAccepted, 0.9},
		{keyFrame(10, 0.5, ModeInflight, 47.64), VerdictDuplicate, 0.9},
		{keyFrame(12, 0.8, ModeInflight, 47.65), VerdictAccepted, 0.8},
		{keyFrame(11, 0.1, ModeLanding, 47.60), VerdictStale, 0.8},     // late: must not overwrite seq 12
		{keyFrame(11, 0.1, ModeLanding, 47.60), VerdictDuplicate, 0.8}, // and is remembered
		{func() Frame { f := delta(13); f.Battery = ptr(0.7); return f }(), VerdictAccepted, 0.7},
		{keyFrame(12-SeqWindowSize, 0.2, ModeReady, 1), VerdictStale, 0.7}, // beyond the window
	}
	for i, s := range steps {
		got, reason := tr.Apply(s.frame)
		if got != s.want {
			t.Fatalf("step %d (seq %d): verdict %s (%s), want %s", i, *s.frame.Seq, got, reason, s.want)
		}
		if tr.State != nil && tr.State.Battery != s.battery {
			t.Fatalf("step %d: battery %g, want %g", i, tr.State.Battery, s.battery)
		}
	}
	if tr.State.Seq != 13 || tr.State.Position.Lat != 47.65 || tr.State.FlightMode != ModeInflight {
		t.Fatalf("state %+v: the delta must merge into the seq-12 key frame", tr.State)
	}
}

func TestDeltaMergesOnlyWhatItCarries(t *testing.T) {
	var tr Tracked
	tr.Apply(keyFrame(1, 0.9, ModeInflight, 47.64))
	d := delta(2)
	d.Health = &Health{MagnetometerOK: ptr(false)}
	d.FlightMode = ptr(ModeLanding)
	if v, r := tr.Apply(d); v != VerdictAccepted {
		t.Fatalf("delta: %s %s", v, r)
	}
	s := tr.State
	if s.Battery != 0.9 || s.Position.Lat != 47.64 || s.FlightMode != ModeLanding {
		t.Fatalf("merged state %+v", s)
	}
	if s.Health.Fault() != "magnetometer" {
		t.Fatalf("health fault %q, want magnetometer only", s.Health.Fault())
	}
}

// TestApplyIsIdempotentUnderRedelivery replays a batch out of order and
// twice: the final state must equal applying it once in order.
func TestApplyIsIdempotentUnderRedelivery(t *testing.T) {
	frames := []Frame{keyFrame(1, 0.9, ModeReady, 47.60)}
	for seq := int64(2); seq <= 40; seq++ {
		if seq%10 == 0 {
			frames = append(frames, keyFrame(seq, 0.9-float64(seq)/100, ModeInflight, 47.60+float64(seq)/1000))
			continue
		}
		d := delta(seq)
		d.Position = &Position{Lat: 47.60 + float64(seq)/1000, Lon: -122.13, Alt: 100}
		frames = append(frames, d)
	}
	var once Tracked
	for _, f := range frames {
		once.Apply(f)
	}
	var twice Tracked
	for _, f := range append(append([]Frame{}, frames...), frames...) {
		twice.Apply(f)
	}
	if *once.State != *twice.State || once.Window != twice.Window {
		t.Fatalf("redelivery changed state:\n once  %+v\n twice %+v", once.State, twice.State)
	}
}

func TestSeqWindowShift(t *testing.T) {
	var w SeqWindow
	for _, s := range []int64{5, 6, 70, 200, 1000} {
		w.mark(s)
	}
	for _, s := range []int64{5, 6, 70, 200, 1000} {
		if !w.seen(s) {
			t.Errorf("seq %d not remembered", s)
		}
	}
	for _, s := range []int64{4, 7, 69, 71, 199, 999} {
		if w.seen(s) {
			t.Errorf("seq %d wrongly remembered", s)
		}
	}
	w.mark(1000 + SeqWindowSize)
	if w.seen(1000) {
		t.Error("seq 1000 should have left the window")
	}
}

func TestDecodeBatchReportsEachFrame(t *testing.T) {
	body := `{"frames":[
	 {"deviceId":"drone-7","seq":1,"timestamp":"2026-11-22T10:00:00Z","battery":0.8,"flightMode":"inflight",
	  "position":{"lat":47.64,"lon":-122.13,"alt":120},"health":{"gyrometerOk":true,"accelerometerOk":true,"magnetometerOk":true},"isKeyFrame":true},
	 {"deviceId":"drone-7","seq":2,"timestamp":"2026-11-22T10:00:01Z","battery":1.7},
	 {"deviceId":"drone-7","seq":3,"timestamp":"2026-11-22T10:00:02Z","colour":"red"},
	 {"deviceId":"drone-7","seq":4,"timestamp":"2026-11-22T10:00:03Z","flightMode":"hovering"},
	 {"deviceId":"drone-7","timestamp":"yesterday"},
	 {"deviceId":"drone-7","seq":6,"timestamp":"2026-11-22T10:00:05Z","isKeyFrame":true}
	]}`
	frames, err := DecodeBatch(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	wants := []string{"", "battery", `unknown field "colour"`, "flightMode", "not RFC 3339", "missing battery, flightMode, position, health"}
	for i, want := range wants {
		err := frames[i].Err
		if want == "" {
			if err != nil {
				t.Errorf("frame %d: unexpected error %v", i, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("frame %d: error %v, want it to mention %q", i, err, want)
		}
	}
}

func TestDecodeBatchRejectsBadBodies(t *testing.T) {
	for body, want := range map[string]string{
		``:                     "empty",
		`{"frames":`:           "ends early",
		`[]`:                   "expected",
		`{"frame":[]}`:         `unknown field "frame"`,
		`{}`:                   `"frames" is required`,
		`{"frames":[]} {}`:     "after the JSON object",
		`{"frames":"x"}`:       `field "frames"`,
		`{"frames":[1]} trail`: "after",
	} {
		_, err := DecodeBatch(strings.NewReader(body))
		if !errors.Is(err, ErrBadBatch) || !strings.Contains(err.Error(), want) {
			t.Errorf("body %q: error %v, want ErrBadBatch mentioning %q", body, err, want)
		}
	}
	big := `{"frames":[` + strings.Repeat(`{},`, MaxFramesPerBatch) + `{}]}`
	if _, err := DecodeBatch(strings.NewReader(big)); err == nil || !strings.Contains(err.Error(), "split the batch") {
		t.Errorf("oversized batch: %v", err)
	}
}

func TestMissionRequestValidationNamesEveryField(t *testing.T) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	r := MissionRequest{
		MissionID: "bad id!",
		Pickup:    &LatLon{Lat: 91, Lon: 0},
		Package:   &Package{WeightKg: 0, Size: "huge"},
		Deadline:  now.Add(-time.Minute),
	}
	err := r.Validate(now)
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("want a ValidationError, got %v", err)
	}
	fields := map[string]bool{}
	for _, p := range ve.Problems {
		fields[p.Field] = true
	}
	for _, f := range []string{"missionId", "pickup.lat", "dropoff", "package.id", "package.weightKg", "package.size", "deadline"} {
		if !fields[f] {
			t.Errorf("no problem reported for %s in %v", f, err)
		}
	}
	ok := MissionRequest{Pickup: &LatLon{1, 1}, Dropoff: &LatLon{1, 2}, Package: &Package{ID: "p", WeightKg: 1, Size: SizeLarge}, Deadline: now.Add(time.Hour)}
	if err := ok.Validate(now); err != nil {
		t.Fatalf("valid request rejected: %v", err)
	}
}

func TestNextPhaseOnlyMovesForward(t *testing.T) {
	r := Route{Home: LatLon{47.64, -122.13}, Pickup: LatLon{47.65, -122.13}, Dropoff: LatLon{47.66, -122.13}}
	at := func(p LatLon, m FlightMode) DroneState {
		return DroneState{Position: Position{Lat: p.Lat, Lon: p.Lon}, FlightMode: m}
	}
	steps := []struct {
		from  Phase
		state DroneState
		want  Phase
	}{
		{PhaseHeadedToPickup, at(r.Pickup, ModeInflight), PhaseHeadedToPickup}, // overhead, not landed
		{PhaseHeadedToPickup, at(r.Pickup, ModeLanding), PhasePickedUp},
		{PhaseHeadedToPickup, at(r.Dropoff, ModeLanding), PhaseHeadedToPickup}, // wrong place
		{PhasePickedUp, at(r.Pickup, ModeTakeoff), PhaseHeadedToDropoff},
		{PhaseHeadedToDropoff, at(r.Dropoff, ModeReady), PhaseDelivered},
		{PhaseDelivered, at(r.Dropoff, ModeInflight), PhaseReturning},
		{PhaseReturning, at(r.Pickup, ModeLanding), PhaseReturning},
		{PhaseReturning, at(r.Home, ModeReady), PhaseCompleted},
		{PhaseCompleted, at(r.Pickup, ModeLanding), PhaseCompleted},
	}
	for _, s := range steps {
		if got := NextPhase(s.from, r, s.state, 25); got != s.want {
			t.Errorf("NextPhase(%s, %s at %v) = %s, want %s", s.from, s.state.FlightMode, s.state.Position, got, s.want)
		}
	}
}

func TestAggregateProgressNeverShrinks(t *testing.T) {
	r := Route{Home: LatLon{47.64, -122.13}, Pickup: LatLon{47.65, -122.13}, Dropoff: LatLon{47.66, -122.13}}
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	st := MissionStatus{Phase: PhaseHeadedToPickup}
	st = Aggregate(st, r, DroneState{Position: Position{Lat: 47.649}, Battery: 0.9, Timestamp: now}, now, 10)
	first := st.ProgressPct
	st = Aggregate(st, r, DroneState{Position: Position{Lat: 47.645, Lon: -122.13}, Battery: 0.8, Timestamp: now.Add(time.Minute)}, now, 10)
	if st.ProgressPct < first {
		t.Fatalf("progress went from %g to %g", first, st.ProgressPct)
	}
	if st.BatteryTrendPerMin == nil || *st.BatteryTrendPerMin >= 0 {
		t.Fatalf("battery trend %v, want negative", st.BatteryTrendPerMin)
	}
	if st.ETA == nil || !st.ETA.After(now) {
		t.Fatalf("ETA %v, want after %v", st.ETA, now)
	}
}

// FuzzDecodeBatch feeds arbitrary bodies to the telemetry decoder: it must
// never panic, and every frame it accepts must survive a round trip and
// satisfy the invariants ingestion relies on.
func FuzzDecodeBatch(f *testing.F) {
	f.Add(`{"frames":[{"deviceId":"drone-7","seq":1,"timestamp":"2026-11-22T10:00:00Z","battery":0.8,"flightMode":"inflight","position":{"lat":47.64,"lon":-122.13,"alt":120},"health":{"gyrometerOk":true,"accelerometerOk":true,"magnetometerOk":true},"isKeyFrame":true}]}`)
	f.Add(`{"frames":[{"deviceId":"d","seq":2,"timestamp":"2026-11-22T10:00:01Z","battery":0.7}]}`)
	f.Add(`{"frames":[{"deviceId":"","seq":-1}]}`)
	f.Add(`{"frames":null}`)
	f.Add(`[`)
	f.Fuzz(func(t *testing.T, body string) {
		frames, err := DecodeBatch(strings.NewReader(body))
		if err != nil {
			if !errors.Is(err, ErrBadBatch) {
				t.Fatalf("batch error %v does not wrap ErrBadBatch", err)
			}
			return
		}
		var tr Tracked
		for i, df := range frames {
			if df.Err != nil {
				continue
			}
			fr := df.Frame
			if fr.Seq == nil || *fr.Seq < 0 || *fr.Seq > MaxSeq || fr.Boot < 0 || fr.Timestamp == nil || fr.Timestamp.Before(MinFrameTime) || !ValidID(fr.DeviceID) {
				t.Fatalf("frame %d accepted without its required fields: %+v", i, fr)
			}
			if fr.Battery != nil && (*fr.Battery < 0 || *fr.Battery > 1) {
				t.Fatalf("frame %d accepted with battery %g", i, *fr.Battery)
			}
			raw, err := json.Marshal(fr)
			if err != nil {
				t.Fatalf("frame %d does not re-encode: %v", i, err)
			}
			if _, err := DecodeFrame(raw); err != nil {
				t.Fatalf("frame %d does not round-trip: %v (%s)", i, err, raw)
			}
			if fr.DeviceID == "drone-7" || i == 0 {
				tr.Apply(fr) // must not panic whatever the mix of frames
			}
		}
	})
}

// TestApplyEpochs: reboots, a wrapped counter and forged jumps are settled
// by timestamps, so no frame locks a drone out (issue #7.5).
func TestApplyEpochs(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	at := func(boot, seq int64, s float64, key bool) Frame {
		f := keyFrame(seq, 0.9, ModeInflight, 47.64)
		if !key {
			f = delta(seq)
			f.Battery = ptr(0.5)
		}
		ts := t0.Add(time.Duration(s * float64(time.Second)))
		f.Timestamp, f.Boot = &ts, boot
		return f
	}
	var tr Tracked
	steps := []struct {
		what             string
		frame            Frame
		want             Verdict
		boot, epoch, seq int64
	}{
		{"first", at(0, 10, 0, true), VerdictAccepted, 0, 0, 10},
		{"jump 10 -> 2000", at(0, 2000, 1, true), VerdictAccepted, 0, 1, 2000},
		{"seq 11 after the jump, newer", at(0, 11, 2, false), VerdictAccepted, 0, 2, 11},
		{"seq 12", at(0, 12, 3, false), VerdictAccepted, 0, 2, 12},
		{"jump with an older timestamp", at(0, 5000, 2.5, true), VerdictStale, 0, 2, 12},
		{"far ahead, same timestamp", at(0, MaxSeq, 3, true), VerdictAccepted, 0, 3, MaxSeq},
		{"far behind, same timestamp", at(0, 100, 3, true), VerdictStale, 0, 3, MaxSeq},
		{"reboot: boot 1", at(1, 1, 4, true), VerdictAccepted, 1, 4, 1},
		{"boot 0 again, older", at(0, 13, 3.5, true), VerdictStale, 1, 4, 1},
		{"higher boot, older timestamp", at(2, 1, 3.9, true), VerdictStale, 1, 4, 1},
		{"near the end of the counter", at(1, MaxSeq, 5, true), VerdictAccepted, 1, 5, MaxSeq},
		{"wrapped to 0", at(1, 0, 6, true), VerdictAccepted, 1, 6, 0},
		{"duplicate after the wrap", at(1, 0, 6, true), VerdictDuplicate, 1, 6, 0},
		{"lower boot, newer (counter reset)", at(0, 1, 7, false), VerdictAccepted, 0, 7, 1},
	}
	for _, s := range steps {
		before := tr
		got, reason := tr.Apply(s.frame)
		if got != s.want {
			t.Fatalf("%s: verdict %s (%s), want %s", s.what, got, reason, s.want)
		}
		if st := tr.State; st.Boot != s.boot || st.Epoch != s.epoch || st.Seq != s.seq {
			t.Fatalf("%s: state boot %d, epoch %d, seq %d; want %d, %d, %d", s.what, st.Boot, st.Epoch, st.Seq, s.boot, s.epoch, s.seq)
		}
		if got != VerdictAccepted && got != VerdictStale && tr.Window != before.Window {
			t.Fatalf("%s: a %s frame moved the window", s.what, got)
		}
	}
	if tr.State.Battery != 0.5 {
		t.Fatalf("the delta that started an epoch did not merge: battery %g", tr.State.Battery)
	}
}

func TestFrameBounds(t *testing.T) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		f    func(*Frame)
		want string
	}{
		{func(f *Frame) { f.Seq = ptr(int64(MaxSeq + 1)) }, "seq"},
		{func(f *Frame) { f.Boot = -1 }, "boot"},
		{func(f *Frame) { ts := time.Date(1999, 12, 31, 0, 0, 0, 0, time.UTC); f.Timestamp = &ts }, "before 2000"},
	} {
		f := keyFrame(1, 0.9, ModeReady, 47.64)
		tc.f(&f)
		if err := f.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate: %v, want an error mentioning %q", err, tc.want)
		}
	}
	f := keyFrame(1, 0.9, ModeReady, 47.64)
	ahead := now.Add(MaxClockSkew + time.Second)
	f.Timestamp = &ahead
	if err := f.CheckTime(now); err == nil || !strings.Contains(err.Error(), "ahead") {
		t.Errorf("CheckTime of a frame %s ahead: %v", MaxClockSkew+time.Second, err)
	}
	ok := now.Add(MaxClockSkew)
	f.Timestamp = &ok
	if err := f.CheckTime(now); err != nil {
		t.Errorf("CheckTime of a frame %s ahead: %v", MaxClockSkew, err)
	}
}
