package metrics_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/metrics"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/taskhub"
	"github.com/dronehub/dronehub/worker"
)

// TestMissionSeries flies a mission started over HTTP on each backend,
// gathers the worker's registry, checks the series the mission must have
// moved, lints every series and checks each dronehub series is documented
// in docs/metrics.md.
func TestMissionSeries(t *testing.T) {
	documented := documentedSeries(t)
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		reg := prometheus.NewRegistry()
		cfg.Registerer = reg
		w := testkit.Start(t, cfg)
		srv := httptest.NewServer(w.Handler())
		t.Cleanup(srv.Close)

		body, _ := json.Marshal(testkit.Request("m-metrics"))
		resp, err := http.Post(srv.URL+"/api/missions", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("start mission: %d", resp.StatusCode)
		}
		st := testkit.AwaitDispatched(t, w, "m-metrics")
		if err := simulator.Fly(context.Background(), testkit.Sink(t, w), 0, testkit.Flight(t, w, st, simulator.FaultNone, 0)); err != nil {
			t.Fatal(err)
		}
		if _, md := testkit.AwaitEnd(t, w, "m-metrics", 30*time.Second); md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
			t.Fatalf("mission ended %v", md.RuntimeStatus)
		}

		// The gauges read from storage come from a snapshot read in the
		// background on the first scrape: gather until it is there.
		var fams map[string]*dto.MetricFamily
		testkit.Eventually(t, 20*time.Second, "the storage snapshot in the registry", func() bool {
			fams = gather(t, reg)
			return fams["dronehub_drones"] != nil && fams["dronehub_missions"] != nil
		})

		// The counters of a turn are added right after its commit, which
		// may come a moment after the mission's completion is visible.
		testkit.Eventually(t, 10*time.Second, "the final turn to be counted", func() bool {
			return value(gather(t, reg), "dronehub_orchestrations_completed_total", "name", "DeliveryMission", "status", "Completed") == 1
		})
		fams = gather(t, reg)
		for _, c := range []struct {
			name   string
			labels []string
			min    float64
		}{
			{"dronehub_http_requests_total", []string{"route", "POST /api/missions", "code", "202"}, 1},
			{"dronehub_missions_started_total", nil, 1},
			{"dronehub_orchestrations_started_total", []string{"name", "DeliveryMission"}, 1},
			{"dronehub_orchestration_turn_duration_seconds", []string{"name", "DeliveryMission", "outcome", "committed"}, 4},
			{"dronehub_activity_duration_seconds", []string{"name", "ReserveDrone", "outcome", "completed"}, 1},
			{"dronehub_activity_duration_seconds", []string{"name", "CompleteMission", "outcome", "completed"}, 1},
			{"dronehub_work_item_queue_wait_seconds", []string{"kind", "orchestration"}, 4},
			{"dronehub_work_item_queue_wait_seconds", []string{"kind", "activity"}, 6},
			{"dronehub_telemetry_frames_total", []string{"verdict", "accepted"}, 10},
			{"dronehub_telemetry_ingest_duration_seconds", nil, 1},
			{"dronehub_telemetry_signals_total", nil, 4},
			{"dronehub_drones", []string{"state", "idle"}, 3},
			{"dronehub_orchestration_instances", []string{"status", "Completed"}, 1},
			{"go_goroutines", nil, 1},
		} {
			if got := value(fams, c.name, c.labels...); got < c.min {
				t.Errorf("%s%v = %g, want at least %g", c.name, c.labels, got, c.min)
			}
		}
		if got := value(fams, "dronehub_missions", "phase", string(domain.PhaseHeadedToPickup)); got != 0 {
			t.Errorf("dronehub_missions{phase=HeadedToPickup} = %g after the mission ended", got)
		}
		if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP dronehub_orchestrations_started_total Orchestration instances whose first turn this worker committed, by orchestrator name.
