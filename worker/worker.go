// Package worker hosts dronehub in one process: the task hub backend, the
// mission orchestrations and activities, telemetry ingestion and the HTTP
// API. A Go program embeds it with New, Start and Shutdown; the dronehub
// binary's "worker" command is a thin wrapper around Run.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/backend"
	"github.com/dronehub/dronehub/dashboard"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/httpapi"
	"github.com/dronehub/dronehub/metrics"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/scale"
	"github.com/dronehub/dronehub/taskhub"
	"github.com/dronehub/dronehub/tracing"
)

// Config configures a worker. The zero value runs the embedded default: the
// SQLite file dronehub.db, a demo fleet of five drones, and an HTTP API
// without API keys (Run serves it on the listener it is given).
type Config struct {
	// Storage is the connection string (see package backend); "" is the
	// SQLite file dronehub.db.
	Storage string
	// HubName names the task hub in shared storage; default "dronehub".
	HubName string
	// OrchestrationConcurrency and ActivityConcurrency bound the work items
	// processed at once; defaults 16 and 32.
	OrchestrationConcurrency int
	ActivityConcurrency      int
	// LockTimeout is how long a fetched work item stays locked to this
	// worker; a crashed worker's work moves on after it. Default 2 minutes.
	LockTimeout time.Duration
	// MaxDequeueCount is how many times a work item may be fetched without
	// completing before it is set aside as a dead letter; default 10.
	MaxDequeueCount int
	// Partitions is the control-queue partition count of a new Azure Storage
	// hub (1-16, default 4); an existing hub keeps its own.
	Partitions int
	// Wake is the UDP address an Azure Storage worker listens on for
	// wake-ups from the other processes on its hub ("host:port", default
	// ":0": every interface, a free port, published in its heartbeat row;
	// "off" disables them). IdlePollInterval is how often its idle queues
	// are polled while wake-ups are on, the fallback for a lost one
	// (default 15s). See docs/storage-layout.md, Polling.
	Wake             string
	IdlePollInterval time.Duration
	// HTTPAddr is the address the worker's HTTP API is served on (Run's
	// listener; dronehub worker sets it). An Azure Storage worker publishes
	// it with its host name in its heartbeat, so that `dronehub hub info`
	// and GET /api/hub name each partition owner by where it runs.
	HTTPAddr string
	// Mission holds the mission timeouts and thresholds.
	Mission orchestrations.MissionSettings
	// Heartbeat is the longest gap between telemetry signals to a mission
	// while its drone reports; it must be shorter than Mission.Watchdog.
	// Default a third of the watchdog.
	Heartbeat time.Duration
	// WatchdogInterval is how often the drone watchdog scans the fleet for
	// silent drones, passed deadlines and ended missions' drones; default a
	// quarter of Mission.Watchdog, between 250 ms and 5 s.
	WatchdogInterval time.Duration
	// ExternalWatchdog leaves the drone watchdog to the program: the worker
	// runs none, and something else must (activities.NewWatchdog over
	// Worker.Fleet and Worker.Client, in this process or another sharing
	// the hub), or silent drones and passed deadlines go unnoticed. Tests
	// use it to decide when time passes for the watchdog.
	ExternalWatchdog bool
	// SeedDrones is the size of the demo fleet created on an empty fleet
	// (drone-1 … drone-N at SeedBase). Default 5; negative disables.
	SeedDrones int
	// SeedBase is the demo fleet's home base; default Redmond, WA.
	SeedBase *domain.LatLon
	// APIKeys, when set, are required as "Authorization: Bearer KEY" on /api.
	APIKeys []string
	// MetricsRequireKey puts /metrics behind the API keys too (it is open by
	// default, the Prometheus convention). It needs APIKeys.
	MetricsRequireKey bool
	// PublicURL is the base URL clients reach the API at
	// ("https://drones.example.com"); absolute URLs in answers (Location,
	// the management URLs) are built from it. Without it they are relative,
	// unless a trusted proxy names the host (see httpapi.Options.PublicURL).
	PublicURL string
	// TrustedProxies lists the IPs or CIDR prefixes of reverse proxies whose
	// X-Forwarded-Proto, X-Forwarded-Host and Forwarded headers are honoured.
	TrustedProxies []string
	// MaxInFlight bounds the API requests served at once; default 64.
	MaxInFlight int
	// MaxBodyMemory bounds the request-body bytes held by the requests served
	// at once; default 16 MiB (four full telemetry batches).
	MaxBodyMemory int64
	// StorageTimeout bounds each request's storage work; past it the request
	// answers 503 with Retry-After. Default 1.2 s.
	StorageTimeout time.Duration
	// WriteTimeout bounds, per request, reading its body and writing its
	// answer (http.Server.WriteTimeout); a client that does not read its
	// answer is disconnected after it. Default 40 s.
	WriteTimeout time.Duration
	// Logger receives the worker's logs; default slog.Default().
	Logger *slog.Logger
	// Register adds a user's own orchestrations and activities. They get the
	// generic management API (/api/instances, /api/orchestrations/{name}).
	Register func(r *task.TaskRegistry) error
	// PublicEvents declares, per orchestrator name, the events clients may
	// raise over HTTP (POST /api/instances/{id}/events/{event}); any other
	// event name gets 403. By default no event is public. Each name must be
	// registered, and DeliveryMission has none: its "signal" event carries
	// telemetry and alarms, which only the worker raises, and missions are
	// cancelled with POST /api/missions/{id}/cancel.
	PublicEvents map[string][]string
	// ActivityMiddleware wraps every dronehub activity (metrics, tracing,
	// fault injection in tests).
	ActivityMiddleware activities.Middleware
	// DashboardInterval is how often the dashboard's live feed (GET
	// /api/events) reads the task hub while a dashboard is open; default
	// 1 s. See docs/dashboard.md.
	DashboardInterval time.Duration
	// Registerer receives the worker's Prometheus collectors
	// (docs/metrics.md). Nil means a new registry of the worker's own; the
	// global default one is used only if passed here. GET /metrics serves
	// the Registerer when it is also a Gatherer (a *prometheus.Registry
	// is), and answers 404 otherwise. One worker per Registerer at a time:
	// Shutdown unregisters the worker's collectors.
	Registerer prometheus.Registerer
	// TracerProvider receives the worker's spans (docs/tracing.md): HTTP
	// requests, orchestration turns, activity results, telemetry
	// ingestion, storage calls; the logs then carry trace_id and span_id.
	// Nil traces nothing, at no cost. durabletask-go's own orchestration
	// and activity spans go to the global provider: set it too
	// (otel.SetTracerProvider, once), as the dronehub worker command does.
	TracerProvider trace.TracerProvider
	// Scale tunes the scale signal (GET /api/hub/scale and the
	// dronehub_scale_* series; docs/deploy.md, "Scaling rule"): how often
	// the queues may be sampled (Interval, default 5 s) and how long the
	// hub must be idle before it says 0 (IdleAfter, default 5 minutes).
	// Backend, Fleet and Logger are the worker's; ActivitiesPerWorker
	// defaults to ActivityConcurrency.
	Scale scale.Options
}

