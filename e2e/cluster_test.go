package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dronehub/dronehub/internal/testkit/artifacts"
)

// Worker settings every test uses: short enough that a killed worker's work
// moves on within a minute, long enough that a 10 s storage outage does not
// declare drones lost.
const (
	watchdog    = 20 * time.Second
	lockTimeout = 20 * time.Second
	readyWithin = 60 * time.Second
)

// worker is one `dronehub worker` process.
type worker struct {
	name    string
	url     string // http://127.0.0.1:PORT
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error // set before exited is closed
	killed  atomic.Bool
}

// alive reports whether the process is still running.
func (w *worker) alive() bool {
	select {
	case <-w.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL (kill -9) and waits for the process to be gone.
func (w *worker) kill() {
	w.killed.Store(true)
	_ = w.cmd.Process.Signal(syscall.SIGKILL)
	<-w.exited
}

// logTail returns the last n lines of the worker's log.
func (w *worker) logTail(n int) string {
	b, err := os.ReadFile(w.logPath)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", w.logPath, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logStats counts the worker's JSON log lines by level and the mission
// side effects it recorded (one "mission effect" line per effect, logged by
// whichever worker ran the activity that recorded it first).
func (w *worker) logStats() (levels map[string]int, effects int) {
	levels = map[string]int{}
	f, err := os.Open(w.logPath)
	if err != nil {
		return levels, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var line struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			levels["non-json"]++
			continue
		}
		levels[line.Level]++
		if line.Msg == "mission effect" {
			effects++
		}
	}
	return levels, effects
}

// cluster is a set of workers on one task hub, and an HTTP client that
// spreads requests over the live ones.
type cluster struct {
	t       *testing.T
	storage string
	hub     string
	logDir  string
	client  *http.Client
	// args are more `dronehub worker` flags, added after the ones every
	// worker gets (a later flag wins).
	args []string

	mu   sync.Mutex
	all  []*worker
	live []*worker
	rr   atomic.Uint64
}

// newCluster prepares a cluster on a fresh hub of the given storage.
func newCluster(t *testing.T, storage, hubPrefix string) *cluster {
	t.Helper()
	c := &cluster{
		t:       t,
		storage: storage,
		hub:     hubPrefix + randomHex(4),
		logDir:  logDir(t),
		client: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
				MaxIdleConns:        256,
				MaxIdleConnsPerHost: 64,
				IdleConnTimeout:     30 * time.Second,
			},
		},
	}
	t.Cleanup(c.client.CloseIdleConnections)
	// After the workers' own cleanups (registered later, run earlier)
	// have stopped them, and before logDir's removal: a failed test's
	// logs are copied where they survive it.
	artifacts.KeepOnFailure(t, c.logFiles)
	t.Logf("task hub %s, worker logs in %s (kept in %s/… if the test fails)", c.hub, c.logDir, artifactsBase())
	return c
}

// artifactsBase is where failed tests' logs are kept (see
// internal/testkit/artifacts).
func artifactsBase() string {
	if d := os.Getenv(artifacts.Env); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "dronehub-test-artifacts")
}

func logDir(t *testing.T) string {
	if os.Getenv("DRONEHUB_E2E_KEEP") != "" {
		dir, err := os.MkdirTemp("", "dronehub-e2e-"+t.Name()+"-")
		if err == nil {
			return dir
		}
	}
	return t.TempDir()
}

// logLevel is the workers' log level: info, or DRONEHUB_E2E_LOG_LEVEL.
func logLevel() string {
	if l := os.Getenv("DRONEHUB_E2E_LOG_LEVEL"); l != "" {
		return l
	}
	return "info"
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// start launches a worker, waits until it is ready and kills it when the
// test ends. seed is --seed-drones (0 for none).
func (c *cluster) start(name string, seed int) *worker {
	t := c.t
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		w, err := c.launch(name, seed)
		if err != nil {
			lastErr = err
			if w != nil && strings.Contains(w.logTail(20), "address already in use") {
				continue // lost a race for the free port: pick another
			}
			if w != nil {
				t.Fatalf("%s: %v\n--- log tail (%s) ---\n%s", name, err, w.logPath, w.logTail(60))
			}
			t.Fatalf("%s: %v", name, err)
		}
		c.mu.Lock()
		c.all = append(c.all, w)
		c.live = append(c.live, w)
		c.mu.Unlock()
		return w
	}
	t.Fatalf("%s: %v", name, lastErr)
	return nil
}

