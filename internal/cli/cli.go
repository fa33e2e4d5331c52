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
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/dronehub/dronehub/httpapi"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/scale"
	"github.com/dronehub/dronehub/tracing"
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
  dronehub mission   start|status|watch|list|raise|cancel|terminate|suspend|resume|purge
  dronehub drone     add|list|status|reset
  dronehub simulate  [flags]   fly simulated drones and post their telemetry
  dronehub hub       create|info|delete   administer a task hub in storage
  dronehub deadletter list|replay          poison messages set aside by the task hub
  dronehub bench     [flags]   measure the task-hub engines: throughput, latency, requests, CPU

Client commands talk to the HTTP API at --url (DRONEHUB_URL, default http://127.0.0.1:8080)
with --api-key (DRONEHUB_API_KEY); add --json for machine-readable output.
dronehub COMMAND -h describes a command.
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
	case "bench":
		err = app.bench(ctx, args[1:])
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "dronehub: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	var exit *exitError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.As(err, &exit):
		if exit.msg != "" {
			fmt.Fprintf(stderr, "dronehub: %s\n", exit.msg)
		}
		return exit.code
	default:
		fmt.Fprintf(stderr, "dronehub: %s\n", describe(err))
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
	apiKeysFile, publicURL, trustedProxies             string
	insecure, metricsRequireKey                        bool
	orchConc, actConc, seedDrones, partitions, maxDeq  int
	maxInFlight                                        int
	maxBodyMemory                                      byteSize
	watchdog, heartbeat, lockTimeout, grace            time.Duration
	storageTimeout, writeTimeout, idlePoll             time.Duration
	scaleInterval, scaleIdleAfter, scaleCalm, scaleLag time.Duration
	dashboardInterval                                  time.Duration
	wake                                               string
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
	fs.StringVar(&f.wake, "wake", ":0", "Azure Storage: UDP host:port this worker listens on for wake-ups from the other processes on its hub (its address is published in its heartbeat); off to disable them")
	fs.DurationVar(&f.idlePoll, "idle-poll-interval", 15*time.Second, "Azure Storage: how often an idle queue is polled while wake-ups are on (the fallback for a lost one)")
	fs.StringVar(&f.apiKeys, "api-keys", "", "comma-separated API keys required as 'Authorization: Bearer KEY' on /api (16+ characters each).\nOn the command line they are visible to every local user (ps): prefer --api-keys-file or the environment variable")
	fs.StringVar(&f.apiKeysFile, "api-keys-file", "", "file holding API keys, one per line or comma-separated ('#' starts a comment); added to --api-keys")
	fs.BoolVar(&f.metricsRequireKey, "metrics-require-key", false, "require an API key on /metrics too (open by default, the Prometheus convention)")
	fs.BoolVar(&f.insecure, "insecure", false, "allow listening on a non-loopback address without API keys")
	fs.StringVar(&f.publicURL, "public-url", "", "base URL clients reach the API at, e.g. https://drones.example.com; Location and management URLs are built from it (default: relative URLs)")
	fs.StringVar(&f.trustedProxies, "trusted-proxies", "", "comma-separated IPs or CIDR prefixes of reverse proxies whose X-Forwarded-Proto/-Host and Forwarded headers are honoured (default: none)")
	fs.IntVar(&f.maxInFlight, "max-inflight", httpapi.DefaultMaxInFlight, "API requests served at once; more wait briefly, then get 503 with Retry-After")
	f.maxBodyMemory = httpapi.DefaultMaxBodyMemory
	fs.Var(&f.maxBodyMemory, "max-body-memory", "request bodies held in memory at once, a `size` such as 16MiB (a request reserves its Content-Length, or its route's body limit); more wait briefly, then get 503 with Retry-After")
	fs.DurationVar(&f.storageTimeout, "storage-timeout", httpapi.DefaultStorageTimeout, "longest a request waits for storage; past it the answer is 503 with Retry-After")
	fs.DurationVar(&f.writeTimeout, "write-timeout", worker.DefaultWriteTimeout, "longest time to read a request's body and write its answer; a client that does not read its answer is disconnected after it")
	fs.IntVar(&f.orchConc, "orchestration-concurrency", 16, "orchestration work items processed at once")
	fs.IntVar(&f.actConc, "activity-concurrency", 32, "activities processed at once")
	fs.DurationVar(&f.watchdog, "watchdog", 60*time.Second, "fail a mission as 'drone lost' after this long without telemetry")
	fs.DurationVar(&f.heartbeat, "heartbeat", 0, "longest gap between telemetry signals to a mission (default watchdog/3)")
	fs.Float64Var(&f.batteryFloor, "battery-floor", 0.2, "fail a mission whose drone drops below this charge (0-1) before delivery")
	fs.IntVar(&f.seedDrones, "seed-drones", 5, "demo drones created when the fleet is empty (0 for none)")
	fs.DurationVar(&f.lockTimeout, "lock-timeout", 2*time.Minute, "how long a crashed worker's work stays locked")
	fs.DurationVar(&f.grace, "shutdown-grace", 30*time.Second, "time given to in-flight work on shutdown")
	fs.DurationVar(&f.dashboardInterval, "dashboard-interval", time.Second, "how often the dashboard's live feed reads the task hub while a dashboard is open (docs/dashboard.md)")
	fs.DurationVar(&f.scaleInterval, "scale-interval", scale.DefaultInterval, "least time between two samples of the queues for the scale signal (GET /api/hub/scale)")
	fs.DurationVar(&f.scaleIdleAfter, "scale-idle-after", scale.DefaultIdleAfter, "how long the task hub must be idle (nothing queued, no drone on a mission) before the scale signal recommends 0 workers")
	fs.DurationVar(&f.scaleLag, "scale-high-latency", scale.DefaultHighLatency, "age of a queue's oldest message, in two samples in a row, over which the scale signal adds workers")
	fs.DurationVar(&f.scaleCalm, "scale-calm", scale.DefaultCalm, "how long every queue must stay fast, with the worker count unchanged, before the scale signal removes a worker")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	logger, err := newLogger(a.Stderr, f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	keys := splitKeys(f.apiKeys)
	if f.apiKeysFile != "" {
		fileKeys, err := readKeysFile(f.apiKeysFile, logger)
		if err != nil {
			return err
		}
		keys = append(keys, fileKeys...)
	}
	if f.maxInFlight < 1 {
		return fmt.Errorf("--max-inflight %d: at least 1 request must be served at once", f.maxInFlight)
	}
	if f.metricsRequireKey && len(keys) == 0 {
		return errors.New("--metrics-require-key needs --api-keys or --api-keys-file")
	}
	if err := checkExposure(f.listen, len(keys) > 0, f.insecure); err != nil {
		return err
	}
	var proxies []string
	if f.trustedProxies != "" {
		proxies = strings.Split(f.trustedProxies, ",")
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
		Wake:                     f.wake,
		IdlePollInterval:         f.idlePoll,
		Mission:                  orchestrations.MissionSettings{Watchdog: f.watchdog, BatteryFloor: f.batteryFloor},
		Heartbeat:                f.heartbeat,
		SeedDrones:               seed,
		APIKeys:                  keys,
		MetricsRequireKey:        f.metricsRequireKey,
		PublicURL:                f.publicURL,
		TrustedProxies:           proxies,
		MaxInFlight:              f.maxInFlight,
		MaxBodyMemory:            int64(f.maxBodyMemory),
		StorageTimeout:           f.storageTimeout,
		WriteTimeout:             f.writeTimeout,
		DashboardInterval:        f.dashboardInterval,
		Scale:                    scale.Options{Interval: f.scaleInterval, IdleAfter: f.scaleIdleAfter, HighLatency: f.scaleLag, Calm: f.scaleCalm},
		Logger:                   logger,
	}
	// Traces, when the OTEL_* environment asks for them (docs/tracing.md).
	getenv := tracing.Getenv(a.Env)
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	tp, err := tracing.FromEnv(ctx, getenv)
	if err != nil {
		return err
	}
	if tp != nil {
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := tp.Shutdown(sctx); err != nil {
				logger.Warn("flushing the last spans failed", "err", err)
			}
		}()
		// durabletask-go v0.6.0 takes its tracer from the global provider
		// (bound to the first one set): its orchestration and activity
		// spans need it. Set once, here, never in library code.
		otel.SetTracerProvider(tp)
		cfg.TracerProvider = tp
		logger.Info("tracing on: spans are exported over OTLP (docs/tracing.md)")
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", f.listen, err)
	}
	// Published in the worker's heartbeat (Azure Storage), so that
	// `hub info` names the owner of each partition by where it runs.
	cfg.HTTPAddr = ln.Addr().String()
	w, err := worker.New(ctx, cfg)
	if err != nil {
		ln.Close()
		return err
	}
	return w.Run(ctx, ln, f.grace)
}

