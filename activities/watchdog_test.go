package activities_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/backend/sqlite"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
)

// missions is a MissionClient that records the alarms raised, by mission,
// and answers status reads: every mission runs unless ended.
type missions struct {
	mu      sync.Mutex
	raised  []alarm
	ended   map[string]bool
	fetches int
}

type alarm struct {
	mission string
	kind    string
}

func (m *missions) RaiseEvent(_ context.Context, id api.InstanceID, name string, opts ...api.RaiseEventOptions) error {
	var sig domain.Signal
	if err := json.Unmarshal([]byte(eventData(opts)), &sig); err != nil || name != domain.SignalEvent {
		return fmt.Errorf("unexpected event %q: %v", name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.raised = append(m.raised, alarm{string(id), sig.Kind})
	return nil
}

func (m *missions) FetchOrchestrationMetadata(_ context.Context, id api.InstanceID) (*api.OrchestrationMetadata, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fetches++
	status := api.RUNTIME_STATUS_RUNNING
	if m.ended[string(id)] {
		status = api.RUNTIME_STATUS_TERMINATED
	}
	return &api.OrchestrationMetadata{InstanceID: id, RuntimeStatus: status}, nil
}

func (m *missions) end(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ended == nil {
		m.ended = map[string]bool{}
	}
	m.ended[id] = true
}

// take returns the alarms raised since the last take, sorted.
func (m *missions) take() []alarm {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.raised
	m.raised = nil
	sort.Slice(out, func(i, j int) bool { return out[i].mission+out[i].kind < out[j].mission+out[j].kind })
	return out
}

func (m *missions) statusReads() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fetches
}

// eventData returns the data a raise's options carry. The request type they
// fill is internal to durabletask-go, hence reflection.
func eventData(opts []api.RaiseEventOptions) string {
	for _, o := range opts {
		fn := reflect.ValueOf(o)
		req := reflect.New(fn.Type().In(0).Elem())
		fn.Call([]reflect.Value{req})
		if in := req.Elem().FieldByName("Input"); in.IsValid() && !in.IsNil() {
			return in.MethodByName("GetValue").Call(nil)[0].String()
		}
	}
	return ""
}

var testRoute = domain.Route{Home: domain.LatLon{Lat: 47.6401, Lon: -122.1298}, Pickup: domain.LatLon{Lat: 47.6440, Lon: -122.13}, Dropoff: domain.LatLon{Lat: 47.6470, Lon: -122.136}}

// fly adds drone id dispatched on mission "m-"+id, then applies set.
func fly(t testing.TB, store fleet.Store, id string, set func(d *fleet.Drone)) {
	t.Helper()
	ctx := context.Background()
	if _, err := store.AddDrone(ctx, id, testRoute.Home); err != nil {
		t.Fatal(err)
	}
	_, err := store.UpdateDrone(ctx, id, func(d *fleet.Drone) error {
		route := testRoute
		d.MissionID, d.Route, d.RoutePhase = "m-"+id, &route, domain.PhaseHeadedToPickup
		set(d)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// frame records a frame of drone id accepted at the clock's wall time, as
// ingestion does.
func frame(t testing.TB, store fleet.Store, id string, c *testClock) {
	t.Helper()
	if _, err := store.UpdateDrone(context.Background(), id, func(d *fleet.Drone) error {
		d.Frames++
		d.LastFrameAt = c.Now()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func scan(t testing.TB, wd *activities.Watchdog) {
	t.Helper()
	if err := wd.Scan(context.Background()); err != nil {
		t.Fatalf("Scan: %v", err)
	}
}

func lost(ids ...string) []alarm {
	var out []alarm
	for _, id := range ids {
		out = append(out, alarm{"m-" + id, domain.SignalWatchdog})
	}
	return out
}

func sameAlarms(got, want []alarm) bool {
	return len(got) == len(want) && (len(got) == 0 || reflect.DeepEqual(got, want))
}

var base = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

// TestWatchdogWaitsOutAWorkerOutage (issue #13.5): after an outage longer
// than the silence timeout every in-flight drone's last frame is old,
// because no worker could accept frames. The watchdog must not call them
// lost before it has itself been up for the timeout; a drone whose frames
// resume is not lost, one that stays silent is, once the timeout passed.
func TestWatchdogWaitsOutAWorkerOutage(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	clock := newTestClock(base)
	for _, id := range []string{"silent", "back"} {
		fly(t, store, id, func(d *fleet.Drone) {
			d.DispatchedAt, d.LastFrameAt = base.Add(-10*time.Minute), base.Add(-90*time.Second)
		})
	}
	m := &missions{}
	wd := activities.NewWatchdog(store, m, clock.options(time.Minute))
	scan(t, wd) // the worker's first scan after a 90 s outage
	if got := m.take(); len(got) != 0 {
		t.Fatalf("first scan after the outage raised %v; no drone could be heard during the outage", got)
	}
	for i := 1; i < 12; i++ {
		clock.Advance(5 * time.Second)
		if i == 2 {
			frame(t, store, "back", clock)
		}
		scan(t, wd)
		if got := m.take(); len(got) != 0 {
			t.Fatalf("scan %s after start raised %v; the watchdog has not been up for the timeout", time.Duration(i)*5*time.Second, got)
		}
	}
	clock.Advance(5 * time.Second)
	scan(t, wd)
	if got := m.take(); !sameAlarms(got, lost("silent")) {
		t.Fatalf("a minute after start: alarms %v, want %v", got, lost("silent"))
	}
}

// TestWatchdogWaitsOutAPause (issue #13.5): a worker that stops scanning
// for longer than the timeout (its process paused, its storage failing)
// could not accept frames either; its drones' last frames are old when it
// resumes. It must wait a timeout before calling them lost.
func TestWatchdogWaitsOutAPause(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	clock := newTestClock(base)
	for _, id := range []string{"a", "b"} {
		fly(t, store, id, func(d *fleet.Drone) { d.DispatchedAt, d.LastFrameAt = base, base })
	}
	m := &missions{}
	wd := activities.NewWatchdog(store, m, clock.options(time.Minute))
	scan(t, wd)
	if got := runFor(t, store, wd, m, clock, 2*time.Minute, "a", "b"); len(got) != 0 {
		t.Fatalf("before the pause: alarms %v", got)
	}
	clock.Advance(90 * time.Second) // paused: no scan, no frame
	if got := runFor(t, store, wd, m, clock, 55*time.Second, "a"); len(got) != 0 {
		t.Fatalf("within a timeout of resuming after a 90 s pause: alarms %v, want none", got)
	}
	if got := runFor(t, store, wd, m, clock, 10*time.Second, "a"); !sameAlarms(got, lost("b")) {
		t.Fatalf("a timeout after resuming: alarms %v, want %v", got, lost("b"))
	}
}

// runFor scans every 5 s for d, each reporting drone sending a frame after
// each scan, and returns the alarms raised.
func runFor(t *testing.T, store fleet.Store, wd *activities.Watchdog, m *missions, clock *testClock, d time.Duration, reporting ...string) []alarm {
	t.Helper()
	var got []alarm
	for end := clock.Elapsed() + d; clock.Elapsed() < end; {
		clock.Advance(5 * time.Second)
		scan(t, wd)
		got = append(got, m.take()...)
		for _, id := range reporting {
			frame(t, store, id, clock)
		}
	}
	return got
}

// TestWatchdogIgnoresAWallClockStepForward (issue #13.5): a wall clock set
// an hour forward makes every last frame look an hour old. No drone that
// keeps reporting may be called lost; one that stopped reporting at the
// step is, a timeout later.
func TestWatchdogIgnoresAWallClockStepForward(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	clock := newTestClock(base)
	for _, id := range []string{"a", "b", "c"} {
		fly(t, store, id, func(d *fleet.Drone) { d.DispatchedAt, d.LastFrameAt = base, base })
	}
	m := &missions{}
	wd := activities.NewWatchdog(store, m, clock.options(time.Minute))
	scan(t, wd)
	if got := runFor(t, store, wd, m, clock, 2*time.Minute, "a", "b", "c"); len(got) != 0 {
		t.Fatalf("before the step: alarms %v", got)
	}
	clock.StepWall(time.Hour)
	if got := runFor(t, store, wd, m, clock, 55*time.Second, "a", "b"); len(got) != 0 {
		t.Fatalf("within a timeout of the wall clock stepping an hour forward: alarms %v, want none", got)
	}
	if got := runFor(t, store, wd, m, clock, 15*time.Second, "a", "b"); !sameAlarms(got, lost("c")) {
		t.Fatalf("a timeout after the step: alarms %v, want %v", got, lost("c"))
	}
	for _, al := range runFor(t, store, wd, m, clock, 2*time.Minute, "a", "b") {
		if al.mission != "m-c" {
			t.Fatalf("later: alarm %v; only c is silent", al)
		}
	}
}

// TestWatchdogSeesSilenceAfterAWallClockStepBackward (issue #13.5): a wall
// clock set an hour back leaves every stored time an hour in the future. A
// drone that goes silent must still be called lost about a timeout later,
// not an hour later.
func TestWatchdogSeesSilenceAfterAWallClockStepBackward(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	clock := newTestClock(base)
	for _, id := range []string{"a", "b"} {
		fly(t, store, id, func(d *fleet.Drone) { d.DispatchedAt, d.LastFrameAt = base, base })
	}
	m := &missions{}
	wd := activities.NewWatchdog(store, m, clock.options(time.Minute))
	scan(t, wd)
	if got := runFor(t, store, wd, m, clock, 2*time.Minute, "a", "b"); len(got) != 0 {
		t.Fatalf("before the step: alarms %v", got)
	}
	clock.StepWall(-time.Hour)
	if got := runFor(t, store, wd, m, clock, 55*time.Second, "a"); len(got) != 0 {
		t.Fatalf("within a timeout of the wall clock stepping an hour back: alarms %v, want none", got)
	}
	if got := runFor(t, store, wd, m, clock, time.Minute, "a"); !sameAlarms(got, lost("b")) {
		t.Fatalf("in the minute after that: alarms %v, want %v", got, lost("b"))
	}
}

// TestWatchdogAlarmTimeInTheFuture (issue #13.5): an alarm time left in the
// future (written before the clock was set back, or by a worker whose clock
// is ahead) must not keep a silent or late drone's mission from its alarm.
func TestWatchdogAlarmTimeInTheFuture(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	clock := newTestClock(base)
	fly(t, store, "silent", func(d *fleet.Drone) {
		d.DispatchedAt, d.LastFrameAt, d.LastAlarmAt = base.Add(-10*time.Minute), base.Add(-5*time.Minute), base.Add(time.Hour)
	})
	fly(t, store, "late", func(d *fleet.Drone) {
		d.DispatchedAt, d.LastFrameAt, d.LastAlarmAt = base.Add(-10*time.Minute), base, base.Add(time.Hour)
		d.Deadline = base.Add(-time.Minute)
	})
	m := &missions{}
	wd := activities.NewWatchdog(store, m, clock.options(time.Minute))
	scan(t, wd)
	got := append(m.take(), runFor(t, store, wd, m, clock, 65*time.Second, "late")...)
	want := []alarm{{"m-late", domain.SignalDeadline}, {"m-silent", domain.SignalWatchdog}}
	if !sameAlarms(got, want) {
		t.Fatalf("alarms within a timeout and a scan: %v, want %v", got, want)
	}
}

// countingStore counts full listings of the fleet.
type countingStore struct {
	fleet.Store
	mu       sync.Mutex
	listings int
}

func (s *countingStore) Drones(ctx context.Context) ([]fleet.Drone, error) {
	s.mu.Lock()
	s.listings++
	s.mu.Unlock()
	return s.Store.Drones(ctx)
}

// TestWatchdogScanReadsOnlyDueDrones (issue #13.6): a scan must not read
// the whole fleet, nor read every reserved drone's mission status.
func TestWatchdogScanReadsOnlyDueDrones(t *testing.T) {
	t.Parallel()
	store := &countingStore{Store: openStore(t)}
	ctx := context.Background()
	clock := newTestClock(base)
	const flying, silent, reserved, idle = 200, 5, 20, 50
	for i := range flying + silent {
		fly(t, store, fmt.Sprintf("d%03d", i), func(d *fleet.Drone) {
			d.DispatchedAt, d.LastFrameAt, d.Deadline = base.Add(-time.Hour), base.Add(time.Second), base.Add(time.Hour)
			if i >= flying {
				d.LastFrameAt = base.Add(-time.Hour)
			}
		})
	}
	for i := range reserved + idle {
		id := fmt.Sprintf("r%03d", i)
		if _, err := store.AddDrone(ctx, id, testRoute.Home); err != nil {
			t.Fatal(err)
		}
		if i < reserved {
			if _, err := store.UpdateDrone(ctx, id, func(d *fleet.Drone) error { d.MissionID = "m-" + id; return nil }); err != nil {
				t.Fatal(err)
			}
		}
	}
	m := &missions{}
	wd := activities.NewWatchdog(store, m, clock.options(time.Minute))
	var got []alarm
	for range 13 { // a minute of scans, the watchdog up for the timeout at the last
		scan(t, wd)
		got = append(got, m.take()...)
		clock.Advance(5 * time.Second)
	}
	if len(got) != silent {
		t.Errorf("alarms %v, want the %d silent drones'", got, silent)
	}
	store.mu.Lock()
	listings := store.listings
	store.mu.Unlock()
	if listings != 0 {
		t.Errorf("13 scans listed the whole fleet %d times; a scan must read only the drones that are due", listings)
	}
	// A reservation that stays undispatched is checked now and then, not
	// at every scan: twice a timeout at most, plus the due drones' checks.
	if reads, limit := m.statusReads(), silent+3*reserved; reads > limit {
		t.Errorf("13 scans read mission status %d times, want at most %d", reads, limit)
	}
}

// TestWatchdogsScanningAtOnceRaiseEachAlarmOnce: workers scan at the same
// time (three watchdogs on two connections to one file): every due alarm
// is raised once, and not again within the timeout.
func TestWatchdogsScanningAtOnceRaiseEachAlarmOnce(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "hub.db")
	open := func() fleet.Store {
		b, err := sqlite.Open(context.Background(), sqlite.Options{Path: path, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b.Fleet()
	}
	a, b := open(), open()
	const due = 120
	for i := range due + 30 {
		fly(t, a, fmt.Sprintf("d%03d", i), func(d *fleet.Drone) {
			d.DispatchedAt, d.LastFrameAt = base.Add(-time.Hour), base.Add(-time.Hour)
			if i >= due {
				d.LastFrameAt = base.Add(time.Second)
			}
		})
	}
	m := &missions{}
	clocks := []*testClock{newTestClock(base), newTestClock(base), newTestClock(base)}
	wds := []*activities.Watchdog{
		activities.NewWatchdog(a, m, clocks[0].options(time.Minute)),
		activities.NewWatchdog(b, m, clocks[1].options(time.Minute)),
		activities.NewWatchdog(a, m, clocks[2].options(time.Minute)),
	}
	all := func() {
		var wg sync.WaitGroup
		for _, wd := range wds {
			wg.Go(func() { scan(t, wd) })
		}
		wg.Wait()
	}
	var got []alarm
	for range 13 { // a minute: the watchdogs have been up for the timeout at the last
		all()
		got = append(got, m.take()...)
		for _, c := range clocks {
			c.Advance(5 * time.Second)
		}
	}
	count := map[string]int{}
	for _, al := range got {
		count[al.mission]++
	}
	for i := range due {
		if n := count[fmt.Sprintf("m-d%03d", i)]; n != 1 {
			t.Errorf("mission m-d%03d got %d alarms, want 1", i, n)
		}
	}
	if len(got) != due {
		t.Errorf("%d alarms raised, want %d", len(got), due)
	}
}

// TestWatchdogFreesDronesOfEndedMissions: a drone still bound to a mission
// that ended without freeing it (terminated) is freed instead of alarmed:
// a reserved one within a few scans, a dispatched one once it is silent by
// the clock, even before the watchdog has been up for the timeout.
func TestWatchdogFreesDronesOfEndedMissions(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	ctx := context.Background()
	clock := newTestClock(base)
	if _, err := store.AddDrone(ctx, "r", testRoute.Home); err != nil {
		t.Fatal(err)
	}
	if _, err := store.UpdateDrone(ctx, "r", func(d *fleet.Drone) error { d.MissionID = "m-r"; return nil }); err != nil {
		t.Fatal(err)
	}
	fly(t, store, "f", func(d *fleet.Drone) { d.DispatchedAt, d.LastFrameAt = base, base })
	fly(t, store, "g", func(d *fleet.Drone) { d.DispatchedAt, d.LastFrameAt = base.Add(-time.Hour), base.Add(-5*time.Minute) })
	m := &missions{}
	m.end("m-r")
	m.end("m-f")
	m.end("m-g")
	wd := activities.NewWatchdog(store, m, clock.options(time.Minute))
	scan(t, wd)
	// Silent by the clock at the first scan: no alarm yet, but its mission
	// ended, so it is freed at once.
	if d, err := store.Drone(ctx, "g"); err != nil || d.MissionID != "" || d.Route != nil {
		t.Fatalf("silent dispatched drone of an ended mission after the first scan: %+v, %v", d, err)
	}
	clock.Advance(5 * time.Second)
	for range 2 {
		scan(t, wd)
		clock.Advance(5 * time.Second)
	}
	if d, err := store.Drone(ctx, "r"); err != nil || d.MissionID != "" {
		t.Fatalf("reserved drone of an ended mission after 3 scans: %+v, %v", d, err)
	}
	for range 12 {
		scan(t, wd)
		clock.Advance(5 * time.Second)
	}
	if d, err := store.Drone(ctx, "f"); err != nil || d.MissionID != "" || d.Route != nil {
		t.Fatalf("silent dispatched drone of an ended mission: %+v, %v", d, err)
	}
	if got := m.take(); len(got) != 0 {
		t.Fatalf("alarms raised to ended missions: %v", got)
	}
}

// slowStore is a store whose first drone update, in a scan, takes lag of
// the clock: storage slow enough that frames are accepted while the scan
// runs.
type slowStore struct {
	fleet.Store
	clock *testClock
	lag   time.Duration
	once  sync.Once
}

func (s *slowStore) UpdateDrone(ctx context.Context, id string, fn func(*fleet.Drone) error) (fleet.Drone, error) {
	s.once.Do(func() { s.clock.Advance(s.lag) })
	return s.Store.UpdateDrone(ctx, id, fn)
}

// TestWatchdogRebasesOnTheClockOfTheUpdate: a frame accepted while a slow
// scan runs is later than the clock read at the scan's start, but not
// ahead of the clock; the watchdog must not take it for a time written by
// a clock that is ahead and move it back (which made drones that reported
// all along look silent for as long as the scan took).
func TestWatchdogRebasesOnTheClockOfTheUpdate(t *testing.T) {
	t.Parallel()
	inner := openStore(t)
	clock := newTestClock(base)
	// Accepted 30 s after the scan below starts, while it waits on storage.
	fly(t, inner, "busy", func(d *fleet.Drone) { d.DispatchedAt, d.LastFrameAt = base.Add(-time.Minute), base.Add(30*time.Second) })
	store := &slowStore{Store: inner, clock: clock, lag: 40 * time.Second}
	wd := activities.NewWatchdog(store, &missions{}, clock.options(time.Minute))
	scan(t, wd)
	d, err := inner.Drone(context.Background(), "busy")
	if err != nil {
		t.Fatal(err)
	}
	if want := base.Add(30 * time.Second); !d.LastFrameAt.Equal(want) {
		t.Fatalf("last frame at %s after the scan, want %s: a frame accepted during the scan was moved back", d.LastFrameAt, want)
	}
}
