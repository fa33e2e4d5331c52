package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/backend"
	"github.com/dronehub/dronehub/backend/azurestorage"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/taskhub"
	"github.com/dronehub/dronehub/worker"
)

// This file holds what W3 and W4 share: a dronehub worker on fresh storage
// serving its HTTP API on loopback, a telemetry poster that behaves like a
// bridge, and RSS sampling.

// simWorkload reports whether w runs a dronehub worker of its own instead
// of the engine's task-hub stack.
func simWorkload(w string) bool { return w == W3 || w == W4 }

// needsTaskHub reports whether workloads (as given to OpenEngine) need the
// engine's own task-hub stack: an empty list means the default workloads,
// which do.
func needsTaskHub(workloads []string) bool {
	return len(workloads) == 0 || slices.ContainsFunc(workloads, func(w string) bool { return !simWorkload(w) })
}

// dronehubEngine reports whether the engine is one of dronehub's, the only
// ones that can run W3 and W4 (missions and telemetry need the fleet store).
func dronehubEngine(name string) bool { return name == DronehubSQLite || name == DronehubAzure }

// openSimOnly prepares an engine that runs only W3 and W4: it checks the
// storage and describes it, and opens nothing (each workload opens a worker
// on fresh storage of its own).
func (e *Engine) openSimOnly() error {
	switch e.name {
	case DronehubSQLite:
		dir := e.opts.TempDir
		if dir == "" {
			dir = os.TempDir()
		}
		e.storage = "a fresh SQLite file per workload in " + dir
	case DronehubAzure:
		cfg, err := azurestorage.ParseConnectionString(e.opts.AzureConnectionString)
		if err != nil {
			return fmt.Errorf("Options.AzureConnectionString: %w", err)
		}
		e.storage = cfg.String() + ", a fresh hub per workload"
	default:
		return fmt.Errorf("engine %s runs none of the workloads asked for: %s and %s need a dronehub engine", e.name, W3, W4)
	}
	return nil
}

// Settings of the worker W3 and W4 run.
const (
	// simStorageTimeout is the worker API's storage deadline. The default
	// (1.2 s) is for production storage; on a loaded two-core machine with
	// Azurite beside the bench, healthy posts can take longer, and shedding
	// them would measure the retries, not the worker.
	simStorageTimeout = 30 * time.Second
	// maxPostAttempts bounds the attempts of one post before the workload
	// fails.
	maxPostAttempts = 30
	// rssSampleEvery is how often the resident set is sampled.
	rssSampleEvery = 2 * time.Second
)

// simBase is the home base of the drones W3 and W4 seed (the worker's
// default base, Redmond WA).
func simBase() domain.LatLon { return domain.LatLon{Lat: 47.6401, Lon: -122.1298} }

// simRoute is the i-th delivery route from simBase(): 25 pickups and
// drop-offs on a grid a few hundred metres apart, 2.1-3.9 km in all.
func simRoute(i int) domain.Route {
	dx := float64(i%5) * 0.002
	dy := float64(i/5%5) * 0.002
	return domain.Route{
		Home:    simBase(),
		Pickup:  domain.LatLon{Lat: 47.6440 + dy, Lon: -122.1300 + dx},
		Dropoff: domain.LatLon{Lat: 47.6480 + dy, Lon: -122.1370 + dx},
	}
}

// simDroneID is the id of the i-th seeded drone (the worker seeds drone-1
// … drone-N).
func simDroneID(i int) string { return "drone-" + strconv.Itoa(i+1) }

// simWorker is a dronehub worker (worker.New) on fresh storage, serving its
// HTTP API (worker.Handler, through worker.Server) on a loopback listener.
type simWorker struct {
	w       *worker.Worker
	storage string
	// counter counts the worker backend's storage requests; nil on SQLite.
	counter taskhub.RequestCounter
	// status reads instances without being counted: the worker's own
	// client on SQLite (which counts nothing), a client on a second backend
	// instance on Azure Storage, like a client in another process.
	status dtbackend.TaskHubClient
	// pollEvery is the interval of status polls: cheap on SQLite, a storage
	// request each on Azure Storage.
	pollEvery time.Duration
	post      *poster
	cleanup   []func(context.Context) error
}

