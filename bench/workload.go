package bench

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microsoft/durabletask-go/task"
)

// The bench's orchestrators and activity.
const (
	sequenceName = "BenchSequence"
	fanOutName   = "BenchFanOut"
	stepName     = "BenchStep"
)

// stepInput is an activity's input: where it runs, and the number it adds
// one to.
type stepInput struct {
	ID   string `json:"i"`
	Step int    `json:"s"`
	N    int    `json:"n"`
}

func (e *Engine) registry() (*task.TaskRegistry, error) {
	r := task.NewTaskRegistry()
	if err := r.AddOrchestratorN(sequenceName, sequence); err != nil {
		return nil, fmt.Errorf("register %s: %w", sequenceName, err)
	}
	if err := r.AddOrchestratorN(fanOutName, fanOut); err != nil {
		return nil, fmt.Errorf("register %s: %w", fanOutName, err)
	}
	if err := r.AddActivityN(stepName, e.step); err != nil {
		return nil, fmt.Errorf("register %s: %w", stepName, err)
	}
	return r, nil
}

// sequence calls its input's number of activities one after the other, each
// adding one to the previous one's result.
func sequence(ctx *task.OrchestrationContext) (any, error) {
	var steps int
	if err := ctx.GetInput(&steps); err != nil {
		return nil, fmt.Errorf("read input: %w", err)
	}
	n := 0
	for i := 0; i < steps; i++ {
		in := stepInput{ID: string(ctx.ID), Step: i, N: n}
		if err := ctx.CallActivity(stepName, task.WithActivityInput(in)).Await(&n); err != nil {
			return nil, fmt.Errorf("step %d: %w", i, err)
		}
	}
	if n != steps {
		return nil, fmt.Errorf("sequence of %d steps ended at %d", steps, n)
	}
	return n, nil
}

// fanOut calls its input's number of activities at once and sums their
// results.
func fanOut(ctx *task.OrchestrationContext) (any, error) {
	var width int
	if err := ctx.GetInput(&width); err != nil {
		return nil, fmt.Errorf("read input: %w", err)
	}
	tasks := make([]task.Task, width)
	for i := range tasks {
		tasks[i] = ctx.CallActivity(stepName, task.WithActivityInput(stepInput{ID: string(ctx.ID), Step: i, N: i}))
	}
	sum := 0
	for i, t := range tasks {
		var n int
		if err := t.Await(&n); err != nil {
			return nil, fmt.Errorf("branch %d: %w", i, err)
		}
		sum += n
	}
	if want := width * (width + 1) / 2; sum != want {
		return nil, fmt.Errorf("fan-out of %d summed to %d, want %d", width, sum, want)
	}
	return sum, nil
}

// step is the activity: it returns its input plus one and records when it
// ran.
func (e *Engine) step(ctx task.ActivityContext) (any, error) {
	start := time.Now()
	var in stepInput
	if err := ctx.GetInput(&in); err != nil {
		return nil, fmt.Errorf("read input: %w", err)
	}
	e.rec.record(in.ID, in.Step, start, time.Now())
	return in.N + 1, nil
}

// recorder keeps, in memory, when each activity ran.
type recorder struct {
	mu    sync.Mutex
	spans map[stepKey]span // the first run of each step
	runs  int
}

type stepKey struct {
	id   string
	step int
}

type span struct{ start, end time.Time }

func (r *recorder) record(id string, step int, start, end time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.spans == nil {
		r.spans = map[stepKey]span{}
	}
	r.runs++
	k := stepKey{id, step}
	if _, ok := r.spans[k]; !ok {
		r.spans[k] = span{start, end}
	}
}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spans, r.runs = nil, 0
}

// executions is the number of activity runs recorded since the last reset.
func (r *recorder) executions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runs
}

// gaps returns, for sequences of steps, the time from each step's return
// to the next step's start.
func (r *recorder) gaps(ids []string, steps int) []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []time.Duration
	for _, id := range ids {
		for s := 1; s < steps; s++ {
			prev, ok1 := r.spans[stepKey{id, s - 1}]
			next, ok2 := r.spans[stepKey{id, s}]
			if ok1 && ok2 {
				out = append(out, next.start.Sub(prev.end))
			}
		}
	}
	return out
}

