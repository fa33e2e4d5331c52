package azurestorage

// Tests of carried activity results (messages.go: carry, materialize; see
// "Carried results" in docs/storage-layout.md). An activity whose instance
// lives in a partition this worker serves by hand neither sends its result
// nor deletes its own message: the result goes into the instance's buffer
// with inMsg.carrier = the activity message, which stays locked (renewed)
// until the episode that consumes the result commits and deleteMsg deletes
// it. Whatever hands the result back (abandon, a lost partition, Close, a
// failed episode) materializes it: enqueues it visible, then deletes the
// carrier; if that enqueue fails, the carrier is released instead.
//
// Each test drives real workers on the package's Azurite and stops or
// disturbs them at one point between the activity's end and the commit
// that consumes its result: a crash before and after that commit, an
// abandon, a lost partition, Close, a failed enqueue, an orchestrator that
// keeps failing. Tests that need the result to stay buffered drive the
// workers one work item at a time (stepper); the others run a Runner.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/internal/azurite"
	"github.com/dronehub/dronehub/taskhub"
)

// carriedIn lists the carried results among msgs.
func carriedIn(msgs []*inMsg) []*inMsg {
	var out []*inMsg
	for _, m := range msgs {
		if m.carrier != nil {
			out = append(out, m)
		}
	}
	return out
}

// bufferedCarried lists the carried results b buffers for id (waiting for
// an episode, not in one).
func bufferedCarried(b *Backend, id string) []*inMsg {
	b.mu.Lock()
	defer b.mu.Unlock()
	return carriedIn(b.pending[id])
}

// isHeld reports whether b renews m's lock (keepLocks).
func isHeld(b *Backend, m *inMsg) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.held[m]
	return ok
}

// depth is q's approximate message count, invisible messages included.
func depth(ctx context.Context, t *testing.T, q *azqueue.QueueClient) int {
	t.Helper()
	n, err := queueDepth(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// peekEnvelopes decodes the visible messages of q (at most 32).
func peekEnvelopes(ctx context.Context, t *testing.T, q *azqueue.QueueClient) []envelope {
	t.Helper()
	resp, err := q.PeekMessages(ctx, &azqueue.PeekMessagesOptions{NumberOfMessages: to.Ptr[int32](32)})
	if err != nil {
		t.Fatal(err)
	}
	var out []envelope
	for _, m := range resp.Messages {
		var env envelope
		if m.MessageText == nil || json.Unmarshal([]byte(*m.MessageText), &env) != nil {
			t.Fatalf("unreadable message in %s: %v", queueName(q), m.MessageText)
		}
		out = append(out, env)
	}
	return out
}

// outboxRows counts id's outbox rows.
func outboxRows(ctx context.Context, t *testing.T, b *Backend, id string) int {
	t.Helper()
	n := 0
	for _, k := range rowKeys(ctx, t, b, id) {
		if strings.HasPrefix(k, outboxRKPre) {
			n++
		}
	}
	return n
}

// onceRegistry: "Once" calls the activity "A" and returns its result
// ("a"); ran counts A's runs.
func onceRegistry(ran *runs) *task.TaskRegistry {
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Once", func(c *task.OrchestrationContext) (any, error) {
		var out string
		err := c.CallActivity("A").Await(&out)
		return out, err
	})
	r.AddActivityN("A", func(task.ActivityContext) (any, error) {
		ran.add("A")
		return "a", nil
	})
	return r
}

// actFetch is one fetch of an activity message.
type actFetch struct {
	at           time.Time
	msgID        string // the queue message's id
	dequeueCount int64
	byHand       bool
}

// actFetches records the fetches of one activity message (by name and input).
type actFetches struct {
	name, input string
	mu          sync.Mutex
	all         []actFetch
}

func (f *actFetches) see(m *inMsg) {
	ts := m.event.GetTaskScheduled()
	if ts.GetName() != f.name || ts.GetInput().GetValue() != f.input {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.all = append(f.all, actFetch{at: time.Now(), msgID: m.msgID, dequeueCount: m.dequeueCount, byHand: m.env.Hand == 1 && m.dequeueCount == 1})
}

func (f actFetch) String() string {
	return fmt.Sprintf("{msg %.8s… dequeue count %d by hand %v at %s}", f.msgID, f.dequeueCount, f.byHand, f.at.Format("15:04:05.000"))
}

func (f *actFetches) get() []actFetch {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.all)
}

// stepper drives a backend's workers one work item at a time, as
// TestCacheAbandonedEpisode does, so that a carried result can be held
// buffered (no fetch takes it) or in a fetched work item at will.
//
// Such a worker stands for one whose orchestration poller runs but is
// between fetches (its slots busy). Results are carried only while the
// poller looked for work within MaxPollInterval+1s (handDeliverable); the
// stepper's activity hook notes "the poller is alive" as each activity is
// handed out, so that its result is carried however long the test's own
// steps took.
type stepper struct {
	t      *testing.T
	ctx    context.Context
	b      *Backend
	ow, aw dtbackend.TaskWorker
}

func newStepper(t *testing.T, ctx context.Context, b *Backend, r *task.TaskRegistry, see func(*inMsg)) *stepper {
	exec := task.NewTaskExecutor(r)
	b.hooks.dropActivity = func(m *inMsg) bool {
		b.orchPolling.Store(time.Now().UnixNano())
		if see != nil {
			see(m)
		}
		return false
	}
	return &stepper{t: t, ctx: ctx, b: b,
		ow: dtbackend.NewOrchestrationWorker(b, exec, quietLogger()),
		aw: dtbackend.NewActivityTaskWorker(b, exec, quietLogger())}
}

// step fetches one work item with w, which runs it in the background, and
// waits until done holds.
func (s *stepper) step(w dtbackend.TaskWorker, what string, done func() bool) {
	s.t.Helper()
	if ok, err := w.ProcessNext(s.ctx); !ok || err != nil {
		s.t.Fatalf("%s: fetched %v, %v", what, ok, err)
	}
	poll(s.t, 20*time.Second, what, done)
}

