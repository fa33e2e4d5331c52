// Package metrics is dronehub's Prometheus instrumentation: the series of
// one worker, registered on that worker's registry, never on the global
// default one unless the program passes it. docs/metrics.md lists every
// series.
//
// The worker creates one Metrics (worker.Config.Registerer) and hands it to
// the parts that report: the HTTP API (requests, rejections, load), the
// telemetry Ingestor (frames, batches, signals), the task workers
// (orchestration turns, activity executions, queue wait), and WatchHub, which
// adds the gauges read from storage at scrape time (backlog, instances,
// missions by phase, drones by state), cached for SnapshotTTL so that a
// scrape costs a bounded number of storage requests whatever the fleet's
// size.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every dronehub series.
const Namespace = "dronehub"

// DefaultSnapshotTTL is how long the gauges read from storage are served
// before a scrape reads storage again.
const DefaultSnapshotTTL = 15 * time.Second

// Bucket boundaries, in seconds.
var (
	// latencyBuckets suit work done in one process: an HTTP request, a
	// turn, an activity, an ingestion batch (1 ms to 30 s).
	latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	// waitBuckets suit time spent in a queue (5 ms to 10 min).
	waitBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
)

// Options configures New.
type Options struct {
	// Registerer receives the collectors. Nil means a new registry, which
	// then also holds the Go runtime and process collectors. A Registerer
	// of the program's own gets those too unless it has them already.
	// Register one worker per Registerer at a time, or wrap it
	// (prometheus.WrapRegistererWith) to tell workers apart: the series of
	// two workers would collide.
	Registerer prometheus.Registerer
	// Gatherer is what Handler serves. Default: the new registry, or
	// Registerer when it is also a Gatherer (a *prometheus.Registry is).
	Gatherer prometheus.Gatherer
	// SnapshotTTL is how long the gauges read from storage are cached;
	// default DefaultSnapshotTTL.
	SnapshotTTL time.Duration
}

// Metrics holds one worker's series. Its methods are safe for concurrent
// use; a nil *Metrics records nothing.
type Metrics struct {
	reg        prometheus.Registerer
	gatherer   prometheus.Gatherer
	ttl        time.Duration
	mu         sync.Mutex
	registered []prometheus.Collector
	closed     bool
	ctx        context.Context // ends at Close: storage reads in progress stop
	cancel     context.CancelFunc

	httpRequests    *prometheus.CounterVec
	httpDuration    *prometheus.HistogramVec
	httpRejected    *prometheus.CounterVec
	httpLoad        atomic.Pointer[func() (int, int64)]
	missionsStarted prometheus.Counter

	orchStarted   *prometheus.CounterVec
	orchCompleted *prometheus.CounterVec
	turnDuration  *prometheus.HistogramVec
	actDuration   *prometheus.HistogramVec
	queueWait     *prometheus.HistogramVec

	frames         *prometheus.CounterVec
	framesBy       [4]prometheus.Counter // accepted, duplicate, stale, rejected
	ingestDuration prometheus.Histogram
	signals        prometheus.Counter
}

