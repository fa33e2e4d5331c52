// Package bench measures dronehub's task-hub engines under two synthetic
// workloads and against durabletask-go's own SQLite backend, in one process:
// the workers, the client and the bench share it.
//
// Workloads (activities are trivial: they return their input plus one, so
// the figures are the engine's, not the work's):
//
//   - W1: W1Orchestrations orchestrations of SequenceSteps sequential
//     activities, all scheduled at once;
//   - W2: W2Orchestrations orchestrations fanning out to W2Fanout parallel
//     activities and back in, all scheduled at once;
//   - SoloW1, SoloW2: one orchestration of the W1 or the W2 shape at a time,
//     SoloRuns times, on an otherwise idle worker that has already run work.
//
// W1 and W2 run Repeat times back to back (fresh instance ids each time);
// the result is the median run's, with every run's window in Repetitions.
//
// Ceiling, on DronehubAzure only, measures the storage itself: the Azure
// SDK's clients, with no engine, doing CeilingOps enqueues, dequeue+deletes,
// point reads and 10-entity batches with Concurrency goroutines on a
// scratch queue and table, so that the engine's figures can be read as a
// fraction of what the storage (Azurite, usually) allows.
//
// Two more workloads run dronehub itself, not synthetic orchestrations, and
// only on dronehub's engines and when asked for (they take minutes at their
// default sizes): each opens a dronehub worker (worker.New) on fresh storage
// of the engine's kind and serves its HTTP API on loopback.
//
//   - W3: W3Missions delivery missions started at once, flown by the
//     simulator, their drones posting telemetry to POST /api/telemetry until
//     every mission has completed;
//   - W4: W4Drones idle drones posting W4FramesPerDrone frames each to
//     POST /api/telemetry, checked against the stored drone states.
//
// Engines: DronehubSQLite and DronehubAzure are dronehub's backends (see
// package backend) in the stack dronehub's worker builds for them;
// DtgoSQLiteFile and DtgoSQLiteMemory are durabletask-go's SQLite backend
// as it is, on a file and in memory. Every engine runs the same
// orchestrations and activities with the same concurrency, under the same
// taskhub.Runner.
//
// Run runs a whole bench and returns a Report; a Go benchmark opens one
// Engine with OpenEngine and runs one workload on it:
//
//	e, err := bench.OpenEngine(ctx, bench.DronehubSQLite, bench.Options{W1Orchestrations: b.N})
//	...
//	defer e.Close(ctx)
//	b.ResetTimer()
//	r, err := e.Run(ctx, bench.W1)
//	b.ReportMetric(r.OrchestrationsPerSecond, "orch/s")
//
// The measurements, and what each one includes, are described on Result
// and in docs/performance.md ("The bench command").
package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/dronehub/dronehub/domain"
)

// Engine names.
const (
	// DronehubSQLite is dronehub's embedded SQLite backend on a fresh file.
	DronehubSQLite = "dronehub-sqlite"
	// DronehubAzure is dronehub's Azure Storage backend on a fresh hub in
	// Options.AzureConnectionString, deleted when the engine closes.
	DronehubAzure = "dronehub-azure"
	// DtgoSQLiteFile is durabletask-go's SQLite backend on a fresh file.
	DtgoSQLiteFile = "dtgo-sqlite-file"
	// DtgoSQLiteMemory is durabletask-go's SQLite backend in memory.
	DtgoSQLiteMemory = "dtgo-sqlite-memory"
)

// Baseline is the engine every result is compared with (Result.VsBaseline)
// when it ran in the same bench.
const Baseline = DtgoSQLiteMemory

// EngineNames returns every engine name, in the order Run runs them.
func EngineNames() []string {
	return []string{DronehubSQLite, DronehubAzure, DtgoSQLiteFile, DtgoSQLiteMemory}
}

// Workload names.
const (
	// W1 is W1Orchestrations sequences of SequenceSteps activities, all
	// scheduled at once.
	W1 = "w1"
	// W2 is W2Orchestrations fan-outs of W2Fanout activities, all
	// scheduled at once.
	W2 = "w2"
	// SoloW1 is one W1-shaped orchestration at a time, SoloRuns times.
	SoloW1 = "solo-w1"
	// SoloW2 is one W2-shaped orchestration at a time, SoloRuns times.
	SoloW2 = "solo-w2"
	// W3 is W3Missions delivery missions flown by the simulator on a
	// dronehub worker.
	W3 = "w3"
	// W4 is W4Drones drones posting W4FramesPerDrone telemetry frames each
	// to a dronehub worker.
	W4 = "w4"
	// Ceiling is the raw rate of the storage of DronehubAzure through the
	// Azure SDK, without an engine: CeilingOps enqueues, dequeue+deletes,
	// point reads and 10-entity batches, Concurrency at a time. It runs on
	// DronehubAzure only.
	Ceiling = "ceiling"
)

