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
	"time"
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
)

// WorkloadNames returns every workload name, in the order Run runs them.
func WorkloadNames() []string { return []string{W1, W2, SoloW1, SoloW2} }

// SequenceSteps is the number of sequential activities of a W1 orchestration.
const SequenceSteps = 5

// Defaults and limits of Options.
const (
	DefaultW1Orchestrations = 200
	DefaultW2Orchestrations = 50
	DefaultW2Fanout         = 20
	DefaultSoloRuns         = 20
	DefaultConcurrency      = 16

	// MaxOrchestrations bounds W1Orchestrations, W2Orchestrations and
	// SoloRuns.
	MaxOrchestrations = 100_000
	// MaxFanout bounds W2Fanout.
	MaxFanout = 1000
	// MaxConcurrency bounds Concurrency.
	MaxConcurrency = 1024
)

// Options configures a bench. The zero value runs every workload at its
// default size on every local engine (DronehubAzure only runs with
// AzureConnectionString).
type Options struct {
	// Engines to run, in this order; default EngineNames(), without
	// DronehubAzure when AzureConnectionString is empty.
	Engines []string
	// Workloads to run on each engine, in this order; default
	// WorkloadNames().
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
	// Concurrency bounds both the orchestration and the activity work items
	// a worker processes at once, and the orchestrations the client
	// schedules at once; default 16.
	Concurrency int
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
	// while a workload runs, and once when it ends (Result set). It must
	// return quickly.
	Progress func(Progress)
}

// Progress reports how far a bench is.
type Progress struct {
	// Engine is the engine being opened or run.
	Engine string `json:"engine"`
	// Workload is the workload running, or "" while the engine opens and
	// warms up.
	Workload string `json:"workload"`
	// Done of Total orchestrations of the workload have completed.
	Done  int `json:"done"`
	Total int `json:"total"`
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
	if err := checkNames("Engines", o.Engines, EngineNames()); err != nil {
		errs = append(errs, err)
	}
	if err := checkNames("Workloads", o.Workloads, WorkloadNames()); err != nil {
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
// results measured so far.
func Run(ctx context.Context, opts Options) (*Report, error) {
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
	err := runAll(ctx, opts, rep)
	rep.LoadAverage.End = loadAverage()
	rep.Seconds = time.Since(start).Seconds()
	rep.compare()
	return rep, err
}

func runAll(ctx context.Context, opts Options, rep *Report) error {
	for _, name := range opts.Engines {
		e, err := OpenEngine(ctx, name, opts)
		if err != nil {
			return err
		}
		rep.Engines = append(rep.Engines, EngineInfo{Name: name, Storage: e.Storage()})
		for _, w := range opts.Workloads {
			r, rerr := e.Run(ctx, w)
			if rerr != nil {
				return errors.Join(rerr, e.Close(context.WithoutCancel(ctx)))
			}
			rep.Results = append(rep.Results, *r)
		}
		if err := e.Close(ctx); err != nil {
			return err
		}
	}
	return nil
}
