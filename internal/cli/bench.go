package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dronehub/dronehub/backend"
	"github.com/dronehub/dronehub/bench"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/azurite"
)

// benchAzureEnv is --azure's environment variable.
const benchAzureEnv = "DRONEHUB_BENCH_AZURE"

// benchWorkloads maps a --workloads name to the bench's workloads.
func benchWorkloads(name string) []string {
	switch name {
	case "w1":
		return []string{bench.W1}
	case "w2":
		return []string{bench.W2}
	case "solo":
		return []string{bench.SoloW1, bench.SoloW2}
	case "w3":
		return []string{bench.W3}
	case "w4":
		return []string{bench.W4}
	case "ceiling":
		return []string{bench.Ceiling}
	}
	return nil
}

// benchWorkloadFlags returns the names --workloads takes.
func benchWorkloadFlags() []string { return []string{"w1", "w2", "solo", "w3", "w4", "ceiling"} }

// benchDefaultWorkloads is --workloads' default: the bench's own default
// (bench.Options.Workloads empty), in which only dronehub-azure runs the
// ceiling.
const benchDefaultWorkloads = "w1,w2,solo,ceiling"

type benchFlags struct {
	w1, w2, fanout, solo, conc          int
	repeat, ceilingOps                  int
	w3, w3Batch, w4, w4Frames, w4Batch  int
	w3Interval                          time.Duration
	w3Speed                             float64
	engines, workloads, azure, jsonPath string
	logLevel                            string
	timeout                             time.Duration
	// workloadsGiven is whether --workloads was given: without it, the
	// bench's default workloads run.
	workloadsGiven bool
}

func (a *App) bench(ctx context.Context, args []string) error {
	f, fs, err := a.parseBenchFlags(args)
	if err != nil {
		return err
	}
	opts, err := f.options()
	if err != nil {
		return err
	}
	logger := slog.New(slog.DiscardHandler)
	if f.logLevel != "" {
		if logger, err = newLogger(a.Stderr, f.logLevel, "text"); err != nil {
			return err
		}
	}
	opts.Logger = logger
	if f.jsonPath != "" {
		if fi, err := os.Stat(filepath.Dir(f.jsonPath)); err != nil || !fi.IsDir() {
			return fmt.Errorf("--json %s: the directory %s does not exist", f.jsonPath, filepath.Dir(f.jsonPath))
		}
	}

	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	var notes []string
	explicitAzure := slices.Contains(opts.Engines, bench.DronehubAzure)
	if (explicitAzure || f.engines == "") && opts.AzureConnectionString == "" {
		// On disk, in a temporary directory: in memory, Azurite keeps every
		// queue message ever written as an extent of its own and stalls for
		// a minute and more sweeping them once thousands were written (a W3
		// run writes hundreds of thousands).
		dir, err := os.MkdirTemp("", "dronehub-bench-azurite-")
		if err != nil {
			return fmt.Errorf("start Azurite for %s: %w", bench.DronehubAzure, err)
		}
		defer os.RemoveAll(dir)
		srv, err := azurite.Launch(azurite.Options{Location: dir})
		switch {
		case err == nil:
			defer srv.Stop()
			opts.AzureConnectionString = srv.ConnectionString()
			note := fmt.Sprintf("%s ran on Azurite %s, on disk in a temporary directory, started by dronehub bench on 127.0.0.1 (a Node.js process beside this one: its CPU is not in CPU/ACT)",
				bench.DronehubAzure, orDash(azurite.Version()))
			notes = append(notes, note)
			fmt.Fprintf(a.Stderr, "started Azurite %s (on disk) for %s\n", orDash(azurite.Version()), bench.DronehubAzure)
		case errors.Is(err, azurite.ErrNotInstalled) && !explicitAzure:
			notes = append(notes, bench.DronehubAzure+" did not run: no --azure and Azurite is not installed (npm ci at the module root)")
			fmt.Fprintf(a.Stderr, "skipping %s: no --azure (or $%s) and Azurite is not installed (run npm ci at the module root)\n", bench.DronehubAzure, benchAzureEnv)
		case errors.Is(err, azurite.ErrNotInstalled):
			return fmt.Errorf("--engines %s needs --azure CONNECTION_STRING (or $%s), or Azurite installed by npm ci at the module root: %w", bench.DronehubAzure, benchAzureEnv, err)
		default:
			return fmt.Errorf("start Azurite for %s (give --azure to use other storage): %w", bench.DronehubAzure, err)
		}
	} else if opts.AzureConnectionString != "" && (explicitAzure || f.engines == "") {
		notes = append(notes, bench.DronehubAzure+" ran on the storage given by --azure (or $"+benchAzureEnv+")")
	}
	// Without --engines, opts.Engines is empty: Run takes every engine,
	// dronehub-azure included when it has a connection string.
	p := newBenchProgress(a.Stderr)
	opts.Progress = p.update
	rep, runErr := bench.Run(ctx, opts)
	p.clear()
	if rep == nil {
		return runErr
	}
	rep.Notes = append(notes, rep.Notes...)
	rep.Flags = map[string]string{}
	fs.VisitAll(func(fl *flag.Flag) { rep.Flags[fl.Name] = fl.Value.String() })
	if rep.Flags["azure"] != "" {
		rep.Flags["azure"] = "(given, not recorded)"
	}
	if runErr != nil {
		if len(rep.Results) > 0 {
			fmt.Fprintln(a.Stderr, "results so far:")
			_ = rep.WriteTable(a.Stderr)
			// The figures of a failed W3 or W4 are worth keeping too.
			if err := writeBenchJSON(f.jsonPath, rep); err != nil {
				runErr = errors.Join(runErr, err)
			}
		}
		if errors.Is(runErr, context.DeadlineExceeded) && ctx.Err() != nil {
			return fmt.Errorf("bench did not finish within --timeout %s: %w", f.timeout, runErr)
		}
		return runErr
	}
	if err := rep.WriteTable(a.Stdout); err != nil {
		return err
	}
	return writeBenchJSON(f.jsonPath, rep)
}