# TYPE dronehub_orchestrations_started_total counter
dronehub_orchestrations_started_total{name="DeliveryMission"} 1
`), "dronehub_orchestrations_started_total"); err != nil {
			t.Error(err)
		}
		if strings.Contains(cfg.Storage, "BlobEndpoint=") { // Azure Storage
			for _, c := range []struct {
				name   string
				labels []string
				min    float64
			}{
				{"dronehub_storage_requests_total", []string{"kind", "queue.dequeue", "status_class", "2xx"}, 1},
				{"dronehub_partitions_owned", nil, 4},
				{"dronehub_partition_lease_acquisitions_total", nil, 4},
				{"dronehub_control_queue_messages", []string{"partition", "3"}, 0},
			} {
				if fams[c.name] == nil {
					t.Errorf("no %s on Azure Storage", c.name)
				} else if got := value(fams, c.name, c.labels...); got < c.min {
					t.Errorf("%s%v = %g, want at least %g", c.name, c.labels, got, c.min)
				}
			}
		}

		problems, err := testutil.GatherAndLint(reg)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
		for name := range fams {
			if strings.HasPrefix(name, "dronehub_") && !documented[name] {
				t.Errorf("%s is not in docs/metrics.md", name)
			}
		}
	})
}

// TestNothingOnTheDefaultRegistry checks that a worker registers nothing on
// the global default registry unless given it, and that Shutdown
// unregisters its collectors so the next worker may use the same registry.
func TestNothingOnTheDefaultRegistry(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	for i := range 2 {
		cfg := testkit.Config(t)
		cfg.Registerer = reg
		w, err := worker.New(context.Background(), cfg)
		if err != nil {
			t.Fatalf("worker %d on the same registry: %v", i, err)
		}
		testkit.Stop(t, w)
	}
	if fams, err := reg.Gather(); err != nil || len(fams) != 0 {
		t.Errorf("after Shutdown the registry holds %d families (%v)", len(fams), err)
	}
	w := testkit.Start(t, testkit.Config(t))
	if w.Metrics().Gatherer() == nil {
		t.Fatal("a worker without a Registerer has no registry")
	}
	fams, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), "dronehub_") {
			t.Errorf("%s is on the default registry", f.GetName())
		}
	}
}

// TestScrapeDoesNotWaitForStorage checks a scrape answers within the bound
// however slow storage is, and reads storage at most once per TTL.
func TestScrapeDoesNotWaitForStorage(t *testing.T) {
	t.Parallel()
	be := &slowHub{release: make(chan struct{})}
	m, err := metrics.New(metrics.Options{SnapshotTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.WatchHub(metrics.Hub{Backend: be}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	fams := gather(t, m.Gatherer())
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("a scrape with storage hanging took %s", took)
	}
	if fams["dronehub_dead_letters"] != nil {
		t.Error("a snapshot was served before storage answered")
	}
	close(be.release)
	testkit.Eventually(t, 10*time.Second, "the snapshot once storage answers", func() bool {
		return value(gather(t, m.Gatherer()), "dronehub_dead_letters") == 7
	})
	for range 5 {
		gather(t, m.Gatherer())
	}
	if n := be.calls.Load(); n != 1 {
		t.Errorf("storage read %d times within one TTL, want 1", n)
	}
}

// slowHub is a task hub whose HubInfo hangs until released.
type slowHub struct {
	taskhub.Backend
	release chan struct{}
	calls   atomic.Int32
}

func (h *slowHub) HubInfo(ctx context.Context) (taskhub.HubInfo, error) {
	h.calls.Add(1)
	select {
	case <-h.release:
		return taskhub.HubInfo{DeadLetters: 7}, nil
	case <-ctx.Done():
		return taskhub.HubInfo{}, ctx.Err()
	}
}

func gather(t *testing.T, g prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// value is the value of the series of name with the given label pairs
// (the sample count of a histogram), summed over the other labels.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	var sum float64
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// documentedSeries reads the series names docs/metrics.md lists.
func documentedSeries(t *testing.T) map[string]bool {
	t.Helper()
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range regexp.MustCompile("`(dronehub_[a-z_]+)`").FindAllStringSubmatch(string(doc), -1) {
		out[m[1]] = true
	}
	return out
}

// TestGrafanaDashboard checks the dashboard in the repository is JSON and
// queries only documented series.
func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	documented := documentedSeries(t)
	raw, err := os.ReadFile("../deploy/grafana/dronehub.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("deploy/grafana/dronehub.json: %v", err)
	}
	queries := 0
	for _, p := range dash.Panels {
		for _, q := range p.Targets {
			queries++
			for _, name := range regexp.MustCompile(`dronehub_[a-z_]+`).FindAllString(q.Expr, -1) {
				base := name
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					base = strings.TrimSuffix(base, suffix)
				}
				if !documented[name] && !documented[base] {
					t.Errorf("panel %q queries %s, which docs/metrics.md does not list", p.Title, name)
				}
			}
		}
	}
	if queries < 10 {
		t.Errorf("the dashboard has %d queries", queries)
	}
}