// WorkloadNames returns the workloads every engine runs by default, in the
// order Run runs them. By default DronehubAzure runs Ceiling too, after
// them; W3 and W4 run only when Options.Workloads names them.
func WorkloadNames() []string { return []string{W1, W2, SoloW1, SoloW2} }

// AllWorkloadNames returns every workload name: the default ones, then
// Ceiling, W3 and W4.
func AllWorkloadNames() []string { return append(WorkloadNames(), Ceiling, W3, W4) }

// SequenceSteps is the number of sequential activities of a W1 orchestration.
const SequenceSteps = 5

// Defaults and limits of Options.
const (
	DefaultW1Orchestrations = 200
	DefaultW2Orchestrations = 50
	DefaultW2Fanout         = 20
	DefaultSoloRuns         = 20
	DefaultConcurrency      = 16
	DefaultRepeat           = 1
	DefaultCeilingOps       = 2000

	DefaultW3Missions       = 1000
	DefaultW3FrameInterval  = time.Second
	DefaultW3SpeedMps       = 60
	DefaultW3Batch          = 100
	DefaultW4Drones         = 1000
	DefaultW4FramesPerDrone = 20
	DefaultW4Batch          = 100

	// MaxOrchestrations bounds W1Orchestrations, W2Orchestrations and
	// SoloRuns.
	MaxOrchestrations = 100_000
	// MaxFanout bounds W2Fanout.
	MaxFanout = 1000
	// MaxConcurrency bounds Concurrency.
	MaxConcurrency = 1024
	// MaxDrones bounds W3Missions and W4Drones (a drone is seeded for each).
	MaxDrones = 100_000
	// MaxFramesPerDrone bounds W4FramesPerDrone.
	MaxFramesPerDrone = 100_000
	// MaxSpeedMps bounds W3SpeedMps.
	MaxSpeedMps = 10_000
	// MaxRepeat bounds Repeat.
	MaxRepeat = 100
	// MaxCeilingOps bounds CeilingOps.
	MaxCeilingOps = 100_000
)

// Options configures a bench. The zero value runs every workload at its
// default size on every local engine (DronehubAzure only runs with
// AzureConnectionString).
type Options struct {
	// Engines to run, in this order; default EngineNames(), without
	// DronehubAzure when AzureConnectionString is empty.
	Engines []string
	// Workloads to run on each engine, in this order; default
	// WorkloadNames(), and Ceiling on DronehubAzure. Ceiling runs on
	// DronehubAzure only: the other engines skip it, with a note when it
	// was asked for.
	Workloads []string
	// W1Orchestrations is W1's size; default 200.
	W1Orchestrations int
	// W2Orchestrations and W2Fanout are W2's size: orchestrations, and
	// parallel activities in each; defaults 50 and 20. SoloW2 uses
	// W2Fanout too.
	W2Orchestrations int
	W2Fanout         int
	// SoloRuns is how many orchestrations SoloW1 and SoloW2 each run, one
	// after the other; default 20.
	SoloRuns int
	// Repeat is how many times W1 and W2 each run on an engine, back to
	// back, on fresh instance ids; default 1. Their result is the median
	// run's, with every run's window in Result.Repetitions when Repeat > 1.
	// The solo workloads, W3, W4 and Ceiling run once.
	Repeat int
	// CeilingOps is how many operations of each kind Ceiling does; default
	// 2000.
	CeilingOps int
	// Concurrency bounds both the orchestration and the activity work items
	// a worker processes at once, and the orchestrations the client
	// schedules at once; default 16. In W3 and W4 it also bounds the
	// telemetry posts in flight.
	Concurrency int
	// W3Missions is W3's size: missions started at once, one drone each;
	// default 1000.
	W3Missions int
	// W3FrameInterval is the real time between two frames of a drone in W3
	// (a tick); default 1s. Each frame is one second of the drone's flight.
	W3FrameInterval time.Duration
	// W3SpeedMps is the drones' cruise speed in W3, in metres per second of
	// flight; default 60, four times a real delivery drone's, so that a
	// 2-4 km route takes about a minute (50-80 frames) at one frame a
	// second.
	W3SpeedMps float64
	// W3Batch is the most frames a W3 post carries: each tick's frames are
	// posted in posts of up to W3Batch frames; default 100.
	W3Batch int
	// W4Drones, W4FramesPerDrone and W4Batch are W4's size: drones, frames
	// each sends, and frames per post; defaults 1000, 20 and 100.
	W4Drones         int
	W4FramesPerDrone int
	W4Batch          int
	// AzureConnectionString is the Azure Storage account (or Azurite) of
	// DronehubAzure. A fresh hub is created in it and deleted at the end.
	AzureConnectionString string
	// TempDir holds the SQLite files, each in a directory of its own that
	// is removed at the end; default os.TempDir().
	TempDir string
	// Logger receives the engines' logs; default none.
	Logger *slog.Logger
	// Progress, if set, is called on the goroutine that called Run,
	// OpenEngine or Engine.Run, never concurrently: when an engine starts
	// opening and while it warms up (Workload ""), a few times a second
	// while a workload runs, and once when it ends (Result set; not when
	// the workload failed). It must return quickly.
	Progress func(Progress)
}

