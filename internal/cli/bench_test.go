package cli

import (
	"bytes"
	"os"
	"path/filepath"
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
		{"unknown workload", []string{"--workloads", "w1,w3"}, 1, []string{"--workloads", `"w3"`, "w1, w2, solo"}},
		{"no workload", []string{"--workloads", ","}, 1, []string{"--workloads is empty"}},
		{"zero orchestrations", []string{"--w1-orchestrations", "0"}, 1, []string{"--w1-orchestrations 0", "1-100000"}},
		{"negative w2", []string{"--w2-orchestrations", "-3"}, 1, []string{"--w2-orchestrations -3"}},
		{"fan-out too wide", []string{"--w2-fanout", "5000"}, 1, []string{"--w2-fanout 5000", "1-1000"}},
		{"no solo runs", []string{"--solo-runs", "0"}, 1, []string{"--solo-runs 0"}},
		{"no concurrency", []string{"--concurrency", "0"}, 1, []string{"--concurrency 0", "1-1024"}},
		{"zero timeout", []string{"--timeout", "0s"}, 1, []string{"--timeout 0s", "positive"}},
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
		"--engines", "--workloads", "--azure", "--json", "--timeout", benchAzureEnv} {
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
	p := &benchProgress{w: &buf, tty: true}
	p.update(bench.Progress{Engine: bench.DronehubSQLite})
	time.Sleep(110 * time.Millisecond)
	p.update(bench.Progress{Engine: bench.DronehubSQLite, Workload: bench.W1, Done: 3, Total: 10, Elapsed: time.Second})
	p.clear()
	s := buf.String()
	if strings.Contains(s, "\n") || strings.Count(s, "\r\033[K") != 3 || !strings.Contains(s, "w1 3/10 orchestrations") {
		t.Errorf("terminal progress %q: want one line rewritten in place, then erased", s)
	}
	buf.Reset()
	p = &benchProgress{w: &buf}
	p.update(bench.Progress{Engine: bench.DronehubSQLite, Workload: bench.W1, Done: 3, Total: 10})
	p.update(bench.Progress{Engine: bench.DronehubSQLite, Workload: bench.W1, Done: 10, Total: 10,
		Result: &bench.Result{Engine: bench.DronehubSQLite, Workload: bench.W1, Orchestrations: 10, ActivitiesPerOrchestration: 5, Seconds: 0.25, ActivitiesPerSecond: 200}})
	p.clear()
	if s := buf.String(); s != "dronehub-sqlite w1: 10×5 in 250ms, p50 0.0ms, 200 activities/s\n" {
		t.Errorf("non-terminal progress %q: want one line for the finished workload", s)
	}
}
