package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/bench"
)

func TestBenchRejectsBadFlagsNamingThem(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"unknown engine", []string{"--engines", "dronehub-sqlite,postgres"}, 1, []string{"--engines", `"postgres"`, "dtgo-sqlite-memory"}},
		{"engine twice", []string{"--engines", "dtgo-sqlite-file,dtgo-sqlite-file"}, 1, []string{"--engines", "twice"}},
		{"unknown workload", []string{"--workloads", "w1,w5"}, 1, []string{"--workloads", `"w5"`, "w1, w2, solo, w3, w4"}},
		{"no workload", []string{"--workloads", ","}, 1, []string{"--workloads is empty"}},
		{"zero orchestrations", []string{"--w1-orchestrations", "0"}, 1, []string{"--w1-orchestrations 0", "1-100000"}},
		{"negative w2", []string{"--w2-orchestrations", "-3"}, 1, []string{"--w2-orchestrations -3"}},
		{"fan-out too wide", []string{"--w2-fanout", "5000"}, 1, []string{"--w2-fanout 5000", "1-1000"}},
		{"no solo runs", []string{"--solo-runs", "0"}, 1, []string{"--solo-runs 0"}},
		{"no concurrency", []string{"--concurrency", "0"}, 1, []string{"--concurrency 0", "1-1024"}},
		{"no repetition", []string{"--repeat", "0"}, 1, []string{"--repeat 0", "1-100"}},
		{"too many repetitions", []string{"--repeat", "101"}, 1, []string{"--repeat 101", "1-100"}},
		{"no ceiling ops", []string{"--ceiling-ops", "0"}, 1, []string{"--ceiling-ops 0", "1-100000"}},
		{"too many ceiling ops", []string{"--ceiling-ops", "100001"}, 1, []string{"--ceiling-ops 100001", "1-100000"}},
		{"repeat not a number", []string{"--repeat", "twice"}, 2, []string{"repeat"}},
		{"zero timeout", []string{"--timeout", "0s"}, 1, []string{"--timeout 0s", "positive"}},
		{"no missions", []string{"--w3-missions", "0"}, 1, []string{"--w3-missions 0", "1-100000"}},
		{"batch too big", []string{"--w3-batch", "1001"}, 1, []string{"--w3-batch 1001", "1-1000"}},
		{"frame interval too short", []string{"--w3-frame-interval", "100us"}, 1, []string{"--w3-frame-interval 100µs", "1ms-1m"}},
		{"speed zero", []string{"--w3-speed", "0"}, 1, []string{"--w3-speed 0", "1-10000 m/s"}},
		{"speed NaN", []string{"--w3-speed", "NaN"}, 1, []string{"--w3-speed NaN"}},
		{"no drones", []string{"--w4-drones", "0"}, 1, []string{"--w4-drones 0"}},
		{"no frames", []string{"--w4-frames-per-drone", "-1"}, 1, []string{"--w4-frames-per-drone -1"}},
		{"w4 batch zero", []string{"--w4-batch", "0"}, 1, []string{"--w4-batch 0", "1-1000"}},
		{"several at once", []string{"--w1-orchestrations", "0", "--concurrency", "0"}, 1, []string{"--w1-orchestrations", "--concurrency"}},
		{"bad log level", []string{"--log-level", "loud", "--engines", "dtgo-sqlite-memory"}, 1, []string{"--log-level"}},
		{"json in a missing directory", []string{"--json", "/no/such/dir/bench.json"}, 1, []string{"--json", "/no/such/dir"}},
		{"stray argument", []string{"now"}, 1, []string{`unexpected argument "now"`}},
		{"azure not azure", []string{"--azure", "/tmp/secret.db"}, 1, []string{"--azure", benchAzureEnv, "not an Azure Storage"}},
		{"not a number", []string{"--solo-runs", "many"}, 2, []string{"solo-runs"}},
		{"unknown flag", []string{"--missions", "3"}, 2, []string{"missions"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := run(t, nil, append([]string{"bench"}, tc.args...)...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", code, tc.code, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q does not mention %q", errOut, w)
				}
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
}

