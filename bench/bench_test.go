package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"

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
		CeilingOps: 20,
		TempDir:    t.TempDir(),
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
	// By default, dronehub-azure runs the ceiling too.
	checkReport(t, rep, opts.Engines)
	for _, r := range rep.Results {
		if r.Ceiling == nil {
			checkRequests(t, r)
		}
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
// The ceiling, when the settings name it, is checked by checkCeiling.
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
	wantN := len(engines) * len(want)
	if slices.Contains(s.Workloads, bench.Ceiling) && slices.Contains(engines, bench.DronehubAzure) {
		wantN++
		i := slices.IndexFunc(rep.Results, func(r bench.Result) bool { return r.Ceiling != nil })
		if i < 0 {
			t.Fatalf("no ceiling among the results of %s", bench.DronehubAzure)
		}
		checkCeiling(t, rep.Results[i], s.CeilingOps, s.Concurrency)
	}
	if got := len(rep.Results); got != wantN {
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

// tinySim is a W3 and W4 run small enough for a test under -race on two
// cores: 3 missions flown with 20 ms ticks at 600 m/s (about 20 frames a
// flight), and 20 drones × 5 frames.
func tinySim(t testing.TB, engine string) bench.Options {
	return bench.Options{
		Engines: []string{engine}, Workloads: []string{bench.W3, bench.W4},
		W3Missions: 3, W3FrameInterval: 20 * time.Millisecond, W3SpeedMps: 600, W3Batch: 2,
		W4Drones: 20, W4FramesPerDrone: 5, W4Batch: 7,
		Concurrency: 4, TempDir: t.TempDir(),
	}
}

func TestSimulatedWorkloads(t *testing.T) {
	t.Parallel()
	for _, engine := range []string{bench.DronehubSQLite, bench.DronehubAzure} {
		t.Run(engine, func(t *testing.T) {
			t.Parallel()
			opts := tinySim(t, engine)
			if engine == bench.DronehubAzure {
				opts.AzureConnectionString = azr.Get(t).ConnectionString()
			}
			ctx := testContext(t)
			rep, err := bench.Run(ctx, opts)
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if len(rep.Results) != 2 || rep.Results[0].Workload != bench.W3 || rep.Results[1].Workload != bench.W4 {
				t.Fatalf("results %+v: want w3 then w4", rep.Results)
			}
			counted := engine == bench.DronehubAzure
			checkMissions(t, rep.Results[0], opts, counted)
			checkIngest(t, rep.Results[1], opts, counted)

			var table bytes.Buffer
			if err := rep.WriteTable(&table); err != nil {
				t.Fatalf("write table: %v", err)
			}
			t.Logf("table:\n%s", table.String())
			for _, want := range []string{engine + "  w3", engine + "  w4", "MISSIONS/S", "FRAMES/S", "20/20 drones", "w3 3 missions", "w4 20 drones × 5 frames"} {
				if !strings.Contains(table.String(), want) {
					t.Errorf("the table does not show %q:\n%s", want, table.String())
				}
			}
			if strings.Contains(table.String(), "GAP P50") {
				t.Errorf("the table has the task-hub table without its workloads:\n%s", table.String())
			}
			if counted != strings.Contains(table.String(), "storage requests per mission by kind") ||
				counted != strings.Contains(table.String(), "storage requests per frame by kind") {
				t.Errorf("requests by kind shown %v, want %v:\n%s", !counted, counted, table.String())
			}
			b, err := json.Marshal(rep)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			var back bench.Report
			if err := json.Unmarshal(b, &back); err != nil || back.Results[0].Missions == nil || back.Results[1].Ingest == nil {
				t.Errorf("JSON round trip lost the figures: %v\n%s", err, b)
			}
			if back.Settings.W3Missions != 3 || back.Settings.W4Drones != 20 || back.Settings.W3FrameIntervalMs != 20 {
				t.Errorf("settings %+v", back.Settings)
			}

			// The workloads' storage is gone.
			if engine == bench.DronehubSQLite {
				if left, _ := os.ReadDir(opts.TempDir); len(left) != 0 {
					t.Errorf("the workloads left files behind: %v", left)
				}
				return
			}
			for _, r := range rep.Results {
				var storage string
				if r.Missions != nil {
					storage = r.Missions.Storage
				} else {
					storage = r.Ingest.Storage
				}
				i := strings.LastIndex(storage, " hub ")
				if i < 0 {
					t.Fatalf("storage %q names no hub", storage)
				}
				hub := strings.Fields(storage[i+len(" hub "):])[0]
				if exists, err := azurestorage.HubExists(ctx, opts.AzureConnectionString, hub); err != nil || exists {
					t.Errorf("%s's hub %s still exists (exists=%v, err=%v)", r.Workload, hub, exists, err)
				}
			}
		})
	}
}

// checkMissions checks W3's figures.
func checkMissions(t *testing.T, r bench.Result, opts bench.Options, counted bool) {
	t.Helper()
	m := r.Missions
	n := opts.W3Missions
	if m == nil || r.Ingest != nil {
		t.Fatalf("w3 result without its figures: %+v", r)
	}
	switch {
	case m.Missions != n || r.Orchestrations != n || m.Failed != 0 || len(m.Failures) != 0:
		t.Errorf("w3: %d missions (%d orchestrations), %d failed %v; want %d, none failed", m.Missions, r.Orchestrations, m.Failed, m.Failures, n)
	case r.Seconds <= 0 || !near(r.OrchestrationsPerSecond, float64(n)/r.Seconds):
		t.Errorf("w3: %v missions/s over %vs", r.OrchestrationsPerSecond, r.Seconds)
	case r.LatencyMs.N != n || r.LatencyMs.P50 <= 0 || r.LatencyMs.P99 < r.LatencyMs.P50 || r.LatencyMs.P99 > r.Seconds*1000+1:
		t.Errorf("w3: start-to-complete %+v over a %vs window", r.LatencyMs, r.Seconds)
	// Every mission is sampled here, and each moves through five phases on
	// its drone's telemetry: picked up, headed to drop-off, delivered,
	// returning, completed.
	case m.SampledMissions != n || m.TelemetryToStatusMs.N != 5*n || m.TelemetryToStatusUnobserved != 0 ||
		m.TelemetryToStatusMs.P50 <= 0 || m.TelemetryToStatusMs.P99 < m.TelemetryToStatusMs.P50 || m.StatusPollMs <= 0 ||
		m.TelemetryToStatusFromSendMs.N != 5*n || m.TelemetryToStatusFromSendMs.P50 < m.TelemetryToStatusMs.P50:
		t.Errorf("w3: telemetry to status %+v of %d sampled missions, %d unobserved, polled every %vms; want %d samples",
			m.TelemetryToStatusMs, m.SampledMissions, m.TelemetryToStatusUnobserved, m.StatusPollMs, 5*n)
	case m.Frames < 10*n || m.Posts < m.Frames/opts.W3Batch || !near(m.FramesPerSecond, float64(m.Frames)/r.Seconds):
		t.Errorf("w3: %d frames in %d posts, %v frames/s", m.Frames, m.Posts, m.FramesPerSecond)
	case m.Signals < 5*n:
		t.Errorf("w3: %d signals raised to %d missions, want at least one per phase change", m.Signals, n)
	// Accept, reserve, dispatch, pickup, delivery, complete.
	case r.Activities < 6*n || r.ActivityExecutions < r.Activities || r.ActivitiesPerOrchestration != 0:
		t.Errorf("w3: %d activities, %d executions, %d per orchestration", r.Activities, r.ActivityExecutions, r.ActivitiesPerOrchestration)
	case m.FrameIntervalMs != 20 || m.SpeedMps != opts.W3SpeedMps || m.Batch != opts.W3Batch || m.Storage == "":
		t.Errorf("w3 settings: %+v", m)
	}
	if runtime.GOOS == "linux" {
		switch {
		case r.CPUSeconds <= 0 || !near(m.CPUPerMissionMs, r.CPUSeconds*1000/float64(n)):
			t.Errorf("w3: CPU %vs, %vms per mission", r.CPUSeconds, m.CPUPerMissionMs)
		case r.PeakRSSBytes < 1<<20 || m.RSS.EndBytes < 1<<20 || m.RSS.Samples < 2 ||
			m.RSS.SecondHalfMinBytes <= 0 || m.RSS.SecondHalfMaxBytes < m.RSS.SecondHalfMinBytes:
			t.Errorf("w3: peak RSS %d, RSS %+v", r.PeakRSSBytes, m.RSS)
		}
	}
	checkSimRequests(t, r, counted, n, m.Frames)
}

// checkIngest checks W4's figures.
func checkIngest(t *testing.T, r bench.Result, opts bench.Options, counted bool) {
	t.Helper()
	g := r.Ingest
	if g == nil || r.Missions != nil {
		t.Fatalf("w4 result without its figures: %+v", r)
	}
	frames := opts.W4Drones * opts.W4FramesPerDrone
	// 4 bridges of 5 drones each post 25 frames in posts of 7: 4 posts each.
	bridges, posts := opts.Concurrency, opts.Concurrency*4
	switch {
	case g.Drones != opts.W4Drones || g.FramesPerDrone != opts.W4FramesPerDrone || g.Batch != opts.W4Batch || g.Bridges != bridges:
		t.Errorf("w4 settings: %+v", g)
	case g.Frames != frames || g.Posts != posts || g.PostLatencyMs.N != posts:
		t.Errorf("w4: %d frames in %d posts (%d latencies), want %d in %d", g.Frames, g.Posts, g.PostLatencyMs.N, frames, posts)
	case g.Accepted+g.Duplicates < frames || g.Accepted > frames || g.Stale != 0 || g.Rejected != 0 || g.Duplicates > 0 && g.Retries == 0:
		t.Errorf("w4 verdicts: %d accepted, %d duplicates, %d stale, %d rejected, %d retries", g.Accepted, g.Duplicates, g.Stale, g.Rejected, g.Retries)
	case g.VerifiedDrones != opts.W4Drones:
		t.Errorf("w4: %d of %d drones verified", g.VerifiedDrones, opts.W4Drones)
	case r.Seconds <= 0 || !near(g.FramesPerSecond, float64(frames)/r.Seconds) || !near(g.PostsPerSecond, float64(posts)/r.Seconds):
		t.Errorf("w4: %v frames/s, %v posts/s over %vs", g.FramesPerSecond, g.PostsPerSecond, r.Seconds)
	case g.PostLatencyMs.P50 <= 0 || g.PostLatencyMs.P99 < g.PostLatencyMs.P50 || g.PostLatencyMs.P99 > r.Seconds*1000+1:
		t.Errorf("w4: post latency %+v over %vs", g.PostLatencyMs, r.Seconds)
	case r.Orchestrations != 0 || r.LatencyMs.N != 0:
		t.Errorf("w4 ran orchestrations? %d, latency %+v", r.Orchestrations, r.LatencyMs)
	}
	if runtime.GOOS == "linux" && (r.CPUSeconds <= 0 || !near(g.CPUPerFrameUs, r.CPUSeconds*1e6/float64(frames)) || r.PeakRSSBytes < 1<<20) {
		t.Errorf("w4: CPU %vs, %vµs per frame, peak RSS %d", r.CPUSeconds, g.CPUPerFrameUs, r.PeakRSSBytes)
	}
	checkSimRequests(t, r, counted, 0, frames)
}

// checkSimRequests checks the storage requests of W3 (per mission) or W4
// (per frame).
func checkSimRequests(t *testing.T, r bench.Result, counted bool, missions, frames int) {
	t.Helper()
	q := r.Requests
	if !counted {
		if q != nil {
			t.Errorf("%s %s: requests counted on a backend that does not count them: %+v", r.Engine, r.Workload, q)
		}
		return
	}
	if q == nil || q.Total <= 0 || len(q.ByKind) == 0 {
		t.Fatalf("%s %s: no storage requests counted: %+v", r.Engine, r.Workload, q)
	}
	var sum int64
	for kind, k := range q.ByKind {
		sum += k.Count
		if !near(k.PerFrame, float64(k.Count)/float64(frames)) || missions > 0 && !near(k.PerOrchestration, float64(k.Count)/float64(missions)) {
			t.Errorf("%s %s: %s %+v does not match %d frames, %d missions", r.Engine, r.Workload, kind, k, frames, missions)
		}
	}
	if sum != q.Total || !near(q.PerFrame, float64(q.Total)/float64(frames)) || missions > 0 && !near(q.PerOrchestration, float64(q.Total)/float64(missions)) {
		t.Errorf("%s %s: total %d (kinds sum to %d), %v per frame, %v per mission", r.Engine, r.Workload, q.Total, sum, q.PerFrame, q.PerOrchestration)
	}
	// Ingestion reads and writes drone rows.
	if q.ByKind["table.query"].Count+q.ByKind["table.get"].Count == 0 && len(q.ByKind) < 2 {
		t.Errorf("%s %s: requests %+v", r.Engine, r.Workload, q.ByKind)
	}
}

// The baselines cannot fly missions: asked for W3 and W4 only, they are not
// even opened, and a note says so. An engine opened for W3 and W4 only has
// no task-hub worker of its own and refuses W1.
func TestSimulatedWorkloadsNeedDronehub(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	opts := tinySim(t, bench.DtgoSQLiteMemory)
	opts.Engines = []string{bench.DtgoSQLiteMemory, bench.DtgoSQLiteFile}
	rep, err := bench.Run(ctx, opts)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if len(rep.Results) != 0 || len(rep.Engines) != 0 || len(rep.Notes) != 1 ||
		!strings.Contains(rep.Notes[0], "w3, w4 did not run on dtgo-sqlite-memory, dtgo-sqlite-file") {
		t.Errorf("results %+v, engines %+v, notes %q: want none run and one note", rep.Results, rep.Engines, rep.Notes)
	}
	if _, err := bench.OpenEngine(ctx, bench.DtgoSQLiteMemory, opts); err == nil || !strings.Contains(err.Error(), "dronehub engine") {
		t.Errorf("opening a baseline for w3 and w4 only: %v, want a refusal", err)
	}
	e, err := bench.OpenEngine(ctx, bench.DronehubSQLite, tinySim(t, bench.DronehubSQLite))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer e.Close(ctx)
	if r, err := e.Run(ctx, bench.W1); err == nil || r != nil || !strings.Contains(err.Error(), "opened for w3 and w4 only") {
		t.Errorf("W1 on an engine opened for w3 and w4: %+v, %v", r, err)
	}
}

// checkCeiling checks the ceiling's figures, and that its scratch queue and
// table are gone.
func checkCeiling(t *testing.T, r bench.Result, ops, concurrency int) {
	t.Helper()
	c := r.Ceiling
	if c == nil || r.Engine != bench.DronehubAzure || r.Workload != bench.Ceiling || r.Simulated() || r.TaskHub() {
		t.Fatalf("ceiling result %+v", r)
	}
	if c.OpsPerKind != ops || c.Concurrency != concurrency || r.Concurrency != concurrency {
		t.Errorf("ceiling: %d ops per kind at concurrency %d, want %d at %d", c.OpsPerKind, c.Concurrency, ops, concurrency)
	}
	var seconds float64
	var requests int
	for name, k := range map[string]bench.CeilingKind{"enqueue": c.Enqueue, "dequeue+delete": c.DequeueDelete, "point read": c.PointRead, "batch": c.Batch} {
		seconds += k.Seconds
		requests += k.Requests
		perOp := 1
		if name == "dequeue+delete" {
			perOp = 2
		}
		switch {
		case k.Ops != ops || k.Requests != perOp*ops+k.Empty:
			t.Errorf("ceiling %s: %d ops, %d requests (%d empty dequeues), want %d ops of %d requests", name, k.Ops, k.Requests, k.Empty, ops, perOp)
		case k.Seconds <= 0 || k.PerSecond <= 0 || !near(k.PerSecond, float64(ops)/k.Seconds):
			t.Errorf("ceiling %s: %v/s over %vs, want positive and %d over the window", name, k.PerSecond, k.Seconds, ops)
		case k.LatencyMs.N != ops || k.LatencyMs.P50 <= 0 || k.LatencyMs.P99 < k.LatencyMs.P50:
			t.Errorf("ceiling %s: latency %+v", name, k.LatencyMs)
		}
	}
	if !near(r.Seconds, seconds) || !near(c.RequestsPerSecond, float64(requests)/seconds) {
		t.Errorf("ceiling: %vs, %v requests/s; want the kinds' %vs and %d requests over them", r.Seconds, c.RequestsPerSecond, seconds, requests)
	}

	// The scratch queue and table were deleted.
	name, _, ok := strings.Cut(strings.TrimPrefix(c.Storage, "queue and table "), " ")
	if !ok || !strings.HasPrefix(name, "benchceil") {
		t.Fatalf("ceiling storage %q names no scratch queue and table", c.Storage)
	}
	srv := azr.Get(t)
	qk, err := azqueue.NewSharedKeyCredential(azurite.AccountName, azurite.AccountKey)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := azqueue.NewServiceClientWithSharedKeyCredential(srv.QueueEndpoint()+"/", qk, nil)
	if err != nil {
		t.Fatal(err)
	}
	tk, err := aztables.NewSharedKeyCredential(azurite.AccountName, azurite.AccountKey)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := aztables.NewServiceClientWithSharedKey(srv.TableEndpoint(), tk, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	var re *azcore.ResponseError
	if _, err := qs.NewQueueClient(name).GetProperties(ctx, nil); !errors.As(err, &re) || re.StatusCode != 404 {
		t.Errorf("the scratch queue %s: %v, want 404", name, err)
	}
	if _, err := ts.NewClient(name).GetEntity(ctx, "p000000", "r00", nil); !errors.As(err, &re) || re.StatusCode != 404 {
		t.Errorf("the scratch table %s: %v, want 404", name, err)
	}
}

// W1 and W2 repeated twice on both dronehub engines, with the ceiling on
// dronehub-azure (dronehub-sqlite skips it with a note): the median runs,
// their repetitions, the ceiling, and the azure runs' share of it.
func TestRepeatAndCeiling(t *testing.T) {
	t.Parallel()
	opts := tiny(t, bench.DronehubSQLite, bench.DronehubAzure)
	opts.AzureConnectionString = azr.Get(t).ConnectionString()
	opts.Workloads = []string{bench.W1, bench.W2, bench.Ceiling}
	opts.Repeat = 2
	opts.Concurrency = 4
	var final []bench.Progress
	opts.Progress = func(p bench.Progress) {
		if p.Result != nil {
			final = append(final, p)
		}
		if p.Runs != 0 && (p.Runs != 2 || p.Run < 1 || p.Run > 2 || (p.Workload != bench.W1 && p.Workload != bench.W2)) {
			t.Errorf("progress %+v: run %d of %d", p, p.Run, p.Runs)
		}
	}
	rep, err := bench.Run(testContext(t), opts)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if s := rep.Settings; s.Repeat != 2 || s.CeilingOps != 20 {
		t.Errorf("settings %+v: want repeat 2, 20 ceiling ops", s)
	}
	if len(rep.Results) != 5 || len(final) != 5 {
		t.Fatalf("%d results (%d reported by Progress): want w1 and w2 on both engines, and the ceiling: %+v", len(rep.Results), len(final), rep.Results)
	}
	if !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.Contains(n, "ceiling did not run on dronehub-sqlite") }) {
		t.Errorf("no note that dronehub-sqlite skipped the ceiling: %q", rep.Notes)
	}
	var ceiling *bench.CeilingFigures
	for _, r := range rep.Results {
		if r.Ceiling != nil {
			checkCeiling(t, r, 20, 4)
			ceiling = r.Ceiling
		}
	}
	if ceiling == nil {
		t.Fatal("no ceiling")
	}
	if p := final[len(final)-1]; p.Workload != bench.Ceiling || p.Unit != "operations" || p.Done != 80 || p.Total != 80 {
		t.Errorf("the ceiling's final progress %+v: want 80 of 80 operations", p)
	}
	for _, r := range rep.Results {
		if r.Ceiling != nil {
			continue
		}
		p := r.Repetitions
		if p == nil || len(p.Seconds) != 2 || len(p.ActivityExecutions) != 2 || p.Median < 1 || p.Median > 2 {
			t.Errorf("%s %s: repetitions %+v, want 2", r.Engine, r.Workload, p)
			continue
		}
		once := p.ActivityExecutions[0] == r.Activities && p.ActivityExecutions[1] == r.Activities
		switch {
		case p.Seconds[p.Median-1] != r.Seconds || p.ActivityExecutions[p.Median-1] != r.ActivityExecutions:
			t.Errorf("%s %s: the result (%vs) is not the median run's %+v", r.Engine, r.Workload, r.Seconds, p)
		case p.Seconds[0] <= 0 || p.Seconds[1] <= 0 || p.SlowestToMedian < 1 || !near(p.SlowestToMedian, slices.Max(p.Seconds)/r.Seconds):
			t.Errorf("%s %s: runs %v, slowest %v× the median", r.Engine, r.Workload, p.Seconds, p.SlowestToMedian)
		case p.ExactlyOnce != once:
			t.Errorf("%s %s: exactly once %v with executions %v of %d activities", r.Engine, r.Workload, p.ExactlyOnce, p.ActivityExecutions, r.Activities)
		}
		if r.Engine == bench.DronehubSQLite {
			if r.RequestsPerSecondOfCeiling != 0 {
				t.Errorf("%s %s: %v of the ceiling", r.Engine, r.Workload, r.RequestsPerSecondOfCeiling)
			}
			continue
		}
		checkRequests(t, r)
		if q := r.Requests; q == nil || !near(q.PerSecond, float64(q.Total)/r.Seconds) ||
			r.RequestsPerSecondOfCeiling <= 0 || !near(r.RequestsPerSecondOfCeiling, q.PerSecond/ceiling.RequestsPerSecond) {
			t.Errorf("%s %s: requests %+v, %v of the ceiling's %v requests/s", r.Engine, r.Workload, q, r.RequestsPerSecondOfCeiling, ceiling.RequestsPerSecond)
		}
	}

	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatalf("write table: %v", err)
	}
	for _, want := range []string{"w1 and w2 run 2 times each", "repetitions: dronehub-sqlite w1: 2 runs", "repetitions: dronehub-azure w2: 2 runs",
		"× the median", "azure ceiling (raw SDK, concurrency 4): enqueue ", "dequeue+delete ", "point read ", "batch of 10 ",
		"20 operations of each kind", "dronehub-azure w1: the worker made"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("the table does not show %q:\n%s", want, table.String())
		}
	}
	if strings.Contains(table.String(), "ceiling   ") {
		t.Errorf("the ceiling has a row in the task-hub table:\n%s", table.String())
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	for _, key := range []string{`"repetitions":{"seconds":[`, `"slowestToMedian":`, `"exactlyOnce":`, `"ceiling":{`, `"dequeueDelete":`, `"requestsPerSecondOfCeiling":`} {
		if !bytes.Contains(b, []byte(key)) {
			t.Errorf("the JSON has no %s:\n%s", key, b)
		}
	}
}

