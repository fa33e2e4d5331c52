package domain

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// FlightMode is what a drone reports it is doing.
type FlightMode string

// Flight modes accepted on the wire.
const (
	ModeUnknown  FlightMode = "unknown"
	ModeReady    FlightMode = "ready"
	ModeTakeoff  FlightMode = "takeoff"
	ModeInflight FlightMode = "inflight"
	ModeLanding  FlightMode = "landing"
	ModeOffline  FlightMode = "offline"
)

func (m FlightMode) valid() bool {
	switch m {
	case ModeUnknown, ModeReady, ModeTakeoff, ModeInflight, ModeLanding, ModeOffline:
		return true
	}
	return false
}

// Airborne reports whether the mode means the drone has left the ground.
func (m FlightMode) Airborne() bool { return m == ModeTakeoff || m == ModeInflight }

// Grounded reports whether the mode means the drone is at, or settling onto,
// the ground.
func (m FlightMode) Grounded() bool { return m == ModeLanding || m == ModeReady }

// Position is a drone's location; Alt is metres above ground.
type Position struct {
	Lat float64 `json:"lat"`
	Lon float64 `json:"lon"`
	Alt float64 `json:"alt"`
}

// LatLon drops the altitude.
func (p Position) LatLon() LatLon { return LatLon{Lat: p.Lat, Lon: p.Lon} }

// Health is the drone's sensor self-check. Delta frames may carry only the
// flags that changed, hence the pointers.
type Health struct {
	GyrometerOK     *bool `json:"gyrometerOk,omitempty"`
	AccelerometerOK *bool `json:"accelerometerOk,omitempty"`
	MagnetometerOK  *bool `json:"magnetometerOk,omitempty"`
}

// Frame is one telemetry report. Key frames carry every field; delta frames
// carry only what changed since the previous frame, so every optional field
// is a pointer that is nil when absent.
type Frame struct {
	DeviceID string `json:"deviceId"`
	// Boot is the drone's boot count: a drone whose sequence numbers start
	// over when it restarts sends a higher boot after each restart. Optional,
	// 0 by default.
	Boot       int64       `json:"boot,omitempty"`
	Seq        *int64      `json:"seq"`
	Timestamp  *time.Time  `json:"timestamp"`
	Battery    *float64    `json:"battery,omitempty"`
	FlightMode *FlightMode `json:"flightMode,omitempty"`
	Position   *Position   `json:"position,omitempty"`
	Health     *Health     `json:"health,omitempty"`
	IsKeyFrame bool        `json:"isKeyFrame"`
}

// Batch is the body of POST /api/telemetry and of a telemetry queue message.
type Batch struct {
	Frames []json.RawMessage `json:"frames"`
}

// MaxFramesPerBatch bounds one batch so one request cannot hold a drone's
// state row for long.
const MaxFramesPerBatch = 1000

// ErrBadBatch is wrapped by every error DecodeBatch returns for a body that is
// not a telemetry batch at all (as opposed to a batch with bad frames).
var ErrBadBatch = errors.New("malformed telemetry batch")

// DecodedFrame is a frame that was decoded and validated, or the reason it
// was not.
type DecodedFrame struct {
	Frame Frame
	Err   error
}

// DecodeBatch parses a batch body. A body that is not a JSON object with a
// "frames" array fails as a whole; each frame is then decoded and validated on
// its own so one bad frame does not reject its neighbours.
func DecodeBatch(r io.Reader) ([]DecodedFrame, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var b Batch
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrBadBatch, describeJSONError(err))
	}
	if err := trailing(dec, r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadBatch, err)
	}
	if b.Frames == nil {
		return nil, fmt.Errorf("%w: \"frames\" is required: an array of telemetry frames", ErrBadBatch)
	}
	if len(b.Frames) > MaxFramesPerBatch {
		return nil, fmt.Errorf("%w: %d frames in one batch, at most %d allowed; split the batch", ErrBadBatch, len(b.Frames), MaxFramesPerBatch)
	}
	out := make([]DecodedFrame, len(b.Frames))
	for i, raw := range b.Frames {
		f, err := DecodeFrame(raw)
		out[i] = DecodedFrame{Frame: f, Err: err}
	}
	return out, nil
}

// DecodeFrame parses and validates one frame.
func DecodeFrame(raw []byte) (Frame, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var f Frame
	if err := dec.Decode(&f); err != nil {
		// Keep what identifies the frame, so its verdict can say which it was.
		// A seq that is not a whole number is left out rather than
		// reported back as 0.
		var id struct {
			DeviceID any `json:"deviceId"`
			Seq      any `json:"seq"`
		}
		idDec := json.NewDecoder(bytes.NewReader(raw))
		idDec.UseNumber()
		_ = idDec.Decode(&id)
		kept := Frame{}
		if s, ok := id.DeviceID.(string); ok {
			kept.DeviceID = s
		}
		if n, ok := id.Seq.(json.Number); ok {
			if v, err := strconv.ParseInt(n.String(), 10, 64); err == nil {
				kept.Seq = &v
			}
		}
		return kept, errors.New(describeJSONError(err))
	}
	return f, f.Validate()
}