func TestBenchHelpListsEveryFlag(t *testing.T) {
	t.Parallel()
	code, _, errOut := run(t, nil, "bench", "-h")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, f := range []string{"--w1-orchestrations", "--w2-orchestrations", "--w2-fanout", "--solo-runs", "--concurrency",
		"--engines", "--workloads", "--azure", "--json", "--timeout", benchAzureEnv,
		"--w3-missions", "--w3-frame-interval", "--w3-speed", "--w3-batch", "--w4-drones", "--w4-frames-per-drone", "--w4-batch",
		"--workloads w3,w4", "--repeat", "--ceiling-ops", "ceiling", "solo, w3, w4 and ceiling run once"} {
		if !strings.Contains(errOut, strings.TrimPrefix(f, "-")) {
			t.Errorf("help does not mention %s:\n%s", f, errOut)
		}
	}
	if code, out, _ := run(t, nil, "help"); code != 0 || !strings.Contains(out, "dronehub bench") {
		t.Errorf("dronehub help does not list bench: %q", out)
	}
}

// An explicit dronehub-azure with neither --azure nor an installed Azurite
// is refused before anything runs. (Not parallel: it changes directory.)
func TestBenchAzureNeedsStorage(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	code, _, errOut := run(t, nil, "bench", "--engines", "dronehub-azure", "--w1-orchestrations", "1")
	if code != 1 || !strings.Contains(errOut, "--azure") || !strings.Contains(errOut, benchAzureEnv) || !strings.Contains(errOut, "npm ci") {
		t.Errorf("exit %d, stderr %q: want a refusal naming --azure, %s and npm ci", code, errOut, benchAzureEnv)
	}
}

func TestBenchProgressOnTerminalIsOneLine(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	p := &benchProgress{w: &buf, tty: true, line: newStatusLine(&buf)}
	p.update(bench.Progress{Engine: bench.DronehubSQLite})
	time.Sleep(110 * time.Millisecond)
	p.update(bench.Progress{Engine: bench.DronehubSQLite, Workload: bench.W1, Done: 3, Total: 10, Elapsed: time.Second})
	p.clear()
	s := buf.String()
	if strings.Contains(s, "\n") || strings.Count(s, "\r\033[K") != 3 || !strings.Contains(s, "w1 3/10 orchestrations") {
		t.Errorf("terminal progress %q: want one line rewritten in place, then erased", s)
	}
	buf.Reset()
	p = &benchProgress{w: &buf, line: newStatusLine(&buf)}
	p.update(bench.Progress{Engine: bench.DronehubSQLite, Workload: bench.W1, Done: 3, Total: 10})
	p.update(bench.Progress{Engine: bench.DronehubSQLite, Workload: bench.W1, Done: 10, Total: 10,
		Result: &bench.Result{Engine: bench.DronehubSQLite, Workload: bench.W1, Orchestrations: 10, ActivitiesPerOrchestration: 5, Seconds: 0.25, ActivitiesPerSecond: 200}})
	p.clear()
	if s := buf.String(); s != "dronehub-sqlite w1: 10×5 in 250ms, p50 0.0ms, 200 activities/s\n" {
		t.Errorf("non-terminal progress %q: want one line for the finished workload", s)
	}
}

// W3 and W4 from the command line, tiny, on the embedded engine: one line
// per workload on stderr, their tables on stdout, the baseline skipped
// with a note.
func TestBenchSimulatedWorkloads(t *testing.T) {
	t.Parallel()
	jsonPath := filepath.Join(t.TempDir(), "bench.json")
	code, out, errOut := run(t, nil, "bench", "--engines", "dronehub-sqlite,dtgo-sqlite-memory", "--workloads", "w4,w3",
		"--w3-missions", "2", "--w3-frame-interval", "20ms", "--w3-speed", "600", "--w3-batch", "1",
		"--w4-drones", "6", "--w4-frames-per-drone", "3", "--w4-batch", "4", "--concurrency", "4", "--json", jsonPath)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{"dronehub-sqlite w4: 18 frames in", "6/6 drones checked", "dronehub-sqlite w3: 2 missions in", "0 failed"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr does not say %q:\n%s", want, errOut)
		}
	}
	for _, want := range []string{"MISSIONS/S", "FRAMES/S", "6/6 drones", "Note: w4, w3 did not run on dtgo-sqlite-memory"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout does not show %q:\n%s", want, out)
		}
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatalf("--json: %v", err)
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("--json does not parse: %v", err)
	}
	if len(rep.Results) != 2 || rep.Results[0].Ingest == nil || rep.Results[1].Missions == nil ||
		rep.Results[1].Missions.Failed != 0 || rep.Flags["w3-speed"] != "600" || rep.Settings.W4Batch != 4 {
		t.Errorf("JSON results %+v, flags %v, settings %+v", rep.Results, rep.Flags, rep.Settings)
	}
}