// firstEpisode runs id's first episode (it schedules its activities) and
// waits until it is committed and cached.
func (s *stepper) firstEpisode(id string) {
	s.t.Helper()
	s.step(s.ow, "the first episode", func() bool {
		st := cachedEntry(s.b, id)
		return st != nil && len(st.sent) == 1 && settled(s.b, id)
	})
}

// carry runs one activity of id and requires its result to be carried:
// buffered for id, n carried results in all.
func (s *stepper) carry(id string, n int) {
	s.t.Helper()
	s.step(s.aw, fmt.Sprintf("the activity's result to be carried (%d buffered)", n), func() bool {
		return len(bufferedCarried(s.b, id)) >= n
	})
	if got := bufferedCarried(s.b, id); len(got) != n {
		s.t.Fatalf("%d carried results buffered for %s, want %d", len(got), id, n)
	}
}

// startExecRunner is startRunner with an executor of the test's.
func startExecRunner(t *testing.T, b dtbackend.Backend, exec dtbackend.Executor, parallelism int32) {
	t.Helper()
	ow := dtbackend.NewOrchestrationWorker(b, exec, quietLogger(), dtbackend.WithMaxParallelism(parallelism))
	aw := dtbackend.NewActivityTaskWorker(b, exec, quietLogger(), dtbackend.WithMaxParallelism(parallelism))
	w := taskhub.NewRunner(b, quietSlog(), ow, aw)
	if err := w.Start(context.Background()); err != nil {
		t.Fatalf("start worker: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := w.Shutdown(ctx); err != nil {
			t.Errorf("shut down worker: %v", err)
		}
	})
}

// queueProxy stands between a backend and Azurite's queue service: it
// counts requests by operation and queue, and while armed answers 403 to
// enqueues into one queue (not transient: neither the SDK nor the
// backend's work-item retries try again).
type queueProxy struct {
	queueURL string // the queue endpoint through the proxy
	srv      *azurite.Server

	mu     sync.Mutex
	counts map[string]int // "queue.enqueue <queue name>" -> requests
	fail   string         // enqueues to this queue fail
	failed int
}

func newQueueProxy(t *testing.T) *queueProxy {
	t.Helper()
	srv := azr.Get(t)
	target, err := url.Parse(srv.QueueEndpoint())
	if err != nil {
		t.Fatal(err)
	}
	p := &queueProxy{srv: srv, counts: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: target.Scheme, Host: target.Host})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := OperationKind("queue", r)
		// /<account>/<queue>/messages[/<id>]
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
		q := ""
		if len(parts) > 1 {
			q = parts[1]
		}
		p.mu.Lock()
		p.counts[kind+" "+q]++
		refuse := kind == "queue.enqueue" && q != "" && q == p.fail
		if refuse {
			p.failed++
		}
		p.mu.Unlock()
		if refuse {
			w.Header().Set("x-ms-error-code", "AuthorizationFailure")
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationFailure</Code><Message>enqueue refused by the test</Message></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	p.queueURL = hs.URL + target.Path
	return p
}

// connectionString is Azurite's, with the queue service behind the proxy.
func (p *queueProxy) connectionString() string {
	return fmt.Sprintf("DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=%s;QueueEndpoint=%s;TableEndpoint=%s;",
		azurite.AccountName, azurite.AccountKey, p.srv.BlobEndpoint(), p.queueURL, p.srv.TableEndpoint())
}

// failEnqueues makes enqueues into queue fail ("" stops it).
func (p *queueProxy) failEnqueues(queue string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail = queue
}

func (p *queueProxy) refused() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}

// count is how many requests of kind ("queue.enqueue", ...) went to queue.
func (p *queueProxy) count(kind, queue string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[kind+" "+queue]
}

// reset forgets the counts so far.
func (p *queueProxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.counts)
}

func (p *queueProxy) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var keys []string
	for k, n := range p.counts {
		if !strings.HasPrefix(k, "queue.dequeue ") && !strings.HasPrefix(k, "queue.get ") && !strings.HasPrefix(k, "queue.peek ") {
			keys = append(keys, fmt.Sprintf("%s=%d", k, n))
		}
	}
	slices.Sort(keys)
	return strings.Join(keys, ", ")
}

// TestCarriedChainCounts: a 5-step chain on one worker (the client on a
// backend of its own). Every result is carried: each episode after the
// first consumes exactly one carried result, and the worker's only
// enqueues are the five activity messages (none into the control queue:
// no result is ever sent). Each commit deletes its carrier (five deletes
// in the work-item queue, one — the start — in the control queue, no
// release or renewal), so both queues are empty at the end, and each
// activity ran once.
func TestCarriedChainCounts(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	proxy := newQueueProxy(t)
	// No lease round during the test (it measures queues when busy).
	b := openTest(t, Options{HubName: hub, Partitions: 1, ConnectionString: proxy.connectionString(), LeaseDuration: 5 * time.Minute})
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id, steps = "carried-chain", 5
	type episode struct{ msgs, carried int }
	var (
		mu       sync.Mutex
		episodes []episode
	)
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		if wi.InstanceID != id {
			return
		}
		it := itemOf(wi)
		mu.Lock()
		episodes = append(episodes, episode{len(it.msgs), len(carriedIn(it.msgs))})
		mu.Unlock()
	}
	var ran runs
	startRunner(t, b, countedChain(steps, &ran), 4)
	waitIdlePollers(t, b)
	before := b.Counter().Snapshot()
	proxy.reset()
	if _, err := dtbackend.NewTaskHubClient(c).ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID(id), api.WithInput(0)); err != nil {
		t.Fatal(err)
	}
	if md := awaitDone(t, ctx, c, id, 45*time.Second); md.SerializedOutput != fmt.Sprint(steps) {
		t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
	}
	poll(t, 10*time.Second, "the last episode to finish and both queues to be empty", func() bool {
		return settled(b, id) && depth(ctx, t, c.work) == 0 && depth(ctx, t, c.control[0]) == 0
	})
	d := countsSince(before, b.Counter())
	mu.Lock()
	eps := slices.Clone(episodes)
	mu.Unlock()
	work, control := c.names.workItems, c.names.controlQueue(0)
	t.Logf("worker's queue requests (dequeues, peeks and properties left out): %s; episodes (messages, carried): %v", proxy, eps)
	if d["queue.enqueue"] != steps {
		t.Errorf("the worker made %d enqueues, want %d (one per activity; results are carried, not sent)", d["queue.enqueue"], steps)
	}
	if n := proxy.count("queue.enqueue", control); n != 0 {
		t.Errorf("%d enqueues into the control queue: a result was sent instead of carried", n)
	}
	if n := proxy.count("queue.enqueue", work); n != steps {
		t.Errorf("%d enqueues into the work-item queue, want %d", n, steps)
	}
	if n := proxy.count("queue.delete", work); n != steps {
		t.Errorf("%d deletes in the work-item queue, want %d (each carrier deleted after the commit consuming its result)", n, steps)
	}
	if n := proxy.count("queue.delete", control); n != 1 {
		t.Errorf("%d deletes in the control queue, want 1 (the start)", n)
	}
	if n := proxy.count("queue.update", work) + proxy.count("queue.update", control); n != 0 {
		t.Errorf("%d message updates (releases or renewals), want none", n)
	}
	if len(eps) != steps+1 || eps[0] != (episode{1, 0}) {
		t.Fatalf("episodes (messages, carried) %v: want %d, the first the start", eps, steps+1)
	}
	for i, e := range eps[1:] {
		if e != (episode{1, 1}) {
			t.Errorf("episode %d: %d messages, %d carried; want one carried result", i+2, e.msgs, e.carried)
		}
	}
	checkRanOnce(t, &ran, steps, "")
	if counts := checkHistory(t, id, historyOf(ctx, t, c, id)); counts["TaskCompleted"] != steps {
		t.Errorf("history: %v", counts)
	}
	noDeadLetters(ctx, t, c)
}