// Progress reports how far a bench is.
type Progress struct {
	// Engine is the engine being opened or run.
	Engine string `json:"engine"`
	// Workload is the workload running, or "" while the engine opens and
	// warms up.
	Workload string `json:"workload"`
	// Done of Total orchestrations of the workload have completed (Unit
	// "missions" for W3: missions ended; "frames" for W4: frames posted;
	// "operations" for Ceiling: storage operations done, of every kind).
	Done  int    `json:"done"`
	Total int    `json:"total"`
	Unit  string `json:"unit,omitempty"`
	// Run of Runs is the repetition of W1 or W2 running, when
	// Options.Repeat > 1 (zero otherwise, and in the final report, whose
	// Result is the median run's).
	Run  int `json:"run,omitempty"`
	Runs int `json:"runs,omitempty"`
	// Elapsed is the time since the workload (or the opening) began.
	Elapsed time.Duration `json:"elapsed"`
	// Result is set once, when the workload has finished.
	Result *Result `json:"result,omitempty"`
}

func (o Options) withDefaults() Options {
	if len(o.Engines) == 0 {
		for _, e := range EngineNames() {
			if e != DronehubAzure || o.AzureConnectionString != "" {
				o.Engines = append(o.Engines, e)
			}
		}
	}
	if len(o.Workloads) == 0 {
		o.Workloads = WorkloadNames()
		if slices.Contains(o.Engines, DronehubAzure) {
			o.Workloads = append(o.Workloads, Ceiling)
		}
	}
	if o.W1Orchestrations == 0 {
		o.W1Orchestrations = DefaultW1Orchestrations
	}
	if o.W2Orchestrations == 0 {
		o.W2Orchestrations = DefaultW2Orchestrations
	}
	if o.W2Fanout == 0 {
		o.W2Fanout = DefaultW2Fanout
	}
	if o.SoloRuns == 0 {
		o.SoloRuns = DefaultSoloRuns
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.Repeat == 0 {
		o.Repeat = DefaultRepeat
	}
	if o.CeilingOps == 0 {
		o.CeilingOps = DefaultCeilingOps
	}
	if o.W3Missions == 0 {
		o.W3Missions = DefaultW3Missions
	}
	if o.W3FrameInterval == 0 {
		o.W3FrameInterval = DefaultW3FrameInterval
	}
	if o.W3SpeedMps == 0 {
		o.W3SpeedMps = DefaultW3SpeedMps
	}
	if o.W3Batch == 0 {
		o.W3Batch = DefaultW3Batch
	}
	if o.W4Drones == 0 {
		o.W4Drones = DefaultW4Drones
	}
	if o.W4FramesPerDrone == 0 {
		o.W4FramesPerDrone = DefaultW4FramesPerDrone
	}
	if o.W4Batch == 0 {
		o.W4Batch = DefaultW4Batch
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// validate reports what is wrong with o (after withDefaults), naming the
// field.
func (o Options) validate() error {
	var errs []error
	size := func(field string, v, max int) {
		if v < 1 || v > max {
			errs = append(errs, fmt.Errorf("Options.%s is %d; want 1-%d", field, v, max))
		}
	}
	size("W1Orchestrations", o.W1Orchestrations, MaxOrchestrations)
	size("W2Orchestrations", o.W2Orchestrations, MaxOrchestrations)
	size("W2Fanout", o.W2Fanout, MaxFanout)
	size("SoloRuns", o.SoloRuns, MaxOrchestrations)
	size("Concurrency", o.Concurrency, MaxConcurrency)
	size("Repeat", o.Repeat, MaxRepeat)
	size("CeilingOps", o.CeilingOps, MaxCeilingOps)
	size("W3Missions", o.W3Missions, MaxDrones)
	size("W3Batch", o.W3Batch, domain.MaxFramesPerBatch)
	size("W4Drones", o.W4Drones, MaxDrones)
	size("W4FramesPerDrone", o.W4FramesPerDrone, MaxFramesPerDrone)
	size("W4Batch", o.W4Batch, domain.MaxFramesPerBatch)
	if o.W3FrameInterval < time.Millisecond || o.W3FrameInterval > time.Minute {
		errs = append(errs, fmt.Errorf("Options.W3FrameInterval is %s; want 1ms-1m", o.W3FrameInterval))
	}
	if !(o.W3SpeedMps >= 1 && o.W3SpeedMps <= MaxSpeedMps) {
		errs = append(errs, fmt.Errorf("Options.W3SpeedMps is %g; want 1-%d", o.W3SpeedMps, MaxSpeedMps))
	}
	if err := checkNames("Engines", o.Engines, EngineNames()); err != nil {
		errs = append(errs, err)
	}
	if err := checkNames("Workloads", o.Workloads, AllWorkloadNames()); err != nil {
		errs = append(errs, err)
	}
	if slices.Contains(o.Engines, DronehubAzure) && o.AzureConnectionString == "" {
		errs = append(errs, fmt.Errorf("engine %s needs Options.AzureConnectionString", DronehubAzure))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

func checkNames(field string, names, known []string) error {
	seen := map[string]bool{}
	for _, n := range names {
		if !slices.Contains(known, n) {
			return fmt.Errorf("Options.%s: unknown name %q; known: %v", field, n, known)
		}
		if seen[n] {
			return fmt.Errorf("Options.%s: %q appears twice", field, n)
		}
		seen[n] = true
	}
	return nil
}

// Run runs every workload of opts on every engine of opts, one engine at a
// time, and compares each result with the Baseline engine's result for the
// same workload when the baseline ran. On error the report holds the
// results measured so far. A W3 or W4 that was measured but failed its
// checks (a mission that did not complete, a drone state that is not the
// last frame sent) is in the report too, and the bench goes on; its error
// is returned at the end.
func Run(ctx context.Context, opts Options) (*Report, error) {
	// Ceiling is in the default workloads, for DronehubAzure only: the
	// other engines say they skipped it only when it was asked for.
	askedCeiling := slices.Contains(opts.Workloads, Ceiling)
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	rep := &Report{
		Date:      time.Now().UTC().Truncate(time.Second),
		GoVersion: runtime.Version(),
		Machine:   machineInfo(),
		Settings:  settingsOf(opts),
	}
	rep.LoadAverage.Start = loadAverage()
	start := time.Now()
	err := runAll(ctx, opts, rep, askedCeiling)
	rep.LoadAverage.End = loadAverage()
	rep.Seconds = time.Since(start).Seconds()
	rep.compare()
	rep.relateToCeiling()
	return rep, err
}

func runAll(ctx context.Context, opts Options, rep *Report, askedCeiling bool) error {
	var skipped []string        // engines that cannot run W3 and W4
	var skippedCeiling []string // engines that cannot run Ceiling
	defer func() {
		if len(skippedCeiling) > 0 && askedCeiling {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s did not run on %s: it measures the Azure Storage account (or Azurite) of %s",
				Ceiling, strings.Join(skippedCeiling, ", "), DronehubAzure))
		}
		if len(skipped) > 0 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s did not run on %s: durabletask-go's backend alone has no fleet store, telemetry ingestion or missions",
				strings.Join(slices.DeleteFunc(slices.Clone(opts.Workloads), func(w string) bool { return !simWorkload(w) }), ", "),
				strings.Join(skipped, ", ")))
		}
	}()
	// The workloads that were measured but failed their checks (W3, W4):
	// the others still run, and Run returns these errors at the end.
	var failed []error
	for _, name := range opts.Engines {
		workloads := opts.Workloads
		if name != DronehubAzure && slices.Contains(workloads, Ceiling) {
			skippedCeiling = append(skippedCeiling, name)
			workloads = slices.DeleteFunc(slices.Clone(workloads), isCeiling)
			if len(workloads) == 0 {
				continue
			}
		}
		if !dronehubEngine(name) && slices.ContainsFunc(workloads, simWorkload) {
			skipped = append(skipped, name)
			workloads = slices.DeleteFunc(slices.Clone(workloads), simWorkload)
			if len(workloads) == 0 {
				continue
			}
		}
		eopts := opts
		eopts.Workloads = workloads
		e, err := OpenEngine(ctx, name, eopts)
		if err != nil {
			return errors.Join(append(failed, err)...)
		}
		rep.Engines = append(rep.Engines, EngineInfo{Name: name, Storage: e.Storage()})
		for _, w := range workloads {
			r, rerr := e.Run(ctx, w)
			if r != nil {
				// W3 and W4 return their figures with the error when a
				// mission failed or the ground truth check did.
				rep.Results = append(rep.Results, *r)
			}
			switch {
			case rerr != nil && r != nil && ctx.Err() == nil:
				failed = append(failed, rerr)
			case rerr != nil:
				return errors.Join(append(failed, rerr, e.Close(context.WithoutCancel(ctx)))...)
			}
		}
		if err := e.Close(ctx); err != nil {
			return errors.Join(append(failed, err)...)
		}
	}
	return errors.Join(failed...)
}