// New creates a worker's series and registers them.
func New(opts Options) (*Metrics, error) {
	m := &Metrics{reg: opts.Registerer, gatherer: opts.Gatherer, ttl: opts.SnapshotTTL}
	if m.ttl <= 0 {
		m.ttl = DefaultSnapshotTTL
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	own := m.reg == nil
	if own {
		r := prometheus.NewRegistry()
		m.reg = r
		if m.gatherer == nil {
			m.gatherer = r
		}
	} else if g, ok := m.reg.(prometheus.Gatherer); ok && m.gatherer == nil {
		m.gatherer = g
	}
	m.define()
	cs := []prometheus.Collector{
		m.httpRequests, m.httpDuration, m.httpRejected, m.missionsStarted,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "http_in_flight",
			Help: "Requests being served by the admission-controlled routes (every route but /healthz and /metrics).",
		}, func() float64 { n, _ := m.load(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "http_body_bytes_in_flight",
			Help: "Request-body bytes reserved by the requests being served.",
		}, func() float64 { _, b := m.load(); return float64(b) }),
		m.orchStarted, m.orchCompleted, m.turnDuration, m.actDuration, m.queueWait,
		m.frames, m.ingestDuration, m.signals,
	}
	for _, c := range cs {
		if err := m.register(c, false); err != nil {
			m.Close()
			return nil, err
		}
	}
	// The runtime collectors: a registry of the program's own may have
	// them already (the default one does).
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := m.register(c, !own); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

// register registers c, remembering it for Close; tolerateDup accepts a
// collector that is registered already (and leaves it to its owner).
func (m *Metrics) register(c prometheus.Collector, tolerateDup bool) error {
	if err := m.reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if tolerateDup && errors.As(err, &are) {
			return nil
		}
		return fmt.Errorf("metrics: register: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.registered = append(m.registered, c)
	return nil
}

func (m *Metrics) define() {
	m.httpRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "http_requests_total",
		Help: "HTTP requests by route (the mux pattern, e.g. \"GET /api/missions/{id}\") and status code. Requests answered before routing (401, unknown routes) are not counted.",
	}, []string{"route", "code"})
	m.httpDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "http_request_duration_seconds",
		Help:    "Time spent serving HTTP requests, by route and status code.",
		Buckets: latencyBuckets,
	}, []string{"route", "code"})
	m.httpRejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "http_rejected_total",
		Help: "Requests answered 503 before their route ran: busy (no room under the load limits in time) or storage (storage known to be down).",
	}, []string{"reason"})
	for _, r := range []string{RejectBusy, RejectStorage} {
		m.httpRejected.WithLabelValues(r)
	}
	m.missionsStarted = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "missions_started_total",
		Help: "Missions started through the API (HTTP or the in-process client); repeated idempotent starts are not counted.",
	})
	m.orchStarted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "orchestrations_started_total",
		Help: "Orchestration instances whose first turn this worker committed, by orchestrator name.",
	}, []string{"name"})
	m.orchCompleted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "orchestrations_completed_total",
		Help: "Orchestration executions this worker ended, by orchestrator name and final runtime status (Completed, Failed, Terminated, ContinuedAsNew).",
	}, []string{"name", "status"})
	m.turnDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "orchestration_turn_duration_seconds",
		Help:    "Orchestration turns, from fetching the work item to committing (outcome committed) or handing it back (abandoned), by orchestrator name.",
		Buckets: latencyBuckets,
	}, []string{"name", "outcome"})
	m.actDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "activity_duration_seconds",
		Help:    "Activity executions by activity name and outcome: completed, failed (the task failed), error (not run to a result).",
		Buckets: latencyBuckets,
	}, []string{"name", "outcome"})
	m.queueWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "work_item_queue_wait_seconds",
		Help:    "Time a work item waited between being due (its oldest message enqueued, or its timer or scheduled start due) and being fetched, by kind: orchestration or activity.",
		Buckets: waitBuckets,
	}, []string{"kind"})
	m.frames = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "telemetry_frames_total",
		Help: "Telemetry frames ingested (HTTP, Go, or the telemetry queue), by verdict.",
	}, []string{"verdict"})
	for i, v := range []string{"accepted", "duplicate", "stale", "rejected"} {
		m.framesBy[i] = m.frames.WithLabelValues(v)
	}
	m.ingestDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "telemetry_ingest_duration_seconds",
		Help:    "Time to ingest one telemetry batch: validate, apply to the drones, raise the signals.",
		Buckets: latencyBuckets,
	})
	m.signals = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "telemetry_signals_total",
		Help: "Signal events raised to missions by telemetry ingestion.",
	})
}

// Registerer is where the worker's collectors are registered.
func (m *Metrics) Registerer() prometheus.Registerer { return m.reg }

// Gatherer is what Handler serves; nil when the Registerer given to New is
// not a Gatherer and no Gatherer was given.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.gatherer }

// Handler serves the Gatherer in the Prometheus exposition formats, or
// answers 404 when there is none (the program exports its registry itself).
func (m *Metrics) Handler() http.Handler {
	if m == nil || m.gatherer == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "this worker's metrics are exported by the program that embeds it", http.StatusNotFound)
		})
	}
	return promhttp.HandlerFor(m.gatherer, promhttp.HandlerOpts{})
}