// crashScenario arms a crash hook on the first episode of id that
// consumes a carried result, and records its carrier's lock end.
type crashScenario struct {
	id      string
	lock    time.Duration
	mu      sync.Mutex
	armed   *inMsg // the carrier of the episode in flight, if it is the one to crash
	crashed int
	lockEnd time.Time // when the crashed episode's carrier's last lock ran out
}

func (s *crashScenario) workItem(wi *dtbackend.OrchestrationWorkItem) {
	if string(wi.InstanceID) != s.id {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.armed = nil
	if c := carriedIn(itemOf(wi).msgs); len(c) > 0 && s.crashed == 0 {
		s.armed = c[0].carrier
	}
}

func (s *crashScenario) crash(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id != s.id || s.armed == nil || s.crashed > 0 {
		return false
	}
	s.crashed++
	s.lockEnd = s.armed.lockedAt().Add(s.lock)
	return true
}

func (s *crashScenario) result() (int, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.crashed, s.lockEnd
}

// TestCarriedCrashBeforeCommit: the worker "dies" in the episode that
// consumes Inc(0)'s carried result, before its commit (beforeCommit; the
// work item's messages, the carrier included, are renewed no more). The
// activity message reappears when its lock runs out — not before — and
// Inc(0) runs again; the instance completes with one TaskCompleted per
// task.
//
// How often Inc(0) runs is exact, and depends on the instance cache:
//   - without it, twice: the first run, and the run of the carrier's
//     redelivery (at-least-once, as for any activity whose worker died);
//   - with it (the default), three times: the cached episode that
//     scheduled Inc(0) left its outbox row for the next commit to delete
//     (cache.go), and that commit is the one that crashed; so the episode
//     built on the carrier's redelivered result reads the partition, finds
//     the row and sends Inc(0) again (a new queue message, same envelope
//     id), and that third run's result is dropped as a copy. Both re-runs
//     are documented on their own (storage-layout.md, "The instance
//     cache" and "Carried results"); together they make one crash cost two
//     extra runs.
func TestCarriedCrashBeforeCommit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		cache int
		runs  int
	}{
		{"instance cache", 0, 3},
		{"no instance cache", -1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const lock = 2 * time.Second
			b := openTest(t, Options{Partitions: 1, LockTimeout: lock, InstanceCache: tc.cache})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			const id = "crash-before-commit"
			sc := &crashScenario{id: id, lock: lock}
			b.hooks.workItem = sc.workItem
			b.hooks.beforeCommit = sc.crash
			inc0 := &actFetches{name: "Inc", input: "0"}
			b.hooks.dropActivity = func(m *inMsg) bool { inc0.see(m); return false }
			var ran runs
			startRunner(t, b, countedChain(2, &ran), 4)
			waitIdlePollers(t, b)
			if _, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID(id), api.WithInput(0)); err != nil {
				t.Fatal(err)
			}
			if md := awaitDone(t, ctx, b, id, 45*time.Second); md.SerializedOutput != "2" {
				t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
			}
			poll(t, 20*time.Second, "every copy to be consumed and both queues to be empty", func() bool {
				return settled(b, id) && depth(ctx, t, b.work) == 0 && depth(ctx, t, b.control[0]) == 0
			})
			crashed, lockEnd := sc.result()
			if crashed != 1 {
				t.Fatalf("%d crashes of an episode consuming a carried result, want 1", crashed)
			}
			f := inc0.get()
			t.Logf("Inc(0) fetches: %v; runs %d; the carrier's lock ran out at %s", f, ran.get("Inc(0)"), lockEnd.Format("15:04:05.000"))
			if len(f) < 2 || !f[0].byHand {
				t.Fatalf("Inc(0) fetches %+v: want a hand delivery, then the carrier's redelivery", f)
			}
			if f[1].msgID != f[0].msgID || f[1].dequeueCount != 2 || f[1].byHand {
				t.Errorf("Inc(0)'s second fetch %+v: want the same queue message (the carrier), dequeued from the queue (count 2)", f[1])
			}
			// The lock's visibility was set by a request sent at lockedAt, so
			// it ended no earlier (small slack for clocks and rounding).
			if early := lockEnd.Sub(f[1].at); early > 250*time.Millisecond {
				t.Errorf("the carrier came back %s before its lock ran out: a dead worker's carrier must wait for LockTimeout", early)
			}
			if n := ran.get("Inc(0)"); n != tc.runs {
				t.Errorf("Inc(0) ran %d times, want %d (see the test's comment)", n, tc.runs)
			}
			if tc.runs == 3 && (len(f) != 3 || f[2].msgID == f[0].msgID) {
				t.Errorf("Inc(0) fetches %+v: want a third, a new queue message (the re-sent outbox)", f)
			}
			if n := ran.get("Inc(1)"); n != 1 {
				t.Errorf("Inc(1) ran %d times, want 1", n)
			}
			if counts := checkHistory(t, id, historyOf(ctx, t, b, id)); counts["TaskCompleted"] != 2 {
				t.Errorf("history: %v", counts)
			}
			noDeadLetters(ctx, t, b)
		})
	}
}

