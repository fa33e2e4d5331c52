package e2e

// Fault injection on a fan-out workload. Each test runs fanworker processes
// (e2e/fanworker: a dronehub worker that also registers FanOut and Square)
// on one Azure Storage task hub in Azurite and hurts one of them:
//
//   - TestFaultKillMidFanOut: kill -9 while it sends the outboxes of
//     committed 150-activity fan-outs (after the commit, before the end of
//     the send);
//   - TestFaultPausedWorker: SIGSTOP inside an episode, past its partition
//     lease, then SIGCONT: a stale owner wakes up and tries to commit;
//   - TestFaultRollingRestart: SIGTERM each worker in turn under load and
//     start a replacement, measuring how long each restart leaves the
//     stopped worker's partitions without an owner and its instances
//     without progress.
//
// Each checks what a run without faults gives: every instance Completed
// with the computed sum of squares, its history one ExecutionStarted, one
// ExecutionCompleted and exactly one TaskScheduled and one TaskCompleted per
// activity; that every activity ran; that repeated runs (activities are
// at-least-once) happen only where the fault explains them: after it, and
// on the faulted worker or for instances on its partitions, at most three
// runs after a kill or a pause and none after a graceful restart; and that
// nothing was dead-lettered.
//
// DRONEHUB_E2E_KEEP=1 keeps the workers' logs, the execution log
// ("<instance> <input> <worker> <unix ms>" per Square run) and the episode
// log; their directory is logged.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dronehub/dronehub/httpapi"
	"github.com/dronehub/dronehub/taskhub"
)

const (
	fanPartitions = 4
	// fanLease is the partition lease: the azurestorage default (15 s),
	// which worker.Config does not expose. A dead or paused worker's
	// partitions are claimed once it expires, at the next round of a
	// survivor (every fanLease/3).
	fanLease = 15 * time.Second
	// fanReadyWithin bounds a fanworker's start on a busy machine.
	fanReadyWithin = 60 * time.Second
	// Fan-outs of 150 activities started at once by the kill and pause
	// tests: each costs some 1,500 storage requests, and Azurite on the
	// shared two-core machine serves a few hundred a second.
	fanKillInstances = 8
	fanStopInstances = 4
)

// fanBuild is the fanworker binary, built once per test binary next to
// the dronehub binary (TestMain removes that directory).
var fanBuild struct {
	once sync.Once
	path string
	took time.Duration
	err  error
}

func fanWorkerBin(t *testing.T) string {
	t.Helper()
	fanBuild.once.Do(func() {
		dir := ""
		if dronehubBin != "" {
			dir = filepath.Dir(dronehubBin)
		} else {
			d, err := os.MkdirTemp("", "fanworker-")
			if err != nil {
				fanBuild.err = err
				return
			}
			dir = d
		}
		path := filepath.Join(dir, "fanworker")
		start := time.Now()
		// Without -race, like the dronehub binary: the workers share two
		// cores with Azurite.
		cmd := exec.Command(goTool(), "build", "-o", path, "./e2e/fanworker")
		cmd.Dir = ".." // the module root
		if out, err := cmd.CombinedOutput(); err != nil {
			fanBuild.err = fmt.Errorf("go build ./e2e/fanworker: %v\n%s", err, out)
			return
		}
		fanBuild.path, fanBuild.took = path, time.Since(start)
	})
	if fanBuild.err != nil {
		t.Fatal(fanBuild.err)
	}
	return fanBuild.path
}

// fanProc is one fanworker process.
type fanProc struct {
	name    string
	url     string
	pid     int
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error // set before exited closes
	// out: the test took it out of service (killed, paused, stopping), so
	// requests go to the others.
	out atomic.Bool
}

func (p *fanProc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// waitExit waits up to d for the process to exit.
func (p *fanProc) waitExit(d time.Duration) bool {
	select {
	case <-p.exited:
		return true
	case <-time.After(d):
		return false
	}
}

func (p *fanProc) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", p.logPath, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logRecords returns the process's JSON log records for which keep is true.
func (p *fanProc) logRecords(keep func(map[string]any) bool) []map[string]any {
	f, err := os.Open(p.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			m = map[string]any{"msg": sc.Text(), "level": "non-json"}
		}
		if keep(m) {
			out = append(out, m)
		}
	}
	return out
}

func fanRecStr(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

// fanCluster is a set of fanworker processes on one task hub.
type fanCluster struct {
	t           *testing.T
	storage     string
	hub         string
	dir         string
	execLog     string // Square executions
	episodeLog  string // FanOut episodes
	lockTimeout time.Duration
	grace       time.Duration
	client      *http.Client

	mu    sync.Mutex
	procs []*fanProc
	rr    atomic.Uint64
}

func newFanCluster(t *testing.T, storage, prefix string, lockTimeout, grace time.Duration) *fanCluster {
	t.Helper()
	bin := fanWorkerBin(t)
	dir := t.TempDir()
	if os.Getenv("DRONEHUB_E2E_KEEP") != "" {
		if d, err := os.MkdirTemp("", "dronehub-e2e-"+t.Name()+"-"); err == nil {
			dir = d
		}
	}
	c := &fanCluster{
		t: t, storage: storage, hub: prefix + randomHex(4), dir: dir,
		execLog: filepath.Join(dir, "executions.log"), episodeLog: filepath.Join(dir, "episodes.log"),
		lockTimeout: lockTimeout, grace: grace,
		client: &http.Client{
			Timeout: 20 * time.Second,
			Transport: &http.Transport{
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
				MaxIdleConnsPerHost: 32,
				IdleConnTimeout:     30 * time.Second,
			},
		},
	}
	t.Cleanup(c.client.CloseIdleConnections)
	t.Logf("fanworker %s (built in %s); task hub %s, lock timeout %s, lease %s; logs in %s",
		bin, fanBuild.took.Round(time.Millisecond), c.hub, lockTimeout, fanLease, dir)
	return c
}

// startAll launches the named workers at once and waits until each is ready.
func (c *fanCluster) startAll(names ...string) []*fanProc {
	c.t.Helper()
	procs := make([]*fanProc, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			procs[i], errs[i] = c.launch(name)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			tail := ""
			if procs[i] != nil {
				tail = "\n--- log tail ---\n" + procs[i].logTail(40)
			}
			c.t.Fatalf("%s: %v%s", names[i], err, tail)
		}
	}
	return procs
}