// parseBenchFlags parses dronehub bench's command line (the usage text and
// flag errors go to Stderr) and takes --azure from the environment when it
// is not given. The flags are not checked yet: see benchFlags.options.
func (a *App) parseBenchFlags(args []string) (benchFlags, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	var f benchFlags
	fs.IntVar(&f.w1, "w1-orchestrations", bench.DefaultW1Orchestrations, fmt.Sprintf("W1: orchestrations of %d sequential activities, all scheduled at once", bench.SequenceSteps))
	fs.IntVar(&f.w2, "w2-orchestrations", bench.DefaultW2Orchestrations, "W2: fan-out/fan-in orchestrations, all scheduled at once")
	fs.IntVar(&f.fanout, "w2-fanout", bench.DefaultW2Fanout, "parallel activities of each W2 (and solo fan-out) orchestration")
	fs.IntVar(&f.solo, "solo-runs", bench.DefaultSoloRuns, "orchestrations of each shape run one at a time on an idle worker, for the solo latency")
	fs.IntVar(&f.repeat, "repeat", bench.DefaultRepeat, "run w1 and w2 this many times back to back on each engine (fresh instance ids each time) and report the\n"+
		"median run, with every run's time and the slowest run over the median (1-"+fmt.Sprint(bench.MaxRepeat)+"; solo, w3, w4 and ceiling run once)")
	fs.IntVar(&f.ceilingOps, "ceiling-ops", bench.DefaultCeilingOps, "ceiling: operations of each kind (enqueue, dequeue+delete, point read, batch of 10)")
	fs.IntVar(&f.conc, "concurrency", bench.DefaultConcurrency, "orchestration work items, and activity work items, processed at once (w3, w4: also telemetry posts in flight)")
	fs.IntVar(&f.w3, "w3-missions", bench.DefaultW3Missions, "W3: delivery missions started at once, one drone each, flown by the simulator")
	fs.DurationVar(&f.w3Interval, "w3-frame-interval", bench.DefaultW3FrameInterval, "W3: real time between two frames of a drone; each frame is one second of flight")
	fs.Float64Var(&f.w3Speed, "w3-speed", bench.DefaultW3SpeedMps, "W3: the drones' cruise speed in m/s of flight (time compression: a real drone flies ~15)")
	fs.IntVar(&f.w3Batch, "w3-batch", bench.DefaultW3Batch, "W3: most frames per telemetry post (a tick's frames are split into posts of this size)")
	fs.IntVar(&f.w4, "w4-drones", bench.DefaultW4Drones, "W4: drones posting telemetry (no missions)")
	fs.IntVar(&f.w4Frames, "w4-frames-per-drone", bench.DefaultW4FramesPerDrone, "W4: frames each drone posts")
	fs.IntVar(&f.w4Batch, "w4-batch", bench.DefaultW4Batch, "W4: frames per telemetry post")
	fs.StringVar(&f.engines, "engines", "", "comma-separated engines: "+strings.Join(bench.EngineNames(), ", ")+
		"\n(default all that are available; "+bench.DronehubAzure+" needs --azure or Azurite installed by npm ci)")
	fs.StringVar(&f.workloads, "workloads", benchDefaultWorkloads, "comma-separated workloads: w1, w2, solo, w3, w4, ceiling\n"+
		"(ceiling, the raw rate of the Azure storage through the SDK, runs on "+bench.DronehubAzure+" only; w3 and w4 take minutes at\n"+
		"their default sizes and run only on the dronehub engines: ask for them, e.g. --workloads w3,w4)")
	fs.StringVar(&f.azure, "azure", "", "Azure Storage connection string for "+bench.DronehubAzure+" [$"+benchAzureEnv+"]; a fresh hub is made and deleted.\nWithout it, a local in-memory Azurite from node_modules is started for the run")
	fs.StringVar(&f.jsonPath, "json", "", "also write the full results as JSON to this `file`")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Minute, "give up after this long")
	fs.StringVar(&f.logLevel, "log-level", "", "log the engines at this level (debug, info, warn, error) to stderr; default quiet")
	fs.Usage = func() {
		fmt.Fprintf(a.Stderr, "Usage: dronehub bench [flags]\n\n"+
			"Measures the task-hub engines in this process: W1 (sequences), W2 (fan-out/fan-in) and solo latency,\n"+
			"on dronehub's backends and durabletask-go's own SQLite backend, and on "+bench.DronehubAzure+" the raw\n"+
			"ceiling of its storage (enqueue, dequeue+delete, point read, batch of 10 through the SDK). See docs/performance.md.\n\n"+
			"Not run by default: W3 (delivery missions flown by the simulator, telemetry posted over HTTP, until all\n"+
			"complete) and W4 (telemetry ingestion into drone state, checked against what was sent), on a dronehub\n"+
			"worker of their own; they take minutes at their default sizes. Run them with\n"+
			"  dronehub bench --workloads w3,w4                      (dronehub-sqlite and dronehub-azure)\n"+
			"  dronehub bench --workloads w1,w2,solo,ceiling,w3,w4   (everything)\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return f, nil, err
		}
		return f, nil, errUsage
	}
	if fs.NArg() > 0 {
		return f, nil, fmt.Errorf("unexpected argument %q: dronehub bench takes only flags (see dronehub bench -h)", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	f.workloadsGiven = given["workloads"]
	if !given["azure"] && a.Env != nil {
		f.azure = a.Env(benchAzureEnv)
	}
	return f, fs, nil
}

// writeBenchJSON writes the report to path as indented JSON; nothing if
// path is "".
func writeBenchJSON(path string, rep *bench.Report) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode the results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--json: %w", err)
	}
	return nil
}