// TestCarriedCrashAfterCommit: the worker "dies" right after the commit
// that consumed Inc(0)'s carried result (afterCommit: before the outbox —
// Inc(1) — is sent and before the carrier is deleted). The carrier was
// not deleted: it reappears after LockTimeout and Inc(0) runs again; the
// episode built on its second result reads the partition, sends the
// outbox again (Inc(1)) and drops the result as a copy (deleting the
// carrier), so the history keeps one TaskCompleted per task; the instance
// completes, Inc(0) having run twice and Inc(1) once.
func TestCarriedCrashAfterCommit(t *testing.T) {
	t.Parallel()
	const lock = 2 * time.Second
	var copies atomic.Int64
	b := openTest(t, Options{Partitions: 1, LockTimeout: lock, Logger: slog.New(logWatch{substr: "dropping a copy", n: &copies})})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id = "crash-after-commit"
	sc := &crashScenario{id: id, lock: lock}
	b.hooks.workItem = sc.workItem
	b.hooks.afterCommit = sc.crash
	inc0 := &actFetches{name: "Inc", input: "0"}
	b.hooks.dropActivity = func(m *inMsg) bool { inc0.see(m); return false }
	var ran runs
	startRunner(t, b, countedChain(2, &ran), 4)
	waitIdlePollers(t, b)
	if _, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID(id), api.WithInput(0)); err != nil {
		t.Fatal(err)
	}
	if md := awaitDone(t, ctx, b, id, 45*time.Second); md.SerializedOutput != "2" {
		t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
	}
	poll(t, 20*time.Second, "the copy to be dropped and both queues to be empty", func() bool {
		return settled(b, id) && copies.Load() > 0 && depth(ctx, t, b.work) == 0 && depth(ctx, t, b.control[0]) == 0
	})
	crashed, lockEnd := sc.result()
	if crashed != 1 {
		t.Fatalf("%d crashes after the commit of a carried result, want 1", crashed)
	}
	f := inc0.get()
	t.Logf("Inc(0) fetches: %v; the carrier's lock ran out at %s", f, lockEnd.Format("15:04:05.000"))
	if len(f) != 2 || !f[0].byHand || f[1].msgID != f[0].msgID || f[1].dequeueCount != 2 {
		t.Fatalf("Inc(0) fetches %+v: want a hand delivery, then the same queue message (the carrier, not deleted) from the queue", f)
	}
	if early := lockEnd.Sub(f[1].at); early > 250*time.Millisecond {
		t.Errorf("the carrier came back %s before its lock ran out", early)
	}
	if n := ran.get("Inc(0)"); n != 2 {
		t.Errorf("Inc(0) ran %d times, want 2 (the carrier outlived the commit)", n)
	}
	if n := ran.get("Inc(1)"); n != 1 {
		t.Errorf("Inc(1) ran %d times, want 1", n)
	}
	if counts := checkHistory(t, id, historyOf(ctx, t, b, id)); counts["TaskCompleted"] != 2 || counts["TaskScheduled"] != 2 {
		t.Errorf("history: %v", counts)
	}
	noDeadLetters(ctx, t, b)
}

// TestCarriedAbandon: an episode that took a carried result is handed
// back unprocessed (AbandonOrchestrationWorkItem, as a worker shutting
// down does). The result is materialized at once — a visible message in
// the control queue with the result's id — and its carrier is gone from
// the work-item queue; the next episode consumes it, and A ran once.
func TestCarriedAbandon(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 1})
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id = "carried-abandon"
	var ran runs
	var actID string
	s := newStepper(t, ctx, b, onceRegistry(&ran), func(m *inMsg) { actID = m.env.ID })
	if _, err := dtbackend.NewTaskHubClient(c).ScheduleNewOrchestration(ctx, "Once", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	s.firstEpisode(id)
	s.carry(id, 1)
	wi, err := b.GetOrchestrationWorkItem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if msgs := itemOf(wi).msgs; len(msgs) != 1 || len(carriedIn(msgs)) != 1 {
		t.Fatalf("the episode has %d messages, %d carried; want the carried result", len(msgs), len(carriedIn(msgs)))
	}
	if err := b.AbandonOrchestrationWorkItem(ctx, wi); err != nil {
		t.Fatal(err)
	}
	// Materialized before the abandon returned.
	envs := peekEnvelopes(ctx, t, c.control[0])
	// Hand 1 and Benign 1: its carried delivery is recorded, and so is its
	// benign end, so the abandon does not count toward MaxDequeueCount.
	if len(envs) != 1 || envs[0].ID != actID+"-result" || envs[0].Hand != 1 || envs[0].Benign != 1 {
		t.Fatalf("control queue after the abandon: %+v; want the result, visible (id %s-result), its carried delivery recorded as benign", envs, actID)
	}
	if e, err := dtbackend.UnmarshalHistoryEvent(envs[0].Event); err != nil || e.GetTaskCompleted() == nil {
		t.Fatalf("the materialized message holds %v (%v), want A's TaskCompleted", e, err)
	}
	if n := depth(ctx, t, c.work); n != 0 {
		t.Fatalf("%d messages in the work-item queue after the abandon, want 0 (the carrier deleted)", n)
	}
	s.step(s.ow, "the materialized result's episode", func() bool {
		md, err := c.GetOrchestrationMetadata(ctx, id)
		return err == nil && md.IsComplete() && settled(b, id)
	})
	if md, _ := c.GetOrchestrationMetadata(ctx, id); md.SerializedOutput != `"a"` {
		t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
	}
	poll(t, 10*time.Second, "both queues to be empty", func() bool {
		return depth(ctx, t, c.work) == 0 && depth(ctx, t, c.control[0]) == 0
	})
	if n := ran.get("A"); n != 1 {
		t.Errorf("A ran %d times, want 1", n)
	}
	if counts := checkHistory(t, id, historyOf(ctx, t, c, id)); counts["TaskCompleted"] != 1 {
		t.Errorf("history: %v", counts)
	}
	noDeadLetters(ctx, t, c)
}