// startSimWorker opens a worker with drones seeded drones on fresh storage
// of the engine's kind, starts it and serves its API.
func (e *Engine) startSimWorker(ctx context.Context, drones int, mw activities.Middleware) (_ *simWorker, err error) {
	s := &simWorker{}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.close(context.WithoutCancel(ctx)))
		}
	}()
	base := simBase()
	cfg := worker.Config{
		OrchestrationConcurrency: e.opts.Concurrency,
		ActivityConcurrency:      e.opts.Concurrency,
		SeedDrones:               drones,
		SeedBase:                 &base,
		StorageTimeout:           simStorageTimeout,
		Logger:                   e.opts.Logger,
		ActivityMiddleware:       mw,
	}
	switch e.name {
	case DronehubSQLite:
		dir, err := os.MkdirTemp(e.opts.TempDir, "dronehub-bench-")
		if err != nil {
			return nil, fmt.Errorf("make a directory for the SQLite file: %w", err)
		}
		s.onClose(func(context.Context) error { return os.RemoveAll(dir) })
		path := filepath.Join(dir, "hub.db")
		cfg.Storage, s.storage, s.pollEvery = "sqlite:"+path, "sqlite:"+path, 20*time.Millisecond
	case DronehubAzure:
		cfg.Storage, cfg.HubName, s.pollEvery = e.opts.AzureConnectionString, "bench"+e.runID+randomHex(3), 100*time.Millisecond
	default:
		return nil, fmt.Errorf("engine %s cannot run a dronehub worker", e.name)
	}
	w, err := worker.New(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open the worker: %w", err)
	}
	if cfg.HubName == "" {
		s.status = w.Client()
		s.onClose(func(ctx context.Context) error { return w.Shutdown(ctx) })
	} else {
		// The hub exists now: open the status reader's backend on it, which
		// also deletes the hub once the worker has stopped.
		obs, oerr := backend.Open(ctx, cfg.Storage, backend.Options{HubName: cfg.HubName, Logger: e.opts.Logger})
		if oerr != nil {
			return nil, errors.Join(fmt.Errorf("open a status reader on hub %s: %w", cfg.HubName, oerr), w.Shutdown(context.WithoutCancel(ctx)))
		}
		s.onClose(func(context.Context) error { return obs.Close() })
		s.onClose(func(ctx context.Context) error {
			if err := obs.Backend.DeleteTaskHub(ctx); err != nil && !errors.Is(err, dtbackend.ErrTaskHubNotFound) {
				return fmt.Errorf("delete hub %s: %w", cfg.HubName, err)
			}
			return nil
		})
		s.onClose(func(ctx context.Context) error { return w.Shutdown(ctx) })
		s.status, s.storage = dtbackend.NewTaskHubClient(obs.Backend), obs.Description
	}
	s.w = w
	if rc, ok := w.Backend().(taskhub.RequestCounter); ok {
		s.counter = rc
	}
	if err := w.Start(ctx); err != nil {
		return nil, fmt.Errorf("start the worker: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen on loopback: %w", err)
	}
	srv := w.Server()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	tr := &http.Transport{MaxIdleConnsPerHost: e.opts.Concurrency + 4, DisableCompression: true}
	s.onClose(func(ctx context.Context) error {
		tr.CloseIdleConnections()
		err := srv.Shutdown(ctx)
		if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
		if err != nil {
			return fmt.Errorf("stop the HTTP server: %w", err)
		}
		return nil
	})
	s.post = &poster{url: "http://" + ln.Addr().String() + "/api/telemetry", client: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}
	return s, nil
}

func (s *simWorker) onClose(f func(context.Context) error) { s.cleanup = append(s.cleanup, f) }

// close stops the server and the worker and deletes the storage.
func (s *simWorker) close(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	var errs []error
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		if err := s.cleanup[i](ctx); err != nil {
			errs = append(errs, err)
		}
	}
	s.cleanup = nil
	return errors.Join(errs...)
}

// poster posts telemetry batches to POST /api/telemetry as a bridge does:
// a 503, a 429 or no answer is sent again after a back-off (the frames
// already applied then come back as duplicates); anything else but 200
// fails.
type poster struct {
	url    string
	client *http.Client
	// retries counts the attempts that were sent again.
	retries atomic.Int64
}

// verdicts is the answer of POST /api/telemetry.
type verdicts struct {
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	Stale      int `json:"stale"`
	Rejected   int `json:"rejected"`
	Signals    int `json:"signals"`
	Frames     []struct {
		DeviceID string         `json:"deviceId"`
		Seq      *int64         `json:"seq"`
		Verdict  domain.Verdict `json:"verdict"`
		Reason   string         `json:"reason"`
	} `json:"frames"`
}

// send posts frames and returns the worker's verdicts, whether the post was
// sent more than once, and when the answer came.
func (p *poster) send(ctx context.Context, frames []domain.Frame) (verdicts, bool, time.Time, error) {
	body, err := json.Marshal(struct {
		Frames []domain.Frame `json:"frames"`
	}{frames})
	if err != nil {
		return verdicts{}, false, time.Time{}, fmt.Errorf("encode %d frames: %w", len(frames), err)
	}
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		v, retryAfter, err := p.attempt(ctx, body)
		if err == nil {
			return v, attempt > 1, time.Now(), nil
		}
		if retryAfter < 0 || attempt >= maxPostAttempts || ctx.Err() != nil {
			return verdicts{}, attempt > 1, time.Time{}, fmt.Errorf("post %d frames (attempt %d): %w", len(frames), attempt, err)
		}
		p.retries.Add(1)
		wait := max(backoff, min(retryAfter, 5*time.Second))
		backoff = min(backoff*2, 2*time.Second)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return verdicts{}, true, time.Time{}, fmt.Errorf("post %d frames: %w", len(frames), ctx.Err())
		}
	}
}