// Validate reports every problem with the frame.
func (f *Frame) Validate() error {
	v := &ValidationError{}
	if f.DeviceID == "" {
		v.add("deviceId", "is required")
	} else if !ValidID(f.DeviceID) {
		v.add("deviceId", "%q %s", f.DeviceID, idRule)
	}
	if f.Seq == nil {
		v.add("seq", "is required: the drone's monotonically increasing frame number")
	} else if *f.Seq < 0 || *f.Seq > MaxSeq {
		v.add("seq", "must be between 0 and %d, got %d", int64(MaxSeq), *f.Seq)
	}
	if f.Boot < 0 || f.Boot > MaxSeq {
		v.add("boot", "must be between 0 and %d, got %d", int64(MaxSeq), f.Boot)
	}
	if f.Timestamp == nil {
		v.add("timestamp", "is required (RFC 3339)")
	} else if f.Timestamp.Before(MinFrameTime) {
		v.add("timestamp", "%s is before %s; check the drone's clock", f.Timestamp.UTC().Format(time.RFC3339Nano), MinFrameTime.Format(time.RFC3339))
	}
	if f.Battery != nil && (*f.Battery < 0 || *f.Battery > 1) {
		v.add("battery", "must be between 0 and 1, got %g", *f.Battery)
	}
	if f.FlightMode != nil && !f.FlightMode.valid() {
		v.add("flightMode", "must be one of unknown, ready, takeoff, inflight, landing, offline, got %q", *f.FlightMode)
	}
	if f.Position != nil {
		if f.Position.Lat < -90 || f.Position.Lat > 90 {
			v.add("position.lat", "must be between -90 and 90, got %g", f.Position.Lat)
		}
		if f.Position.Lon < -180 || f.Position.Lon > 180 {
			v.add("position.lon", "must be between -180 and 180, got %g", f.Position.Lon)
		}
	}
	if f.IsKeyFrame {
		var missing []string
		if f.Battery == nil {
			missing = append(missing, "battery")
		}
		if f.FlightMode == nil {
			missing = append(missing, "flightMode")
		}
		if f.Position == nil {
			missing = append(missing, "position")
		}
		if f.Health == nil || f.Health.GyrometerOK == nil || f.Health.AccelerometerOK == nil || f.Health.MagnetometerOK == nil {
			missing = append(missing, "health (all three flags)")
		}
		if len(missing) > 0 {
			v.add("isKeyFrame", "a key frame must carry every field; missing %s", strings.Join(missing, ", "))
		}
	}
	return v.orNil()
}

// MinFrameTime is the earliest timestamp a frame may carry: a drone whose
// clock reads earlier has not set it.
var MinFrameTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// MaxClockSkew is how far ahead of the receiving worker's clock a frame's
// timestamp may be. A frame from further in the future would hold back the
// drone's real frames (see Tracked.Apply) until the clock caught up.
const MaxClockSkew = 5 * time.Minute

// CheckTime reports a timestamp more than MaxClockSkew after now, the
// receiver's clock. Validate checks everything that does not depend on the
// clock.
func (f *Frame) CheckTime(now time.Time) error {
	if f.Timestamp == nil || !f.Timestamp.After(now.Add(MaxClockSkew)) {
		return nil
	}
	v := &ValidationError{}
	v.add("timestamp", "%s is more than %s ahead of the receiver's clock (%s); check the drone's clock",
		f.Timestamp.UTC().Format(time.RFC3339Nano), MaxClockSkew, now.UTC().Format(time.RFC3339))
	return v
}

// describeJSONError turns encoding/json's errors into messages that name the
// offending field.
func describeJSONError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return "the body is empty; send a JSON object"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the JSON ends early; check for a missing bracket or quote"
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.As(err, &typ):
		msg := fmt.Sprintf("expected %s, got %s", jsonKind(typ.Type.String()), typ.Value)
		if num, ok := strings.CutPrefix(typ.Value, "number "); ok {
			msg = describeNumber(typ.Type, num)
		}
		if typ.Field == "" {
			return msg
		}
		return fmt.Sprintf("field %q: %s", typ.Field, msg)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	}
	var te *time.ParseError
	if errors.As(err, &te) {
		return fmt.Sprintf("time %q is not RFC 3339 (e.g. 2026-11-22T10:00:00Z)", te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// describeNumber explains why a JSON number does not fit a Go number type:
// a fraction or exponent where a whole number is wanted, or a value out of
// the type's range.
func describeNumber(t reflect.Type, num string) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if strings.ContainsAny(num, ".eE") {
			return fmt.Sprintf("expected a whole number written without a fraction or exponent, got %s", num)
		}
		return fmt.Sprintf("%s is out of range: at most %d", num, int64(1)<<(t.Bits()-1)-1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return fmt.Sprintf("expected a whole number from 0, got %s", num)
	case reflect.Float32, reflect.Float64:
		return fmt.Sprintf("%s is out of range for a number", num)
	}
	return fmt.Sprintf("expected %s, got number %s", jsonKind(t.String()), num)
}

func jsonKind(goType string) string {
	switch {
	case strings.Contains(goType, "float"), strings.Contains(goType, "int"):
		return "a number"
	case strings.Contains(goType, "bool"):
		return "true or false"
	case strings.Contains(goType, "string"), strings.Contains(goType, "Mode"), strings.Contains(goType, "Size"):
		return "a string"
	case strings.HasPrefix(goType, "[]"), strings.Contains(goType, "slice"):
		return "an array"
	default:
		return "an object"
	}
}

// DecodeStrict decodes one JSON value into v, rejecting unknown fields and
// trailing data, with an error message that names the problem.
func DecodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errors.New(describeJSONError(err))
	}
	return trailing(dec, r)
}

// trailing reports anything but white space after the JSON value dec read
// from r (dec.More misses a stray '}' or ']').
func trailing(dec *json.Decoder, r io.Reader) error {
	rest, err := io.ReadAll(io.MultiReader(dec.Buffered(), r))
	if err != nil {
		return err
	}
	if extra := bytes.TrimSpace(rest); len(extra) > 0 {
		return fmt.Errorf("unexpected data after the JSON object at byte %d: %q", dec.InputOffset()+int64(len(rest)-len(bytes.TrimLeft(rest, " \t\r\n"))), capText(string(extra), 20))
	}
	return nil
}

func capText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