// TestCarriedFencedCommit: the episode that consumes Inc(0)'s carried
// result fails its commit (another writer changed the status row: the
// fence, ErrWorkItemLockLost). Its abandon is benign (a failed commit) and
// hands the result back a second later: materialized, delayed 1 s, into
// the control queue under the result's id, its carrier deleted. The rerun
// reads the partition and consumes it; each activity ran once and each
// result is recorded once.
func TestCarriedFencedCommit(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 1})
	other := openTest(t, Options{HubName: hub, Partitions: 1}) // the other writer, and the client
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id = "carried-fenced"
	type delivery struct {
		carried      bool
		envID        string
		dequeueCount int64
		at           time.Time
	}
	var (
		mu         sync.Mutex
		deliveries []delivery // of Inc(0)'s result
		armed      bool
		touched    time.Time
	)
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		if wi.InstanceID != id {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		armed = false
		for _, m := range itemOf(wi).msgs {
			if tc := m.event.GetTaskCompleted(); tc != nil && tc.GetTaskScheduledId() == 0 {
				deliveries = append(deliveries, delivery{m.carrier != nil, m.env.ID, m.dequeueCount, time.Now()})
				armed = m.carrier != nil && touched.IsZero()
			}
		}
	}
	b.hooks.beforeCommit = func(iid string) bool {
		mu.Lock()
		defer mu.Unlock()
		if iid == id && armed {
			armed = false
			touchSentinel(ctx, t, other, id)
			touched = time.Now()
		}
		return false
	}
	spy := spyOn(b)
	var ran runs
	startRunner(t, spy, countedChain(2, &ran), 4)
	waitIdlePollers(t, b)
	if _, err := dtbackend.NewTaskHubClient(other).ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID(id), api.WithInput(0)); err != nil {
		t.Fatal(err)
	}
	if md := awaitDone(t, ctx, other, id, 45*time.Second); md.SerializedOutput != "2" {
		t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
	}
	poll(t, 10*time.Second, "the last episode to finish and both queues to be empty", func() bool {
		return settled(b, id) && depth(ctx, t, b.work) == 0 && depth(ctx, t, b.control[0]) == 0
	})
	mu.Lock()
	got, at := slices.Clone(deliveries), touched
	mu.Unlock()
	if at.IsZero() {
		t.Fatalf("the scenario did not happen: deliveries of Inc(0)'s result %+v", got)
	}
	if errs := spy.failed(id); len(errs) != 1 || !errors.Is(errs[0], dtbackend.ErrWorkItemLockLost) {
		t.Fatalf("commit errors %v: want exactly one ErrWorkItemLockLost", errs)
	}
	// The materialized message's first dequeue counts 2: its carried
	// delivery is recorded in it (Hand).
	if len(got) != 2 || !got[0].carried || got[1].carried || got[1].envID != got[0].envID || got[1].dequeueCount != 2 {
		t.Fatalf("deliveries of Inc(0)'s result %+v: want the carried one, then the materialized message (same id, its first dequeue counting 2)", got)
	}
	// Handed back a second after the failed commit (whole seconds of
	// visibility, so at least about a second later).
	if gap := got[1].at.Sub(at); gap < 800*time.Millisecond {
		t.Errorf("the materialized result came back %s after the failed commit, want about 1s (the delay after a failed commit)", gap)
	}
	checkRanOnce(t, &ran, 2, "")
	if counts := checkHistory(t, id, historyOf(ctx, t, other, id)); counts["TaskCompleted"] != 2 {
		t.Errorf("history: %v", counts)
	}
	noDeadLetters(ctx, t, b)
}