// The flags become the bench's options: --repeat and --ceiling-ops as
// given; without --workloads, the bench's default (the ceiling on
// dronehub-azure only), with it exactly the workloads named.
func TestBenchFlagsToOptions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args       []string
		repeat     int
		ceilingOps int
		workloads  []string
	}{
		{nil, 1, 2000, nil},
		{[]string{"--repeat", "3", "--ceiling-ops", "20"}, 3, 20, nil},
		{[]string{"--workloads", "w1,ceiling", "--repeat", "100"}, 100, 2000, []string{bench.W1, bench.Ceiling}},
		{[]string{"--workloads", "w1,w2,solo,ceiling"}, 1, 2000, []string{bench.W1, bench.W2, bench.SoloW1, bench.SoloW2, bench.Ceiling}},
	} {
		var errOut bytes.Buffer
		a := &App{Stdout: &bytes.Buffer{}, Stderr: &errOut, Env: func(string) string { return "" }}
		f, _, err := a.parseBenchFlags(tc.args)
		if err != nil {
			t.Errorf("%v: %v\n%s", tc.args, err, errOut.String())
			continue
		}
		opts, err := f.options()
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if opts.Repeat != tc.repeat || opts.CeilingOps != tc.ceilingOps || !slices.Equal(opts.Workloads, tc.workloads) {
			t.Errorf("%v: repeat %d, ceiling ops %d, workloads %q; want %d, %d, %q",
				tc.args, opts.Repeat, opts.CeilingOps, opts.Workloads, tc.repeat, tc.ceilingOps, tc.workloads)
		}
	}
}

func TestBenchProgressShowsRepetitionsAndCeiling(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	p := &benchProgress{w: &buf, tty: true, line: newStatusLine(&buf)}
	p.update(bench.Progress{Engine: bench.DronehubAzure, Workload: bench.W1, Done: 3, Total: 10, Run: 2, Runs: 3})
	if !strings.Contains(buf.String(), "w1 run 2/3 3/10 orchestrations") {
		t.Errorf("terminal progress %q does not show the run", buf.String())
	}
	buf.Reset()
	p = &benchProgress{w: &buf, line: newStatusLine(&buf)}
	p.update(bench.Progress{Engine: bench.DronehubAzure, Workload: bench.W1, Result: &bench.Result{
		Engine: bench.DronehubAzure, Workload: bench.W1, Orchestrations: 10, ActivitiesPerOrchestration: 5, Seconds: 0.25, ActivitiesPerSecond: 200,
		Repetitions: &bench.Repetitions{Seconds: []float64{0.3, 0.25, 0.2}, Median: 2, SlowestToMedian: 1.2},
	}})
	p.update(bench.Progress{Engine: bench.DronehubAzure, Workload: bench.Ceiling, Result: &bench.Result{
		Engine: bench.DronehubAzure, Workload: bench.Ceiling, Seconds: 2,
		Ceiling: &bench.CeilingFigures{OpsPerKind: 20, Enqueue: bench.CeilingKind{PerSecond: 100}, DequeueDelete: bench.CeilingKind{PerSecond: 50},
			PointRead: bench.CeilingKind{PerSecond: 300}, Batch: bench.CeilingKind{PerSecond: 40}},
	}})
	want := "dronehub-azure w1: 10×5 in 250ms, p50 0.0ms, 200 activities/s (median of 3 runs, 200ms–300ms, slowest 1.20× the median)\n" +
		"dronehub-azure ceiling: 20 operations of each kind in 2s: enqueue 100/s, dequeue+delete 50/s, point read 300/s, batch of 10 40/s\n"
	if buf.String() != want {
		t.Errorf("non-terminal progress\n%q, want\n%q", buf.String(), want)
	}
}