func (c *cluster) launch(name string, seed int) (*worker, error) {
	t := c.t
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	logPath := filepath.Join(c.logDir, fmt.Sprintf("%s-%d.log", name, port))
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(dronehubBin, "worker",
		"--listen", addr,
		"--storage", c.storage,
		"--hub", c.hub,
		"--seed-drones", strconv.Itoa(seed),
		"--watchdog", watchdog.String(),
		"--lock-timeout", lockTimeout.String(),
		"--log-format", "json",
		"--log-level", logLevel(),
	)
	cmd.Args = append(cmd.Args, c.args...)
	// Only what a worker needs from the environment: no DRONEHUB_* twin of
	// a flag may change what the test set.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", dronehubBin, err)
	}
	w := &worker{name: name, url: "http://" + addr, logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		w.waitErr = cmd.Wait()
		logFile.Close()
		close(w.exited)
	}()
	t.Cleanup(func() {
		if w.alive() {
			w.kill()
		}
		if t.Failed() {
			t.Logf("--- %s (%s) log tail, %s ---\n%s", w.name, w.url, w.logPath, w.logTail(40))
		}
	})

	start := time.Now()
	if err := c.waitReady(w, readyWithin); err != nil {
		return w, err
	}
	t.Logf("%s ready at %s after %s (pid %d)", name, w.url, time.Since(start).Round(time.Millisecond), cmd.Process.Pid)
	return w, nil
}

// waitReady polls the worker's /readyz until it answers 200.
func (c *cluster) waitReady(w *worker, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last string
	for {
		select {
		case <-w.exited:
			return fmt.Errorf("exited before it was ready: %v", w.waitErr)
		default:
		}
		resp, err := c.client.Get(w.url + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %s; last /readyz: %s", within, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// liveWorkers returns the workers the test has not killed.
func (c *cluster) liveWorkers() []*worker {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*worker(nil), c.live...)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// kill kill -9s a worker and stops sending it requests.
func (c *cluster) kill(w *worker) {
	c.mu.Lock()
	for i, l := range c.live {
		if l == w {
			c.live = append(c.live[:i:i], c.live[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
	w.kill()
}

// pick returns the next live worker, round robin.
func (c *cluster) pick() *worker {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.live) == 0 {
		return nil
	}
	return c.live[int(c.rr.Add(1)%uint64(len(c.live)))]
}

// checkWorkers fails the test for every worker that exited without being
// killed by it, and logs each worker's log statistics.
func (c *cluster) checkWorkers() {
	t := c.t
	t.Helper()
	c.mu.Lock()
	all := append([]*worker(nil), c.all...)
	c.mu.Unlock()
	for _, w := range all {
		levels, effects := w.logStats()
		t.Logf("%s: %d mission effects recorded; log lines by level %v", w.name, effects, levels)
		if !w.alive() && !w.killed.Load() {
			t.Errorf("%s exited unexpectedly: %v\n--- log tail ---\n%s", w.name, w.waitErr, w.logTail(60))
		}
	}
}

// errRetry marks a response worth retrying: a transport error, a 5xx or a
// 429.
var errRetry = errors.New("retryable")

// once sends one request to worker w and decodes a JSON answer into out
// when the status is one of want.
func (c *cluster) once(ctx context.Context, w *worker, method, path string, body, out any, want ...int) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, w.url+path, rd)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%w: %s %s on %s: %v", errRetry, method, path, w.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, fmt.Errorf("%w: read %s %s on %s: %v", errRetry, method, path, w.name, err)
	}
	for _, s := range want {
		if resp.StatusCode == s {
			if out != nil {
				if err := json.Unmarshal(b, out); err != nil {
					return resp.StatusCode, fmt.Errorf("decode %s %s answer %s: %v", method, path, truncate(b, 300), err)
				}
			}
			return resp.StatusCode, nil
		}
	}
	err = fmt.Errorf("%s %s on %s: status %d: %s", method, path, w.name, resp.StatusCode, truncate(b, 500))
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
		err = fmt.Errorf("%w: %v", errRetry, err)
	}
	return resp.StatusCode, err
}

// call sends a request to the live workers in turn until one answers with
// a status in want or a non-retryable error, or ctx ends. It returns the
// status and how many attempts failed.
func (c *cluster) call(ctx context.Context, method, path string, body, out any, want ...int) (int, int, error) {
	failures := 0
	for {
		w := c.pick()
		var code int
		var err error
		if w == nil {
			err = fmt.Errorf("%w: no live worker", errRetry)
		} else {
			code, err = c.once(ctx, w, method, path, body, out, want...)
		}
		if err == nil || !errors.Is(err, errRetry) {
			return code, failures, err
		}
		failures++
		select {
		case <-ctx.Done():
			return code, failures, fmt.Errorf("%v (gave up after %d attempts: %w)", err, failures, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func truncate(b []byte, n int) string {
	s := string(bytes.TrimSpace(b))
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