// TestCarriedPartitionLoss: the worker loses the instance's partition
// while A's carried result is buffered. The result is materialized into
// the control queue (its carrier deleted), and the worker that takes the
// partition completes the instance; A ran once.
//
//   - buffered: no episode has the instance; the lease round that notices
//     the loss hands the buffer back (dropPending).
//   - behind an episode in flight: the instance is in an episode when the
//     result arrives and when the partition goes; dropPending leaves the
//     result buffered behind it, and when the episode ends the poller
//     finds it orphaned (takeReady) and hands it back.
func TestCarriedPartitionLoss(t *testing.T) {
	t.Parallel()
	t.Run("buffered", func(t *testing.T) {
		t.Parallel()
		hub := testHub(t)
		opts := Options{HubName: hub, Partitions: 1, LeaseDuration: 3 * time.Second, WorkerID: "w1"}
		w1 := openTest(t, opts)
		c := openTest(t, Options{HubName: hub, Partitions: 1})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		const id = "lost-buffered"
		var ran runs
		r := onceRegistry(&ran)
		s := newStepper(t, ctx, w1, r, nil)
		if _, err := dtbackend.NewTaskHubClient(c).ScheduleNewOrchestration(ctx, "Once", api.WithInstanceID(id)); err != nil {
			t.Fatal(err)
		}
		s.firstEpisode(id)
		s.carry(id, 1)
		giveLease(ctx, t, c, "w2")
		poll(t, 10*time.Second, "w1 to notice the loss", func() bool { return len(w1.lm.owners()) == 0 })
		poll(t, 10*time.Second, "the result to be materialized and its carrier deleted", func() bool {
			return len(bufferedCarried(w1, id)) == 0 && peekCount(ctx, t, c.control[0]) == 1 && depth(ctx, t, c.work) == 0
		})
		opts.WorkerID = "w2"
		w2 := openTest(t, opts)
		startRunner(t, w2, r, 2)
		if md := awaitDone(t, ctx, c, id, 30*time.Second); md.SerializedOutput != `"a"` {
			t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
		}
		if n := ran.get("A"); n != 1 {
			t.Errorf("A ran %d times, want 1", n)
		}
		if counts := checkHistory(t, id, historyOf(ctx, t, c, id)); counts["TaskCompleted"] != 1 {
			t.Errorf("history: %v", counts)
		}
		noDeadLetters(ctx, t, c)
	})

	t.Run("behind an episode in flight", func(t *testing.T) {
		t.Parallel()
		hub := testHub(t)
		opts := Options{HubName: hub, Partitions: 1, LeaseDuration: 3 * time.Second, WorkerID: "w1"}
		w1 := openTest(t, opts)
		c := openTest(t, Options{HubName: hub, Partitions: 1})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		const id = "lost-in-flight"
		var ran runs
		holdA := make(chan struct{})
		entered, unblock := make(chan struct{}), make(chan struct{})
		var once sync.Once
		r := task.NewTaskRegistry()
		// GoThenA starts A, waits for "go", then for A. The first episode
		// that sees "go" blocks until the test unblocks it.
		r.AddOrchestratorN("GoThenA", func(oc *task.OrchestrationContext) (any, error) {
			a := oc.CallActivity("A")
			if err := oc.WaitForSingleEvent("go", -1).Await(nil); err != nil {
				return nil, err
			}
			if !oc.IsReplaying {
				once.Do(func() {
					close(entered)
					select {
					case <-unblock:
					case <-ctx.Done():
					}
				})
			}
			var out string
			err := a.Await(&out)
			return out, err
		})
		r.AddActivityN("A", func(task.ActivityContext) (any, error) {
			ran.add("A")
			select {
			case <-holdA:
			case <-ctx.Done():
			}
			return "a", nil
		})
		startRunner(t, w1, r, 4)
		client := dtbackend.NewTaskHubClient(c)
		if _, err := client.ScheduleNewOrchestration(ctx, "GoThenA", api.WithInstanceID(id)); err != nil {
			t.Fatal(err)
		}
		poll(t, 20*time.Second, "A to start", func() bool { return ran.get("A") == 1 && settled(w1, id) })
		if err := client.RaiseEvent(ctx, id, "go"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-entered:
		case <-ctx.Done():
			t.Fatal("the episode with \"go\" never ran")
		}
		close(holdA)
		poll(t, 10*time.Second, "A's result to be carried behind the episode in flight", func() bool { return len(bufferedCarried(w1, id)) == 1 })
		giveLease(ctx, t, c, "w2")
		poll(t, 10*time.Second, "w1 to notice the loss", func() bool { return len(w1.lm.owners()) == 0 })
		if n, v := len(bufferedCarried(w1, id)), peekCount(ctx, t, c.control[0]); n != 1 || v != 0 {
			t.Errorf("after the loss, with the instance in flight: %d carried results buffered, %d visible control messages; "+
				"want the result still buffered (dropPending leaves instances in flight)", n, v)
		}
		close(unblock)
		poll(t, 10*time.Second, "the episode to end and the orphaned result to be materialized, its carrier deleted", func() bool {
			return settled(w1, id) && peekCount(ctx, t, c.control[0]) == 1 && depth(ctx, t, c.work) == 0
		})
		opts.WorkerID = "w2"
		w2 := openTest(t, opts)
		startRunner(t, w2, r, 2)
		if md := awaitDone(t, ctx, c, id, 30*time.Second); md.SerializedOutput != `"a"` {
			t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
		}
		if n := ran.get("A"); n != 1 {
			t.Errorf("A ran %d times, want 1", n)
		}
		counts := checkHistory(t, id, historyOf(ctx, t, c, id))
		if counts["TaskCompleted"] != 1 || counts["EventRaised"] != 1 {
			t.Errorf("history: %v", counts)
		}
		noDeadLetters(ctx, t, c)
	})
}

// TestCarriedClose: Close with a carried result buffered materializes it
// (the result visible in the control queue, the carrier deleted, the
// cached instance's sent outbox row deleted); a second worker on the hub
// completes the instance, and A ran once.
func TestCarriedClose(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 1})
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id = "carried-close"
	var ran runs
	r := onceRegistry(&ran)
	s := newStepper(t, ctx, b, r, nil)
	if _, err := dtbackend.NewTaskHubClient(c).ScheduleNewOrchestration(ctx, "Once", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	s.firstEpisode(id)
	s.carry(id, 1)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := peekCount(ctx, t, c.control[0]); n != 1 {
		t.Errorf("%d visible messages in the control queue after Close, want 1 (the materialized result)", n)
	}
	if n := depth(ctx, t, c.work); n != 0 {
		t.Errorf("%d messages in the work-item queue after Close, want 0 (the carrier deleted)", n)
	}
	if n := outboxRows(ctx, t, c, id); n != 0 {
		t.Errorf("%d outbox rows after Close, want 0 (the next owner would run A again)", n)
	}
	w2 := openTest(t, Options{HubName: hub, Partitions: 1})
	startRunner(t, w2, r, 2)
	if md := awaitDone(t, ctx, c, id, 30*time.Second); md.SerializedOutput != `"a"` {
		t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
	}
	if n := ran.get("A"); n != 1 {
		t.Errorf("A ran %d times, want 1", n)
	}
	if counts := checkHistory(t, id, historyOf(ctx, t, c, id)); counts["TaskCompleted"] != 1 {
		t.Errorf("history: %v", counts)
	}
	noDeadLetters(ctx, t, c)
}