// Close unregisters every collector New and WatchHub registered (so another
// worker may use the same Registerer) and stops storage reads in progress.
func (m *Metrics) Close() {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.closed = true
	m.cancel()
	for _, c := range m.registered {
		m.reg.Unregister(c)
	}
	m.registered = nil
}

// Reasons a request is rejected before its route runs (http_rejected_total).
const (
	RejectBusy    = "busy"
	RejectStorage = "storage"
)

// ObserveHTTP records a request served by route with status code.
func (m *Metrics) ObserveHTTP(route string, code int, took time.Duration) {
	if m == nil {
		return
	}
	c := strconv.Itoa(code)
	m.httpRequests.WithLabelValues(route, c).Inc()
	m.httpDuration.WithLabelValues(route, c).Observe(took.Seconds())
}

// Rejected records a request turned away with reason RejectBusy or
// RejectStorage.
func (m *Metrics) Rejected(reason string) {
	if m == nil {
		return
	}
	m.httpRejected.WithLabelValues(reason).Inc()
}

// SetHTTPLoad sets the function read by the in-flight gauges: requests
// being served and the body bytes they reserved.
func (m *Metrics) SetHTTPLoad(fn func() (requests int, bodyBytes int64)) {
	if m == nil {
		return
	}
	m.httpLoad.Store(&fn)
}

func (m *Metrics) load() (int, int64) {
	if fn := m.httpLoad.Load(); fn != nil {
		return (*fn)()
	}
	return 0, 0
}

// MissionStarted counts a mission started through the API.
func (m *Metrics) MissionStarted() {
	if m == nil {
		return
	}
	m.missionsStarted.Inc()
}

// Batch is what one telemetry batch came to.
type Batch struct {
	Accepted, Duplicates, Stale, Rejected, Signals int
	Took                                           time.Duration
}

// ObserveIngest records an ingested telemetry batch.
func (m *Metrics) ObserveIngest(b Batch) {
	if m == nil {
		return
	}
	for i, n := range [4]int{b.Accepted, b.Duplicates, b.Stale, b.Rejected} {
		if n > 0 {
			m.framesBy[i].Add(float64(n))
		}
	}
	if b.Signals > 0 {
		m.signals.Add(float64(b.Signals))
	}
	m.ingestDuration.Observe(b.Took.Seconds())
}

// Outcomes of an orchestration turn (orchestration_turn_duration_seconds).
const (
	TurnCommitted = "committed"
	TurnAbandoned = "abandoned"
)

// Outcomes of an activity execution (activity_duration_seconds).
const (
	ActivityCompleted = "completed"
	ActivityFailed    = "failed"
	ActivityError     = "error"
)

// Kinds of work item (work_item_queue_wait_seconds).
const (
	WorkOrchestration = "orchestration"
	WorkActivity      = "activity"
)

// OrchestrationStarted counts an instance's first committed turn.
func (m *Metrics) OrchestrationStarted(name string) {
	if m == nil {
		return
	}
	m.orchStarted.WithLabelValues(name).Inc()
}

// OrchestrationCompleted counts an execution that ended with status (a
// taskhub.StatusName: Completed, Failed, Terminated, ContinuedAsNew).
func (m *Metrics) OrchestrationCompleted(name, status string) {
	if m == nil {
		return
	}
	m.orchCompleted.WithLabelValues(name, status).Inc()
}

// ObserveTurn records an orchestration turn of name with outcome
// TurnCommitted or TurnAbandoned.
func (m *Metrics) ObserveTurn(name, outcome string, took time.Duration) {
	if m == nil {
		return
	}
	m.turnDuration.WithLabelValues(name, outcome).Observe(took.Seconds())
}

// ObserveActivity records an activity execution.
func (m *Metrics) ObserveActivity(name, outcome string, took time.Duration) {
	if m == nil {
		return
	}
	m.actDuration.WithLabelValues(name, outcome).Observe(took.Seconds())
}

// ObserveQueueWait records how long a work item of kind WorkOrchestration
// or WorkActivity waited to be fetched. Negative waits (clock skew between
// workers) count as 0.
func (m *Metrics) ObserveQueueWait(kind string, wait time.Duration) {
	if m == nil {
		return
	}
	m.queueWait.WithLabelValues(kind).Observe(max(wait, 0).Seconds())
}
