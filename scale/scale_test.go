package scale

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/taskhub"
)

// sampled is a partitioned backend whose samples the test scripts.
type sampled struct {
	taskhub.Backend // nil: only ScaleSample is called
	mu              sync.Mutex
	next            taskhub.ScaleSample
	err             error
	calls           atomic.Int32
	gate            chan struct{} // when set, ScaleSample waits for it
}

func (s *sampled) ScaleSample(ctx context.Context) (taskhub.ScaleSample, error) {
	s.calls.Add(1)
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return taskhub.ScaleSample{}, ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next, s.err
}

func (s *sampled) set(x taskhub.ScaleSample, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next, s.err = x, err
}

// single is a one-process backend (SQLite): HubInfo only.
type single struct {
	taskhub.Backend
	depths map[string]int
}

func (s *single) HubInfo(context.Context) (taskhub.HubInfo, error) {
	return taskhub.HubInfo{Kind: "sqlite", QueueDepths: s.depths}, nil
}

// drones is a fleet whose Watched says whether a drone is on a mission.
type drones struct {
	fleet.Store
	bound bool
}

func (d *drones) Watched(context.Context, fleet.WatchQuery) ([]fleet.Watch, error) {
	if d.bound {
		return []fleet.Watch{{ID: "drone-1", MissionID: "m-1", Dispatched: true}}, nil
	}
	return nil, nil
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// q builds a queue load: messages and the age of the oldest visible one.
func q(n int64, age time.Duration) taskhub.QueueLoad {
	return taskhub.QueueLoad{Messages: n, OldestAge: age}
}

// hub builds a sample of 4 partitions.
func hub(workers int, work taskhub.QueueLoad, control ...taskhub.QueueLoad) taskhub.ScaleSample {
	c := make([]taskhub.QueueLoad, 4)
	copy(c, control)
	return taskhub.ScaleSample{Control: c, WorkItems: work, Workers: workers}
}

// feeder adds samples to a Monitor at times the test chooses.
type feeder struct {
	t   *testing.T
	m   *Monitor
	now time.Time
}

func newFeeder(t *testing.T, o Options) *feeder {
	if o.Backend == nil {
		o.Backend = &sampled{}
	}
	o.Logger = quiet()
	return &feeder{t: t, m: New(o), now: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
}

// add records s taken after dt and returns the signal.
func (f *feeder) add(dt time.Duration, s taskhub.ScaleSample, idle bool) Status {
	f.now = f.now.Add(dt)
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	return f.m.add(sample{at: f.now, s: s, idle: idle})
}

func want(t *testing.T, st Status, n int, rule Rule) {
	t.Helper()
	if st.RecommendedWorkers != n || st.Rule != string(rule) {
		t.Fatalf("recommended %d (%s: %s), want %d (%s)", st.RecommendedWorkers, st.Rule, st.Reason, n, rule)
	}
	if st.Reason == "" {
		t.Fatal("no reason given")
	}
}

func TestIdle(t *testing.T) {
	f := newFeeder(t, Options{IdleAfter: time.Minute})
	empty := hub(3, q(0, 0))
	want(t, f.add(0, empty, true), 1, RuleIdleWait)
	st := f.add(30*time.Second, empty, true)
	want(t, st, 1, RuleIdleWait)
	if st.IdleSeconds != 30 {
		t.Errorf("idleSeconds %v, want 30", st.IdleSeconds)
	}
	want(t, f.add(30*time.Second, empty, true), 0, RuleIdle)
	// Work comes back: the idle run ends, and starts over after.
	st = f.add(time.Second, hub(3, q(1, 0)), false)
	if st.IdleSeconds != 0 || st.RecommendedWorkers == 0 {
		t.Fatalf("busy again: %+v", st)
	}
	want(t, f.add(time.Second, empty, true), 1, RuleIdleWait)
	// With no worker running, an idle hub needs none at once.
	want(t, f.add(time.Second, hub(0, q(0, 0)), true), 0, RuleIdle)
}

func TestFirstWorker(t *testing.T) {
	f := newFeeder(t, Options{})
	st := f.add(0, hub(0, q(0, 0), q(3, 2*time.Second)), false)
	want(t, st, 1, RuleFirstWorker)
	if !strings.Contains(st.Reason, "3 control") {
		t.Errorf("reason %q does not say what is queued", st.Reason)
	}
	// Nothing queued but a drone on a mission: the sample is not idle.
	want(t, f.add(time.Second, hub(0, q(0, 0)), false), 1, RuleFirstWorker)
}

func TestControlQueueLatency(t *testing.T) {
	f := newFeeder(t, Options{})
	late := q(40, 3*time.Second)
	want(t, f.add(0, hub(1, q(0, 0), late, late, late), false), 1, RuleNotEnoughYet)
	// Three control queues lagging in two samples: a worker for each.
	st := f.add(5*time.Second, hub(1, q(0, 0), late, late, late, q(2, 0)), false)
	want(t, st, 3, RuleControlLag)
	if st.OldestControlMessageAgeSeconds != 3 || st.ControlQueueDepth != 122 || st.Partitions != 4 || st.CurrentWorkers != 1 {
		t.Errorf("figures: %+v", st)
	}
	// One lagging sample is not enough (a message that waited for a
	// lost wake-up).
	f = newFeeder(t, Options{})
	f.add(0, hub(1, q(0, 0), q(1, 0)), false)
	want(t, f.add(5*time.Second, hub(1, q(0, 0), late, late), false), 1, RuleSteady)
}

func TestWorkItemLatency(t *testing.T) {
	f := newFeeder(t, Options{})
	late := q(300, 2*time.Second)
	f.add(0, hub(4, late), false)
	// Beyond the 4 partitions, by backlog: 300 work items at 32 a worker
	// is 10 workers at most; one more at a time.
	want(t, f.add(5*time.Second, hub(4, late), false), 5, RuleWorkItemLag)
	// A small backlog does not justify more workers than partitions.
	f = newFeeder(t, Options{})
	small := q(20, 2*time.Second)
	f.add(0, hub(4, small), false)
	want(t, f.add(5*time.Second, hub(4, small), false), 4, RuleSteady)
}

func TestOverCapacity(t *testing.T) {
	f := newFeeder(t, Options{})
	f.add(0, hub(6, q(10, 0), q(1, 0)), false)
	want(t, f.add(time.Second, hub(6, q(10, 0), q(1, 0)), false), 4, RuleOverCapacity)
}

func TestScaleInWhenCalm(t *testing.T) {
	f := newFeeder(t, Options{Calm: 30 * time.Second})
	fast := q(2, 50*time.Millisecond)
	busy := hub(3, q(5, 0), fast, fast, fast)
	for i := 0; i < 6; i++ { // 25 s: not calm long enough yet
		st := f.add(5*time.Second, busy, false)
		if st.RecommendedWorkers != 3 {
			t.Fatalf("after %d samples: %+v", i+1, st)
		}
	}
	want(t, f.add(5*time.Second, busy, false), 2, RuleCalm)
	// The count changed: the window starts again.
	want(t, f.add(5*time.Second, hub(2, q(5, 0), fast), false), 2, RuleNotEnoughYet)
	want(t, f.add(5*time.Second, hub(2, q(5, 0), fast), false), 2, RuleSteady)
}

func TestScaleInWithoutWorkItems(t *testing.T) {
	f := newFeeder(t, Options{Calm: 10 * time.Second})
	one := hub(3, q(0, 0), q(1, 500*time.Millisecond))
	f.add(0, one, false)
	f.add(5*time.Second, one, false)
	// No work item for 10 s and one control queue in use: one worker.
	want(t, f.add(5*time.Second, one, false), 1, RuleWorkItemsIdle)
}

func TestSingleProcess(t *testing.T) {
	be := &single{depths: map[string]int{"NewEvents": 2, "NewTasks": 1}}
	f := newFeeder(t, Options{Backend: be})
	ctx := context.Background()
	st, err := f.m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want(t, st, 1, RuleSingleProcess)
	if st.ControlQueueDepth != 2 || st.WorkItemQueueDepth != 1 || st.CurrentWorkers != 1 || st.Partitions != 1 {
		t.Errorf("figures: %+v", st)
	}
	// Idle, with a drone on a mission: one worker.
	be.depths = map[string]int{"NewEvents": 0, "NewTasks": 0}
	f = newFeeder(t, Options{Backend: be, Fleet: &drones{bound: true}, Interval: time.Millisecond})
	if st, _ = f.m.Status(ctx); st.RecommendedWorkers != 1 || st.IdleSeconds != 0 {
		t.Errorf("a drone on a mission: %+v", st)
	}
	// Idle for IdleAfter: none.
	f = newFeeder(t, Options{Backend: be, Fleet: &drones{}, Interval: 100 * time.Millisecond, IdleAfter: 100 * time.Millisecond})
	deadline := time.Now().Add(10 * time.Second)
	for st, _ = f.m.Status(ctx); st.RecommendedWorkers != 0; st, _ = f.m.Status(ctx) {
		if time.Now().After(deadline) {
			t.Fatalf("still %+v", st)
		}
		time.Sleep(20 * time.Millisecond) // the poll interval; the deadline bounds the wait
	}
	want(t, st, 0, RuleIdle)
}

// TestSampledAtMostOncePerInterval: however many read the signal, storage
// is sampled once per interval, and readers share a sample in progress.
func TestSampledAtMostOncePerInterval(t *testing.T) {
	be := &sampled{gate: make(chan struct{})}
	be.set(hub(2, q(1, 0)), nil)
	m := New(Options{Backend: be, Interval: time.Hour, Logger: quiet()})
	defer m.Close()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := m.Status(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	// Every reader is waiting for the one sample.
	deadline := time.Now().Add(5 * time.Second)
	for be.calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	close(be.gate)
	wg.Wait()
	for i := 0; i < 5; i++ {
		if _, err := m.Status(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := be.calls.Load(); n != 1 {
		t.Errorf("%d samples for 13 reads within the interval, want 1", n)
	}
}

func TestSampleFailures(t *testing.T) {
	be := &sampled{}
	be.set(taskhub.ScaleSample{}, errors.New("storage down"))
	m := New(Options{Backend: be, Interval: 100 * time.Millisecond, Logger: quiet()})
	defer m.Close()
	if _, err := m.Status(context.Background()); err == nil {
		t.Fatal("no error before any sample succeeded")
	}
	be.set(hub(2, q(1, 0)), nil)
	deadline := time.Now().Add(5 * time.Second)
	var st Status
	var err error
	for st, err = m.Status(context.Background()); err != nil; st, err = m.Status(context.Background()) {
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // the poll interval; the deadline bounds the wait
	}
	if st.CurrentWorkers != 2 {
		t.Errorf("%+v", st)
	}
	// Storage fails again: the last signal is served, saying how old.
	be.set(taskhub.ScaleSample{}, errors.New("storage down"))
	deadline = time.Now().Add(5 * time.Second)
	for !strings.Contains(st.Reason, "sampling storage fails") {
		if time.Now().After(deadline) {
			t.Fatalf("the stale signal does not say so: %q", st.Reason)
		}
		time.Sleep(50 * time.Millisecond) // the poll interval; the deadline bounds the wait
		if st, err = m.Status(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestJSONContract pins the names deployment manifests read.
func TestJSONContract(t *testing.T) {
	b, err := json.Marshal(Status{RecommendedWorkers: 2, Reason: "r", Rule: "calm", SampledAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	names := []string{"recommendedWorkers", "reason", "partitions", "controlQueueDepth", "workItemQueueDepth",
		"oldestControlMessageAgeSeconds", "oldestWorkItemAgeSeconds", "idleSeconds", "currentWorkers"}
	for _, n := range names {
		if _, ok := got[n]; !ok {
			t.Errorf("no %q in %s", n, b)
		}
	}
	if len(got) != len(names) {
		t.Errorf("%d fields in %s, want exactly %d", len(got), b, len(names))
	}
}