// checkExposure refuses to serve an open API beyond this machine by accident.
// A host name counts as local only if every address it resolves to is a
// loopback address ("localhost" included: /etc/hosts can say otherwise).
func checkExposure(listen string, haveKeys, insecure bool) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want HOST:PORT, e.g. 127.0.0.1:8080", listen)
	}
	if haveKeys || insecure || loopbackOnly(host) {
		return nil
	}
	return fmt.Errorf("--listen %s is reachable from other machines but no --api-keys are set; set --api-keys or --api-keys-file, listen on 127.0.0.1, or pass --insecure to run open", listen)
}

// lookupIPAddr resolves host names for checkExposure; tests replace it.
var lookupIPAddr = net.DefaultResolver.LookupIPAddr

func loopbackOnly(host string) bool {
	if host == "" {
		return false // every interface
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := lookupIPAddr(ctx, host)
	if err != nil || len(addrs) == 0 {
		return false
	}
	for _, a := range addrs {
		if !a.IP.IsLoopback() {
			return false
		}
	}
	return true
}

func splitKeys(s string) []string {
	var keys []string
	for _, k := range strings.Split(s, ",") {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

// readKeysFile reads API keys from a file: one per line or comma-separated,
// blank lines and '#' comments ignored. Keys in a file stay out of the
// process list, unlike --api-keys.
func readKeysFile(path string, log *slog.Logger) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--api-keys-file: %w", err)
	}
	var keys []string
	for _, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		keys = append(keys, splitKeys(line)...)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("--api-keys-file %s holds no keys", path)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o004 != 0 {
		log.Warn("the API keys file is readable by every local user; chmod o-r it", "file", path)
	}
	return keys, nil
}

// byteSize is a flag holding a byte count: 16777216, 16MiB, 512KiB, 1GiB.
type byteSize int64

func (b *byteSize) String() string {
	switch n := int64(*b); {
	case n != 0 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n != 0 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n != 0 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	default:
		return strconv.FormatInt(n, 10)
	}
}

func (b *byteSize) Set(s string) error {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSuffix(num, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n <= 0 || n > (1<<40)/mult {
		return fmt.Errorf("%q: want a positive size such as 16MiB, 512KiB or a byte count", s)
	}
	*b = byteSize(n * mult)
	return nil
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
