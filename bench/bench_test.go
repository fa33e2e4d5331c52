package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/backend/azurestorage"
	"github.com/dronehub/dronehub/bench"
	"github.com/dronehub/dronehub/internal/azurite"
	"github.com/dronehub/dronehub/internal/cli"
)

// azr is the one Azurite server the package's tests share.
var azr azurite.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	azr.Close()
	os.Exit(code)
}

// tiny is a bench small enough for a test under -race on two cores.
func tiny(t testing.TB, engines ...string) bench.Options {
	return bench.Options{
		Engines:          engines,
		W1Orchestrations: 4, W2Orchestrations: 2, W2Fanout: 4, SoloRuns: 2,
		TempDir: t.TempDir(),
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestLocalEngines(t *testing.T) {
	t.Parallel()
	opts := tiny(t, bench.DronehubSQLite, bench.DtgoSQLiteFile, bench.DtgoSQLiteMemory)
	rep, err := bench.Run(testContext(t), opts)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	checkReport(t, rep, opts.Engines)
	for _, r := range rep.Results {
		if r.Requests != nil {
			t.Errorf("%s %s: requests counted on a backend that does not count them: %+v", r.Engine, r.Workload, r.Requests)
		}
	}
	if left, _ := os.ReadDir(opts.TempDir); len(left) != 0 {
		t.Errorf("the engines left files behind in the temp dir: %v", left)
	}
}

func TestAzureEngine(t *testing.T) {
	t.Parallel()
	conn := azr.Get(t).ConnectionString()
	opts := tiny(t, bench.DronehubAzure)
	opts.AzureConnectionString = conn
	ctx := testContext(t)
	rep, err := bench.Run(ctx, opts)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	checkReport(t, rep, opts.Engines)
	for _, r := range rep.Results {
		checkRequests(t, r)
	}
	// The bench's hub was deleted at the end.
	storage := rep.Engines[0].Storage
	i := strings.LastIndex(storage, " hub ")
	if i < 0 {
		t.Fatalf("engine storage %q does not name its hub", storage)
	}
	hub := storage[i+len(" hub "):]
	if exists, err := azurestorage.HubExists(ctx, conn, hub); err != nil || exists {
		t.Errorf("hub %s still exists after the bench (exists=%v, err=%v)", hub, exists, err)
	}
}

func TestCommandWritesTableAndJSON(t *testing.T) {
	t.Parallel()
	conn := azr.Get(t).ConnectionString()
	jsonPath := filepath.Join(t.TempDir(), "bench.json")
	env := map[string]string{"DRONEHUB_BENCH_AZURE": conn}
	engines := []string{bench.DronehubSQLite, bench.DronehubAzure, bench.DtgoSQLiteMemory}
	var stdout, stderr bytes.Buffer
	code := cli.Main(testContext(t), []string{"bench",
		"--engines", strings.Join(engines, ","), "--workloads", "w1,w2,solo",
		"--w1-orchestrations", "4", "--w2-orchestrations", "2", "--w2-fanout", "4", "--solo-runs", "2",
		"--concurrency", "8", "--json", jsonPath,
	}, &stdout, &stderr, func(k string) string { return env[k] })
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	for _, e := range engines {
		for _, w := range bench.WorkloadNames() {
			// Not a terminal: a line per finished workload.
			if !strings.Contains(stderr.String(), e+" "+w+":") {
				t.Errorf("stderr has no line for %s %s:\n%s", e, w, stderr.String())
			}
		}
	}
	if strings.Contains(stderr.String(), "\r") {
		t.Errorf("stderr is not a terminal but got a rewritten progress line: %q", stderr.String())
	}
	if !strings.Contains(stdout.String(), "ENGINE") || !strings.Contains(stdout.String(), "storage requests per activity by kind") {
		t.Errorf("stdout has no table or no request breakdown:\n%s", stdout.String())
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatalf("--json file: %v", err)
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("--json file does not parse: %v\n%s", err, b)
	}
	if rep.Settings.Concurrency != 8 || rep.Flags["w2-fanout"] != "4" {
		t.Errorf("settings %+v, flags %v: want concurrency 8 and --w2-fanout 4", rep.Settings, rep.Flags)
	}
	if strings.Contains(string(b), conn) || strings.Contains(string(b), azurite.AccountKey) {
		t.Errorf("the JSON holds the connection string")
	}
	checkReport(t, &rep, engines)
	for _, r := range rep.Results {
		if r.Engine == bench.DronehubAzure {
			checkRequests(t, r)
		}
	}
}

// checkReport checks that rep has every workload of every engine, with
// every figure present and consistent, and that it prints and marshals.
func checkReport(t *testing.T, rep *bench.Report, engines []string) {
	t.Helper()
	if rep.GoVersion == "" || rep.Date.IsZero() || rep.Machine.CPUs < 1 || rep.Seconds <= 0 {
		t.Errorf("report conditions missing: go %q, date %v, machine %+v, seconds %v", rep.GoVersion, rep.Date, rep.Machine, rep.Seconds)
	}
	if len(rep.Engines) != len(engines) {
		t.Errorf("report names %d engines, want %d: %+v", len(rep.Engines), len(engines), rep.Engines)
	}
	s := rep.Settings
	want := map[string][2]int{
		bench.W1: {s.W1Orchestrations, bench.SequenceSteps}, bench.W2: {s.W2Orchestrations, s.W2Fanout},
		bench.SoloW1: {s.SoloRuns, bench.SequenceSteps}, bench.SoloW2: {s.SoloRuns, s.W2Fanout},
	}
	if got, wantN := len(rep.Results), len(engines)*len(want); got != wantN {
		t.Fatalf("%d results, want %d", got, wantN)
	}
	linux := runtime.GOOS == "linux"
	baseline := slices.Contains(engines, bench.Baseline)
	for _, e := range engines {
		for w, size := range want {
			i := slices.IndexFunc(rep.Results, func(r bench.Result) bool { return r.Engine == e && r.Workload == w })
			if i < 0 {
				t.Errorf("no result for %s %s", e, w)
				continue
			}
			r := rep.Results[i]
			n, width := size[0], size[1]
			switch {
			case r.Orchestrations != n || r.ActivitiesPerOrchestration != width:
				t.Errorf("%s %s: %d×%d, want %d×%d", e, w, r.Orchestrations, r.ActivitiesPerOrchestration, n, width)
			case r.Activities != n*width || r.ActivityExecutions < r.Activities:
				t.Errorf("%s %s: %d activities, %d executions; want %d activities and at least as many executions", e, w, r.Activities, r.ActivityExecutions, n*width)
			case r.Seconds <= 0 || r.OrchestrationsPerSecond <= 0 || r.ActivitiesPerSecond <= 0:
				t.Errorf("%s %s: window %vs, %v orch/s, %v act/s: want all positive", e, w, r.Seconds, r.OrchestrationsPerSecond, r.ActivitiesPerSecond)
			case !near(r.ActivitiesPerSecond, float64(r.Activities)/r.Seconds) || !near(r.OrchestrationsPerSecond, float64(n)/r.Seconds):
				t.Errorf("%s %s: rates %v orch/s, %v act/s do not match %d, %d over %vs", e, w, r.OrchestrationsPerSecond, r.ActivitiesPerSecond, n, r.Activities, r.Seconds)
			case r.LatencyMs.N != n || r.LatencyMs.P50 <= 0 || r.LatencyMs.P99 < r.LatencyMs.P50 || r.LatencyMs.P99 > r.Seconds*1000+1:
				t.Errorf("%s %s: latency %+v over a %vs window", e, w, r.LatencyMs, r.Seconds)
			case r.Concurrency != s.Concurrency:
				t.Errorf("%s %s: concurrency %d, want %d", e, w, r.Concurrency, s.Concurrency)
			}
			sequence := w == bench.W1 || w == bench.SoloW1
			switch {
			case sequence && (r.GapMs == nil || r.GapMs.N != n*(width-1) || r.GapMs.P50 <= 0 || r.GapMs.P99 < r.GapMs.P50):
				t.Errorf("%s %s: gap %+v, want %d positive samples", e, w, r.GapMs, n*(width-1))
			case !sequence && r.GapMs != nil:
				t.Errorf("%s %s: a fan-out has no sequence gap, got %+v", e, w, r.GapMs)
			}
			if linux {
				if r.CPUSeconds <= 0 || !near(r.CPUPerActivityUs, r.CPUSeconds*1e6/float64(r.Activities)) {
					t.Errorf("%s %s: CPU %vs, %vµs per activity", e, w, r.CPUSeconds, r.CPUPerActivityUs)
				}
				if r.PeakRSSBytes < 1<<20 || r.PeakRSSBytes > 1<<40 {
					t.Errorf("%s %s: peak RSS %d bytes", e, w, r.PeakRSSBytes)
				}
			}
			switch v := r.VsBaseline; {
			case !baseline && v != nil:
				t.Errorf("%s %s: compared with a baseline that did not run: %+v", e, w, v)
			case baseline && (v == nil || v.Baseline != bench.Baseline || v.Throughput <= 0 || v.LatencyP50 <= 0 || v.LatencyP99 <= 0):
				t.Errorf("%s %s: ratios to the baseline %+v", e, w, v)
			case baseline && e == bench.Baseline && (!near(v.Throughput, 1) || !near(v.LatencyP50, 1)):
				t.Errorf("%s %s: the baseline's ratios to itself are %+v, want 1", e, w, v)
			}
		}
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatalf("write table: %v", err)
	}
	for _, e := range engines {
		if !strings.Contains(table.String(), e) {
			t.Errorf("the table has no row for %s:\n%s", e, table.String())
		}
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var back bench.Report
	if err := json.Unmarshal(b, &back); err != nil || len(back.Results) != len(rep.Results) {
		t.Errorf("JSON round trip: %v, %d results", err, len(back.Results))
	}
}

// checkRequests checks the storage request figures of an engine that counts
// them.
func checkRequests(t *testing.T, r bench.Result) {
	t.Helper()
	q := r.Requests
	if q == nil || q.Total <= 0 || len(q.ByKind) == 0 {
		t.Errorf("%s %s: no storage requests counted: %+v", r.Engine, r.Workload, q)
		return
	}
	var sum int64
	for kind, k := range q.ByKind {
		sum += k.Count
		if !near(k.PerActivity, float64(k.Count)/float64(r.Activities)) || !near(k.PerOrchestration, float64(k.Count)/float64(r.Orchestrations)) {
			t.Errorf("%s %s: %s %+v does not match %d activities, %d orchestrations", r.Engine, r.Workload, kind, k, r.Activities, r.Orchestrations)
		}
	}
	if sum != q.Total || !near(q.PerActivity, float64(q.Total)/float64(r.Activities)) || !near(q.PerOrchestration, float64(q.Total)/float64(r.Orchestrations)) {
		t.Errorf("%s %s: total %d (kinds sum to %d), %v per activity, %v per orchestration", r.Engine, r.Workload, q.Total, sum, q.PerActivity, q.PerOrchestration)
	}
	// Every activity is at least a message sent and one received.
	if q.ByKind["queue.enqueue"].PerActivity < 1 {
		t.Errorf("%s %s: %v enqueues per activity, want at least 1", r.Engine, r.Workload, q.ByKind["queue.enqueue"].PerActivity)
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// BenchmarkW1 runs b.N W1 orchestrations on each engine, all scheduled at
// once (ns/op is per orchestration, end to end):
//
//	CI=true go test -run '^$' -bench 'BenchmarkW1' -benchtime 200x ./bench
func BenchmarkW1(b *testing.B) { benchmarkWorkload(b, bench.W1) }

// BenchmarkW2 runs b.N W2 orchestrations (fan-out of 20) on each engine.
func BenchmarkW2(b *testing.B) { benchmarkWorkload(b, bench.W2) }

func benchmarkWorkload(b *testing.B, workload string) {
	for _, engine := range bench.EngineNames() {
		b.Run(engine, func(b *testing.B) {
			opts := bench.Options{TempDir: b.TempDir(), W1Orchestrations: b.N, W2Orchestrations: b.N}
			if engine == bench.DronehubAzure {
				opts.AzureConnectionString = azr.Get(b).ConnectionString()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			e, err := bench.OpenEngine(ctx, engine, opts)
			if err != nil {
				b.Fatal(err)
			}
			defer func() {
				if err := e.Close(ctx); err != nil {
					b.Error(err)
				}
			}()
			b.ResetTimer()
			r, err := e.Run(ctx, workload)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(r.OrchestrationsPerSecond, "orch/s")
			b.ReportMetric(r.ActivitiesPerSecond, "act/s")
			b.ReportMetric(r.LatencyMs.P50, "p50-ms")
			b.ReportMetric(r.LatencyMs.P99, "p99-ms")
			if r.GapMs != nil {
				b.ReportMetric(r.GapMs.P50, "gap-p50-ms")
			}
			if r.Requests != nil {
				b.ReportMetric(r.Requests.PerActivity, "requests/act")
			}
			if r.CPUSeconds > 0 {
				b.ReportMetric(r.CPUPerActivityUs, "cpu-µs/act")
			}
			if r.PeakRSSBytes > 0 {
				b.ReportMetric(float64(r.PeakRSSBytes)/(1<<20), "peak-rss-MiB")
			}
		})
	}
}