// Repeat and CeilingOps are checked, and the ceiling runs on dronehub-azure
// only.
func TestRepeatAndCeilingOptions(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	for _, tc := range []struct {
		opts bench.Options
		want string
	}{
		{bench.Options{Repeat: -1}, "Options.Repeat is -1; want 1-100"},
		{bench.Options{Repeat: 101}, "Options.Repeat is 101; want 1-100"},
		{bench.Options{CeilingOps: -1}, "Options.CeilingOps is -1; want 1-100000"},
		{bench.Options{CeilingOps: 100_001}, "Options.CeilingOps is 100001; want 1-100000"},
	} {
		tc.opts.Engines = []string{bench.DtgoSQLiteMemory}
		if rep, err := bench.Run(ctx, tc.opts); err == nil || rep != nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%+v): %v, want %q", tc.opts, err, tc.want)
		}
	}
	if _, err := bench.OpenEngine(ctx, bench.DtgoSQLiteMemory, bench.Options{Workloads: []string{bench.Ceiling}}); err == nil ||
		!strings.Contains(err.Error(), "ceiling runs on dronehub-azure only") {
		t.Errorf("opening a baseline for the ceiling only: %v, want a refusal", err)
	}
	e, err := bench.OpenEngine(ctx, bench.DronehubSQLite, tiny(t))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer e.Close(ctx)
	if r, err := e.Run(ctx, bench.Ceiling); err == nil || r != nil || !strings.Contains(err.Error(), "ceiling runs on dronehub-azure only") {
		t.Errorf("the ceiling on dronehub-sqlite: %+v, %v", r, err)
	}
}