// options checks the flags and turns them into bench options.
func (f benchFlags) options() (bench.Options, error) {
	var errs []error
	size := func(name string, v, max int) {
		if v < 1 || v > max {
			errs = append(errs, fmt.Errorf("--%s %d: must be 1-%d", name, v, max))
		}
	}
	size("w1-orchestrations", f.w1, bench.MaxOrchestrations)
	size("w2-orchestrations", f.w2, bench.MaxOrchestrations)
	size("w2-fanout", f.fanout, bench.MaxFanout)
	size("solo-runs", f.solo, bench.MaxOrchestrations)
	size("concurrency", f.conc, bench.MaxConcurrency)
	size("repeat", f.repeat, bench.MaxRepeat)
	size("ceiling-ops", f.ceilingOps, bench.MaxCeilingOps)
	size("w3-missions", f.w3, bench.MaxDrones)
	size("w3-batch", f.w3Batch, domain.MaxFramesPerBatch)
	size("w4-drones", f.w4, bench.MaxDrones)
	size("w4-frames-per-drone", f.w4Frames, bench.MaxFramesPerDrone)
	size("w4-batch", f.w4Batch, domain.MaxFramesPerBatch)
	if f.w3Interval < time.Millisecond || f.w3Interval > time.Minute {
		errs = append(errs, fmt.Errorf("--w3-frame-interval %s: must be 1ms-1m", f.w3Interval))
	}
	if !(f.w3Speed >= 1 && f.w3Speed <= bench.MaxSpeedMps) {
		errs = append(errs, fmt.Errorf("--w3-speed %g: must be 1-%d m/s", f.w3Speed, bench.MaxSpeedMps))
	}
	if f.timeout <= 0 {
		errs = append(errs, fmt.Errorf("--timeout %s: must be positive", f.timeout))
	}
	if f.azure != "" {
		if kind, err := backend.Kind(f.azure); err != nil || kind != "azurestorage" {
			errs = append(errs, fmt.Errorf("--azure (or $%s) is not an Azure Storage connection string or account URL; "+
				"use e.g. DefaultEndpointsProtocol=https;AccountName=...;AccountKey=... or UseDevelopmentStorage=true", benchAzureEnv))
		}
	}
	engines, err := commaList("engines", f.engines, bench.EngineNames())
	if err != nil {
		errs = append(errs, err)
	}
	names, err := commaList("workloads", f.workloads, benchWorkloadFlags())
	if err != nil {
		errs = append(errs, err)
	} else if len(names) == 0 {
		errs = append(errs, errors.New("--workloads is empty: give one or more of "+strings.Join(benchWorkloadFlags(), ", ")))
	}
	var workloads []string
	for _, n := range names {
		workloads = append(workloads, benchWorkloads(n)...)
	}
	if !f.workloadsGiven && f.workloads == benchDefaultWorkloads {
		// The bench's default: the ceiling on dronehub-azure only, and no
		// note that the other engines skipped it.
		workloads = nil
	}
	if len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, err := range errs {
			msgs[i] = err.Error()
		}
		return bench.Options{}, errors.New(strings.Join(msgs, "; "))
	}
	return bench.Options{
		Engines: engines, Workloads: workloads,
		W1Orchestrations: f.w1, W2Orchestrations: f.w2, W2Fanout: f.fanout, SoloRuns: f.solo,
		Concurrency: f.conc, AzureConnectionString: f.azure,
		Repeat: f.repeat, CeilingOps: f.ceilingOps,
		W3Missions: f.w3, W3FrameInterval: f.w3Interval, W3SpeedMps: f.w3Speed, W3Batch: f.w3Batch,
		W4Drones: f.w4, W4FramesPerDrone: f.w4Frames, W4Batch: f.w4Batch,
	}, nil
}