// TestCarriedMaterializeFailure: an abandoned episode's carried result
// cannot be sent (the control queue refuses the enqueue: 403 from a proxy
// in front of Azurite). The carrier is released at once — visible in the
// work-item queue when the abandon returns, not after LockTimeout — so A
// runs again, and the instance completes with one TaskCompleted.
func TestCarriedMaterializeFailure(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	proxy := newQueueProxy(t)
	const lock = 30 * time.Second // a carrier left to expire would not be seen within the test
	b := openTest(t, Options{HubName: hub, Partitions: 1, ConnectionString: proxy.connectionString(), LockTimeout: lock})
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id = "materialize-fails"
	var ran runs
	s := newStepper(t, ctx, b, onceRegistry(&ran), nil)
	if _, err := dtbackend.NewTaskHubClient(c).ScheduleNewOrchestration(ctx, "Once", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	s.firstEpisode(id)
	s.carry(id, 1)
	wi, err := b.GetOrchestrationWorkItem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msgs := itemOf(wi).msgs
	if len(msgs) != 1 || len(carriedIn(msgs)) != 1 {
		t.Fatalf("the episode has %d messages, %d carried; want the carried result", len(msgs), len(carriedIn(msgs)))
	}
	proxy.failEnqueues(c.names.controlQueue(0))
	err = b.AbandonOrchestrationWorkItem(ctx, wi)
	proxy.failEnqueues("")
	t.Logf("abandon: %v", err)
	if proxy.refused() == 0 {
		t.Fatal("no enqueue was refused: the scenario did not happen")
	}
	if isHeld(b, msgs[0].carrier) {
		t.Error("the carrier is still held (renewed) after its result could not be sent")
	}
	if n := peekCount(ctx, t, c.work); n != 1 {
		t.Fatalf("%d visible messages in the work-item queue after the failed materialize, want 1 (the carrier released at once)", n)
	}
	if n := depth(ctx, t, c.control[0]); n != 0 {
		t.Fatalf("%d messages in the control queue, want 0 (the result was not sent)", n)
	}
	s.step(s.aw, "A to run again", func() bool { return ran.get("A") == 2 })
	s.step(s.ow, "the episode of A's second result", func() bool {
		md, err := c.GetOrchestrationMetadata(ctx, id)
		return err == nil && md.IsComplete() && settled(b, id)
	})
	if md, _ := c.GetOrchestrationMetadata(ctx, id); md.SerializedOutput != `"a"` {
		t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
	}
	poll(t, 10*time.Second, "both queues to be empty", func() bool {
		return depth(ctx, t, c.work) == 0 && depth(ctx, t, c.control[0]) == 0
	})
	if n := ran.get("A"); n != 2 {
		t.Errorf("A ran %d times, want 2", n)
	}
	if counts := checkHistory(t, id, historyOf(ctx, t, c, id)); counts["TaskCompleted"] != 1 {
		t.Errorf("history: %v", counts)
	}
	noDeadLetters(ctx, t, c)
}

// TestCarriedMaterializeFailureReleasesTheRest: the abandoned episode
// holds two carried results (a fan-out of A and B whose results both
// arrived before the episode was fetched), and the control queue refuses
// their enqueues. Each carrier must be released — both activities run
// again — and nothing of the episode may stay held: a message this worker
// keeps renewing, and that no episode and no buffer has, stays invisible
// for as long as the worker lives, and its instance waits for it.
//
// It fails (a real bug, reported, production code untouched):
// AbandonOrchestrationWorkItem returns at the first release error, so the
// second carried result is neither materialized nor released, and its
// carrier stays in Backend.held.
func TestCarriedMaterializeFailureReleasesTheRest(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	proxy := newQueueProxy(t)
	const lock = 2 * time.Second
	b := openTest(t, Options{HubName: hub, Partitions: 1, ConnectionString: proxy.connectionString(), LockTimeout: lock})
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id = "materialize-fails-pair"
	var ran runs
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Pair", func(oc *task.OrchestrationContext) (any, error) {
		a, bb := oc.CallActivity("A"), oc.CallActivity("B")
		var x, y string
		if err := a.Await(&x); err != nil {
			return nil, err
		}
		if err := bb.Await(&y); err != nil {
			return nil, err
		}
		return x + y, nil
	})
	for _, name := range []string{"A", "B"} {
		r.AddActivityN(name, func(task.ActivityContext) (any, error) {
			ran.add(name)
			return strings.ToLower(name), nil
		})
	}
	names := map[*inMsg]string{} // carrier -> activity
	var mu sync.Mutex
	s := newStepper(t, ctx, b, r, func(m *inMsg) {
		mu.Lock()
		names[m] = m.event.GetTaskScheduled().GetName()
		mu.Unlock()
	})
	if _, err := dtbackend.NewTaskHubClient(c).ScheduleNewOrchestration(ctx, "Pair", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	s.firstEpisode(id)
	s.carry(id, 1)
	s.carry(id, 2)
	wi, err := b.GetOrchestrationWorkItem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msgs := itemOf(wi).msgs
	if len(msgs) != 2 || len(carriedIn(msgs)) != 2 {
		t.Fatalf("the episode has %d messages, %d carried; want both carried results", len(msgs), len(carriedIn(msgs)))
	}
	proxy.failEnqueues(c.names.controlQueue(0))
	err = b.AbandonOrchestrationWorkItem(ctx, wi)
	proxy.failEnqueues("")
	t.Logf("abandon: %v (%d enqueues refused)", err, proxy.refused())
	if proxy.refused() == 0 {
		t.Fatal("no enqueue was refused: the scenario did not happen")
	}
	var stuck []string
	mu.Lock()
	for _, m := range msgs {
		if isHeld(b, m.carrier) {
			stuck = append(stuck, names[m.carrier])
		}
	}
	mu.Unlock()
	if len(stuck) > 0 {
		// Show it is not only internal state: the carrier stays invisible
		// for twice its lock timeout (it is renewed).
		deadline := time.Now().Add(2 * lock)
		for time.Now().Before(deadline) && peekCount(ctx, t, c.work) < 2 {
			time.Sleep(100 * time.Millisecond) // polling interval
		}
		t.Fatalf("after the abandon of an episode whose first carried result could not be sent, the carrier of %v is "+
			"still held and renewed by this worker (%d of 2 activity messages visible %s later, LockTimeout %s): "+
			"AbandonOrchestrationWorkItem must release every message of the episode (or unhold it, so its lock runs "+
			"out), whatever happens to the others.",
			stuck, peekCount(ctx, t, c.work), 2*lock, lock)
	}
	poll(t, 5*time.Second, "both carriers to be visible", func() bool { return peekCount(ctx, t, c.work) == 2 })
	startRunner(t, b, r, 2)
	if md := awaitDone(t, ctx, c, id, 30*time.Second); md.SerializedOutput != `"ab"` {
		t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
	}
	if a, bb := ran.get("A"), ran.get("B"); a != 2 || bb != 2 {
		t.Errorf("A ran %d times, B %d; want 2 each", a, bb)
	}
	checkHistory(t, id, historyOf(ctx, t, c, id))
	noDeadLetters(ctx, t, c)
}