// Run runs one workload (W1, W2, SoloW1, SoloW2, Ceiling, W3 or W4) on the
// engine and measures it; W1 and W2 Options.Repeat times, reporting the
// median run. Workloads run one at a time on an engine. On error the
// result is nil, except when W3 ran but a mission failed, or W4 ran but
// its ground truth check failed: the figures are returned with the error.
func (e *Engine) Run(ctx context.Context, workload string) (*Result, error) {
	var (
		r   *Result
		err error
	)
	if !slices.Contains(AllWorkloadNames(), workload) {
		return nil, fmt.Errorf("bench: unknown workload %q; known: %v", workload, AllWorkloadNames())
	}
	if workload == Ceiling && e.name != DronehubAzure {
		return nil, fmt.Errorf("bench: %s runs on %s only: it measures Azure Storage, which %s does not use", Ceiling, DronehubAzure, e.name)
	}
	if !e.stack && !simWorkload(workload) && workload != Ceiling {
		return nil, fmt.Errorf("bench: engine %s was opened for %s and %s only (Options.Workloads); open it with %s among its workloads",
			e.name, W3, W4, workload)
	}
	if simWorkload(workload) && !dronehubEngine(e.name) {
		return nil, fmt.Errorf("bench: %s needs a dronehub engine (%s or %s): %s has no fleet store, telemetry ingestion or missions",
			workload, DronehubSQLite, DronehubAzure, e.name)
	}
	switch workload {
	case W1:
		r, err = e.repeated(ctx, workload, sequenceName, e.opts.W1Orchestrations, SequenceSteps)
	case W2:
		r, err = e.repeated(ctx, workload, fanOutName, e.opts.W2Orchestrations, e.opts.W2Fanout)
	case Ceiling:
		r, err = e.ceiling(ctx)
	case SoloW1:
		r, err = e.solo(ctx, workload, sequenceName, SequenceSteps)
	case SoloW2:
		r, err = e.solo(ctx, workload, fanOutName, e.opts.W2Fanout)
	case W3:
		r, err = e.missions(ctx)
	case W4:
		r, err = e.ingest(ctx)
	default:
		return nil, fmt.Errorf("bench: unknown workload %q; known: %v", workload, AllWorkloadNames())
	}
	if err != nil {
		return r, fmt.Errorf("%s on %s: %w", workload, e.name, err)
	}
	if q := r.Requests; q != nil && r.Seconds > 0 {
		q.PerSecond = float64(q.Total) / r.Seconds
	}
	done, unit := r.Orchestrations, ""
	switch {
	case r.Missions != nil:
		unit = "missions"
	case r.Ingest != nil:
		done, unit = r.Ingest.Frames, "frames"
	case r.Ceiling != nil:
		done, unit = r.Ceiling.operations(), "operations"
	}
	e.progress(Progress{Engine: e.name, Workload: workload, Done: done, Total: done, Unit: unit,
		Elapsed: time.Duration(r.Seconds * float64(time.Second)), Result: r})
	return r, nil
}

// repeated runs batch Options.Repeat times back to back, each time on
// fresh instance ids, and returns the median run's result with every run's
// window in Repetitions (when there is more than one run).
func (e *Engine) repeated(ctx context.Context, workload, orchestrator string, n, width int) (*Result, error) {
	runs := e.opts.Repeat
	if runs <= 1 {
		return e.batch(ctx, workload, orchestrator, n, width, 0)
	}
	results := make([]*Result, runs)
	for i := range results {
		r, err := e.batch(ctx, workload, orchestrator, n, width, i+1)
		if err != nil {
			return nil, fmt.Errorf("run %d of %d: %w", i+1, runs, err)
		}
		results[i] = r
	}
	return medianRun(results), nil
}

// medianRun returns the result of the median run of results (for an even
// count, the faster of the two middle ones), with the runs' figures in
// Repetitions.
func medianRun(results []*Result) *Result {
	order := make([]int, len(results))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return results[order[a]].Seconds < results[order[b]].Seconds })
	mid := order[(len(order)-1)/2]
	rep := &Repetitions{
		Seconds:            make([]float64, len(results)),
		ActivityExecutions: make([]int, len(results)),
		Median:             mid + 1,
		ExactlyOnce:        true,
	}
	slowest := 0.0
	for i, r := range results {
		rep.Seconds[i], rep.ActivityExecutions[i] = r.Seconds, r.ActivityExecutions
		slowest = max(slowest, r.Seconds)
		if r.ActivityExecutions != r.Activities {
			rep.ExactlyOnce = false
		}
	}
	rep.SlowestToMedian = ratio(slowest, results[mid].Seconds)
	r := *results[mid]
	r.Repetitions = rep
	return &r
}