func (c *fanCluster) launch(name string) (*fanProc, error) {
	logPath := filepath.Join(c.dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	level := "info"
	if l := os.Getenv("DRONEHUB_E2E_LOG_LEVEL"); l != "" {
		level = l
	}
	cmd := exec.Command(fanBuild.path,
		"--name", name,
		"--listen", "127.0.0.1:0", // the address is read from the log: no port race
		"--storage", c.storage,
		"--hub", c.hub,
		"--partitions", strconv.Itoa(fanPartitions),
		"--lock-timeout", c.lockTimeout.String(),
		"--shutdown-grace", c.grace.String(),
		"--exec-log", c.execLog,
		"--episode-log", c.episodeLog,
		"--log-level", level,
	)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start fanworker: %w", err)
	}
	p := &fanProc{name: name, pid: cmd.Process.Pid, logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.exited)
	}()
	t := c.t
	t.Cleanup(func() {
		if p.alive() {
			_ = cmd.Process.Signal(syscall.SIGKILL) // also ends a stopped process
			p.waitExit(10 * time.Second)
		}
		if t.Failed() {
			t.Logf("--- %s (pid %d, %s) log tail, %s ---\n%s", p.name, p.pid, p.url, p.logPath, p.logTail(30))
		}
	})
	start := time.Now()
	deadline := start.Add(fanReadyWithin)
	for p.url == "" {
		for _, r := range p.logRecords(func(m map[string]any) bool { return fanRecStr(m, "msg") == "fanworker" }) {
			if a := fanRecStr(r, "addr"); a != "" {
				p.url = "http://" + a
			}
		}
		if p.url != "" {
			break
		}
		if !p.alive() {
			return p, fmt.Errorf("exited before listening: %v", p.waitErr)
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("no listen address logged within %s", fanReadyWithin)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Known to the cluster (its pid owns partitions) but out of service
	// until ready.
	p.out.Store(true)
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	var last string
	for {
		if !p.alive() {
			return p, fmt.Errorf("exited before it was ready: %v", p.waitErr)
		}
		resp, err := c.client.Get(p.url + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("not ready within %s; last /readyz: %s", fanReadyWithin, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.out.Store(false)
	t.Logf("%s ready at %s after %s (pid %d)", name, p.url, time.Since(start).Round(time.Millisecond), p.pid)
	return p, nil
}

func (c *fanCluster) all() []*fanProc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*fanProc(nil), c.procs...)
}

// pick returns a live worker in service, round robin.
func (c *fanCluster) pick() *fanProc {
	var in []*fanProc
	for _, p := range c.all() {
		if p.alive() && !p.out.Load() {
			in = append(in, p)
		}
	}
	if len(in) == 0 {
		return nil
	}
	return in[int(c.rr.Add(1)%uint64(len(in)))]
}

// byPID returns the process with that pid.
func (c *fanCluster) byPID(pid int) *fanProc {
	for _, p := range c.all() {
		if p.pid == pid {
			return p
		}
	}
	return nil
}

var errFanRetry = errors.New("retryable")

// do sends a request to a worker in service, retrying transport errors, 5xx
// and 429 on the others every 200 ms until ctx ends. A JSON answer with a
// status in want is decoded into out.
func (c *fanCluster) do(ctx context.Context, method, path string, body []byte, out any, want ...int) (int, error) {
	for attempt := 1; ; attempt++ {
		code, err := c.once(ctx, method, path, body, out, want...)
		if err == nil || !errors.Is(err, errFanRetry) {
			return code, err
		}
		select {
		case <-ctx.Done():
			return code, fmt.Errorf("%v (gave up after %d attempts: %w)", err, attempt, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *fanCluster) once(ctx context.Context, method, path string, body []byte, out any, want ...int) (int, error) {
	p := c.pick()
	if p == nil {
		return 0, fmt.Errorf("%w: no worker in service", errFanRetry)
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, p.url+path, rd)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%w: %s %s on %s: %v", errFanRetry, method, path, p.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, fmt.Errorf("%w: read %s %s on %s: %v", errFanRetry, method, path, p.name, err)
	}
	for _, s := range want {
		if resp.StatusCode == s {
			if out != nil {
				if err := json.Unmarshal(b, out); err != nil {
					return resp.StatusCode, fmt.Errorf("decode %s %s: %v: %s", method, path, err, truncate(b, 300))
				}
			}
			return resp.StatusCode, nil
		}
	}
	err = fmt.Errorf("%s %s on %s: status %d: %s", method, path, p.name, resp.StatusCode, truncate(b, 500))
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
		err = fmt.Errorf("%w: %v", errFanRetry, err)
	}
	return resp.StatusCode, err
}

func (c *fanCluster) hubInfo(ctx context.Context) (taskhub.HubInfo, error) {
	var info taskhub.HubInfo
	_, err := c.do(ctx, http.MethodGet, "/api/hub", nil, &info, http.StatusOK)
	return info, err
}

// fanOwnerPID is the process id in an azurestorage worker id
// (host-pid-random); 0 if there is none.
func fanOwnerPID(workerID string) int {
	parts := strings.Split(workerID, "-")
	if len(parts) < 3 {
		return 0
	}
	pid, _ := strconv.Atoi(parts[len(parts)-2])
	return pid
}

// fanOwners maps partition to the pid of its lease holder.
func fanOwners(info taskhub.HubInfo) map[int]int {
	m := map[int]int{}
	for p, id := range info.Owners {
		m[p] = fanOwnerPID(id)
	}
	return m
}

// fanOwnedBy returns the partitions a pid holds, in order.
func fanOwnedBy(own map[int]int, pid int) []int {
	var ps []int
	for p, o := range own {
		if o == pid {
			ps = append(ps, p)
		}
	}
	sort.Ints(ps)
	return ps
}

// awaitSpread waits (at most within) until every partition is owned and
// by at least want workers, and returns the last owners seen.
func (c *fanCluster) awaitSpread(ctx context.Context, want int, within time.Duration) map[int]int {
	c.t.Helper()
	deadline := time.Now().Add(within)
	var own map[int]int
	for {
		info, err := c.hubInfo(ctx)
		if err != nil {
			c.t.Fatalf("GET /api/hub: %v\n%s", err, c.diag(ctx))
		}
		own = fanOwners(info)
		distinct := map[int]bool{}
		for _, o := range own {
			distinct[o] = true
		}
		if len(own) == fanPartitions && len(distinct) >= want {
			return own
		}
		if time.Now().After(deadline) {
			c.t.Logf("partitions not spread over %d workers within %s: owners %v", want, within, own)
			return own
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// awaitTakeover waits until each partition pid held (parts) has been seen
// owned by another live worker in service, and returns when each was first
// seen so (polling /api/hub every 250 ms).
func (c *fanCluster) awaitTakeover(ctx context.Context, pid int, parts []int, within time.Duration) map[int]time.Time {
	c.t.Helper()
	deadline := time.Now().Add(within)
	seen := map[int]time.Time{}
	for {
		info, err := c.hubInfo(ctx)
		now := time.Now()
		if err == nil {
			own := fanOwners(info)
			for _, q := range parts {
				o := own[q]
				if p := c.byPID(o); seen[q].IsZero() && o != pid && p != nil && p.alive() && !p.out.Load() {
					seen[q] = now
				}
			}
			if len(seen) == len(parts) {
				return seen
			}
		}
		if now.After(deadline) {
			c.t.Fatalf("the partitions %v of pid %d were not taken over within %s (taken: %v; last error %v)\n%s", parts, pid, within, seen, err, c.diag(ctx))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// claims lists the "claimed partition" records of the workers other than
// skip logged after since: partition, previous owner, delay after since.
func (c *fanCluster) claims(skip *fanProc, since time.Time) []string {
	var out []string
	for _, p := range c.all() {
		if p == skip {
			continue
		}
		for _, r := range p.logRecords(func(m map[string]any) bool {
			return fanRecStr(m, "msg") == "azurestorage: claimed partition"
		}) {
			at, err := time.Parse(time.RFC3339Nano, fanRecStr(r, "time"))
			if err != nil || at.Before(since) {
				continue
			}
			from := fanRecStr(r, "from")
			if pid := fanOwnerPID(from); pid != 0 {
				if o := c.byPID(pid); o != nil {
					from = o.name
				}
			}
			out = append(out, fmt.Sprintf("%s claimed partition %v from %q (handed %v) %s after", p.name, r["partition"], from, r["handed"], at.Sub(since).Round(10*time.Millisecond)))
		}
	}
	sort.Strings(out)
	return out
}

// leaseLosses lists the partition leases that the workers other than skip
// lost after since: a healthy worker that misses its renewals (its lease
// round blocked for a whole lease) stops polling its partitions, which
// then wait for another takeover.
func (c *fanCluster) leaseLosses(skip *fanProc, since time.Time) []string {
	var out []string
	for _, p := range c.all() {
		if p == skip {
			continue
		}
		for _, r := range p.logRecords(func(m map[string]any) bool {
			return fanRecStr(m, "msg") == "azurestorage: lost partition lease"
		}) {
			at, err := time.Parse(time.RFC3339Nano, fanRecStr(r, "time"))
			if err != nil || at.Before(since) {
				continue
			}
			out = append(out, fmt.Sprintf("%s logged the loss of partition %v %s after", p.name, r["partition"], at.Sub(since).Round(10*time.Millisecond)))
		}
	}
	// A lease taken from a worker other than skip without a hand-off: it
	// had expired.
	for _, cl := range c.claims(skip, since) {
		if i := strings.Index(cl, ` from "`); i >= 0 && strings.Contains(cl, "(handed false)") {
			from := cl[i+len(` from "`):]
			from = from[:strings.IndexByte(from, '"')]
			if from != "" && (skip == nil || from != skip.name) {
				out = append(out, cl+" (its lease had expired)")
			}
		}
	}
	sort.Strings(out)
	return out
}

func fanLatest(m map[int]time.Time) time.Time {
	var t time.Time
	for _, v := range m {
		t = fanMaxTime(t, v)
	}
	return t
}

func fanSinceEach(m map[int]time.Time, ref time.Time) map[int]string {
	out := map[int]string{}
	for k, v := range m {
		out[k] = v.Sub(ref).Round(100 * time.Millisecond).String()
	}
	return out
}

// diag describes the hub and every worker, for failure messages.
func (c *fanCluster) diag(ctx context.Context) string {
	var b strings.Builder
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if info, err := c.hubInfo(dctx); err == nil {
		j, _ := json.Marshal(info)
		fmt.Fprintf(&b, "hub: %s\n", j)
	} else {
		fmt.Fprintf(&b, "hub: %v\n", err)
	}
	for _, p := range c.all() {
		state := "running"
		switch {
		case !p.alive():
			state = fmt.Sprintf("exited (%v)", p.waitErr)
		case p.out.Load():
			state = "out of service"
		}
		fmt.Fprintf(&b, "--- %s pid %d %s, %s; log tail ---\n%s\n", p.name, p.pid, p.url, state, p.logTail(25))
	}
	return b.String()
}

// fanInst is one FanOut instance.
type fanInst struct {
	id      string
	n, seed int
	holdMs  int // FanOut's holdMs: each episode takes that long
	part    int
	want    int64
	started atomic.Int64 // unix ns of the 202
	done    atomic.Int64 // unix ns the test saw it terminal
}

func fanPartition(id string) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return int(h.Sum32() % fanPartitions)
}

func fanSquareSum(n, seed int) int64 {
	var s int64
	for i := 0; i < n; i++ {
		x := int64(seed)*1000 + int64(i)
		s += x * x
	}
	return s
}

// makeFanInsts names count instances of n activities: onHot of them on the
// partitions in hot, the rest elsewhere (all on hot if hot holds every
// partition). Seeds are 1…count.
func makeFanInsts(prefix string, count, n, onHot int, hot map[int]bool) []*fanInst {
	if len(hot) == fanPartitions || len(hot) == 0 {
		onHot = count
		if len(hot) == 0 {
			onHot = 0
		}
	}
	var out []*fanInst
	inHot, inCold := 0, 0
	for j := 0; len(out) < count && j < 100000; j++ {
		id := fmt.Sprintf("%s-%05d", prefix, j)
		p := fanPartition(id)
		switch {
		case hot[p] && inHot < onHot:
			inHot++
		case !hot[p] && inCold < count-onHot:
			inCold++
		default:
			continue
		}
		seed := len(out) + 1
		out = append(out, &fanInst{id: id, n: n, seed: seed, part: p, want: fanSquareSum(n, seed)})
	}
	return out
}

// startInst starts a FanOut instance. A 409 means an earlier attempt whose
// answer was lost went through (ids are unique within a fresh hub).
func (c *fanCluster) startInst(ctx context.Context, in *fanInst) error {
	body, _ := json.Marshal(map[string]int{"n": in.n, "seed": in.seed, "holdMs": in.holdMs})
	_, err := c.do(ctx, http.MethodPost, "/api/orchestrations/FanOut?instanceId="+url.QueryEscape(in.id), body, nil,
		http.StatusAccepted, http.StatusConflict)
	if err == nil {
		in.started.Store(time.Now().UnixNano())
	}
	return err
}

// startInsts starts instances concurrently (8 at a time) in the background;
// the channel gets the joined errors.
func (c *fanCluster) startInsts(ctx context.Context, insts []*fanInst) <-chan error {
	res := make(chan error, 1)
	go func() {
		var (
			mu   sync.Mutex
			errs []error
			wg   sync.WaitGroup
			sem  = make(chan struct{}, 8)
		)
		for _, in := range insts {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := c.startInst(ctx, in); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("start %s: %w", in.id, err))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		res <- errors.Join(errs...)
	}()
	return res
}

func (c *fanCluster) status(ctx context.Context, id string, history bool) (httpapi.Status, error) {
	var st httpapi.Status
	path := "/api/instances/" + url.PathEscape(id)
	if history {
		path += "?showHistory=true"
	}
	_, err := c.do(ctx, http.MethodGet, path, nil, &st, http.StatusOK, http.StatusAccepted)
	return st, err
}

func fanTerminal(s string) bool {
	switch s {
	case "Completed", "Failed", "Terminated", "Canceled":
		return true
	}
	return false
}

// awaitDone polls the unfinished instances (4 requests at a time, every
// 300 ms) until all are terminal; after within it fails the test with the
// status of those left and the workers' logs.
func (c *fanCluster) awaitDone(ctx context.Context, insts []*fanInst, within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	last := map[string]string{}
	var mu sync.Mutex
	lastLog := time.Now()
	for {
		var pending []*fanInst
		for _, in := range insts {
			if in.done.Load() == 0 {
				pending = append(pending, in)
			}
		}
		if len(pending) == 0 {
			return
		}
		if time.Now().After(deadline) {
			sort.Slice(pending, func(i, j int) bool { return pending[i].id < pending[j].id })
			var b strings.Builder
			for i, in := range pending {
				if i == 20 {
					fmt.Fprintf(&b, "  … and %d more\n", len(pending)-i)
					break
				}
				mu.Lock()
				fmt.Fprintf(&b, "  %s (partition %d): %s\n", in.id, in.part, last[in.id])
				mu.Unlock()
			}
			c.t.Fatalf("%d of %d instances not finished within %s (stuck?):\n%s%s", len(pending), len(insts), within, b.String(), c.diag(ctx))
		}
		if time.Since(lastLog) > 15*time.Second {
			c.t.Logf("%d of %d instances still running", len(pending), len(insts))
			lastLog = time.Now()
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, 4)
		for _, in := range pending {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				defer cancel()
				st, err := c.status(rctx, in.id, false)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					last[in.id] = err.Error()
					return
				}
				last[in.id] = fmt.Sprintf("%s, last updated %s", st.RuntimeStatus, st.LastUpdatedTime.Format(time.StampMilli))
				if fanTerminal(st.RuntimeStatus) {
					in.done.Store(time.Now().UnixNano())
				}
			}()
		}
		wg.Wait()
		time.Sleep(300 * time.Millisecond)
	}
}

// fanRun is one execution of an activity.
type fanRun struct {
	worker string
	at     time.Time
}

func (r fanRun) String() string { return r.worker + "@" + r.at.Format("15:04:05.000") }

// fanExecs maps instance → activity input → its executions, in log order.
type fanExecs map[string]map[int64][]fanRun

// fanParseExec parses an execution line: instance, input, worker, unix ms.
func fanParseExec(line string) (string, int64, fanRun, bool) {
	f := strings.Fields(line)
	if len(f) != 4 {
		return "", 0, fanRun{}, false
	}
	x, err1 := strconv.ParseInt(f[1], 10, 64)
	ms, err2 := strconv.ParseInt(f[3], 10, 64)
	if err1 != nil || err2 != nil {
		return "", 0, fanRun{}, false
	}
	return f[0], x, fanRun{worker: f[2], at: time.UnixMilli(ms)}, true
}

func fanReadExecs(path string) (fanExecs, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ex := fanExecs{}
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		id, x, r, ok := fanParseExec(line)
		if !ok {
			return nil, fmt.Errorf("malformed execution line %q", line)
		}
		if ex[id] == nil {
			ex[id] = map[int64][]fanRun{}
		}
		ex[id][x] = append(ex[id][x], r)
	}
	return ex, nil
}

// fanDup is an activity that ran more than once.
type fanDup struct {
	instance string
	x        int64
	runs     []fanRun
}

// verify checks every instance's output and history, that every activity
// ran, and that none ran more than maxRuns times. It returns the
// activities that ran more than once; the caller decides which repeats its
// fault explains.
func (c *fanCluster) verify(ctx context.Context, insts []*fanInst, maxRuns int) []fanDup {
	t := c.t
	t.Helper()
	var (
		mu       sync.Mutex
		problems []string
		wg       sync.WaitGroup
		sem      = make(chan struct{}, 4)
	)
	report := func(format string, args ...any) {
		mu.Lock()
		problems = append(problems, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	for _, in := range insts {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			st, err := c.status(ctx, in.id, true)
			if err != nil {
				report("%s: %v", in.id, err)
				return
			}
			if st.RuntimeStatus != "Completed" {
				report("%s: runtime status %s (failure %+v), want Completed", in.id, st.RuntimeStatus, st.FailureDetails)
				return
			}
			if got := strings.TrimSpace(string(st.Output)); got != strconv.FormatInt(in.want, 10) {
				report("%s: output %s, want %d", in.id, got, in.want)
			}
			if p := fanCheckHistory(st.History, in.n); p != "" {
				report("%s: history: %s", in.id, p)
			}
		}()
	}
	wg.Wait()

	ex, err := fanReadExecs(c.execLog)
	if err != nil {
		t.Fatalf("read the execution log: %v", err)
	}
	var dups []fanDup
	known := map[string]bool{}
	runs := 0
	for _, in := range insts {
		known[in.id] = true
		for i := 0; i < in.n; i++ {
			x := int64(in.seed)*1000 + int64(i)
			ws := ex[in.id][x]
			runs += len(ws)
			switch {
			case len(ws) == 0:
				problems = append(problems, fmt.Sprintf("%s: Square(%d) never ran", in.id, x))
			case len(ws) > maxRuns:
				problems = append(problems, fmt.Sprintf("%s: Square(%d) ran %d times (%v), at most %d allowed", in.id, x, len(ws), ws, maxRuns))
			}
			if len(ws) > 1 {
				dups = append(dups, fanDup{in.id, x, ws})
			}
		}
		if len(ex[in.id]) != in.n {
			problems = append(problems, fmt.Sprintf("%s: Square ran for %d distinct inputs, want %d", in.id, len(ex[in.id]), in.n))
		}
	}
	for id := range ex {
		if !known[id] {
			problems = append(problems, fmt.Sprintf("Square ran for an unknown instance %q", id))
		}
	}
	info, err := c.hubInfo(ctx)
	switch {
	case err != nil:
		problems = append(problems, fmt.Sprintf("GET /api/hub: %v", err))
	case info.DeadLetters != 0:
		problems = append(problems, fmt.Sprintf("%d messages were dead-lettered", info.DeadLetters))
	}
	t.Logf("verified %d instances: %d Square executions for %d activities, %d activities ran more than once", len(insts), runs, runs-fanExtra(dups), len(dups))
	if len(problems) > 0 {
		sort.Strings(problems)
		if len(problems) > 30 {
			problems = append(problems[:30], fmt.Sprintf("… and %d more", len(problems)-30))
		}
		t.Errorf("%d problems:\n  %s\n%s", len(problems), strings.Join(problems, "\n  "), c.diag(ctx))
	}
	return dups
}

func fanExtra(dups []fanDup) int {
	n := 0
	for _, d := range dups {
		n += len(d.runs) - 1
	}
	return n
}

// fanCheckHistory checks one whole execution: one ExecutionStarted, n
// TaskScheduled Square with ids 0…n-1, one TaskCompleted for each, one
// ExecutionCompleted (Completed), and nothing else.
func fanCheckHistory(h []httpapi.HistoryEvent, n int) string {
	count := map[string]int{}
	scheduled := map[int32]int{}
	completed := map[string]int{}
	var problems []string
	for _, e := range h {
		count[e.EventType]++
		switch e.EventType {
		case "TaskScheduled":
			scheduled[e.EventID]++
			if e.Name != "Square" {
				problems = append(problems, fmt.Sprintf("TaskScheduled %q", e.Name))
			}
		case "TaskCompleted":
			completed[e.Detail]++
		case "ExecutionCompleted":
			if e.Detail != "Completed" {
				problems = append(problems, "ExecutionCompleted "+e.Detail)
			}
		case "ExecutionStarted":
		default:
			problems = append(problems, "unexpected "+e.EventType)
		}
	}
	if count["ExecutionStarted"] != 1 || count["ExecutionCompleted"] != 1 || count["TaskScheduled"] != n || count["TaskCompleted"] != n {
		problems = append(problems, fmt.Sprintf("event counts %v, want 1 ExecutionStarted, %d TaskScheduled, %d TaskCompleted, 1 ExecutionCompleted", count, n, n))
	}
	for i := 0; i < n; i++ {
		if scheduled[int32(i)] != 1 {
			problems = append(problems, fmt.Sprintf("task %d scheduled %d times", i, scheduled[int32(i)]))
		}
		if k := fmt.Sprintf("task %d", i); completed[k] != 1 {
			problems = append(problems, fmt.Sprintf("task %d completed %d times", i, completed[k]))
		}
		if len(problems) > 5 {
			break
		}
	}
	return strings.Join(problems, "; ")
}

// fanTail follows a file that processes append lines to.
type fanTail struct {
	path string
	off  int64
	rest []byte
}

// lines returns the complete lines appended since the last call.
func (e *fanTail) lines() []string {
	f, err := os.Open(e.path)
	if err != nil {
		return nil
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	var out []string
	for i := 0; i < 64; i++ { // at most 4 MiB a call
		n, _ := f.ReadAt(buf, e.off)
		if n == 0 {
			break
		}
		e.off += int64(n)
		e.rest = append(e.rest, buf[:n]...)
		for {
			j := bytes.IndexByte(e.rest, '\n')
			if j < 0 {
				break
			}
			out = append(out, string(e.rest[:j]))
			e.rest = e.rest[j+1:]
		}
	}
	return out
}

// awaitExecs follows the execution log (every 5 ms, at most within) until
// done holds for the activities of the instances in ids that have run so
// far: the number of distinct inputs run per instance, and the total
// number of runs. It returns the instance and worker of the last run read.
func (c *fanCluster) awaitExecs(ctx context.Context, ids map[string]bool, within time.Duration, what string,
	done func(distinct map[string]int, runs int) bool) (string, string) {
	c.t.Helper()
	tail := &fanTail{path: c.execLog}
	deadline := time.Now().Add(within)
	seen := map[string]map[int64]bool{}
	distinct := map[string]int{}
	runs := 0
	for {
		for _, line := range tail.lines() {
			id, x, r, ok := fanParseExec(line)
			if !ok || !ids[id] {
				continue
			}
			runs++
			if seen[id] == nil {
				seen[id] = map[int64]bool{}
			}
			if !seen[id][x] {
				seen[id][x] = true
				distinct[id]++
			}
			if done(distinct, runs) {
				return id, r.worker
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: not seen within %s (%d runs, distinct inputs per instance %v)\n%s", what, within, runs, distinct, c.diag(ctx))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// outboxResends lists the "sending an outbox again" records of the
// workers other than skip: a worker that loaded an instance found the
// outbox of a commit whose sender did not finish (or delete) it.
func (c *fanCluster) outboxResends(skip *fanProc) []string {
	var out []string
	for _, p := range c.all() {
		if p == skip {
			continue
		}
		for _, r := range p.logRecords(func(m map[string]any) bool {
			return fanRecStr(m, "msg") == "azurestorage: sending an outbox again"
		}) {
			out = append(out, fmt.Sprintf("%s re-sent %v messages of %s (row %s) at %s", p.name, r["messages"], fanRecStr(r, "instance"), fanRecStr(r, "row"), fanRecStr(r, "time")))
		}
	}
	return out
}

// fanCheckDups fails the test for a repeated activity its fault does not
// explain. A repeat is explained when one of its runs came at or after the
// fault, and either one ran on the faulted worker (at-least-once: it ran,
// then died or stalled before its message was deleted) or the instance is
// on the faulted worker's partitions (the outbox it was sending was sent
// again by the next owner, or, by a stale owner, resumed).
func fanCheckDups(t *testing.T, dups []fanDup, faulted string, faultedInsts map[string]bool, fault time.Time) {
	t.Helper()
	ranThere, outboxed := 0, 0
	var bad []string
	for _, d := range dups {
		onFaulted, after := false, false
		for _, r := range d.runs {
			onFaulted = onFaulted || r.worker == faulted
			after = after || !r.at.Before(fault.Truncate(time.Millisecond))
		}
		switch {
		case after && onFaulted:
			ranThere++
		case after && faultedInsts[d.instance]:
			outboxed++
		default:
			bad = append(bad, fmt.Sprintf("%s Square(%d): %v", d.instance, d.x, d.runs))
		}
	}
	t.Logf("activities that ran more than once: %d with a run on %s, %d more of instances on its partitions", ranThere, faulted, outboxed)
	if len(bad) > 0 {
		if len(bad) > 20 {
			bad = append(bad[:20], fmt.Sprintf("… and %d more", len(bad)-20))
		}
		t.Errorf("%d activities ran more than once, which the fault on %s at %s does not explain:\n  %s",
			len(bad), faulted, fault.Format("15:04:05.000"), strings.Join(bad, "\n  "))
	}
}

func fanRanOn(runs []fanRun, worker string) bool {
	for _, r := range runs {
		if r.worker == worker {
			return true
		}
	}
	return false
}

// checkExits fails the test for every process that exited other than as
// the test made it.
func (c *fanCluster) checkExits(faulted map[*fanProc]bool) {
	c.t.Helper()
	for _, p := range c.all() {
		if !p.alive() && !faulted[p] {
			c.t.Errorf("%s exited unexpectedly: %v\n--- log tail ---\n%s", p.name, p.waitErr, p.logTail(40))
		}
	}
}

// TestFaultKillMidFanOut kill -9s a worker while it sends the outboxes of
// committed 150-activity fan-outs: 8 instances start at once, half of
// them on the victim's partitions, and the victim dies as soon as the
// first activity of one of those has run, i.e. while its own start
// episodes commit and send their 150 messages each. The survivors take its
// partitions over once its lease expires, send the outboxes it did not
// finish again, drop the copies, and every instance completes once.
func TestFaultKillMidFanOut(t *testing.T) {
	az := shared.Get(t)
	c := newFanCluster(t, az.ConnectionString(), "fankill", 15*time.Second, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c.startAll("w1", "w2", "w3")
	own := c.awaitSpread(ctx, 2, 30*time.Second)
	victim := fanMostPartitions(c, own)
	vparts := fanOwnedBy(own, victim.pid)
	hot := map[int]bool{}
	for _, p := range vparts {
		hot[p] = true
	}
	insts := makeFanInsts("kill", fanKillInstances, 150, fanKillInstances/2, hot)
	vinsts := map[string]bool{}
	for _, in := range insts {
		if hot[in.part] {
			vinsts[in.id] = true
		}
	}
	t.Logf("owners %v; victim %s (pid %d) holds partitions %v: %d of %d instances of 150 activities land there",
		own, victim.name, victim.pid, vparts, len(vinsts), len(insts))

	began := time.Now()
	started := c.startInsts(ctx, insts)
	first, ranOn := c.awaitExecs(ctx, vinsts, 90*time.Second, "an activity of an instance on the victim's partitions",
		func(_ map[string]int, runs int) bool { return runs >= 1 })
	victim.out.Store(true)
	_ = victim.cmd.Process.Signal(syscall.SIGKILL)
	killedAt := time.Now()
	if !victim.waitExit(10 * time.Second) {
		t.Fatalf("%s survived SIGKILL", victim.name)
	}
	t.Logf("kill -9 %s %s after the starts: the first activity of %s had run (on %s)", victim.name, killedAt.Sub(began).Round(time.Millisecond), first, ranOn)
	if err := <-started; err != nil {
		t.Fatalf("starting instances: %v\n%s", err, c.diag(ctx))
	}

	taken := c.awaitTakeover(ctx, victim.pid, vparts, 2*fanLease+30*time.Second)
	t.Logf("takeover: the victim's partitions were owned by survivors %s after the kill (per partition %v; lease %s)",
		fanLatest(taken).Sub(killedAt).Round(100*time.Millisecond), fanSinceEach(taken, killedAt), fanLease)
	c.awaitDone(ctx, insts, 150*time.Second)
	var lastV time.Time
	for _, in := range insts {
		if vinsts[in.id] {
			lastV = fanMaxTime(lastV, time.Unix(0, in.done.Load()))
		}
	}
	t.Logf("all %d instances done %s after the starts; the last on the victim's partitions %s after the kill",
		len(insts), time.Since(began).Round(100*time.Millisecond), lastV.Sub(killedAt).Round(100*time.Millisecond))

	t.Logf("partitions claimed after the kill:\n  %s", strings.Join(c.claims(victim, killedAt), "\n  "))
	if lost := c.leaseLosses(victim, killedAt); len(lost) > 0 {
		// Not a failure of what this test checks (every instance still
		// completes once), but a survivor should never lose its leases.
		t.Logf("NOTE: survivors lost partition leases (a lease round blocked for a lease duration):\n  %s", strings.Join(lost, "\n  "))
	}
	resends := c.outboxResends(victim)
	t.Logf("outboxes sent again by the survivors (%d):\n  %s", len(resends), strings.Join(resends, "\n  "))
	if len(resends) == 0 {
		t.Errorf("no survivor sent an outbox again: the kill did not land between a fan-out's commit and the end of its send")
	}
	// An activity may run three times, if the victim ran it and died before
	// deleting its message (redelivered after the lock timeout) and its
	// outbox was sent again; otherwise at most twice.
	dups := c.verify(ctx, insts, 3)
	fanCheckDups(t, dups, victim.name, vinsts, killedAt)
	for _, d := range dups {
		if len(d.runs) > 2 && !fanRanOn(d.runs, victim.name) {
			t.Errorf("%s: Square(%d) ran %d times without a run on %s: %v", d.instance, d.x, len(d.runs), victim.name, d.runs)
		}
	}
	c.checkExits(map[*fanProc]bool{victim: true})
}

// TestFaultPausedWorker SIGSTOPs a worker inside an orchestration episode
// (between the work item's fetch and its commit: every FanOut episode
// spends a second first) of a fan-out on its partitions, once it has sent
// all its fan-outs' activities and is busy with their results. It keeps it
// stopped for 1.5 leases and until another worker has taken its
// partitions over and committed that instance, then resumes it: the stale
// owner's commit must be rejected by the instance sentinel's ETag
// (ErrWorkItemLockLost), it must give its partitions up, and every
// instance completes once.
func TestFaultPausedWorker(t *testing.T) {
	az := shared.Get(t)
	c := newFanCluster(t, az.ConnectionString(), "fanstop", 15*time.Second, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c.startAll("w1", "w2", "w3")
	own := c.awaitSpread(ctx, 2, 30*time.Second)
	victim := fanMostPartitions(c, own)
	vparts := fanOwnedBy(own, victim.pid)
	hot := map[int]bool{}
	for _, p := range vparts {
		hot[p] = true
	}
	insts := makeFanInsts("stop", fanStopInstances, 150, fanStopInstances/2, hot)
	vinsts := map[string]bool{}
	for _, in := range insts {
		in.holdMs = 1000
		if hot[in.part] {
			vinsts[in.id] = true
		}
	}
	t.Logf("owners %v; victim %s (pid %d) holds partitions %v: %d of %d instances of 150 activities land there",
		own, victim.name, victim.pid, vparts, len(vinsts), len(insts))

	episodes := &fanTail{path: c.episodeLog}
	began := time.Now()
	started := c.startInsts(ctx, insts)
	// Once every activity of its instances has run, it has sent all their
	// outboxes and works on their results.
	c.awaitExecs(ctx, vinsts, 120*time.Second, "all 150 activities of each instance on the victim's partitions",
		func(distinct map[string]int, _ int) bool {
			for id := range vinsts {
				if distinct[id] < 150 {
					return false
				}
			}
			return true
		})
	// Stop it in the hold of an episode of its own that began under 500 ms
	// ago, or of the next one.
	var caught string
	for deadline := time.Now().Add(60 * time.Second); caught == ""; time.Sleep(5 * time.Millisecond) {
		for _, line := range episodes.lines() {
			f := strings.Fields(line)
			if len(f) != 3 || !vinsts[f[0]] || f[1] != victim.name {
				continue
			}
			if ms, err := strconv.ParseInt(f[2], 10, 64); err == nil && time.Since(time.UnixMilli(ms)) < 500*time.Millisecond {
				caught = f[0]
			}
		}
		if caught == "" && time.Now().After(deadline) {
			t.Fatalf("%s ran no episode of its instances within 60 s after their activities\n%s", victim.name, c.diag(ctx))
		}
	}
	victim.out.Store(true)
	if err := victim.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP: %v", err)
	}
	stoppedAt := time.Now()
	t.Logf("SIGSTOP %s %s after the starts, inside an episode of %s", victim.name, stoppedAt.Sub(began).Round(time.Millisecond), caught)
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = victim.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	if err := <-started; err != nil {
		t.Fatalf("starting instances: %v\n%s", err, c.diag(ctx))
	}

	taken := c.awaitTakeover(ctx, victim.pid, vparts, 2*fanLease+30*time.Second)
	t.Logf("takeover: the victim's partitions were owned by the others %s after the SIGSTOP (per partition %v; lease %s)",
		fanLatest(taken).Sub(stoppedAt).Round(100*time.Millisecond), fanSinceEach(taken, stoppedAt), fanLease)
	// Stay stopped for 1.5 leases, and until another worker has committed
	// the instance whose episode the victim is in.
	var committed time.Time
	for deadline := stoppedAt.Add(2 * time.Minute); ; time.Sleep(250 * time.Millisecond) {
		if committed.IsZero() {
			rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
			st, err := c.status(rctx, caught, false)
			rcancel()
			if err == nil && st.LastUpdatedTime.After(stoppedAt) {
				committed = time.Now()
				t.Logf("%s committed by another worker %s after the SIGSTOP (%s)", caught, committed.Sub(stoppedAt).Round(100*time.Millisecond), st.RuntimeStatus)
			}
		}
		if !committed.IsZero() && time.Since(stoppedAt) >= fanLease*3/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no other worker committed %s within 2 minutes of the SIGSTOP\n%s", caught, c.diag(ctx))
		}
	}
	linesBefore := len(strings.Split(victim.logTail(1<<30), "\n"))
	resume()
	resumedAt := time.Now()
	t.Logf("SIGCONT %s after %s stopped", victim.name, resumedAt.Sub(stoppedAt).Round(100*time.Millisecond))

	c.awaitDone(ctx, insts, 150*time.Second)
	t.Logf("all %d instances done %s after the starts, %s after the SIGCONT", len(insts),
		time.Since(began).Round(100*time.Millisecond), time.Since(resumedAt).Round(100*time.Millisecond))
	if !victim.alive() {
		t.Errorf("%s exited after SIGCONT: %v\n%s", victim.name, victim.waitErr, victim.logTail(40))
	} else {
		// Back in service: it answers and rejoins the hub as a fresh worker.
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		err := waitFanReady(rctx, c.client, victim.url)
		rcancel()
		if err != nil {
			t.Errorf("%s is not ready after SIGCONT: %v", victim.name, err)
		}
	}

	// What the stale owner did when it woke up, from its log after SIGCONT.
	all := strings.Split(victim.logTail(1<<30), "\n")
	var lost, other int
	var rejected, errs []string
	kinds := map[string]int{}
	for _, l := range all[min(linesBefore, len(all)):] {
		var rec map[string]any
		_ = json.Unmarshal([]byte(l), &rec)
		if lv := fanRecStr(rec, "level"); lv == "WARN" || lv == "ERROR" {
			kinds[lv+" "+fanRecStr(rec, "msg")]++
		}
		switch {
		case strings.Contains(l, "lost partition lease"):
			lost++
		case strings.Contains(l, "changed by another worker"):
			rejected = append(rejected, l)
		case strings.Contains(l, `"level":"ERROR"`) || strings.Contains(l, `"level":"WARN"`):
			other++
			if len(errs) < 5 {
				errs = append(errs, truncate([]byte(l), 600))
			}
		}
	}
	t.Logf("warnings and errors %s logged after SIGCONT, by message: %v", victim.name, kinds)
	ex, err := fanReadExecs(c.execLog)
	if err != nil {
		t.Fatalf("read the execution log: %v", err)
	}
	ranAfter := 0
	for _, xs := range ex {
		for _, runs := range xs {
			for _, r := range runs {
				if r.worker == victim.name && !r.at.Before(resumedAt.Truncate(time.Millisecond)) {
					ranAfter++
				}
			}
		}
	}
	t.Logf("after SIGCONT %s logged %d lost partition leases, %d commits rejected as stale (ErrWorkItemLockLost), %d other warnings/errors, and ran %d activities",
		victim.name, lost, len(rejected), other, ranAfter)
	for i, l := range rejected {
		if i == 3 {
			break
		}
		t.Logf("  %s", truncate([]byte(l), 300))
	}
	if lost == 0 {
		t.Errorf("%s did not log the loss of its partition leases after SIGCONT", victim.name)
	}
	if !strings.Contains(strings.Join(rejected, "\n"), "commit "+caught+":") {
		t.Errorf("%s did not log its stale commit of %s as rejected (changed by another worker); first other warnings and errors:\n  %s",
			victim.name, caught, strings.Join(errs, "\n  "))
	}
	t.Logf("partitions claimed after the SIGSTOP:\n  %s", strings.Join(c.claims(victim, stoppedAt), "\n  "))
	if lost := c.leaseLosses(victim, stoppedAt); len(lost) > 0 {
		t.Logf("NOTE: the other workers lost partition leases (a lease round blocked for a lease duration):\n  %s", strings.Join(lost, "\n  "))
	}
	resends := c.outboxResends(victim)
	t.Logf("outboxes sent again by the other workers (%d):\n  %s", len(resends), strings.Join(resends, "\n  "))

	// A third run is possible: an enqueue of the stale owner's that was in
	// flight at the SIGSTOP times out on waking and is retried, or it
	// resumes sending a committed outbox that the next owner sent again.
	dups := c.verify(ctx, insts, 3)
	fanCheckDups(t, dups, victim.name, vinsts, stoppedAt)
	c.checkExits(nil)
}

func waitFanReady(ctx context.Context, client *http.Client, base string) error {
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%v (%w)", err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func fanMostPartitions(c *fanCluster, own map[int]int) *fanProc {
	count := map[int]int{}
	for _, o := range own {
		count[o]++
	}
	var best *fanProc
	for _, p := range c.all() {
		if best == nil || count[p.pid] > count[best.pid] {
			best = p
		}
	}
	return best
}

func fanMaxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// fanRestart is what one rolling restart cost.
type fanRestart struct {
	name    string
	parts   []int
	stop    time.Duration // SIGTERM → exit
	ready   time.Duration // SIGTERM → replacement ready
	gap     time.Duration // SIGTERM → all its partitions owned by a live worker
	stall   time.Duration // SIGTERM → every instance waiting on its partitions progressed
	after   time.Duration // exit → the same (stall - stop)
	waiting int           // instances waiting on its partitions at the exit
	err     error
}

// TestFaultRollingRestart restarts the three workers one by one (SIGTERM,
// graceful) while 60 fan-outs of 20 activities are started at a steady
// rate (5 a second), each time starting a replacement and waiting until it
// is ready before the next. Per restart it measures how long the stopped worker's
// partitions had no owner and how long the instances waiting on them made
// no progress; a graceful stop hands its messages back, so both must be
// seconds, far below the lock timeout, and no activity may run twice.
func TestFaultRollingRestart(t *testing.T) {
	az := shared.Get(t)
	// A long lock timeout: messages a stopped worker left locked would
	// stall their instances for tens of seconds after it exited.
	const lock = time.Minute
	c := newFanCluster(t, az.ConnectionString(), "fanroll", lock, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	procs := c.startAll("w1", "w2", "w3")
	own := c.awaitSpread(ctx, 3, 30*time.Second)
	t.Logf("owners before the restarts: %v", own)

	insts := makeFanInsts("roll", 60, 20, 0, nil)
	var genErr error
	genDone := make(chan struct{})
	var startedN atomic.Int64
	go func() {
		defer close(genDone)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for _, in := range insts {
			select {
			case <-ctx.Done():
				genErr = ctx.Err()
				return
			case <-tick.C:
			}
			if err := c.startInst(ctx, in); err != nil {
				genErr = fmt.Errorf("start %s: %w", in.id, err)
				return
			}
			startedN.Add(1)
		}
	}()
	defer func() { cancel(); <-genDone }()
	// Restarts are spread over the load: the i-th once 10+16i instances
	// have been started.
	waitStarted := func(n int64) {
		for startedN.Load() < n {
			select {
			case <-genDone:
				if genErr != nil {
					t.Fatalf("the load stopped early: %v", genErr)
				}
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}

	var figs []fanRestart
	for i, p := range procs {
		waitStarted(int64(10 + 16*i))
		f := c.rollOne(ctx, p, fmt.Sprintf("%sr", p.name), insts)
		if f.err != nil {
			t.Fatalf("restart %d (%s): %v\n%s", i+1, p.name, f.err, c.diag(ctx))
		}
		figs = append(figs, f)
		t.Logf("restart %d: %s held partitions %v; drained and exited %s after SIGTERM, replacement ready after %s; partitions without a live owner for %s; %d instances waiting on them stalled %s after SIGTERM, %s after the exit (%d of %d instances started)",
			i+1, f.name, f.parts, f.stop.Round(10*time.Millisecond), f.ready.Round(10*time.Millisecond),
			f.gap.Round(10*time.Millisecond), f.waiting, f.stall.Round(10*time.Millisecond), f.after.Round(10*time.Millisecond),
			startedN.Load(), len(insts))
	}
	<-genDone
	if genErr != nil {
		t.Fatalf("load: %v\n%s", genErr, c.diag(ctx))
	}
	c.awaitDone(ctx, insts, 120*time.Second)

	// A graceful stop leaves nothing locked: once the worker has exited its
	// instances move on within seconds (the replacement claims the released
	// partitions at once; otherwise a survivor's next lease round, every
	// lease/3 = 10 s, does), never after a lock timeout. Before the exit the
	// worker drains its work in progress, within the grace period.
	const afterBound = 20 * time.Second
	for i, f := range figs {
		if f.after > afterBound || f.stall > c.grace+afterBound {
			t.Errorf("restart %d (%s): instances waiting on its partitions stalled %s after the exit (%s after SIGTERM); want under %s after the exit (lock timeout %s, grace %s)",
				i+1, f.name, f.after.Round(10*time.Millisecond), f.stall.Round(10*time.Millisecond), afterBound, lock, c.grace)
		}
	}
	// A graceful stop finishes or hands back everything it took: no
	// activity runs twice.
	c.verify(ctx, insts, 1)
	stopped := map[*fanProc]bool{}
	for _, p := range procs {
		stopped[p] = true
		if p.waitErr != nil {
			t.Errorf("%s did not exit cleanly on SIGTERM: %v\n%s", p.name, p.waitErr, p.logTail(20))
		}
	}
	c.checkExits(stopped)
}

// rollOne stops p with SIGTERM, starts a replacement and measures the
// restart (see fanRestart).
func (c *fanCluster) rollOne(ctx context.Context, p *fanProc, newName string, insts []*fanInst) fanRestart {
	f := fanRestart{name: p.name}
	info, err := c.hubInfo(ctx)
	if err != nil {
		f.err = err
		return f
	}
	f.parts = fanOwnedBy(fanOwners(info), p.pid)
	mine := map[int]bool{}
	for _, q := range f.parts {
		mine[q] = true
	}

	p.out.Store(true)
	term := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		f.err = err
		return f
	}

	// Ownership: poll /api/hub until each of its partitions has a live owner.
	gapDone := make(chan time.Duration, 1)
	go func() {
		for deadline := term.Add(c.grace + time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			info, err := c.hubInfo(ctx)
			if err != nil {
				continue
			}
			own, ok := fanOwners(info), true
			for q := range mine {
				o := c.byPID(own[q])
				if own[q] == p.pid || o == nil || !o.alive() {
					ok = false
				}
			}
			if ok {
				gapDone <- time.Since(term)
				return
			}
		}
		gapDone <- -1
	}()

	if !p.waitExit(c.grace + 30*time.Second) {
		f.err = fmt.Errorf("did not exit within %s of SIGTERM", c.grace+30*time.Second)
		return f
	}
	exit := time.Now()
	f.stop = exit.Sub(term)

	// Progress: every instance of its partitions still running at the
	// exit must commit again (a newer lastUpdatedTime) or end.
	stallDone := make(chan time.Duration, 1)
	go func() {
		waiting := map[*fanInst]bool{}
		for _, in := range insts {
			if mine[in.part] && in.started.Load() != 0 && in.done.Load() == 0 {
				waiting[in] = true
			}
		}
		first := true
		var worst time.Duration
		for deadline := term.Add(c.grace + time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			for in := range waiting {
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				st, err := c.status(rctx, in.id, false)
				cancel()
				if err != nil {
					continue
				}
				switch {
				case first && fanTerminal(st.RuntimeStatus) && !st.LastUpdatedTime.After(exit):
					delete(waiting, in) // it had ended: nothing to wait for
				case fanTerminal(st.RuntimeStatus) || st.LastUpdatedTime.After(exit):
					worst = max(worst, time.Since(term))
					delete(waiting, in)
				}
			}
			if first {
				f.waiting = len(waiting)
				first = false
			}
			if len(waiting) == 0 {
				stallDone <- worst
				return
			}
		}
		stallDone <- -1
	}()

	np, err := c.launch(newName)
	if err != nil {
		f.err = fmt.Errorf("replacement %s: %v", newName, err)
		return f
	}
	f.ready = time.Since(term)
	_ = np
	f.gap = <-gapDone
	f.stall = <-stallDone
	f.after = max(f.stall-f.stop, 0)
	if f.gap < 0 || f.stall < 0 {
		f.err = fmt.Errorf("partitions %v not owned again (%v) or their instances not progressing (%v) within %s of SIGTERM", f.parts, f.gap >= 0, f.stall >= 0, c.grace+time.Minute)
	}
	return f
}