// failOnResult is an executor whose orchestrator fails (ExecuteOrchestrator
// returns an error, so the worker abandons the work item) on every episode
// that holds an activity's result.
type failOnResult struct {
	dtbackend.Executor
	failed *atomic.Int32
}

func (f failOnResult) ExecuteOrchestrator(ctx context.Context, iid api.InstanceID, oldEvents, newEvents []*dtbackend.HistoryEvent) (*dtbackend.ExecutionResults, error) {
	for _, e := range newEvents {
		if e.GetTaskCompleted() != nil {
			f.failed.Add(1)
			return nil, errors.New("the orchestrator fails on this result (test)")
		}
	}
	return f.Executor.ExecuteOrchestrator(ctx, iid, oldEvents, newEvents)
}

// TestCarriedPoison: an orchestrator that fails on every episode that
// holds A's result. The first delivery is the carried result; its failed
// episode materializes it (delayed, visible) and the rest come from the
// queue. Every failed delivery counts, the carried one included: the
// instance ends Failed, its result dead-lettered, after exactly
// MaxDequeueCount failed episodes:
//
//   - delivery 1, carried (dequeueCount 1): failures() = 0, so at its
//     abandon n = 1 < MaxDequeueCount; released, i.e. materialized into
//     a fresh queue message whose envelope records the delivery (Hand 1)
//     and not as benign;
//   - deliveries 2..MaxDequeueCount come from the queue counting
//     2..MaxDequeueCount; the last has failures()+1 = MaxDequeueCount and
//     is dead-lettered at its abandon.
//
// With MaxDequeueCount 1 the carried delivery itself is dead-lettered at
// its abandon (n = 1): one failed episode, the carrier deleted with it.
// A ran once.
func TestCarriedPoison(t *testing.T) {
	t.Parallel()
	for _, limit := range []int{3, 1} {
		t.Run(fmt.Sprint("MaxDequeueCount ", limit), func(t *testing.T) {
			t.Parallel()
			testCarriedPoison(t, limit)
		})
	}
}

func testCarriedPoison(t *testing.T, limit int) {
	b := openTest(t, Options{Partitions: 1, MaxDequeueCount: limit})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id = "carried-poison"
	type delivery struct {
		carried      bool
		dequeueCount int64
	}
	var (
		mu         sync.Mutex
		deliveries []delivery
		failed     atomic.Int32
	)
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		if wi.InstanceID != id {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, m := range itemOf(wi).msgs {
			if m.event.GetTaskCompleted() != nil {
				deliveries = append(deliveries, delivery{m.carrier != nil, m.dequeueCount})
			}
		}
	}
	var ran runs
	startExecRunner(t, b, failOnResult{Executor: task.NewTaskExecutor(onceRegistry(&ran)), failed: &failed}, 4)
	waitIdlePollers(t, b)
	if _, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Once", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	md := awaitDone(t, ctx, b, id, 45*time.Second)
	if md.RuntimeStatus != api.RUNTIME_STATUS_FAILED || md.FailureDetails.GetErrorType() != DeadLetterErrorType {
		t.Fatalf("status %v, failure %v; want Failed, dead-lettered", md.RuntimeStatus, md.FailureDetails)
	}
	poll(t, 10*time.Second, "the instance to settle", func() bool { return settled(b, id) })
	mu.Lock()
	got := slices.Clone(deliveries)
	mu.Unlock()
	want := []delivery{{true, 1}}
	for n := int64(2); n <= int64(limit); n++ {
		want = append(want, delivery{false, n})
	}
	if !slices.Equal(got, want) {
		t.Errorf("deliveries of A's result (carried, dequeue count) %v, want %v (%d failed episodes, the first carried)", got, want, len(want))
	}
	if n := int(failed.Load()); n != len(want) {
		t.Errorf("the orchestrator failed %d times, want %d", n, len(want))
	}
	dls, err := b.ListDeadLetters(ctx)
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters %+v, %v; want one", dls, err)
	}
	if dl := dls[0]; dl.EventType != "TaskCompleted" || dl.DequeueCount != int64(limit) || dl.InstanceID != id || dl.Queue != b.names.controlQueue(0) {
		t.Errorf("dead letter %+v: want A's TaskCompleted from the control queue, with %d failed deliveries", dl, limit)
	}
	if n := ran.get("A"); n != 1 {
		t.Errorf("A ran %d times, want 1", n)
	}
	poll(t, 10*time.Second, "both queues to be empty (the carrier deleted)", func() bool {
		return depth(ctx, t, b.work) == 0 && depth(ctx, t, b.control[0]) == 0
	})
}

// TestHandStartAfterStatusRow: orchestrations started through the worker's
// own backend (as its HTTP API starts them) get their start message by
// hand, and their first episode must not run before the client's Add of
// the status row: it would commit the row itself, one of the two Adds
// would lose, and a lost commit costs the instance a release and a
// second's delay. No commit may fail.
func TestHandStartAfterStatusRow(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spy := spyOn(b)
	var ran runs
	startRunner(t, spy, countedChain(1, &ran), 4)
	waitIdlePollers(t, b)
	client := dtbackend.NewTaskHubClient(b)
	var byHand atomic.Int32
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		for _, m := range itemOf(wi).msgs {
			if m.event.GetExecutionStarted() != nil && m.env.Hand == 1 {
				byHand.Add(1)
			}
		}
	}
	const n = 10
	for i := range n {
		id := fmt.Sprint("local-start-", i)
		if _, err := client.ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID(api.InstanceID(id)), api.WithInput(0)); err != nil {
			t.Fatal(err)
		}
		if md := awaitDone(t, ctx, b, id, 30*time.Second); md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
			t.Fatalf("%s: %v", id, md.RuntimeStatus)
		}
		if errs := spy.failed(id); len(errs) > 0 {
			t.Fatalf("%s: commits failed: %v", id, errs)
		}
	}
	if byHand.Load() == 0 {
		t.Fatalf("no start was delivered by hand: the test tests nothing")
	}
}