// defaultBase is the demo fleet's home base: Redmond, WA.
func defaultBase() domain.LatLon { return domain.LatLon{Lat: 47.6401, Lon: -122.1298} }

func (c Config) withDefaults() Config {
	if c.HubName == "" {
		c.HubName = backend.DefaultHubName
	}
	if c.OrchestrationConcurrency == 0 {
		c.OrchestrationConcurrency = 16
	}
	if c.ActivityConcurrency == 0 {
		c.ActivityConcurrency = 32
	}
	c.Mission = c.Mission.WithDefaults()
	if c.Heartbeat == 0 {
		c.Heartbeat = c.Mission.Watchdog / 3
	}
	if c.SeedDrones == 0 {
		c.SeedDrones = 5
	}
	if c.SeedBase == nil {
		b := defaultBase()
		c.SeedBase = &b
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.TracerProvider != nil {
		c.Logger = slog.New(tracing.NewLogHandler(c.Logger.Handler()))
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = httpapi.DefaultMaxInFlight
	}
	if c.MaxBodyMemory == 0 {
		c.MaxBodyMemory = httpapi.DefaultMaxBodyMemory
	}
	if c.StorageTimeout == 0 {
		c.StorageTimeout = httpapi.DefaultStorageTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	return c
}

// HTTP server limits of Server.
const (
	// DefaultWriteTimeout is Config.WriteTimeout's default.
	DefaultWriteTimeout = 40 * time.Second
	// ReadTimeout bounds reading a request, body included.
	ReadTimeout = 30 * time.Second
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout = 10 * time.Second
	// IdleTimeout closes a keep-alive connection idle this long.
	IdleTimeout = time.Minute
	// MaxHeaderBytes bounds a request's headers (net/http allows 4 KiB more).
	MaxHeaderBytes = 64 << 10
)

func (c Config) validate() error {
	if c.OrchestrationConcurrency < 1 || c.ActivityConcurrency < 1 {
		return fmt.Errorf("concurrency must be at least 1 (orchestrations %d, activities %d)", c.OrchestrationConcurrency, c.ActivityConcurrency)
	}
	if c.DashboardInterval < 0 || (c.DashboardInterval > 0 && c.DashboardInterval < 10*time.Millisecond) {
		return fmt.Errorf("dashboard interval %s must be at least 10ms (or 0 for the default, 1s)", c.DashboardInterval)
	}
	if err := c.Mission.Validate(); err != nil {
		return err
	}
	if c.Heartbeat <= 0 || c.Heartbeat >= c.Mission.Watchdog/2 {
		return fmt.Errorf("heartbeat %s must be positive and under half the watchdog %s, or healthy missions could be declared lost", c.Heartbeat, c.Mission.Watchdog)
	}
	for i, k := range c.APIKeys {
		if len(k) < 16 {
			return fmt.Errorf("API key %d is %d characters; use at least 16", i+1, len(k))
		}
	}
	if c.MetricsRequireKey && len(c.APIKeys) == 0 {
		return errors.New("requiring a key on /metrics needs API keys")
	}
	if c.PublicURL != "" {
		if _, err := httpapi.ValidatePublicURL(c.PublicURL); err != nil {
			return err
		}
	}
	if _, err := httpapi.ParseTrustedProxies(c.TrustedProxies); err != nil {
		return err
	}
	if c.MaxInFlight < 1 || c.MaxBodyMemory < httpapi.MaxMissionBody {
		return fmt.Errorf("max in-flight requests %d must be at least 1 and max body memory %d at least %d bytes", c.MaxInFlight, c.MaxBodyMemory, httpapi.MaxMissionBody)
	}
	if c.WatchdogInterval < 0 {
		return fmt.Errorf("watchdog interval %s must be positive", c.WatchdogInterval)
	}
	if c.StorageTimeout < 0 || c.WriteTimeout < 0 {
		return fmt.Errorf("storage timeout %s and write timeout %s must be positive", c.StorageTimeout, c.WriteTimeout)
	}
	return nil
}

// Worker is a running dronehub host.
type Worker struct {
	cfg      Config
	hub      *backend.Hub
	client   dtbackend.TaskHubClient
	runner   *taskhub.Runner
	ingestor *activities.Ingestor
	watchdog *activities.Watchdog
	stopBG   context.CancelFunc
	bg       sync.WaitGroup
	handler  http.Handler
	api      *httpapi.Service
	dash     *dashboard.Dashboard
	metrics  *metrics.Metrics
	scale    *scale.Monitor
	log      *slog.Logger
	started  atomic.Bool
}

// New opens the task hub, seeds the demo fleet if the fleet is empty and
// builds the HTTP handler. Call Start to begin processing.
func New(ctx context.Context, cfg Config) (*Worker, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	hub, err := backend.Open(ctx, cfg.Storage, backend.Options{HubName: cfg.HubName, LockTimeout: cfg.LockTimeout, Partitions: cfg.Partitions,
		MaxDequeueCount: cfg.MaxDequeueCount, Wake: cfg.Wake, IdlePollInterval: cfg.IdlePollInterval, HTTPAddr: cfg.HTTPAddr, Logger: cfg.Logger,
		TracerProvider: cfg.TracerProvider})
	if err != nil {
		return nil, err
	}
	m, err := metrics.New(metrics.Options{Registerer: cfg.Registerer})
	if err != nil {
		hub.Close()
		return nil, fmt.Errorf("worker metrics: %w", err)
	}
	w, err := newWorker(ctx, cfg, hub, m)
	if err != nil {
		m.Close()
		hub.Close()
		return nil, err
	}
	return w, nil
}

func newWorker(ctx context.Context, cfg Config, hub *backend.Hub, m *metrics.Metrics) (*Worker, error) {
	log := cfg.Logger
	obs := newObserver(m, cfg.TracerProvider)
	var tracer trace.Tracer
	if cfg.TracerProvider != nil {
		tracer = cfg.TracerProvider.Tracer(tracing.ScopeName)
	}
	if err := seed(ctx, hub.Fleet, cfg.SeedDrones, *cfg.SeedBase); err != nil {
		return nil, err
	}
	client := dtbackend.NewTaskHubClient(hub.Backend)
	ingestor := activities.NewIngestor(hub.Fleet, client, activities.IngestOptions{
		Heartbeat: cfg.Heartbeat, BatteryFloor: cfg.Mission.BatteryFloor, ArrivalRadiusM: cfg.Mission.ArrivalRadiusM, Logger: log,
		Metrics: m, Tracer: tracer, Raiser: raiserOf(hub.Backend),
	})
	reg := task.NewTaskRegistry()
	if err := reg.AddOrchestratorN(orchestrations.DeliveryMissionName, orchestrations.DeliveryMission); err != nil {
		return nil, err
	}
	acts := activities.New(hub.Fleet, activities.Options{BatteryFloor: cfg.Mission.BatteryFloor, Logger: log})
	if err := acts.Register(reg, cfg.ActivityMiddleware); err != nil {
		return nil, err
	}
	if err := ingestor.Register(reg, cfg.ActivityMiddleware); err != nil {
		return nil, err
	}
	if cfg.Register != nil {
		if err := cfg.Register(reg); err != nil {
			return nil, fmt.Errorf("register user tasks: %w", err)
		}
	}
	orchestrators, err := apiOrchestrators(reg, cfg.PublicEvents)
	if err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	// Terminate wrappers: terminating a suspended instance ends it (see
	// taskhub.TerminateExecutor).
	exec := obs.executor(safeExecutor{Executor: taskhub.TerminateExecutor(task.NewTaskExecutor(reg)), log: log})
	dl := taskhub.Logger(log)
	// The task workers fetch through a Gate, so that Shutdown can stop them
	// fetching without cancelling the work they are doing (see taskhub.Runner).
	gate := taskhub.NewGate(obs.backend(taskhub.TerminateBackend(hub.Backend)))
	ow := dtbackend.NewOrchestrationWorker(gate, exec, dl, dtbackend.WithMaxParallelism(int32(cfg.OrchestrationConcurrency)))
	aw := dtbackend.NewActivityTaskWorker(gate, exec, dl, dtbackend.WithMaxParallelism(int32(cfg.ActivityConcurrency)))
	w := &Worker{
		cfg:      cfg,
		hub:      hub,
		client:   client,
		runner:   taskhub.NewRunner(gate, log, ow, aw),
		ingestor: ingestor,
		watchdog: activities.NewWatchdog(hub.Fleet, client, activities.WatchdogOptions{
			Silence: cfg.Mission.Watchdog, Interval: cfg.WatchdogInterval, Logger: log,
		}),
		log: log,
	}
	proxies, _ := httpapi.ParseTrustedProxies(cfg.TrustedProxies) // checked by validate
	apiOpts := httpapi.Options{
		Client:   client,
		Backend:  hub.Backend,
		Fleet:    hub.Fleet,
		Ingestor: ingestor,
		Mission:  cfg.Mission,
		APIKeys:  cfg.APIKeys,
		Logger:   log,
		Ready:    w.ready,

		// Exposure and load limits.
		MetricsRequireKey: cfg.MetricsRequireKey,
		PublicURL:         cfg.PublicURL,
		TrustedProxies:    proxies,
		MaxInFlight:       cfg.MaxInFlight,
		MaxBodyMemory:     cfg.MaxBodyMemory,
		StorageTimeout:    cfg.StorageTimeout,

		// What the API may start and raise events on.
		Orchestrators: orchestrators,

		// Observability (docs/metrics.md, docs/tracing.md).
		Metrics:        m,
		TracerProvider: cfg.TracerProvider,
	}
	if err := m.WatchHub(metrics.Hub{Backend: hub.Backend, Fleet: hub.Fleet, MissionName: orchestrations.DeliveryMissionName,
		BatteryFloor: cfg.Mission.BatteryFloor}); err != nil {
		return nil, fmt.Errorf("worker metrics: %w", err)
	}
	// The scale signal: GET /api/hub/scale and its gauges.
	so := cfg.Scale
	so.Backend, so.Fleet, so.Logger = hub.Backend, hub.Fleet, log
	if so.ActivitiesPerWorker == 0 {
		so.ActivitiesPerWorker = cfg.ActivityConcurrency // workers alike: each takes on as many
	}
	w.scale = scale.New(so)
	apiOpts.Scale = w.scale
	if err := m.WatchScale(w.scale); err != nil {
		w.scale.Close()
		return nil, fmt.Errorf("worker metrics: %w", err)
	}
	w.metrics = m
	w.api = httpapi.NewService(apiOpts)
	// The dashboard's pages under /ui/ and its live feed, GET /api/events.
	var counts func() map[string]int64
	if rc, ok := hub.Backend.(taskhub.RequestCounter); ok {
		counts = rc.RequestCounts
	}
	w.dash = dashboard.New(dashboard.Options{Source: w.api, RequestCounts: counts, Interval: cfg.DashboardInterval,
		BatteryFloor: cfg.Mission.BatteryFloor, Logger: log})
	apiOpts.Mounts = w.dash.Routes()
	w.handler = httpapi.NewHandler(apiOpts)
	return w, nil
}

// apiOrchestrators describes the orchestrators in reg to the HTTP API, with
// the public events declared for them.
func apiOrchestrators(reg *task.TaskRegistry, public map[string][]string) (map[string]httpapi.Orchestrator, error) {
	names, err := orchestratorNames(reg)
	if err != nil {
		return nil, err
	}
	out := make(map[string]httpapi.Orchestrator, len(names))
	for _, n := range names {
		out[n] = httpapi.Orchestrator{}
	}
	for name, events := range public {
		if _, ok := out[name]; !ok {
			return nil, fmt.Errorf("PublicEvents names orchestrator %q, which is not registered", name)
		}
		if name == orchestrations.DeliveryMissionName && len(events) > 0 {
			return nil, fmt.Errorf("PublicEvents: %s has no public events; its %q event carries telemetry only the worker may raise", name, domain.SignalEvent)
		}
		for _, e := range events {
			if err := httpapi.CheckEventName(e); err != nil {
				return nil, fmt.Errorf("PublicEvents of %s: %q: %w", name, e, err)
			}
		}
		out[name] = httpapi.Orchestrator{PublicEvents: slices.Clone(events)}
	}
	return out, nil
}

// orchestratorNames lists the orchestrators registered in reg.
// durabletask-go v0.6.0's TaskRegistry has no accessor for them, so its
// unexported map is read by reflection (read only); with a version that
// renames it, New fails instead of serving an API that refuses every start.
func orchestratorNames(reg *task.TaskRegistry) ([]string, error) {
	v := reflect.ValueOf(reg).Elem().FieldByName("orchestrators")
	if v.Kind() != reflect.Map || v.Type().Key().Kind() != reflect.String {
		return nil, errors.New("cannot list the registered orchestrators: durabletask-go's TaskRegistry changed")
	}
	names := make([]string, 0, v.Len())
	for _, k := range v.MapKeys() {
		names = append(names, k.String())
	}
	sort.Strings(names)
	return names, nil
}

func seed(ctx context.Context, store fleet.Store, n int, base domain.LatLon) error {
	if n <= 0 {
		return nil
	}
	drones, err := store.Drones(ctx)
	if err != nil {
		return fmt.Errorf("seed demo fleet: %w", err)
	}
	if len(drones) > 0 {
		return nil
	}
	for i := 1; i <= n; i++ {
		if _, err := store.AddDrone(ctx, fmt.Sprintf("drone-%d", i), base); err != nil && !errors.Is(err, fleet.ErrDroneExists) {
			return fmt.Errorf("seed demo fleet: %w", err)
		}
	}
	return nil
}

// Start begins processing orchestrations and activities.
func (w *Worker) Start(ctx context.Context) error {
	if err := w.runner.Start(ctx); err != nil {
		return fmt.Errorf("start task hub worker: %w", err)
	}
	// Background loops outlive ctx's caller: Shutdown stops them.
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w.stopBG = cancel
	loops := []func(context.Context){w.drainTelemetry, w.logStorageRequests}
	if !w.cfg.ExternalWatchdog {
		loops = append(loops, w.watchdog.Run)
	}
	for _, loop := range loops {
		w.bg.Add(1)
		go func() { defer w.bg.Done(); loop(bctx) }()
	}
	w.started.Store(true)
	w.log.Info("worker started", "storage", w.hub.Description, "hub", w.cfg.HubName)
	return nil
}

// Shutdown stops taking work at once, lets work in progress finish until ctx
// ends and closes the storage. Work still running when ctx ends is cancelled
// and redelivered later; the error then says how many work items were cut
// short.
func (w *Worker) Shutdown(ctx context.Context) error {
	w.dash.Close() // its feeds end, and its poller stops reading the hub
	var err error
	if w.started.Swap(false) {
		w.stopBG()
		w.bg.Wait()
		err = w.runner.Shutdown(ctx)
	}
	w.metrics.Close() // another worker may register on the same Registerer
	w.scale.Close()
	return errors.Join(err, w.hub.Close())
}

// Metrics is the worker's Prometheus instrumentation; its Gatherer is what
// GET /metrics serves.
func (w *Worker) Metrics() *metrics.Metrics { return w.metrics }

// StartMission validates req and starts a DeliveryMission with the worker's
// mission settings. It returns the mission id: req.MissionID, or a new UUID.
// A mission id that exists already gives an error wrapping
// api.ErrDuplicateInstance.
func (w *Worker) StartMission(ctx context.Context, req domain.MissionRequest, opts ...api.NewOrchestrationOptions) (string, error) {
	if err := req.Validate(time.Now()); err != nil {
		return "", err
	}
	if req.MissionID == "" {
		req.MissionID = uuid.NewString()
	}
	in := orchestrations.MissionInput{Request: req, Settings: w.cfg.Mission}
	opts = append(opts, api.WithInstanceID(api.InstanceID(req.MissionID)), api.WithInput(in))
	if _, err := w.client.ScheduleNewOrchestration(ctx, orchestrations.DeliveryMissionName, opts...); err != nil {
		return "", fmt.Errorf("start mission %s: %w", req.MissionID, err)
	}
	return req.MissionID, nil
}

// Handler is the HTTP API.
func (w *Worker) Handler() http.Handler { return w.handler }

// API is what the HTTP API does, without HTTP: the same validation,
// statuses and refusals, for the in-process Go client (package client).
func (w *Worker) API() *httpapi.Service { return w.api }

// Client is the task hub client, for starting and managing instances from Go.
func (w *Worker) Client() dtbackend.TaskHubClient { return w.client }

// Backend is the task hub backend, for listing instances and diagnostics.
func (w *Worker) Backend() taskhub.Backend { return w.hub.Backend }

// Fleet is the domain store.
func (w *Worker) Fleet() fleet.Store { return w.hub.Fleet }

// Ingestor applies telemetry, as POST /api/telemetry does.
func (w *Worker) Ingestor() *activities.Ingestor { return w.ingestor }

func (w *Worker) ready(ctx context.Context) error {
	if !w.started.Load() {
		return httpapi.ErrNotStarted
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var err error
	if p, ok := w.hub.Backend.(taskhub.Pinger); ok {
		err = p.Ping(ctx)
	} else {
		_, err = w.hub.Backend.ListInstances(ctx, taskhub.Query{PageSize: 1})
	}
	if err != nil {
		return fmt.Errorf("%w: %w", httpapi.ErrStorageUnavailable, err)
	}
	return nil
}

// Server returns an http.Server for the API with the worker's limits: the
// timeouts above, Config.WriteTimeout and MaxHeaderBytes. Run serves it;
// an embedder can too.
func (w *Worker) Server() *http.Server {
	srv := &http.Server{
		Handler:           w.handler,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      w.cfg.WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(w.log.Handler(), slog.LevelWarn),
	}
	// Shutdown waits for connections to go idle; the dashboard's live
	// feeds never do, so they are ended when it begins.
	srv.RegisterOnShutdown(w.dash.CloseStreams)
	return srv
}

// Run starts the worker and serves the HTTP API on ln until ctx ends, then
// shuts both down gracefully, giving in-flight requests and work items up to
// grace to finish.
func (w *Worker) Run(ctx context.Context, ln net.Listener, grace time.Duration) error {
	if err := w.Start(ctx); err != nil {
		return err
	}
	srv := w.Server()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	w.log.Info("listening", "addr", ln.Addr().String())
	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("http server: %w", err)
	}
	w.log.Info("shutting down", "grace", grace)
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if e := srv.Shutdown(sctx); e != nil && !errors.Is(e, http.ErrServerClosed) {
		err = errors.Join(err, e)
	}
	err = errors.Join(err, w.Shutdown(sctx))
	w.log.Info("stopped")
	return err
}

// raiserOf is be as a taskhub.EventRaiser, or nil when it is not one.
func raiserOf(be taskhub.Backend) taskhub.EventRaiser {
	if r, ok := be.(taskhub.EventRaiser); ok {
		return r
	}
	return nil
}
