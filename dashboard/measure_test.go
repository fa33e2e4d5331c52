package dashboard_test

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/internal/azurite"
	"github.com/dronehub/dronehub/internal/testkit"
)

// envMeasure turns on TestMeasureDashboardLoad; envWindow sets its window
// (default 30s).
const (
	envMeasure = "DRONEHUB_MEASURE_DASHBOARD"
	envWindow  = "DRONEHUB_MEASURE_WINDOW"
)

// TestMeasureDashboardLoad measures what fifty open dashboards cost a
// worker: a `dronehub worker` process, on SQLite and on Azure Storage
// (Azurite), is watched for one window with no dashboard open and one with
// fifty live feeds (all topics), each window with three missions waiting
// for their drones. It reports the worker's CPU time and, on Azure
// Storage, its storage requests (from /metrics). It takes a few minutes,
// so it runs only with DRONEHUB_MEASURE_DASHBOARD=1; docs/dashboard.md
// records its figures. (TestFeedCostDoesNotGrowWithClients and
// TestFeedStorageRequestsOnAzure check the cost model on every run.)
func TestMeasureDashboardLoad(t *testing.T) {
	if os.Getenv(envMeasure) == "" {
		t.Skipf("set %s=1 to measure the dashboard's load (takes minutes)", envMeasure)
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads the worker's CPU time from /proc")
	}
	window := 30 * time.Second
	if s := os.Getenv(envWindow); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		window = d
	}
	bin := filepath.Join(t.TempDir(), "dronehub")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/dronehub").CombinedOutput(); err != nil {
		t.Fatalf("build dronehub: %v\n%s", err, out)
	}
	backends := []struct{ name, storage string }{
		{"sqlite", filepath.Join(t.TempDir(), "hub.db")},
		{"azurestorage", azurite.Start(t, azurite.Options{}).ConnectionString()},
	}
	var report strings.Builder
	fmt.Fprintf(&report, "window %s, 3 missions waiting for telemetry, %d CPUs (%s); storage requests by kind per second at the end\n", window, runtime.NumCPU(), runtime.GOARCH)
	fmt.Fprintf(&report, "%-13s %-13s %12s %16s %14s\n", "backend", "dashboards", "worker CPU", "storage req/s", "bytes/feed")
	for _, be := range backends {
		base, pid := startWorkerProcess(t, bin, be.storage)
		c, err := client.Dial(base, client.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			m, err := c.StartMission(context.Background(), testkit.Request(fmt.Sprintf("load-%d", i)))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.WaitPhase(context.Background(), "HeadedToPickup"); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range []int{0, 1, 50, 0} {
			feeds := make([]*feedClient, n)
			for i := range feeds {
				feeds[i] = openFeed(t, base, "", "")
			}
			for _, f := range feeds {
				f.next(t, 30*time.Second)
			}
			cpu0, req0, kinds0 := cpuTime(t, pid), storageRequests(t, base), requestKinds(t, base)
			start := time.Now()
			<-time.After(window) // the measurement window itself
			elapsed := time.Since(start)
			cpu1, req1, kinds1 := cpuTime(t, pid), storageRequests(t, base), requestKinds(t, base)
			var bytes int64
			for _, f := range feeds {
				bytes += f.bytes.Load()
				f.close()
			}
			perFeed := "-"
			if n > 0 {
				perFeed = strconv.FormatInt(bytes/int64(n), 10)
			}
			reqs := "not counted"
			if req0 >= 0 {
				reqs = fmt.Sprintf("%.2f", float64(req1-req0)/elapsed.Seconds())
			}
			fmt.Fprintf(&report, "%-13s %-13d %11.2f%% %16s %14s  %s\n", be.name, n, 100*(cpu1-cpu0).Seconds()/elapsed.Seconds(), reqs, perFeed, kindRates(kinds0, kinds1, elapsed))
		}
	}
	t.Logf("dashboard load:\n%s", report.String())
}

// startWorkerProcess runs `dronehub worker` on storage and returns its
// URL and process id; it is stopped when the test ends.
func startWorkerProcess(t *testing.T, bin, storage string) (string, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	// A long watchdog: the missions wait for their drones through every
	// window instead of failing as "drone lost" halfway.
	cmd := exec.Command(bin, "worker", "--listen", addr, "--storage", storage, "--hub", testkit.HubName(), "--seed-drones", "3",
		"--watchdog", "1h", "--log-level", "warn")
	cmd.Dir = dir
	logf, err := os.Create(filepath.Join(dir, "worker.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		logf.Close()
	})
	base := "http://" + addr
	testkit.Eventually(t, 60*time.Second, "the worker to be ready", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return base, cmd.Process.Pid
}

// cpuTime is the process's user and system CPU time, from /proc.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticksPerSecond
}

// requestKinds reads dronehub_storage_requests_total by kind.
func requestKinds(t *testing.T, base string) map[string]int64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		labels, value, ok := strings.Cut(strings.TrimPrefix(line, "dronehub_storage_requests_total{"), "} ")
		if !ok || !strings.HasPrefix(line, "dronehub_storage_requests_total{") {
			continue
		}
		_, kind, _ := strings.Cut(labels, `kind="`)
		kind, _, _ = strings.Cut(kind, `"`)
		n, err := strconv.ParseInt(value, 10, 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[kind] += n
	}
	return out
}

// kindRates formats the requests per second by kind between two readings.
func kindRates(a, b map[string]int64, d time.Duration) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(b)) {
		if n := b[k] - a[k]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %.2f", k, float64(n)/d.Seconds()))
		}
	}
	return strings.Join(parts, ", ")
}

// storageRequests sums dronehub_storage_requests_total from /metrics; -1
// when the backend does not count them.
func storageRequests(t *testing.T, base string) int64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	total, seen := int64(0), false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "dronehub_storage_requests_total{") {
			continue
		}
		seen = true
		n, err := strconv.ParseInt(line[strings.LastIndexByte(line, ' ')+1:], 10, 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		total += n
	}
	if !seen {
		return -1
	}
	return total
}
