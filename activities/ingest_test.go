package activities_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/backend/sqlite"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/taskhub"
)

// recorder is a Signaler that records what would be raised: the signal
// path's inputs are checked here, its delivery by the mission suite.
type recorder struct {
	mu      sync.Mutex
	signals []domain.Signal
	fail    bool
}

func (r *recorder) RaiseEvent(_ context.Context, _ api.InstanceID, name string, opts ...api.RaiseEventOptions) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return fmt.Errorf("injected: raise failed")
	}
	if name != domain.SignalEvent {
		return fmt.Errorf("unexpected event %q", name)
	}
	r.signals = append(r.signals, domain.Signal{}) // payload decoded below
	return nil
}

func openStore(t testing.TB) fleet.Store {
	t.Helper()
	b, err := sqlite.Open(context.Background(), sqlite.Options{Path: filepath.Join(t.TempDir(), "hub.db"), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b.Fleet()
}

func dispatched(t testing.TB, store fleet.Store, id string) domain.Route {
	t.Helper()
	ctx := context.Background()
	route := domain.Route{Home: domain.LatLon{Lat: 47.6401, Lon: -122.1298}, Pickup: domain.LatLon{Lat: 47.6440, Lon: -122.13}, Dropoff: domain.LatLon{Lat: 47.6470, Lon: -122.136}}
	if _, err := store.AddDrone(ctx, id, route.Home); err != nil {
		t.Fatal(err)
	}
	_, err := store.UpdateDrone(ctx, id, func(d *fleet.Drone) error {
		d.MissionID, d.Route = "mission-"+id, &route
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return route
}

func decoded(frames []domain.Frame) []domain.DecodedFrame {
	out := make([]domain.DecodedFrame, len(frames))
	for i, f := range frames {
		// Through the wire format, as HTTP and the queue deliver them.
		raw, _ := json.Marshal(f)
		df, err := domain.DecodeFrame(raw)
		out[i] = domain.DecodedFrame{Frame: df, Err: err}
	}
	return out
}

// TestIngestRaisesEveryMeaningfulChangeInABatch sends a whole flight as one
// batch: every flight-mode change and arrival must be raised, in order, not
// just the final state.
func TestIngestRaisesEveryMeaningfulChangeInABatch(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	route := dispatched(t, store, "d1")
	rec := &recorder{}
	in := activities.NewIngestor(store, rec, activities.IngestOptions{Heartbeat: time.Hour, Logger: quiet()})
	f := simulator.NewFlight(simulator.FlightOptions{DroneID: "d1", Route: route, SpeedMps: 50})
	var frames []domain.Frame
	for {
		fr, ok := f.Next()
		if !ok {
			break
		}
		frames = append(frames, fr)
	}
	res, err := in.Ingest(context.Background(), decoded(frames[:len(frames)/2]))
	if err != nil {
		t.Fatal(err)
	}
	if res.Accepted != len(frames)/2 || res.Signals < 4 {
		t.Fatalf("first half: %d accepted, %d signals; want all accepted and the takeoff, pickup landing and takeoff raised", res.Accepted, res.Signals)
	}
	again, err := in.Ingest(context.Background(), decoded(frames[:len(frames)/2]))
	if err != nil {
		t.Fatal(err)
	}
	if again.Duplicates != len(frames)/2 || again.Signals != 0 {
		t.Fatalf("redelivered half: %d duplicates, %d signals; want all duplicates and no signal", again.Duplicates, again.Signals)
	}
}

func TestIngestVerdicts(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	dispatched(t, store, "d1")
	rec := &recorder{}
	in := activities.NewIngestor(store, rec, activities.IngestOptions{Logger: quiet()})
	body := `{"frames":[
	 {"deviceId":"d1","seq":5,"timestamp":"2026-11-22T10:00:00Z","battery":0.9,"flightMode":"ready","position":{"lat":47.6401,"lon":-122.1298,"alt":0},"health":{"gyrometerOk":true,"accelerometerOk":true,"magnetometerOk":true},"isKeyFrame":true},
	 {"deviceId":"d1","seq":4,"timestamp":"2026-11-22T09:59:59Z","battery":0.1},
	 {"deviceId":"ghost","seq":1,"timestamp":"2026-11-22T10:00:00Z","battery":0.9},
	 {"deviceId":"d1","seq":5,"timestamp":"2026-11-22T10:00:00Z"}
	]}`
	frames, err := domain.DecodeBatch(stringsReader(body))
	if err != nil {
		t.Fatal(err)
	}
	res, err := in.Ingest(context.Background(), frames)
	if err != nil {
		t.Fatal(err)
	}
	want := []domain.Verdict{domain.VerdictAccepted, domain.VerdictStale, domain.VerdictRejected, domain.VerdictDuplicate}
	for i, v := range want {
		if res.Frames[i].Verdict != v || res.Frames[i].Index != i {
			t.Errorf("frame %d: %+v, want %s", i, res.Frames[i], v)
		}
	}
	d, err := store.Drone(context.Background(), "d1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Tracked.State.Battery != 0.9 || d.Frames != 1 {
		t.Fatalf("stored %+v after %d frames: the stale frame must not overwrite", d.Tracked.State, d.Frames)
	}
}

// TestIngestRetriesASignalThatFailed: a signal that could not be raised is
// raised again with the next frame, so the mission never misses a change.
func TestIngestRetriesASignalThatFailed(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	route := dispatched(t, store, "d1")
	rec := &recorder{fail: true}
	in := activities.NewIngestor(store, rec, activities.IngestOptions{Heartbeat: time.Hour, Logger: quiet()})
	f := simulator.NewFlight(simulator.FlightOptions{DroneID: "d1", Route: route})
	first, _ := f.Next()
	if res, err := in.Ingest(context.Background(), decoded([]domain.Frame{first})); err != nil || res.Accepted != 1 || res.Signals != 0 {
		t.Fatalf("with raising broken: %+v, %v", res, err)
	}
	rec.mu.Lock()
	rec.fail = false
	rec.mu.Unlock()
	second, _ := f.Next()
	if res, err := in.Ingest(context.Background(), decoded([]domain.Frame{second})); err != nil || res.Signals == 0 {
		t.Fatalf("after raising recovered: %+v, %v: want the missed change raised", res, err)
	}
}

// BenchmarkIngest measures ingestion on the embedded store: 20 drones, each
// batch carrying one frame per drone, the shape of a busy HTTP bridge.
func BenchmarkIngest(b *testing.B) {
	store := openStore(b)
	const drones = 20
	var flights []*simulator.Flight
	for i := range drones {
		id := fmt.Sprintf("d%d", i)
		route := dispatched(b, store, id)
		flights = append(flights, simulator.NewFlight(simulator.FlightOptions{DroneID: id, Route: route, SpeedMps: 1, Step: 100 * time.Millisecond}))
	}
	in := activities.NewIngestor(store, &recorder{}, activities.IngestOptions{Heartbeat: time.Hour, Logger: quiet()})
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		batch := make([]domain.DecodedFrame, 0, drones)
		for _, f := range flights {
			fr, _ := f.Next()
			batch = append(batch, domain.DecodedFrame{Frame: fr})
		}
		if _, err := in.Ingest(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*drones)/b.Elapsed().Seconds(), "frames/s")
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func home() domain.LatLon { return domain.LatLon{Lat: 47.6401, Lon: -122.1298} }

func (r *recorder) FetchOrchestrationMetadata(_ context.Context, id api.InstanceID) (*api.OrchestrationMetadata, error) {
	return &api.OrchestrationMetadata{InstanceID: id, RuntimeStatus: api.RUNTIME_STATUS_RUNNING}, nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.signals)
}

// TestWatchdogRaisesASignalIngestionCouldNotRaise: the last frames of a
// flight change the drone's state, but raising their signal fails and no
// frame follows. The watchdog must raise it, or the mission never learns
// the drone landed.
func TestWatchdogRaisesASignalIngestionCouldNotRaise(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	route := dispatched(t, store, "d1")
	rec := &recorder{fail: true}
	now := time.Now()
	clock := func() time.Time { return now }
	in := activities.NewIngestor(store, rec, activities.IngestOptions{Heartbeat: time.Hour, Logger: quiet(), Now: clock})
	f := simulator.NewFlight(simulator.FlightOptions{DroneID: "d1", Route: route})
	last, _ := f.Next()
	if res, err := in.Ingest(context.Background(), decoded([]domain.Frame{last})); err != nil || res.Signals != 0 {
		t.Fatalf("ingest with raising broken: %+v, %v", res, err)
	}
	rec.mu.Lock()
	rec.fail = false
	rec.mu.Unlock()
	wd := activities.NewWatchdog(store, rec, activities.WatchdogOptions{Silence: time.Hour, Logger: quiet(), Now: func() time.Time { return now.Add(time.Second) }})
	if err := wd.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rec.count() != 0 {
		t.Fatal("the watchdog raised a pending signal before ingestion's grace period")
	}
	wd = activities.NewWatchdog(store, rec, activities.WatchdogOptions{Silence: time.Hour, Logger: quiet(), Now: func() time.Time { return now.Add(5 * time.Second) }})
	if err := wd.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rec.count() != 1 {
		t.Fatalf("watchdog raised %d signals, want the 1 pending", rec.count())
	}
	if err := wd.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rec.count() != 1 {
		t.Fatalf("watchdog raised the pending signal again: %d signals", rec.count())
	}
}

// batchRaiser is a taskhub.EventRaiser that records each call's events.
type batchRaiser struct {
	mu    sync.Mutex
	calls [][]taskhub.RaisedEvent
	fail  bool
}

func (r *batchRaiser) AddNewOrchestrationEvents(_ context.Context, events []taskhub.RaisedEvent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return fmt.Errorf("injected: raise failed")
	}
	r.calls = append(r.calls, events)
	return nil
}

// TestIngestRaisesABatchInOneCall: with a Raiser, the signals of every
// drone in a batch are raised in one call, each drone's together and in
// the order of its frames (the phases never go back), and none through the
// Signaler; when the call fails, nothing counts as raised and the drones'
// next frames raise their states again.
func TestIngestRaisesABatchInOneCall(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	ids := []string{"d1", "d2", "d3"}
	var flights []*simulator.Flight
	for _, id := range ids {
		flights = append(flights, simulator.NewFlight(simulator.FlightOptions{DroneID: id, Route: dispatched(t, store, id), SpeedMps: 50}))
	}
	rec := &recorder{}
	raiser := &batchRaiser{fail: true}
	in := activities.NewIngestor(store, rec, activities.IngestOptions{Heartbeat: time.Hour, Logger: quiet(), Raiser: raiser})
	next := func(n int) []domain.Frame {
		var frames []domain.Frame
		for range n {
			for _, f := range flights {
				if fr, ok := f.Next(); ok {
					frames = append(frames, fr)
				}
			}
		}
		return frames
	}
	if res, err := in.Ingest(context.Background(), decoded(next(1))); err != nil || res.Signals != 0 {
		t.Fatalf("with raising broken: %+v, %v: want no signal counted", res, err)
	}
	raiser.mu.Lock()
	raiser.fail = false
	raiser.mu.Unlock()
	res, err := in.Ingest(context.Background(), decoded(next(200)))
	if err != nil {
		t.Fatal(err)
	}
	raiser.mu.Lock()
	calls := raiser.calls
	raiser.mu.Unlock()
	if len(calls) != 1 {
		t.Fatalf("%d calls of the Raiser for one batch, want 1", len(calls))
	}
	if rec.count() != 0 {
		t.Errorf("%d signals raised one by one beside the Raiser", rec.count())
	}
	if len(calls[0]) != res.Signals || res.Signals < 3*4 {
		t.Fatalf("%d events raised, %d signals counted: want them equal and each drone's flight (takeoff, pickup, drop-off, home) raised", len(calls[0]), res.Signals)
	}
	done := map[api.InstanceID]bool{}
	var last api.InstanceID
	phase := map[api.InstanceID]domain.Phase{}
	for _, e := range calls[0] {
		if e.Instance != last && done[e.Instance] {
			t.Fatalf("the signals of %s are not together in the call", e.Instance)
		}
		done[e.Instance], last = true, e.Instance
		var sig domain.Signal
		if err := json.Unmarshal([]byte(e.Event.GetEventRaised().GetInput().GetValue()), &sig); err != nil || e.Event.GetEventRaised().GetName() != domain.SignalEvent {
			t.Fatalf("event %v: %v", e.Event, err)
		}
		if phase[e.Instance] != "" && sig.Phase.Before(phase[e.Instance]) {
			t.Errorf("%s: phase %s raised after %s", e.Instance, sig.Phase, phase[e.Instance])
		}
		phase[e.Instance] = sig.Phase
	}
	if len(done) != len(ids) {
		t.Errorf("signals for %d missions, want %d (the first frames, whose raise failed, are raised again)", len(done), len(ids))
	}
}