// batch schedules n orchestrations at once, Concurrency at a time, and
// waits for all of them; run is the repetition (1-based) when W1 or W2 is
// repeated, 0 otherwise.
func (e *Engine) batch(ctx context.Context, workload, orchestrator string, n, width, run int) (*Result, error) {
	ids := e.newIDs(workload, n)
	trk := e.track(ids)
	defer e.track(nil)
	e.rec.reset()
	w := beginWindow(e.counter)

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	starts := make([]time.Time, n)
	sched := make(chan error, 1)
	var scheduling sync.WaitGroup
	scheduling.Add(1)
	go func() {
		defer scheduling.Done()
		sched <- e.scheduleAll(sctx, orchestrator, width, ids, starts)
	}()
	runs := 0
	if run > 0 {
		runs = e.opts.Repeat
	}
	err := e.await(ctx, trk, sched, func() {
		e.progress(Progress{Engine: e.name, Workload: workload, Done: trk.count(), Total: n, Elapsed: time.Since(w.began), Run: run, Runs: runs})
	})
	cancel()
	scheduling.Wait()
	if err != nil {
		return nil, err
	}
	m := w.end(trk.last())
	lat := make([]time.Duration, n)
	for i, id := range ids {
		lat[i] = trk.at(id).Sub(starts[i])
	}
	return e.result(workload, ids, width, orchestrator == sequenceName, lat, m), nil
}

// scheduleAll schedules ids, Concurrency at a time, noting when each
// schedule call began in starts.
func (e *Engine) scheduleAll(ctx context.Context, orchestrator string, width int, ids []string, starts []time.Time) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	for range min(e.opts.Concurrency, len(ids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) || ctx.Err() != nil {
					return
				}
				starts[i] = time.Now()
				if err := e.schedule(ctx, e.client, ids[i], orchestrator, width); err != nil {
					errOnce.Do(func() { first = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// solo runs SoloRuns orchestrations one after the other, each scheduled
// once the previous one has completed.
func (e *Engine) solo(ctx context.Context, workload, orchestrator string, width int) (*Result, error) {
	runs := e.opts.SoloRuns
	ids := e.newIDs(workload, runs)
	defer e.track(nil)
	e.rec.reset()
	w := beginWindow(e.counter)
	lat := make([]time.Duration, runs)
	var end time.Time
	for i, id := range ids {
		trk := e.track([]string{id})
		start := time.Now()
		// Through the worker's own backend, as its HTTP API starts
		// orchestrations: the latency of the engine, not of another
		// process's start reaching it by polling.
		if err := e.schedule(ctx, e.local, id, orchestrator, width); err != nil {
			return nil, err
		}
		err := e.await(ctx, trk, nil, func() {
			e.progress(Progress{Engine: e.name, Workload: workload, Done: i, Total: runs, Elapsed: time.Since(w.began)})
		})
		if err != nil {
			return nil, fmt.Errorf("run %d of %d: %w", i+1, runs, err)
		}
		end = trk.at(id)
		lat[i] = end.Sub(start)
	}
	m := w.end(end)
	return e.result(workload, ids, width, orchestrator == sequenceName, lat, m), nil
}

// result computes a workload's figures.
func (e *Engine) result(workload string, ids []string, width int, isSequence bool, lat []time.Duration, m measured) *Result {
	n := len(ids)
	acts := n * width
	r := &Result{
		Engine:                     e.name,
		Workload:                   workload,
		Orchestrations:             n,
		ActivitiesPerOrchestration: width,
		Activities:                 acts,
		ActivityExecutions:         e.rec.executions(),
		Concurrency:                e.opts.Concurrency,
		Seconds:                    m.window.Seconds(),
		LatencyMs:                  percentiles(lat),
		CPUSeconds:                 m.cpu.Seconds(),
		PeakRSSBytes:               m.peakRSS,
		PeakRSSOfProcess:           m.peakRSS > 0 && !m.rssReset,
	}
	if m.window > 0 {
		r.OrchestrationsPerSecond = float64(n) / m.window.Seconds()
		r.ActivitiesPerSecond = float64(acts) / m.window.Seconds()
	}
	if acts > 0 {
		r.CPUPerActivityUs = float64(m.cpu.Microseconds()) / float64(acts)
	}
	if isSequence {
		g := percentiles(e.rec.gaps(ids, width))
		r.GapMs = &g
	}
	if m.requests != nil {
		req := &Requests{ByKind: map[string]KindRequests{}}
		for kind, c := range m.requests {
			req.Total += c
			req.ByKind[kind] = KindRequests{Count: c, PerActivity: per(c, acts), PerOrchestration: per(c, n)}
		}
		req.PerActivity, req.PerOrchestration = per(req.Total, acts), per(req.Total, n)
		r.Requests = req
	}
	return r
}

func per(c int64, n int) float64 {
	if n == 0 {
		return 0
	}
	return float64(c) / float64(n)
}

// percentiles returns the nearest-rank 50th and 99th percentiles of d in
// milliseconds.
func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := func(p float64) float64 {
		i := max(0, min(int(math.Ceil(p*float64(len(s))))-1, len(s)-1))
		return float64(s[i]) / float64(time.Millisecond)
	}
	return Percentiles{P50: rank(0.50), P99: rank(0.99), N: len(s)}
}