// commaList splits a comma-separated flag value, refusing names not in
// known and repeats.
func commaList(flagName, value string, known []string) ([]string, error) {
	var out []string
	for _, n := range strings.Split(value, ",") {
		n = strings.ToLower(strings.TrimSpace(n))
		if n == "" {
			continue
		}
		if !slices.Contains(known, n) {
			return nil, fmt.Errorf("--%s: unknown %q; use a comma-separated list of %s", flagName, n, strings.Join(known, ", "))
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("--%s: %q is given twice", flagName, n)
		}
		out = append(out, n)
	}
	return out, nil
}

// benchProgress shows a bench's progress on stderr: on a terminal one line
// with a bar, rewritten in place; elsewhere a line per finished workload.
type benchProgress struct {
	w       io.Writer
	tty     bool
	line    *statusLine
	lastTTY time.Time
}

func newBenchProgress(w io.Writer) *benchProgress {
	return &benchProgress{w: w, tty: isTerminal(w), line: newStatusLine(w)}
}

func (p *benchProgress) update(pr bench.Progress) {
	if r := pr.Result; r != nil && !p.tty {
		took := time.Duration(r.Seconds * float64(time.Second)).Round(time.Millisecond)
		var line string
		switch {
		case r.Missions != nil:
			line = fmt.Sprintf("%s %s: %d missions in %s, %d failed, %.1f missions/s, p50 %.1fs", r.Engine, r.Workload,
				r.Missions.Missions, took, r.Missions.Failed, r.OrchestrationsPerSecond, r.LatencyMs.P50/1000)
		case r.Ingest != nil:
			line = fmt.Sprintf("%s %s: %d frames in %s, %.0f frames/s, %d/%d drones checked", r.Engine, r.Workload,
				r.Ingest.Frames, took, r.Ingest.FramesPerSecond, r.Ingest.VerifiedDrones, r.Ingest.Drones)
		case r.Ceiling != nil:
			c := r.Ceiling
			line = fmt.Sprintf("%s %s: %d operations of each kind in %s: enqueue %.0f/s, dequeue+delete %.0f/s, point read %.0f/s, batch of 10 %.0f/s",
				r.Engine, r.Workload, c.OpsPerKind, took, c.Enqueue.PerSecond, c.DequeueDelete.PerSecond, c.PointRead.PerSecond, c.Batch.PerSecond)
		default:
			line = fmt.Sprintf("%s %s: %d×%d in %s, p50 %.1fms", r.Engine, r.Workload, r.Orchestrations, r.ActivitiesPerOrchestration, took, r.LatencyMs.P50)
			if !r.Solo() {
				line += fmt.Sprintf(", %.0f activities/s", r.ActivitiesPerSecond)
			}
			if p := r.Repetitions; p != nil && len(p.Seconds) > 1 {
				sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)).Round(time.Millisecond) }
				line += fmt.Sprintf(" (median of %d runs, %s–%s, slowest %.2f× the median)",
					len(p.Seconds), sec(slices.Min(p.Seconds)), sec(slices.Max(p.Seconds)), p.SlowestToMedian)
			}
		}
		fmt.Fprintln(p.w, line)
		return
	}
	if !p.tty || (time.Since(p.lastTTY) < 100*time.Millisecond && pr.Result == nil) {
		return
	}
	p.lastTTY = time.Now()
	what := "opening and warming up"
	if pr.Workload != "" {
		unit := pr.Unit
		if unit == "" {
			unit = "orchestrations"
		}
		run := ""
		if pr.Runs > 1 {
			run = fmt.Sprintf(" run %d/%d", pr.Run, pr.Runs)
		}
		what = fmt.Sprintf("%s %s%s %d/%d %s", bar(fraction(pr.Done, pr.Total), 20), pr.Workload, run, pr.Done, pr.Total, unit)
	}
	p.line.Draw(fmt.Sprintf("%s: %s, %.0fs", pr.Engine, what, pr.Elapsed.Seconds()))
}

// clear erases the progress line.
func (p *benchProgress) clear() { p.line.Clear() }

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
