// Package cli implements the dronehub command: the worker, the mission and
// drone clients, and the telemetry simulator. cmd/dronehub only calls Main,
// so every command is testable in process.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/worker"
)

// Env reads an environment variable; os.Getenv in production.
type Env func(string) string

// App is one invocation's I/O.
type App struct {
	Stdout, Stderr io.Writer
	Env            Env
}

// errUsage marks errors already explained by the flag package's usage text.
var errUsage = errors.New("usage")

const usage = `dronehub: drone-delivery missions as durable orchestrations.

Usage:
  dronehub worker    [flags]   run the worker and HTTP API (dronehub worker -h for flags)
  dronehub mission   start|status|list|raise|cancel|terminate|suspend|resume|purge
  dronehub drone     add|list|status
  dronehub simulate  [flags]   fly simulated drones and post their telemetry
  dronehub hub       create|info|delete   administer a task hub in storage
  dronehub deadletter list|replay          poison messages set aside by the task hub

Client commands talk to the HTTP API at --url (DRONEHUB_URL, default http://127.0.0.1:8080)
with --api-key (DRONEHUB_API_KEY); add --json for machine-readable output.
`

// Main runs the command line args (without the program name) and returns the
// process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, env Env) int {
	app := &App{Stdout: stdout, Stderr: stderr, Env: env}
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "worker":
		err = app.worker(ctx, args[1:])
	case "mission", "missions":
		err = app.mission(ctx, args[1:])
	case "drone", "drones":
		err = app.drone(ctx, args[1:])
	case "simulate":
		err = app.simulate(ctx, args[1:])
	case "hub":
		err = app.hub(ctx, args[1:])
	case "deadletter", "deadletters":
		err = app.deadLetter(ctx, args[1:])
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "dronehub: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "dronehub: %v\n", err)
		return 1
	}
}

// flagSet returns a FlagSet that reports errors to the app's stderr.
func (a *App) flagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(a.Stderr, "Usage: dronehub %s\n\nFlags (each also read from the environment variable shown):\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// envName is a flag's environment twin: --api-keys → DRONEHUB_API_KEYS.
func envName(flagName string) string {
	return "DRONEHUB_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parse parses args, then fills every flag not given on the command line
// from its environment twin: a flag beats its variable.
func (a *App) parse(fs *flag.FlagSet, args []string) error {
	fs.VisitAll(func(f *flag.Flag) {
		f.Usage += " [$" + envName(f.Name) + "]"
	})
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || a.Env == nil {
			return
		}
		if v := a.Env(envName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q (for --%s): %v", envName(f.Name), v, f.Name, err))
			}
		}
	})
	return errors.Join(errs...)
}

type workerFlags struct {
	listen, storage, hub, apiKeys, logLevel, logFormat string
	insecure                                           bool
	orchConc, actConc, seedDrones, partitions, maxDeq  int
	watchdog, heartbeat, lockTimeout, grace            time.Duration
	batteryFloor                                       float64
}

func (a *App) worker(ctx context.Context, args []string) error {
	fs := a.flagSet("worker", "worker [flags]")
	var f workerFlags
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8080", "HTTP listen address")
	fs.StringVar(&f.storage, "storage", "", "task hub connection string: a SQLite file (default dronehub.db), UseDevelopmentStorage=true for Azurite, or an Azure Storage connection string or account URL")
	fs.StringVar(&f.hub, "hub", "dronehub", "task hub name (Azure Storage)")
	fs.IntVar(&f.maxDeq, "max-dequeue-count", 10, "fetches of a work item without completing before it is set aside as a dead letter")
	fs.IntVar(&f.partitions, "partitions", 0, "control-queue partitions of a new Azure Storage hub (1-16, default 4)")
	fs.StringVar(&f.apiKeys, "api-keys", "", "comma-separated API keys required as 'Authorization: Bearer KEY' on /api")
	fs.BoolVar(&f.insecure, "insecure", false, "allow listening on a non-loopback address without API keys")
	fs.IntVar(&f.orchConc, "orchestration-concurrency", 16, "orchestration work items processed at once")
	fs.IntVar(&f.actConc, "activity-concurrency", 32, "activities processed at once")
	fs.DurationVar(&f.watchdog, "watchdog", 60*time.Second, "fail a mission as 'drone lost' after this long without telemetry")
	fs.DurationVar(&f.heartbeat, "heartbeat", 0, "longest gap between telemetry signals to a mission (default watchdog/3)")
	fs.Float64Var(&f.batteryFloor, "battery-floor", 0.2, "fail a mission whose drone drops below this charge (0-1) before delivery")
	fs.IntVar(&f.seedDrones, "seed-drones", 5, "demo drones created when the fleet is empty (0 for none)")
	fs.DurationVar(&f.lockTimeout, "lock-timeout", 2*time.Minute, "how long a crashed worker's work stays locked")
	fs.DurationVar(&f.grace, "shutdown-grace", 30*time.Second, "time given to in-flight work on shutdown")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	logger, err := newLogger(a.Stderr, f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	var keys []string
	for _, k := range strings.Split(f.apiKeys, ",") {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	if err := checkExposure(f.listen, len(keys) > 0, f.insecure); err != nil {
		return err
	}
	seed := f.seedDrones
	if seed == 0 {
		seed = -1
	}
	cfg := worker.Config{
		Storage:                  f.storage,
		HubName:                  f.hub,
		OrchestrationConcurrency: f.orchConc,
		ActivityConcurrency:      f.actConc,
		LockTimeout:              f.lockTimeout,
		Partitions:               f.partitions,
		MaxDequeueCount:          f.maxDeq,
		Mission:                  orchestrations.MissionSettings{Watchdog: f.watchdog, BatteryFloor: f.batteryFloor},
		Heartbeat:                f.heartbeat,
		SeedDrones:               seed,
		APIKeys:                  keys,
		Logger:                   logger,
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", f.listen, err)
	}
	w, err := worker.New(ctx, cfg)
	if err != nil {
		ln.Close()
		return err
	}
	return w.Run(ctx, ln, f.grace)
}

// checkExposure refuses to serve an open API beyond this machine by accident.
func checkExposure(listen string, haveKeys, insecure bool) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want HOST:PORT, e.g. 127.0.0.1:8080", listen)
	}
	if haveKeys || insecure || host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("--listen %s is reachable from other machines but no --api-keys are set; set --api-keys, listen on 127.0.0.1, or pass --insecure to run open", listen)
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}

// Getenv is the production Env.
func Getenv(k string) string { return os.Getenv(k) }