// attempt posts body once. retryAfter is negative when the failure is not
// worth retrying.
func (p *poster) attempt(ctx context.Context, body []byte) (verdicts, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return verdicts{}, -1, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return verdicts{}, 0, err // no answer: send it again
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return verdicts{}, 0, fmt.Errorf("read the answer: %w", err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		var v verdicts
		if err := json.Unmarshal(b, &v); err != nil {
			return verdicts{}, -1, fmt.Errorf("decode the answer: %w", err)
		}
		return v, 0, nil
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return verdicts{}, time.Duration(secs) * time.Second, fmt.Errorf("%s: %s", resp.Status, firstBytes(b, 300))
	}
	return verdicts{}, -1, fmt.Errorf("%s: %s", resp.Status, firstBytes(b, 300))
}

func firstBytes(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// verdictTally adds up the verdicts of a workload's posts.
type verdictTally struct {
	mu                                    sync.Mutex
	accepted, duplicates, stale, rejected int
	signals                               int
	unexpected                            []string // the first frames neither accepted nor resent duplicates
	unexpectedCount                       int
}

// add counts one post's verdicts. A duplicate is expected only when the
// post was sent more than once (its frames applied by an earlier attempt).
func (t *verdictTally) add(v verdicts, resent bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.accepted += v.Accepted
	t.duplicates += v.Duplicates
	t.stale += v.Stale
	t.rejected += v.Rejected
	t.signals += v.Signals
	for _, f := range v.Frames {
		if f.Verdict == domain.VerdictAccepted || f.Verdict == domain.VerdictDuplicate && resent {
			continue
		}
		t.unexpectedCount++
		if len(t.unexpected) < 3 {
			seq := "?"
			if f.Seq != nil {
				seq = strconv.FormatInt(*f.Seq, 10)
			}
			t.unexpected = append(t.unexpected, fmt.Sprintf("%s seq %s %s (%s)", f.DeviceID, seq, f.Verdict, f.Reason))
		}
	}
}

// err reports frames that were neither accepted nor duplicates of a resent
// post.
func (t *verdictTally) err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.unexpectedCount == 0 {
		return nil
	}
	return fmt.Errorf("%d frames were not accepted: %v", t.unexpectedCount, t.unexpected)
}

// rssSampler samples the process's resident set every rssSampleEvery.
type rssSampler struct {
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	samples []rssSample
}

type rssSample struct {
	at  time.Time
	rss int64
}

func startRSSSampler() *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	s.sample()
	go func() {
		defer close(s.done)
		t := time.NewTicker(rssSampleEvery)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.sample()
			}
		}
	}()
	return s
}

func (s *rssSampler) sample() {
	rss := currentRSS()
	if rss <= 0 {
		return
	}
	s.mu.Lock()
	s.samples = append(s.samples, rssSample{time.Now(), rss})
	s.mu.Unlock()
}

// finish stops sampling, takes a last sample and summarises the samples
// taken from began on; mid is where the second half of the workload
// begins.
func (s *rssSampler) finish(mid time.Time) RSSFigures {
	close(s.stop)
	<-s.done
	s.sample()
	s.mu.Lock()
	defer s.mu.Unlock()
	f := RSSFigures{Samples: len(s.samples), SampleEverySeconds: rssSampleEvery.Seconds()}
	if len(s.samples) == 0 {
		return f
	}
	f.EndBytes = s.samples[len(s.samples)-1].rss
	for _, x := range s.samples {
		if x.at.Before(mid) {
			continue
		}
		if f.SecondHalfMinBytes == 0 || x.rss < f.SecondHalfMinBytes {
			f.SecondHalfMinBytes = x.rss
		}
		f.SecondHalfMaxBytes = max(f.SecondHalfMaxBytes, x.rss)
	}
	return f
}

// currentRSS returns the process's resident set in bytes (VmRSS), or 0.
func currentRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	return kibField(b, "VmRSS:")
}

// requestsOf turns a window's request counts into Requests, per activity,
// orchestration (W3: mission) and frame.
func requestsOf(counts map[string]int64, acts, orchs, frames int) *Requests {
	if counts == nil {
		return nil
	}
	req := &Requests{ByKind: map[string]KindRequests{}}
	for kind, c := range counts {
		req.Total += c
		req.ByKind[kind] = KindRequests{Count: c, PerActivity: per(c, acts), PerOrchestration: per(c, orchs), PerFrame: per(c, frames)}
	}
	req.PerActivity, req.PerOrchestration, req.PerFrame = per(req.Total, acts), per(req.Total, orchs), per(req.Total, frames)
	return req
}
