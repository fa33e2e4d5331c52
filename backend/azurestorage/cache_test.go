package azurestorage

// Tests of the three performance mechanisms: the instance cache (cache.go:
// an episode on an instance this worker committed last reads nothing),
// hand delivery (messages.go: a message this process sends to itself is
// enqueued locked and buffered with the pop receipt of the enqueue) and
// the per-queue poll schedule (orchestration.go: pollState). Each test
// drives real workers on the package's Azurite and disturbs them at one
// point — a status row rewritten behind the worker's back, a copy of a
// consumed message, a lost partition, a worker that dies holding a
// message — and checks that the instance still ends as its committed
// history says, each decision taking effect once.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"google.golang.org/protobuf/proto"

	"github.com/dronehub/dronehub/taskhub"
)

// batchAnswer is an entity-group transaction's answer as the Table
// service writes it: a multipart/mixed body whose one part is the
// changeset, itself multipart/mixed with one HTTP response per operation.
func batchAnswer(batch, changeset string, ops ...[]string) string {
	lines := []string{"--" + batch, "Content-Type: multipart/mixed; boundary=" + changeset, ""}
	for _, op := range ops {
		lines = append(lines, "--"+changeset, "Content-Type: application/http", "Content-Transfer-Encoding: binary", "")
		lines = append(lines, op...)
	}
	lines = append(lines, "--"+changeset+"--", "--"+batch+"--", "")
	return strings.Join(lines, "\r\n")
}

const (
	cannedBatch     = "batchresponse_7d9c3f0e-5b1a-4c2d-8e6f-0a1b2c3d4e5f"
	cannedChangeset = "changesetresponse_1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"
	cannedETag      = `W/"datetime'2030-01-02T03%3A04%3A05.1234567Z'"`
)

var (
	// An UpdateReplace (or a Delete) answers 204 with the row's new ETag.
	replaced204 = []string{
		"HTTP/1.1 204 No Content", "Content-ID: 1", "X-Content-Type-Options: nosniff", "Cache-Control: no-cache",
		"DataServiceVersion: 1.0;", "ETag: " + cannedETag, "", "",
	}
	// An insert with return-content answers 201 with the entity.
	inserted201 = []string{
		"HTTP/1.1 201 Created", "Content-ID: 1", "Cache-Control: no-cache", "DataServiceVersion: 3.0;",
		"Content-Type: application/json;odata=minimalmetadata;streaming=true;charset=utf-8",
		"Preference-Applied: return-content", "ETag: " + cannedETag,
		"Location: http://127.0.0.1/devstoreaccount1/T(PartitionKey='p',RowKey='meta')", "",
		`{"odata.metadata":"http://127.0.0.1/devstoreaccount1/$metadata#T/@Element","odata.etag":"W/\"datetime'2030-01-02T03%3A04%3A05.1234567Z'\"","PartitionKey":"p","RowKey":"meta"}`,
	}
	otherOp204 = []string{
		"HTTP/1.1 204 No Content", "Content-ID: 2", "ETag: W/\"datetime'2031-01-01T00%3A00%3A00.0000000Z'\"", "", "",
	}
	deleted204 = []string{"HTTP/1.1 204 No Content", "Content-ID: 3", "X-Content-Type-Options: nosniff", "", ""}
)

// TestFirstOperationETag reads the first operation's ETag out of canned
// transaction answers, and "" out of anything that is not a successful one.
func TestFirstOperationETag(t *testing.T) {
	t.Parallel()
	withBoundary := http.Header{"Content-Type": {"multipart/mixed; boundary=" + cannedBatch}}
	for _, tc := range []struct {
		name   string
		header http.Header
		body   string
		want   azcore.ETag
	}{
		{"update-replace 204 first", withBoundary, batchAnswer(cannedBatch, cannedChangeset, replaced204, otherOp204, deleted204), cannedETag},
		{"insert 201 first", withBoundary, batchAnswer(cannedBatch, cannedChangeset, inserted201, otherOp204), cannedETag},
		{"only operation", withBoundary, batchAnswer(cannedBatch, cannedChangeset, replaced204), cannedETag},
		{"no boundary in Content-Type", http.Header{"Content-Type": {"multipart/mixed"}}, batchAnswer(cannedBatch, cannedChangeset, replaced204, otherOp204), cannedETag},
		{"no Content-Type", http.Header{}, batchAnswer(cannedBatch, cannedChangeset, inserted201, otherOp204), cannedETag},
		{"no boundary, body starts with a blank line", http.Header{"Content-Type": {"multipart/mixed"}}, "\r\n" + batchAnswer(cannedBatch, cannedChangeset, replaced204), cannedETag},
		{"changeset part without boundary", withBoundary, strings.Replace(batchAnswer(cannedBatch, cannedChangeset, replaced204, otherOp204),
			"Content-Type: multipart/mixed; boundary="+cannedChangeset, "Content-Type: multipart/mixed", 1), cannedETag},
		{"first operation has no ETag", withBoundary, batchAnswer(cannedBatch, cannedChangeset, deleted204, otherOp204), ""},
		{"failed transaction (412)", withBoundary, failedBatchBody(412), ""},
		{"failed transaction (404)", withBoundary, failedBatchBody(404), ""},
		{"garbage", withBoundary, "<html>bad gateway</html>", ""},
		{"garbage without Content-Type", http.Header{}, "{\"odata.error\":{\"code\":\"InternalError\"}}", ""},
		{"empty", withBoundary, "", ""},
		{"truncated changeset", withBoundary, batchAnswer(cannedBatch, cannedChangeset, replaced204)[:120], ""},
		{"JSON error with multipart header", http.Header{"Content-Type": {"application/json"}}, `{"odata.error":{"code":"InvalidInput"}}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := firstOperationETag(tc.header, []byte(tc.body)); got != tc.want {
				t.Fatalf("firstOperationETag = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestFirstOperationETagAzurite: against Azurite, the ETag read from a
// transaction's raw answer is the one the row has, whether the first
// operation replaced or inserted it; a failed transaction yields "" and
// keeps its error classification (retry.go reads the failed operation's
// status from the same body the capture reads).
func TestFirstOperationETagAzurite(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1})
	ctx := context.Background()
	const pk = "etag-probe"
	row := func(rk, v string) []byte {
		e := newEntity(pk, rk)
		e["V"] = v
		return e.marshal()
	}
	rowETag := func(rk string) azcore.ETag {
		t.Helper()
		resp, err := b.history.GetEntity(ctx, pk, rk, nil)
		if err != nil {
			t.Fatalf("read %s: %v", rk, err)
		}
		return resp.ETag
	}
	submit := func(actions ...aztables.TransactionAction) (azcore.ETag, *bodyCapture, error) {
		c := &bodyCapture{}
		err := b.submit(withCapture(ctx, c), actions)
		return firstOperationETag(c.get()), c, err
	}

	// Insert first (TransactionTypeAdd answers 204 with the new ETag).
	got, c, err := submit(
		aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: row("a", "1")},
		aztables.TransactionAction{ActionType: aztables.TransactionTypeInsertReplace, Entity: row("b", "1")},
	)
	if err != nil {
		t.Fatal(err)
	}
	h, body := c.get()
	t.Logf("Azurite's answer: Content-Type %q, %d bytes", h.Get("Content-Type"), len(body))
	if want := rowETag("a"); got == "" || got != want {
		t.Fatalf("insert first: captured ETag %q, row has %q\n%s", got, want, body)
	}

	// Update-replace first, conditional on the ETag just read.
	etag := rowETag("a")
	got, _, err = submit(
		aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: row("a", "2"), IfMatch: &etag},
		aztables.TransactionAction{ActionType: aztables.TransactionTypeDelete, Entity: newEntity(pk, "b").marshal()},
	)
	if err != nil {
		t.Fatal(err)
	}
	if want := rowETag("a"); got == "" || got != want || got == etag {
		t.Fatalf("update first: captured ETag %q, row has %q (was %q)", got, want, etag)
	}

	// A failed transaction (stale If-Match): no ETag, and the failed
	// operation's status is still what the error says, with or without
	// the capture.
	got, _, err = submit(
		aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: row("a", "3"), IfMatch: &etag},
		aztables.TransactionAction{ActionType: aztables.TransactionTypeInsertReplace, Entity: row("c", "3")},
	)
	if err == nil || got != "" {
		t.Fatalf("stale If-Match: err %v, captured ETag %q; want an error and no ETag", err, got)
	}
	plain := b.submit(ctx, []aztables.TransactionAction{
		{ActionType: aztables.TransactionTypeUpdateReplace, Entity: row("a", "3"), IfMatch: &etag},
	})
	if httpStatus(plain) != http.StatusPreconditionFailed {
		t.Fatalf("without capture: status %d (%v), want 412", httpStatus(plain), plain)
	}
	if s := httpStatus(err); s != http.StatusPreconditionFailed {
		t.Errorf("with the capture, a failed transaction's error reports status %d, want 412 (the failed "+
			"operation's): the capture must leave the response body re-readable (runtime.Payload), or aztables "+
			"drains it before building the error and retry.go's batchStatus finds none. Error: %v", s, err)
	}
}

// TestFirstOperationETagRetryClassification: the capture must not change
// how a failed commit is classified. A transaction whose changeset failed
// with 503 (the service was busy) is transient — persist retries it —
// with or without the capture.
func TestFirstOperationETagRetryClassification(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "multipart/mixed; boundary=batchresponse_5a0d7e73-6c1b-4c1e-9f2b-3c2d1e0f4a5b")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprint(w, failedBatchBody(http.StatusServiceUnavailable))
	}))
	t.Cleanup(srv.Close)
	// The pipeline of the backend's table client (clients.go), without retries.
	o := clientOptions(&Counter{}, "table", nil)
	o.Retry = policy.RetryOptions{MaxRetries: -1}
	tc, err := aztables.NewClientWithNoCredential(srv.URL+"/devstoreaccount1/Fake", &aztables.ClientOptions{ClientOptions: o})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, plain := tc.SubmitTransaction(ctx, batchActions(), nil)
	if !transient(plain) || httpStatus(plain) != http.StatusServiceUnavailable {
		t.Fatalf("without capture: status %d, transient %v", httpStatus(plain), transient(plain))
	}
	c := &bodyCapture{}
	_, captured := tc.SubmitTransaction(withCapture(ctx, c), batchActions(), nil)
	if _, body := c.get(); len(body) == 0 {
		t.Fatal("nothing captured")
	}
	if !transient(captured) || httpStatus(captured) != http.StatusServiceUnavailable {
		t.Errorf("with the capture (every commit has one), a transaction answered 503 in its changeset is "+
			"classified as status %d, transient %v: persist would give up on a commit it retries without. "+
			"The capture must leave the SDK's downloaded body re-readable (runtime.Payload): aztables' "+
			"buildTransactionResponse drains it before it builds the ResponseError.",
			httpStatus(captured), transient(captured))
	}
}

// completeSpy records, per instance, the errors CompleteOrchestrationWorkItem
// returned to the worker (a commit that failed its fence, ...).
type completeSpy struct {
	*Backend
	mu   sync.Mutex
	errs map[string][]error
}

func spyOn(b *Backend) *completeSpy { return &completeSpy{Backend: b, errs: map[string][]error{}} }

func (s *completeSpy) CompleteOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	err := s.Backend.CompleteOrchestrationWorkItem(ctx, wi)
	if err != nil {
		s.mu.Lock()
		s.errs[string(wi.InstanceID)] = append(s.errs[string(wi.InstanceID)], err)
		s.mu.Unlock()
	}
	return err
}

func (s *completeSpy) failed(id string) []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.errs[id])
}

// cachedEntry is b's cache entry for id, nil if none (not taking it). A
// cached state is never modified, only replaced, so it can be read after.
func cachedEntry(b *Backend, id string) *loadedState {
	b.cache.mu.Lock()
	defer b.cache.mu.Unlock()
	if el, ok := b.cache.entries[id]; ok {
		return el.Value.(*cacheEntry).st
	}
	return nil
}

// settled reports whether b has no work item and no buffered message for id.
func settled(b *Backend, id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.inflight[id] && len(b.pending[id]) == 0
}

// countsSince is how many requests of each kind c counted since before.
func countsSince(before map[string]int64, c *Counter) map[string]int64 {
	d := map[string]int64{}
	for k, v := range c.Snapshot() {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

// withoutDequeue reports whether m reached this worker without a dequeue:
// handed over by its enqueue (messages.go), or an activity result passed
// to the episode in process ("carried:" ids, if the backend does that).
func withoutDequeue(m *inMsg) bool {
	return m.dequeueCount == 1 && (m.env.Hand == 1 || strings.HasPrefix(m.msgID, "carried:"))
}

// waitIdlePollers waits until b's pollers wait for work on queues they
// have polled: an activity slot waits and the work-item queue, like every
// owned control queue, had no backlog at its last poll. Hand delivery
// needs that (see handDeliverable); before, a message is sent visible.
func waitIdlePollers(t *testing.T, b *Backend) {
	t.Helper()
	poll(t, 10*time.Second, "the pollers to wait for work", func() bool {
		parts := b.lm.partitions()
		if len(parts) == 0 || time.Since(time.Unix(0, b.actPolling.Load())) >= b.opts.MaxPollInterval+time.Second || !b.poll.isDrained(0) {
			return false
		}
		for _, p := range parts {
			if !b.poll.isDrained(p + 1) {
				return false
			}
		}
		return true
	})
}

// quietPolls moves every queue's next scheduled poll of b an hour away:
// until a queue is marked dirty (this process enqueued to it without
// handing the message over) or a timer this process set comes due, b's
// pollers make no request. The idle back-off polls are not any instance's
// requests; with them out of a measured window, a dequeue in it is one an
// instance's messages caused. (A poll in flight as this runs reschedules
// its queue MaxPollInterval later; tests that use it set that long.)
func quietPolls(b *Backend) {
	s := b.poll
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.queues {
		s.queues[i].due = time.Now().Add(time.Hour)
		s.queues[i].interval = time.Hour
	}
}

// historyOf reads id's committed history through b (a client backend, so
// that the worker's request counts are not disturbed).
func historyOf(ctx context.Context, t *testing.T, b *Backend, id string) []*dtbackend.HistoryEvent {
	t.Helper()
	st, err := b.load(ctx, id)
	if err != nil {
		t.Fatalf("load %s: %v", id, err)
	}
	return st.history
}

// checkHistory fails t if id's history holds an event twice — a second
// start or end, a task scheduled or answered twice, an answer to a task
// never scheduled — and returns the events' counts by type.
func checkHistory(t *testing.T, id string, hist []*dtbackend.HistoryEvent) map[string]int {
	t.Helper()
	counts := map[string]int{}
	scheduled, answered := map[int32]int{}, map[int32]int{}
	var summary []string
	for _, e := range hist {
		counts[eventType(e)]++
		summary = append(summary, eventSummary(e))
		switch {
		case e.GetTaskScheduled() != nil:
			scheduled[e.EventId]++
		case e.GetTaskCompleted() != nil:
			answered[e.GetTaskCompleted().GetTaskScheduledId()]++
		case e.GetTaskFailed() != nil:
			answered[e.GetTaskFailed().GetTaskScheduledId()]++
		}
	}
	bad := counts["ExecutionStarted"] != 1 || counts["ExecutionCompleted"] > 1
	for id, n := range scheduled {
		bad = bad || n != 1 || answered[id] > 1
	}
	for id, n := range answered {
		bad = bad || n != 1 || scheduled[id] != 1
	}
	if bad {
		t.Errorf("%s: history holds an event twice (or an answer to nothing):\n  %s", id, strings.Join(summary, "\n  "))
	}
	return counts
}

// raisedValues lists the payloads of the EventRaised events of hist.
func raisedValues(hist []*dtbackend.HistoryEvent) []string {
	var out []string
	for _, e := range hist {
		if er := e.GetEventRaised(); er != nil {
			out = append(out, er.GetInput().GetValue())
		}
	}
	return out
}

// countedChain is chainRegistry's "Chain" whose "Inc" records each run,
// by its input, in ran ("Inc(0)", "Inc(1)", ...).
func countedChain(steps int, ran *runs) *task.TaskRegistry {
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Chain", func(c *task.OrchestrationContext) (any, error) {
		var n int
		if err := c.GetInput(&n); err != nil {
			return nil, err
		}
		for range steps {
			if err := c.CallActivity("Inc", task.WithActivityInput(n)).Await(&n); err != nil {
				return nil, err
			}
		}
		return n, nil
	})
	r.AddActivityN("Inc", func(c task.ActivityContext) (any, error) {
		var n int
		err := c.GetInput(&n)
		ran.add(fmt.Sprintf("Inc(%d)", n))
		return n + 1, err
	})
	return r
}

// checkRanOnce fails t unless each Inc(0..steps-1) ran exactly once.
func checkRanOnce(t *testing.T, ran *runs, steps int, why string) {
	t.Helper()
	var bad []string
	for i := range steps {
		if n := ran.get(fmt.Sprintf("Inc(%d)", i)); n != 1 {
			bad = append(bad, fmt.Sprintf("Inc(%d) ran %d times", i, n))
		}
	}
	if len(bad) > 0 {
		t.Errorf("%s%s", strings.Join(bad, ", "), why)
	}
}

// TestCacheSteadyState: a 5-step chain on one worker. After the first
// episode (which reads the partition once), the instance's episodes are
// built from the cache and its messages reach the worker without a
// dequeue (by hand, or carried): no partition query, no dequeue, no separate delete of a sent outbox row (each is
// deleted by the next commit), one transaction per episode; and no outbox
// row is left once the instance has completed.
func TestCacheSteadyState(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	// The lease is long, so that no lease round (a table query) falls in
	// the window; MaxPollInterval is long, so that quietPolls holds.
	b := openTest(t, Options{HubName: hub, Partitions: 1, LeaseDuration: 5 * time.Minute, MaxPollInterval: 30 * time.Second})
	// The client has its own backend: its requests are not counted.
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id, steps = "steady", 5
	type episode struct {
		cached, noDequeue bool
		msgs              int
	}
	var (
		mu       sync.Mutex
		episodes []episode
		acts     []bool // each activity delivery: by hand?
		before   map[string]int64
		commits  int
	)
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		if wi.InstanceID != id {
			return
		}
		it := itemOf(wi)
		e := episode{cached: len(it.state.sent) > 0, noDequeue: true, msgs: len(it.msgs)}
		for _, m := range it.msgs {
			e.noDequeue = e.noDequeue && withoutDequeue(m)
		}
		mu.Lock()
		episodes = append(episodes, e)
		mu.Unlock()
	}
	b.hooks.dropActivity = func(m *inMsg) bool {
		mu.Lock()
		acts = append(acts, m.env.Hand == 1 && m.dequeueCount == 1)
		mu.Unlock()
		return false
	}
	b.hooks.afterCommit = func(iid string) bool {
		mu.Lock()
		defer mu.Unlock()
		if iid == id {
			if commits++; commits == 1 {
				before = b.Counter().Snapshot()
				quietPolls(b)
			}
		}
		return false
	}
	var ran runs
	startRunner(t, b, countedChain(steps, &ran), 4)
	waitIdlePollers(t, b)
	client := dtbackend.NewTaskHubClient(c)
	if _, err := client.ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID(id), api.WithInput(0)); err != nil {
		t.Fatal(err)
	}
	if md := awaitDone(t, ctx, c, id, 45*time.Second); md.SerializedOutput != fmt.Sprint(steps) {
		t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
	}
	poll(t, 10*time.Second, "the last episode to finish", func() bool { return settled(b, id) })
	mu.Lock()
	d := countsSince(before, b.Counter())
	eps, deliveries := slices.Clone(episodes), slices.Clone(acts)
	mu.Unlock()
	t.Logf("worker requests after the first episode: %v; episodes (cached, no dequeue, messages): %v", d, eps)
	if d["table.query"] != 0 || d["queue.dequeue"] != 0 {
		t.Errorf("after the first episode: %d partition queries, %d dequeues; want none", d["table.query"], d["queue.dequeue"])
	}
	if d["table.delete"] != 0 {
		t.Errorf("%d separate row deletes: sent outbox rows are to be deleted by the next commit", d["table.delete"])
	}
	if d["table.batch"] != steps {
		t.Errorf("%d transactions after the first episode, want %d (one per episode)", d["table.batch"], steps)
	}
	if len(eps) != steps+1 || eps[0].cached {
		t.Fatalf("episodes %v: want %d, the first read from storage", eps, steps+1)
	}
	for i, e := range eps[1:] {
		if !e.cached || !e.noDequeue || e.msgs != 1 {
			t.Errorf("episode %d: built from the cache %v, its message came without a dequeue %v (%d messages)", i+2, e.cached, e.noDequeue, e.msgs)
		}
	}
	if len(deliveries) != steps || slices.Contains(deliveries, false) {
		t.Errorf("activity deliveries by hand: %v, want %d, all by hand", deliveries, steps)
	}
	checkRanOnce(t, &ran, steps, "")
	checkHistory(t, id, historyOf(ctx, t, c, id))
	for _, k := range rowKeys(ctx, t, c, id) {
		if strings.HasPrefix(k, outboxRKPre) {
			t.Errorf("outbox row %s left after the instance completed", k)
		}
	}
	if cachedEntry(b, id) != nil {
		t.Error("a completed instance is still cached")
	}
}

// TestCacheStaleEntryIsFenced: another writer changes an instance's status
// row while the worker holds it in its cache. The next episode, built from
// the cached state, must fail its commit with ErrWorkItemLockLost and run
// again from a fresh read; the instance completes once, each result
// recorded once.
//
// Activity runs: each Inc is to run exactly once. No worker dies and no
// partition moves here, and cache.go says a commit built on a stale cached
// state "sends nothing; the episode runs again from a fresh read". The one
// place cache.go lets an activity run again is an outbox row re-sent by
// the next owner after the worker that sent it died. (The rerun's fresh
// read does find the outbox row of the last commit, which this worker
// sent and left for its next commit to delete; buildWorkItem's
// errReadAgain path deletes such rows before reading for that reason.)
func TestCacheStaleEntryIsFenced(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 1})
	other := openTest(t, Options{HubName: hub, Partitions: 1}) // the other writer, and the client
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id, steps = "fenced", 5
	spy := spyOn(b)
	var (
		mu       sync.Mutex
		episodes []bool // built from the cache?
		touched  bool
	)
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		if wi.InstanceID != id {
			return
		}
		cached := len(itemOf(wi).state.sent) > 0
		mu.Lock()
		defer mu.Unlock()
		episodes = append(episodes, cached)
		// The third episode (the second built from the cache): the status
		// row changes behind the worker's back before it runs.
		if len(episodes) == 3 && cached && !touched {
			touched = true
			touchSentinel(ctx, t, other, id)
		}
	}
	var ran runs
	startRunner(t, spy, countedChain(steps, &ran), 4)
	if _, err := dtbackend.NewTaskHubClient(other).ScheduleNewOrchestration(ctx, "Chain", api.WithInstanceID(id), api.WithInput(0)); err != nil {
		t.Fatal(err)
	}
	md := awaitDone(t, ctx, other, id, 45*time.Second)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || md.SerializedOutput != fmt.Sprint(steps) {
		t.Fatalf("status %v output %s (failure %v)", md.RuntimeStatus, md.SerializedOutput, md.FailureDetails)
	}
	poll(t, 10*time.Second, "the last episode to finish", func() bool { return settled(b, id) })
	mu.Lock()
	eps, didTouch := slices.Clone(episodes), touched
	mu.Unlock()
	if !didTouch {
		t.Fatalf("the scenario did not happen: episodes (built from the cache) %v", eps)
	}
	errs := spy.failed(id)
	if len(errs) != 1 || !errors.Is(errs[0], dtbackend.ErrWorkItemLockLost) {
		t.Fatalf("commit errors %v: want exactly one ErrWorkItemLockLost (the episode built on the stale entry)", errs)
	}
	if len(eps) < 4 || eps[3] {
		t.Errorf("episodes (built from the cache) %v: the rerun after the failed commit must read the partition", eps)
	}
	counts := checkHistory(t, id, historyOf(ctx, t, other, id))
	if counts["TaskScheduled"] != steps || counts["TaskCompleted"] != steps {
		t.Errorf("history: %v", counts)
	}
	checkRanOnce(t, &ran, steps, "\nthe rerun after the fenced commit read the partition, found the outbox row of the "+
		"previous commit (sent by this worker, its delete deferred to the next commit, which failed) and sent it again: "+
		"the abandon that follows a failed commit must delete the taken entry's sent rows (loadedState.sent).")
	noDeadLetters(ctx, t, b)
}

// TestCacheDuplicateMessage: copies of consumed messages meeting a cached
// instance. A decision that no commit confirms (consume a message as a
// copy) must not be made on the cached view: the partition is read again
// first (errReadAgain). A copy that arrives beside a new message is
// dropped inside the new message's (fenced) episode.
func TestCacheDuplicateMessage(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	// No lease round (a table query) during the test.
	b := openTest(t, Options{HubName: hub, Partitions: 1, LeaseDuration: 5 * time.Minute})
	c := openTest(t, Options{HubName: hub, Partitions: 1}) // client, and sender of copies
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id = "dup"
	r := gatherRegistry()
	// Blocker's first run holds the worker's only orchestration slot
	// until released: meanwhile nothing is polled.
	entered, release := make(chan struct{}), make(chan struct{})
	var blockOnce sync.Once
	r.AddOrchestratorN("Blocker", func(*task.OrchestrationContext) (any, error) {
		blockOnce.Do(func() {
			close(entered)
			select {
			case <-release:
			case <-ctx.Done():
			}
		})
		return "done", nil
	})
	var (
		mu       sync.Mutex
		episodes [][2]int // messages, new events of each episode of id
	)
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		if wi.InstanceID != id {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		episodes = append(episodes, [2]int{len(itemOf(wi).msgs), len(wi.NewEvents)})
	}
	startRunner(t, b, r, 1)
	client := dtbackend.NewTaskHubClient(c)
	if _, err := client.ScheduleNewOrchestration(ctx, "Gather", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	// waitCached waits until id is cached with the events raised so far.
	waitCached := func(values ...string) {
		t.Helper()
		poll(t, 20*time.Second, fmt.Sprintf("%s to be cached with events %v", id, values), func() bool {
			st := cachedEntry(b, id)
			return st != nil && settled(b, id) && slices.Equal(raisedValues(st.history), quoted(values))
		})
	}
	send := func(env envelope, value string) {
		t.Helper()
		if err := c.send(ctx, c.controlFor(id), env, raisedEvent(t, "e", value), time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	drained := func() bool {
		n, err := queueDepth(ctx, c.control[0])
		return err == nil && n == 0 && settled(b, id)
	}
	// "a" comes as another orchestration's outbox sends it: such a
	// message can be sent again (its sender died before deleting its
	// outbox row), and its id is remembered for that (dedupe.go). The
	// copies below are such re-sends: same envelope, same event.
	a := envelope{ID: "outbox-of-sender|a", Instance: id, From: "sender"}
	send(a, "a")
	waitCached("a")

	t.Run("copy alone is judged on a fresh read", func(t *testing.T) {
		before := b.Counter().Snapshot()
		send(a, "a")
		poll(t, 20*time.Second, "the copy to be consumed", drained)
		d := countsSince(before, b.Counter())
		if d["table.query"] != 1 || d["table.batch"] != 0 {
			t.Errorf("requests %v: want one read of the partition (the cached view cannot decide alone) and no commit", d)
		}
		if got := raisedValues(historyOf(ctx, t, c, id)); !slices.Equal(got, quoted([]string{"a"})) {
			t.Errorf("history's events %v, want [\"a\"]: the copy was applied", got)
		}
		if cachedEntry(b, id) != nil {
			t.Error("still cached after an episode that committed nothing")
		}
	})

	t.Run("cached view that calls a new message a copy", func(t *testing.T) {
		// White-box probe of the rule: doctor the cached Seen so the
		// cached view judges a message never consumed a copy (the cache
		// of an instance changed behind the worker's back could). Dropping
		// it on that view would lose it; the read again must accept it.
		if err := client.RaiseEvent(ctx, id, "e", api.WithEventPayload("b")); err != nil {
			t.Fatal(err)
		}
		waitCached("a", "b")
		const fresh = "never-consumed-before"
		b.cache.mu.Lock()
		el := b.cache.entries[id]
		if el != nil {
			st := el.Value.(*cacheEntry).st
			sentinel := maps.Clone(st.sentinel)
			setSeen(sentinel, append(parseSeen(sentinel), seenEntry{key: seenKey(fresh), at: time.Now().Unix()}))
			ns := *st
			ns.sentinel = sentinel
			el.Value.(*cacheEntry).st = &ns
		}
		b.cache.mu.Unlock()
		if el == nil {
			t.Fatal("the entry left the cache")
		}
		send(envelope{ID: fresh, Instance: id}, "m")
		poll(t, 20*time.Second, "the message the cached view called a copy to be applied (it was dropped on the cached view alone)", func() bool {
			return slices.Equal(raisedValues(historyOf(ctx, t, c, id)), quoted([]string{"a", "b", "m"}))
		})
		poll(t, 10*time.Second, "the queue to drain", drained)
	})

	t.Run("copy beside a new message", func(t *testing.T) {
		waitCached("a", "b", "m")
		mu.Lock()
		n0 := len(episodes)
		mu.Unlock()
		// Hold the poller (Blocker takes the only slot), so that the copy
		// and the new message are dequeued in one batch.
		if _, err := client.ScheduleNewOrchestration(ctx, "Blocker", api.WithInstanceID("blocker")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-entered:
		case <-ctx.Done():
			t.Fatal("Blocker never ran")
		}
		send(a, "a")
		if err := client.RaiseEvent(ctx, id, "e", api.WithEventPayload("n")); err != nil {
			t.Fatal(err)
		}
		before := b.Counter().Snapshot()
		close(release)
		poll(t, 20*time.Second, "the new message to be applied", func() bool {
			return slices.Equal(raisedValues(historyOf(ctx, t, c, id)), quoted([]string{"a", "b", "m", "n"}))
		})
		poll(t, 10*time.Second, "the queue to drain", drained)
		d := countsSince(before, b.Counter())
		mu.Lock()
		eps := slices.Clone(episodes[n0:])
		mu.Unlock()
		if len(eps) != 1 || eps[0] != [2]int{2, 1} {
			t.Errorf("episodes (messages, new events) %v: want one with the copy and the new message, the copy dropped", eps)
		}
		if d["table.query"] != 0 {
			t.Errorf("requests %v: the episode with a new message is built from the cache (its commit is fenced)", d)
		}
	})

	t.Run("replaced while cached", func(t *testing.T) {
		// The realistic stale entry: a client replaces a running instance
		// the worker holds in its cache. The new start is stale on the
		// cached view (another execution started); dropping it there
		// would leave the new instance Pending for ever.
		r.AddOrchestratorN("Hold", func(c *task.OrchestrationContext) (any, error) {
			var in string
			if err := c.GetInput(&in); err != nil {
				return nil, err
			}
			return in, c.WaitForSingleEvent("go", -1).Await(nil)
		})
		const re = "replaced"
		if _, err := client.ScheduleNewOrchestration(ctx, "Hold", api.WithInstanceID(re), api.WithInput("old")); err != nil {
			t.Fatal(err)
		}
		poll(t, 20*time.Second, "the first instance to be cached", func() bool { return cachedEntry(b, re) != nil && settled(b, re) })
		policy := &api.OrchestrationIdReusePolicy{OperationStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_RUNNING}, Action: api.REUSE_ID_ACTION_TERMINATE}
		if _, err := client.ScheduleNewOrchestration(ctx, "Hold", api.WithInstanceID(re), api.WithInput("new"), api.WithOrchestrationIdReusePolicy(policy)); err != nil {
			t.Fatal(err)
		}
		poll(t, 20*time.Second, "the new instance to start", func() bool {
			md, err := c.GetOrchestrationMetadata(ctx, re)
			return err == nil && md.RuntimeStatus == api.RUNTIME_STATUS_RUNNING && md.SerializedInput == `"new"`
		})
		if err := client.RaiseEvent(ctx, re, "go"); err != nil {
			t.Fatal(err)
		}
		if md := awaitDone(t, ctx, c, re, 20*time.Second); md.SerializedOutput != `"new"` {
			t.Fatalf("output %s, want \"new\"", md.SerializedOutput)
		}
		hist := historyOf(ctx, t, c, re)
		checkHistory(t, re, hist)
		for _, e := range hist {
			if es := e.GetExecutionStarted(); es != nil && es.GetInput().GetValue() != `"new"` {
				t.Errorf("the history starts with input %s", es.GetInput().GetValue())
			}
		}
	})

	if err := client.RaiseEvent(ctx, id, "e", api.WithEventPayload("stop")); err != nil {
		t.Fatal(err)
	}
	if md := awaitDone(t, ctx, c, id, 20*time.Second); md.SerializedOutput != `["a","b","m","n"]` {
		t.Errorf("output %s", md.SerializedOutput)
	}
	checkHistory(t, id, historyOf(ctx, t, c, id))
	noDeadLetters(ctx, t, b)
}

// raisedEvent is the event a client's RaiseEvent(name, payload) sends.
func raisedEvent(t *testing.T, name, payload string) *dtbackend.HistoryEvent {
	t.Helper()
	g := &eventGrab{}
	if err := dtbackend.NewTaskHubClient(g).RaiseEvent(context.Background(), "any", name, api.WithEventPayload(payload)); err != nil {
		t.Fatal(err)
	}
	return g.event
}

// eventGrab keeps the event a client raises instead of sending it.
type eventGrab struct {
	dtbackend.Backend
	event *dtbackend.HistoryEvent
}

func (g *eventGrab) AddNewOrchestrationEvent(_ context.Context, _ api.InstanceID, e *dtbackend.HistoryEvent) error {
	g.event = e
	return nil
}

// quoted is values as JSON strings (event payloads).
func quoted(values []string) []string {
	out := make([]string, len(values))
	for i, v := range values {
		out[i] = `"` + v + `"`
	}
	return out
}

// giveLease writes partition 0's lease row as held by owner (as a worker
// that took it would), behind the current holder's back.
func giveLease(ctx context.Context, t *testing.T, b *Backend, owner string) {
	t.Helper()
	if err := writeLease(ctx, b, owner); err != nil {
		t.Fatal(err)
	}
}

func writeLease(ctx context.Context, b *Backend, owner string) error {
	row := newEntity(leasePK, leaseRK(0))
	row["Owner"], row["Expires"] = owner, formatTime(time.Now().Add(time.Hour))
	anyTag := azcore.ETagAny
	_, err := b.leases.UpdateEntity(ctx, row.marshal(), &aztables.UpdateEntityOptions{IfMatch: &anyTag, UpdateMode: aztables.UpdateModeReplace})
	return err
}

// waitFor is poll for hooks, which run on the worker's goroutines and may
// not end the test: it reports whether cond held within timeout.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	return true
}

// TestCachePartitionLoss: a worker that loses a partition drops its cached
// instances and deletes their sent outbox rows; another worker takes the
// partition and advances an instance (with the answer of an activity that
// ran on the first worker); when the partition comes back, the first
// worker's next episode is built on a fresh read that holds the other
// worker's episodes, and commits at the first attempt. Every event and
// result is recorded once, every activity runs once.
func TestCachePartitionLoss(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	// Leases long enough that a round held up on a loaded machine does not
	// let one lapse (which moves the partition, as it should, and fails a
	// commit this test counts), short enough that a move is noticed soon.
	opts := Options{HubName: hub, Partitions: 1, LeaseDuration: 9 * time.Second}
	opts.WorkerID = "w1"
	w1 := openTest(t, opts)
	opts.WorkerID = "w2"
	w2 := openTest(t, opts)
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id = "moved"
	var ran runs
	hold := make(chan struct{}) // Rec(1) runs until closed
	r := task.NewTaskRegistry()
	// Sum adds up three events "e", each passed through the activity Rec.
	r.AddOrchestratorN("Sum", func(c *task.OrchestrationContext) (any, error) {
		sum := 0
		for range 3 {
			var v int
			if err := c.WaitForSingleEvent("e", -1).Await(&v); err != nil {
				return nil, err
			}
			if err := c.CallActivity("Rec", task.WithActivityInput(v)).Await(&v); err != nil {
				return nil, err
			}
			sum += v
		}
		return sum, nil
	})
	r.AddActivityN("Rec", func(c task.ActivityContext) (any, error) {
		var v int
		err := c.GetInput(&v)
		ran.add(fmt.Sprint("Rec(", v, ")"))
		if v == 1 {
			select {
			case <-hold:
			case <-ctx.Done():
			}
		}
		return v, err
	})
	var mu sync.Mutex
	built := map[string][][]*dtbackend.HistoryEvent{} // per worker, the history each episode of id was built on
	for _, w := range []*Backend{w1, w2} {
		w.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
			if wi.InstanceID == id {
				mu.Lock()
				built[w.opts.WorkerID] = append(built[w.opts.WorkerID], itemOf(wi).state.history)
				mu.Unlock()
			}
		}
	}
	spy1, spy2 := spyOn(w1), spyOn(w2)
	startRunner(t, spy1, r, 2)
	client := dtbackend.NewTaskHubClient(c)
	if _, err := client.ScheduleNewOrchestration(ctx, "Sum", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	raise := func(v int) {
		t.Helper()
		if err := client.RaiseEvent(ctx, id, "e", api.WithEventPayload(v)); err != nil {
			t.Fatal(err)
		}
	}
	outboxRows := func() int {
		n := 0
		for _, k := range rowKeys(ctx, t, c, id) {
			if strings.HasPrefix(k, outboxRKPre) {
				n++
			}
		}
		return n
	}
	// cached waits until w caches id at rest with n results recorded.
	cached := func(w *Backend, n int) *loadedState {
		t.Helper()
		var st *loadedState
		poll(t, 20*time.Second, fmt.Sprintf("%s to cache the instance with %d results", w.opts.WorkerID, n), func() bool {
			st = cachedEntry(w, id)
			return st != nil && settled(w, id) && countType(st.history, "TaskCompleted") == n && countType(st.history, "TaskScheduled") == n
		})
		return st
	}

	raise(1)
	// w1 caches the episode that scheduled Rec(1) (running, held); the
	// outbox row it sent is left for the next commit to delete.
	poll(t, 20*time.Second, "w1 to cache the instance with Rec(1) scheduled", func() bool {
		st := cachedEntry(w1, id)
		return st != nil && len(st.sent) == 1 && settled(w1, id) && ran.get("Rec(1)") == 1
	})
	if n := outboxRows(); n != 1 {
		t.Fatalf("%d outbox rows while the instance is cached with a sent one, want 1", n)
	}

	// w2 takes the partition; w1 notices at its next round, drops the
	// instance from its cache and deletes the sent row.
	giveLease(ctx, t, c, "w2")
	poll(t, 20*time.Second, "w1 to notice the loss", func() bool { return len(w1.lm.owners()) == 0 })
	if cachedEntry(w1, id) != nil {
		t.Fatal("w1 still caches an instance of the partition it lost")
	}
	poll(t, 20*time.Second, "w1's sent outbox row to be deleted", func() bool { return outboxRows() == 0 })
	startRunner(t, spy2, r, 2)
	poll(t, 20*time.Second, "w2 to claim the partition", func() bool { return slices.Equal(w2.lm.partitions(), []int{0}) })
	// Rec(1) ends on w1; its answer goes to the queue for w2.
	close(hold)
	cached(w2, 1)
	raise(10)
	cached(w2, 2)

	// The partition goes back to w1.
	giveLease(ctx, t, c, "w1")
	poll(t, 20*time.Second, "w2 to notice the loss and w1 to claim the partition", func() bool {
		return len(w2.lm.owners()) == 0 && slices.Equal(w1.lm.partitions(), []int{0})
	})
	if cachedEntry(w2, id) != nil {
		t.Fatal("w2 still caches an instance of the partition it lost")
	}
	mu.Lock()
	n1 := len(built["w1"])
	mu.Unlock()
	raise(100)
	md := awaitDone(t, ctx, c, id, 30*time.Second)
	if md.SerializedOutput != "111" {
		t.Fatalf("output %s, want 111 (failure %v)", md.SerializedOutput, md.FailureDetails)
	}
	mu.Lock()
	back := slices.Clone(built["w1"][n1:])
	mu.Unlock()
	if len(back) == 0 || countType(back[0], "TaskCompleted") != 2 {
		var got []int
		for _, h := range back {
			got = append(got, countType(h, "TaskCompleted"))
		}
		t.Errorf("w1's episodes after it got the partition back were built on histories with %v results, the first must hold w2's 2", got)
	}
	for _, s := range []*completeSpy{spy1, spy2} {
		if errs := s.failed(id); len(errs) > 0 {
			t.Errorf("%s: commits failed: %v", s.opts.WorkerID, errs)
		}
	}
	counts := checkHistory(t, id, historyOf(ctx, t, c, id))
	if counts["EventRaised"] != 3 || counts["TaskCompleted"] != 3 {
		t.Errorf("history: %v", counts)
	}
	for _, v := range []int{1, 10, 100} {
		if n := ran.get(fmt.Sprint("Rec(", v, ")")); n != 1 {
			t.Errorf("Rec(%d) ran %d times", v, n)
		}
	}
	noDeadLetters(ctx, t, c)
}

// countType counts the events of type typ ("TaskCompleted", ...) in hist.
func countType(hist []*dtbackend.HistoryEvent, typ string) int {
	n := 0
	for _, e := range hist {
		if eventType(e) == typ {
			n++
		}
	}
	return n
}

// delivery is one fetch of an activity message by a worker.
type delivery struct {
	at           time.Time
	byHand       bool  // handed over by the enqueue, not dequeued
	dequeueCount int64 // deliveries so far, this one and the hand delivery included
}

// deliveries records the deliveries of the activity named name.
type deliveries struct {
	mu  sync.Mutex
	all []delivery
}

func (d *deliveries) add(m *inMsg) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.all = append(d.all, delivery{at: time.Now(), byHand: m.env.Hand == 1 && m.dequeueCount == 1, dequeueCount: m.dequeueCount})
	return len(d.all)
}

func (d *deliveries) get() []delivery {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.all)
}

// TestHandDeliveredActivityReappears: an activity delivered by hand to a
// worker that dies holding it (dropActivity: neither run nor renewed)
// becomes visible when the lock the enqueue gave it runs out, not before,
// and runs on its next delivery, which counts the hand delivery.
func TestHandDeliveredActivityReappears(t *testing.T) {
	t.Parallel()
	const lock = 2 * time.Second
	b := openTest(t, Options{Partitions: 1, LockTimeout: lock})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var got deliveries
	var runs atomic.Int32
	b.hooks.dropActivity = func(m *inMsg) bool {
		return m.event.GetTaskScheduled().GetName() == "Flaky" && got.add(m) == 1
	}
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Once", func(c *task.OrchestrationContext) (any, error) {
		var out string
		err := c.CallActivity("Flaky").Await(&out)
		return out, err
	})
	r.AddActivityN("Flaky", func(task.ActivityContext) (any, error) {
		runs.Add(1)
		return "ran", nil
	})
	startRunner(t, b, r, 2)
	waitIdlePollers(t, b)
	if _, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Once", api.WithInstanceID("once")); err != nil {
		t.Fatal(err)
	}
	if md := awaitDone(t, ctx, b, "once", 30*time.Second); md.SerializedOutput != `"ran"` {
		t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
	}
	d := got.get()
	if len(d) != 2 || !d[0].byHand || d[1].byHand || d[1].dequeueCount != 2 {
		t.Fatalf("deliveries %+v: want a hand delivery, then one from the queue counting 2", d)
	}
	// Visibility is whole seconds from the enqueue, which was before the
	// first delivery was recorded; allow for that.
	if gap := d[1].at.Sub(d[0].at); gap < lock-500*time.Millisecond {
		t.Errorf("the dead worker's activity came back %s after its hand delivery, before its lock (%s) ran out", gap, lock)
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("the activity ran %d times, want 1", n)
	}
	noDeadLetters(ctx, t, b)
}

// TestHandDeliveredActivityDeadLettered extends
// TestDeadLetteredActivityFailsTheTask to hand delivery: with
// MaxDequeueCount 2, an activity whose first delivery was by hand (a
// delivery the queue's DequeueCount does not see) and whose workers die
// twice is dead-lettered at its third dequeue attempt — after exactly 2
// deliveries, the dead letter recording 2 failed ones — while a sibling
// scheduled in the same episode runs once.
func TestHandDeliveredActivityDeadLettered(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1, LockTimeout: 2 * time.Second, MaxDequeueCount: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var doomed, sibling deliveries
	var siblingRuns atomic.Int32
	b.hooks.dropActivity = func(m *inMsg) bool {
		switch m.event.GetTaskScheduled().GetName() {
		case "Doomed":
			doomed.add(m)
			return true
		case "Sibling":
			sibling.add(m)
		}
		return false
	}
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Pair", func(c *task.OrchestrationContext) (any, error) {
		d, s := c.CallActivity("Doomed"), c.CallActivity("Sibling")
		var out string
		if err := s.Await(&out); err != nil {
			return nil, err
		}
		if err := d.Await(nil); err != nil {
			return out + "; caught: " + err.Error(), nil
		}
		return "not expected", nil
	})
	r.AddActivityN("Doomed", func(task.ActivityContext) (any, error) { return nil, nil })
	r.AddActivityN("Sibling", func(task.ActivityContext) (any, error) {
		siblingRuns.Add(1)
		return "sibling ran", nil
	})
	startRunner(t, b, r, 2)
	waitIdlePollers(t, b)
	if _, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Pair", api.WithInstanceID("pair")); err != nil {
		t.Fatal(err)
	}
	md := awaitDone(t, ctx, b, "pair", 45*time.Second)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || !strings.HasPrefix(md.SerializedOutput, `"sibling ran; caught:`) || !strings.Contains(md.SerializedOutput, "dead-lettered") {
		t.Fatalf("status %v output %s", md.RuntimeStatus, md.SerializedOutput)
	}
	d := doomed.get()
	if len(d) != 2 || !d[0].byHand || d[1].byHand || d[1].dequeueCount != 2 {
		t.Fatalf("Doomed's deliveries %+v: want 2, the first by hand, the second from the queue counting the hand delivery", d)
	}
	if s := sibling.get(); len(s) != 1 || siblingRuns.Load() != 1 {
		t.Errorf("Sibling: deliveries %+v, runs %d; want one delivery, one run", s, siblingRuns.Load())
	}
	dls, err := b.ListDeadLetters(ctx)
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters: %+v, %v", dls, err)
	}
	if dl := dls[0]; dl.EventType != "TaskScheduled" || dl.DequeueCount != 2 || dl.InstanceID != "pair" {
		t.Errorf("dead letter %+v: want Doomed's TaskScheduled with 2 failed deliveries", dl)
	}
}

// TestHandDeliveredEventAfterCommitCrash: an event raised through the
// worker's own backend (so delivered to it by hand) is consumed by an
// episode that schedules an activity, and whose worker dies right after
// the commit (before sending the outbox or deleting the message). The
// message comes back when the lock its enqueue gave it runs out (its
// redelivery counting the hand delivery); the next load sends the outbox
// the crash left, the copy is dropped, and the instance completes with
// every event once and the activity run once (the crashed episode sent
// nothing, so nothing was sent twice).
func TestHandDeliveredEventAfterCommitCrash(t *testing.T) {
	t.Parallel()
	var copies atomic.Int64
	b := openTest(t, Options{Partitions: 1, LockTimeout: 2 * time.Second, Logger: slog.New(logWatch{substr: "dropping a copy", n: &copies})})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id = "crashy"
	var (
		mu      sync.Mutex
		armed   bool // the episode in flight consumes the event, delivered by hand
		crashed int
		redeliv []int64 // dequeue counts of the event's later deliveries
	)
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		if wi.InstanceID != id {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		armed = false
		for _, m := range itemOf(wi).msgs {
			if m.event.GetEventRaised() != nil {
				if crashed == 0 {
					armed = m.env.Hand == 1 && m.dequeueCount == 1
				} else {
					redeliv = append(redeliv, m.dequeueCount)
				}
			}
		}
	}
	b.hooks.afterCommit = func(iid string) bool {
		mu.Lock()
		defer mu.Unlock()
		if iid == id && armed && crashed == 0 {
			crashed++
			return true
		}
		return false
	}
	var ran runs
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("OnEvent", func(c *task.OrchestrationContext) (any, error) {
		var n int
		if err := c.WaitForSingleEvent("e", -1).Await(&n); err != nil {
			return nil, err
		}
		err := c.CallActivity("Inc", task.WithActivityInput(n)).Await(&n)
		return n, err
	})
	r.AddActivityN("Inc", func(c task.ActivityContext) (any, error) {
		var n int
		err := c.GetInput(&n)
		ran.add(fmt.Sprintf("Inc(%d)", n))
		return n + 1, err
	})
	startRunner(t, b, r, 2)
	waitIdlePollers(t, b)
	client := dtbackend.NewTaskHubClient(b)
	if _, err := client.ScheduleNewOrchestration(ctx, "OnEvent", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	poll(t, 20*time.Second, "the instance to wait for its event", func() bool {
		md, err := b.GetOrchestrationMetadata(ctx, id)
		return err == nil && md.RuntimeStatus == api.RUNTIME_STATUS_RUNNING && settled(b, id)
	})
	waitIdlePollers(t, b)
	if err := client.RaiseEvent(ctx, id, "e", api.WithEventPayload(0)); err != nil {
		t.Fatal(err)
	}
	md := awaitDone(t, ctx, b, id, 45*time.Second)
	if md.SerializedOutput != "1" {
		t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
	}
	mu.Lock()
	n, again := crashed, slices.Clone(redeliv)
	mu.Unlock()
	if n != 1 {
		t.Fatalf("%d crashes after the commit of the hand-delivered event, want 1", n)
	}
	poll(t, 20*time.Second, "the crashed episode's message to come back and be dropped", func() bool {
		depth, err := queueDepth(ctx, b.control[0])
		return err == nil && depth == 0 && copies.Load() > 0
	})
	if len(again) > 0 {
		t.Errorf("the event was applied again (redelivered with dequeue counts %v)", again)
	}
	counts := checkHistory(t, id, historyOf(ctx, t, b, id))
	if counts["EventRaised"] != 1 || counts["TaskCompleted"] != 1 {
		t.Errorf("history: %v", counts)
	}
	checkRanOnce(t, &ran, 1, "")
	noDeadLetters(ctx, t, b)
}

// peekCount is how many messages of q are visible (at most 32).
func peekCount(ctx context.Context, t *testing.T, q *azqueue.QueueClient) int {
	t.Helper()
	resp, err := q.PeekMessages(ctx, &azqueue.PeekMessagesOptions{NumberOfMessages: to.Ptr[int32](32)})
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Messages)
}

// TestHandDeliveryNeedsPoller: hand delivery only serves a poller that
// runs. A client-only backend, a worker that holds the partition but whose
// pollers have not started (or have stopped), and a worker without
// activity slots all enqueue visible messages, and hold none of them;
// once pollers run, they find them.
func TestHandDeliveryNeedsPoller(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 1})
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Step", func(c *task.OrchestrationContext) (any, error) {
		var out string
		if err := c.CallActivity("A").Await(&out); err != nil {
			return nil, err
		}
		return out, c.WaitForSingleEvent("go", -1).Await(nil)
	})
	r.AddActivityN("A", func(task.ActivityContext) (any, error) { return "a", nil })
	holds := func(b *Backend) string {
		b.mu.Lock()
		defer b.mu.Unlock()
		if len(b.pending) > 0 || len(b.actBuf) > 0 || len(b.held) > 0 {
			return fmt.Sprintf("%d instances buffered, %d activities buffered, %d messages held", len(b.pending), len(b.actBuf), len(b.held))
		}
		return ""
	}
	visible := func(q *azqueue.QueueClient, want int, what string) {
		t.Helper()
		if n := peekCount(ctx, t, q); n != want {
			t.Fatalf("%s: %d visible messages in %s, want %d", what, n, queueName(q), want)
		}
		for _, w := range []*Backend{b, c} {
			if h := holds(w); h != "" {
				t.Fatalf("%s: %s holds: %s", what, w.opts.WorkerID, h)
			}
		}
	}
	// A client-only backend.
	if _, err := dtbackend.NewTaskHubClient(c).ScheduleNewOrchestration(ctx, "Step", api.WithInstanceID("one")); err != nil {
		t.Fatal(err)
	}
	visible(c.control[0], 1, "client-only backend")
	// A worker that holds the partition; no poller has run.
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	b.lm.waitReady(ctx)
	if !b.lm.isActive(0) {
		t.Fatal("the worker does not hold the partition")
	}
	if _, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Step", api.WithInstanceID("two")); err != nil {
		t.Fatal(err)
	}
	visible(b.control[0], 2, "worker whose pollers have not started")
	// Orchestrations only: the activities they schedule stay visible.
	orchOnly := taskhub.NewRunner(b, quietSlog(), dtbackend.NewOrchestrationWorker(b, task.NewTaskExecutor(r), quietLogger()))
	if err := orchOnly.Start(ctx); err != nil {
		t.Fatal(err)
	}
	poll(t, 20*time.Second, "both instances to schedule their activity", func() bool {
		return peekCount(ctx, t, b.work) == 2 && peekCount(ctx, t, b.control[0]) == 0 && settled(b, "one") && settled(b, "two")
	})
	visible(b.work, 2, "worker without activity slots")
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	err := orchOnly.Shutdown(sctx)
	scancel()
	if err != nil {
		t.Fatal(err)
	}
	// The orchestration poller has stopped: once it is overdue, events
	// this process sends are visible again.
	env := envelope{ID: "probe", Instance: "one", Event: []byte("{}")}
	poll(t, 10*time.Second, "hand delivery to stop after the poller stopped", func() bool { return !b.handDeliverable(b.control[0], env) })
	for _, id := range []api.InstanceID{"one", "two"} {
		if err := dtbackend.NewTaskHubClient(b).RaiseEvent(ctx, id, "go"); err != nil {
			t.Fatal(err)
		}
	}
	visible(b.control[0], 2, "worker whose poller stopped")
	// Pollers again: everything visible is found.
	startRunner(t, b, r, 2)
	for _, id := range []string{"one", "two"} {
		if md := awaitDone(t, ctx, b, id, 30*time.Second); md.SerializedOutput != `"a"` {
			t.Errorf("%s: output %s (failure %v)", id, md.SerializedOutput, md.FailureDetails)
		}
	}
}

// TestHandPollScheduleAfterTimer: an idle worker polls each queue at most
// every MaxPollInterval, also after a timer it set has fired. (A due timer
// makes every owned control queue due: unless the poll consumes it, the
// poller spins. It did, at ~650 dequeues/s, before timerDue consumed it.)
func TestHandPollScheduleAfterTimer(t *testing.T) {
	t.Parallel()
	const interval = 200 * time.Millisecond
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 1, MaxPollInterval: interval, LeaseDuration: 5 * time.Minute})
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Nap", func(c *task.OrchestrationContext) (any, error) {
		return "rested", c.CreateTimer(300 * time.Millisecond).Await(nil)
	})
	startRunner(t, b, r, 2)
	if _, err := dtbackend.NewTaskHubClient(c).ScheduleNewOrchestration(ctx, "Nap", api.WithInstanceID("nap")); err != nil {
		t.Fatal(err)
	}
	awaitDone(t, ctx, c, "nap", 30*time.Second)
	poll(t, 10*time.Second, "the worker to settle", func() bool { return settled(b, "nap") })
	const window = 2 * time.Second
	before := b.Counter().Snapshot()
	time.Sleep(window) // the measured idle period
	d := countsSince(before, b.Counter())
	// Two queues (control, work items), each at most every interval.
	limit := int64(2*window/interval) + 4
	if d["queue.dequeue"] > limit {
		t.Errorf("an idle worker made %d dequeues in %s after a timer it set fired (at most %d expected: 2 queues, "+
			"MaxPollInterval %s). A due timer left in Backend.timers keeps every control queue due (timerDue), so "+
			"the poller never sleeps. Requests: %v",
			d["queue.dequeue"], window, limit, interval, d)
	}
}

// fromCache reports whether st is a cached state, not a read: a status row
// read from storage has the service's Timestamp property, one rebuilt
// from a commit (committedState) does not.
func fromCache(st *loadedState) bool {
	_, read := st.sentinel["Timestamp"]
	return st.sentinel != nil && !read
}

// sameAsStorage compares a cached state with a fresh read of the same
// instance and describes the differences ("" if none).
func sameAsStorage(cached, fresh *loadedState) string {
	var diffs []string
	if cached.etag != fresh.etag {
		diffs = append(diffs, fmt.Sprintf("ETag %s, storage %s", cached.etag, fresh.etag))
	}
	for _, k := range []string{"Status", "ExecutionID", "CustomStatus", "CustomStatusBlob", "Input", "InputBlob", "Output", "Name", "CreatedTime"} {
		if cached.sentinel.str(k) != fresh.sentinel.str(k) {
			diffs = append(diffs, fmt.Sprintf("sentinel %s %q, storage %q", k, cached.sentinel.str(k), fresh.sentinel.str(k)))
		}
	}
	for _, k := range []string{"HistoryCount", "Gen", "Seq"} {
		if cached.sentinel.int64(k) != fresh.sentinel.int64(k) {
			diffs = append(diffs, fmt.Sprintf("sentinel %s %d, storage %d", k, cached.sentinel.int64(k), fresh.sentinel.int64(k)))
		}
	}
	if a, b := parseSeen(cached.sentinel), parseSeen(fresh.sentinel); !slices.Equal(a, b) {
		diffs = append(diffs, fmt.Sprintf("Seen %v, storage %v", a, b))
	}
	if len(cached.history) != len(fresh.history) {
		diffs = append(diffs, fmt.Sprintf("%d history events, storage %d", len(cached.history), len(fresh.history)))
	} else {
		for i := range cached.history {
			if !proto.Equal(cached.history[i], fresh.history[i]) {
				diffs = append(diffs, fmt.Sprintf("history[%d] %s, storage %s", i, eventSummary(cached.history[i]), eventSummary(fresh.history[i])))
				break
			}
		}
	}
	keys := func(rows []entity) []string {
		var out []string
		for _, e := range rows {
			out = append(out, e.str("RowKey")+"/"+e.str("Blob"))
		}
		slices.Sort(out)
		return out
	}
	for _, c := range []struct {
		what          string
		cached, fresh []entity
	}{
		{"current history rows", cached.current, fresh.current},
		{"garbage rows", cached.garbage, fresh.garbage},
		// A cached state's outbox rows are the ones this worker sent.
		{"outbox rows", slices.Concat(cached.outbox, cached.sent), fresh.outbox},
	} {
		if a, b := keys(c.cached), keys(c.fresh); !slices.Equal(a, b) {
			diffs = append(diffs, fmt.Sprintf("%s %v, storage %v", c.what, a, b))
		}
	}
	stash := func(s []stashed) []string {
		var out []string
		for _, x := range s {
			out = append(out, x.rk+"/"+x.msgID)
		}
		return out
	}
	if a, b := stash(cached.stash), stash(fresh.stash); !slices.Equal(a, b) {
		diffs = append(diffs, fmt.Sprintf("%d stashed events, storage %d", len(a), len(b)))
	}
	return strings.Join(diffs, "; ")
}

// TestCacheMatchesStorage: every episode built from the cache starts from
// exactly what a read of the partition would return — status row and its
// ETag, history, row sets (current, garbage, outbox), stashed events —
// across continue-as-new generations (whose rows become garbage and are
// deleted a few per commit), stashed events consumed over several
// episodes, fan-outs, large custom statuses, and the completion.
func TestCacheMatchesStorage(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 2})
	c := openTest(t, Options{HubName: hub, Partitions: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		mu      sync.Mutex
		checked = map[string]int{}
		diffs   []string
	)
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		it := itemOf(wi)
		if !fromCache(it.state) {
			return
		}
		// Storage cannot change under an instance in a work item of the
		// only worker.
		fresh, err := c.load(ctx, string(wi.InstanceID))
		if err != nil {
			t.Errorf("load %s: %v", wi.InstanceID, err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		checked[string(wi.InstanceID)]++
		if d := sameAsStorage(it.state, fresh); d != "" {
			diffs = append(diffs, fmt.Sprintf("%s: %s", wi.InstanceID, d))
		}
	}
	r := task.NewTaskRegistry()
	// Gens continues as new five times, each generation calling an
	// activity and setting a large custom status (a blob). Generation 1
	// calls it 24 times: its 25 history rows become garbage more than one
	// commit deletes (maxGarbagePerCommit).
	r.AddOrchestratorN("Gens", func(c *task.OrchestrationContext) (any, error) {
		var n int
		if err := c.GetInput(&n); err != nil {
			return nil, err
		}
		c.SetCustomStatus(fmt.Sprint(n) + strings.Repeat("s", 70_000))
		calls := 1
		if n == 1 {
			calls = maxGarbagePerCommit + 4
		}
		for range calls {
			if err := c.CallActivity("Echo", task.WithActivityInput(n)).Await(&n); err != nil {
				return nil, err
			}
		}
		if n < 5 {
			c.ContinueAsNew(n + 1)
			return nil, nil
		}
		return n, nil
	})
	// Collect consumes 120 events raised before it started (stashed).
	r.AddOrchestratorN("Collect", func(c *task.OrchestrationContext) (any, error) {
		sum := 0
		for range 120 {
			var v int
			if err := c.WaitForSingleEvent("e", -1).Await(&v); err != nil {
				return nil, err
			}
			sum += v
		}
		return sum, c.CallActivity("Echo", task.WithActivityInput(sum)).Await(&sum)
	})
	// Fan calls 30 activities at once, then a chain of 3.
	r.AddOrchestratorN("Fan", func(c *task.OrchestrationContext) (any, error) {
		var ts []task.Task
		for i := range 30 {
			ts = append(ts, c.CallActivity("Echo", task.WithActivityInput(i)))
		}
		sum := 0
		for _, tk := range ts {
			var v int
			if err := tk.Await(&v); err != nil {
				return nil, err
			}
			sum += v
		}
		for range 3 {
			if err := c.CallActivity("Echo", task.WithActivityInput(sum+1)).Await(&sum); err != nil {
				return nil, err
			}
		}
		return sum, nil
	})
	r.AddActivityN("Echo", func(c task.ActivityContext) (any, error) {
		var v int
		err := c.GetInput(&v)
		return v, err
	})
	client := dtbackend.NewTaskHubClient(c)
	for i := range 120 {
		if err := client.RaiseEvent(ctx, "collect", "e", api.WithEventPayload(i)); err != nil {
			t.Fatal(err)
		}
	}
	startRunner(t, b, r, 8)
	poll(t, 30*time.Second, "the early events to be stashed", func() bool {
		n, err := queueDepth(ctx, c.controlFor("collect"))
		return err == nil && n == 0
	})
	for id, name := range map[string]string{"gens": "Gens", "collect": "Collect", "fan": "Fan"} {
		if _, err := client.ScheduleNewOrchestration(ctx, name, api.WithInstanceID(api.InstanceID(id)), api.WithInput(0)); err != nil {
			t.Fatal(err)
		}
	}
	for id, want := range map[string]string{"gens": "5", "collect": fmt.Sprint(120 * 119 / 2), "fan": fmt.Sprint(30*29/2 + 3)} {
		if md := awaitDone(t, ctx, c, id, 45*time.Second); md.SerializedOutput != want {
			t.Errorf("%s: output %s, want %s (failure %v)", id, md.SerializedOutput, want, md.FailureDetails)
		}
		checkHistory(t, id, historyOf(ctx, t, c, id))
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("episodes built from the cache and compared with storage: %v", checked)
	for _, id := range []string{"gens", "collect", "fan"} {
		if checked[id] < 3 {
			t.Errorf("%s: only %d episodes built from the cache", id, checked[id])
		}
	}
	for _, d := range diffs {
		t.Errorf("cached state differs from storage: %s", d)
	}
}

// TestCacheEvictionAndClose: an instance that leaves the cache has the
// outbox rows it sent deleted then — evicted by another instance
// (InstanceCache 1), or at Close — and an evicted instance's next episode
// reads the partition and goes on.
func TestCacheEvictionAndClose(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 1, InstanceCache: 1})
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	// Sleepy's first episode sends a timer an hour away (its outbox row
	// stays while the instance rests) and waits for "go".
	r.AddOrchestratorN("Sleepy", func(c *task.OrchestrationContext) (any, error) {
		c.CreateTimer(time.Hour)
		return "awake", c.WaitForSingleEvent("go", -1).Await(nil)
	})
	var fresh []string // instances whose episodes read storage
	var mu sync.Mutex
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		if !fromCache(itemOf(wi).state) {
			mu.Lock()
			fresh = append(fresh, string(wi.InstanceID))
			mu.Unlock()
		}
	}
	stop := startRunner(t, b, r, 2)
	client := dtbackend.NewTaskHubClient(c)
	outbox := func(id string) int {
		n := 0
		for _, k := range rowKeys(ctx, t, c, id) {
			if strings.HasPrefix(k, outboxRKPre) {
				n++
			}
		}
		return n
	}
	start := func(id string) {
		t.Helper()
		if _, err := client.ScheduleNewOrchestration(ctx, "Sleepy", api.WithInstanceID(api.InstanceID(id))); err != nil {
			t.Fatal(err)
		}
		poll(t, 20*time.Second, id+" to be cached", func() bool { return cachedEntry(b, id) != nil && settled(b, id) })
	}
	start("first")
	if n := outbox("first"); n != 1 {
		t.Fatalf("first: %d outbox rows while cached with its sent row, want 1", n)
	}
	start("second") // evicts first
	if cachedEntry(b, "first") != nil {
		t.Fatal("first is still cached beside second with InstanceCache 1")
	}
	poll(t, 10*time.Second, "the evicted instance's sent row to be deleted", func() bool { return outbox("first") == 0 })
	if n := outbox("second"); n != 1 {
		t.Fatalf("second: %d outbox rows, want 1", n)
	}
	// The evicted instance goes on from a read.
	if err := client.RaiseEvent(ctx, "first", "go"); err != nil {
		t.Fatal(err)
	}
	if md := awaitDone(t, ctx, c, "first", 20*time.Second); md.SerializedOutput != `"awake"` {
		t.Fatalf("first: output %s", md.SerializedOutput)
	}
	mu.Lock()
	// The start's episode reads storage (more than once if the worker's
	// own poll found the start before its creator wrote the status row,
	// and the two raced: see createInstance), and so must the episode
	// after the eviction; the episodes between came from the cache.
	if i := slices.Index(fresh, "second"); i < 0 || !slices.Contains(fresh[:i], "first") || slices.Index(fresh[i:], "first") < 0 {
		t.Errorf("episodes that read storage %v: want first's start, then second's, then first's after its eviction", fresh)
	}
	mu.Unlock()
	// Close deletes the sent rows of what is cached (second).
	stop()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := outbox("second"); n != 0 {
		t.Errorf("second: %d outbox rows left after Close", n)
	}
}

// TestFirstOperationETagCommit: a real commit captures the status row's
// new ETag — the one getSentinel reads back — and the next episode, built
// from the cache on it, commits at the first attempt.
func TestFirstOperationETagCommit(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 1})
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := dtbackend.NewTaskHubClient(c)
	if _, err := client.ScheduleNewOrchestration(ctx, "Manual", api.WithInstanceID("manual")); err != nil {
		t.Fatal(err)
	}
	// episode fetches the next work item and commits its events as they are.
	episode := func() *dtbackend.OrchestrationWorkItem {
		t.Helper()
		wi, err := b.GetOrchestrationWorkItem(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if wi.State, err = b.GetOrchestrationRuntimeState(ctx, wi); err != nil {
			t.Fatal(err)
		}
		for _, e := range wi.NewEvents {
			if err := wi.State.AddEvent(e); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.CompleteOrchestrationWorkItem(ctx, wi); err != nil {
			t.Fatalf("commit: %v", err)
		}
		return wi
	}
	check := func(what string) {
		t.Helper()
		st := cachedEntry(b, "manual")
		_, etag, err := b.getSentinel(ctx, "manual")
		if err != nil {
			t.Fatal(err)
		}
		if st == nil || st.etag == "" || st.etag != etag || st.sentinel.etag() != etag {
			t.Fatalf("%s: cached ETag %v, status row's %q", what, st, etag)
		}
	}
	if wi := episode(); fromCache(itemOf(wi).state) {
		t.Fatal("the first episode did not read storage")
	}
	check("after the first commit")
	if err := client.RaiseEvent(ctx, "manual", "e"); err != nil {
		t.Fatal(err)
	}
	if wi := episode(); !fromCache(itemOf(wi).state) {
		t.Fatal("the second episode was not built from the cache")
	}
	check("after a commit fenced by the captured ETag")
}

// TestCachePartitionLostMidEpisode: a worker that loses the partition
// while an episode is between its commit and its end does not cache the
// instance (the loss dropped the partition's entries before this one was
// put), and deletes the episode's sent outbox row at once. Getting the
// partition back, it reads the instance afresh.
func TestCachePartitionLostMidEpisode(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 1, LeaseDuration: 9 * time.Second, WorkerID: "w1"}) // see TestCachePartitionLoss
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id = "midway"
	var lost atomic.Bool
	b.hooks.afterSend = func(iid string) bool {
		if iid == id && lost.CompareAndSwap(false, true) {
			// After the first commit sent its outbox: another worker takes
			// the partition, and this one notices.
			if err := writeLease(ctx, c, "elsewhere"); err != nil {
				t.Error(err)
			} else if !waitFor(20*time.Second, func() bool { return len(b.lm.owners()) == 0 }) {
				t.Error("the worker did not notice the loss within 10s")
			}
		}
		return false
	}
	var mu sync.Mutex
	var fresh []bool // per episode of id: did it read storage?
	b.hooks.workItem = func(wi *dtbackend.OrchestrationWorkItem) {
		if wi.InstanceID == id {
			mu.Lock()
			fresh = append(fresh, !fromCache(itemOf(wi).state))
			mu.Unlock()
		}
	}
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Later", func(c *task.OrchestrationContext) (any, error) {
		c.CreateTimer(time.Hour) // an outbox at the first commit
		return "done", c.WaitForSingleEvent("go", -1).Await(nil)
	})
	startRunner(t, b, r, 2)
	client := dtbackend.NewTaskHubClient(c)
	if _, err := client.ScheduleNewOrchestration(ctx, "Later", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	poll(t, 20*time.Second, "the first episode to end", func() bool { return lost.Load() && settled(b, id) })
	if cachedEntry(b, id) != nil {
		t.Error("cached by an episode that ended after its partition was lost")
	}
	poll(t, 20*time.Second, "the sent outbox row to be deleted", func() bool {
		return !slices.ContainsFunc(rowKeys(ctx, t, c, id), func(k string) bool { return strings.HasPrefix(k, outboxRKPre) })
	})
	giveLease(ctx, t, c, "w1")
	poll(t, 20*time.Second, "the worker to take the partition back", func() bool { return slices.Equal(b.lm.partitions(), []int{0}) })
	if err := client.RaiseEvent(ctx, id, "go"); err != nil {
		t.Fatal(err)
	}
	if md := awaitDone(t, ctx, c, id, 20*time.Second); md.SerializedOutput != `"done"` {
		t.Fatalf("output %s", md.SerializedOutput)
	}
	// The first episode reads storage (its start's more than once if the
	// worker's own poll found the start before its creator's status row
	// and the two raced: see createInstance), and so must the one after
	// the partition came back.
	mu.Lock()
	if len(fresh) < 2 || !fresh[0] || !fresh[len(fresh)-1] {
		t.Errorf("episodes that read storage %v: want the first and the one after the partition came back", fresh)
	}
	mu.Unlock()
	checkHistory(t, id, historyOf(ctx, t, c, id))
}

// TestCacheAbandonedEpisode: an episode built from the cache that is
// handed back without running (as a worker shutting down hands back work
// it fetched: taskhub.Gate does) ends without a commit. The instance's
// next episode reads the partition; it must not send again the outbox
// this worker sent and left for the next commit to delete — cache.go
// deletes such rows whenever an entry leaves the cache, and no worker
// died here — so the activity that outbox scheduled, which has run and
// answered, is not scheduled a second time.
func TestCacheAbandonedEpisode(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	b := openTest(t, Options{HubName: hub, Partitions: 1})
	c := openTest(t, Options{HubName: hub, Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const id = "handed-back"
	var runs atomic.Int32
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Two", func(c *task.OrchestrationContext) (any, error) {
		var out string
		if err := c.CallActivity("A").Await(&out); err != nil {
			return nil, err
		}
		return out, c.WaitForSingleEvent("go", -1).Await(nil)
	})
	r.AddActivityN("A", func(task.ActivityContext) (any, error) {
		runs.Add(1)
		return "a", nil
	})
	exec := task.NewTaskExecutor(r)
	// The workers are driven one work item at a time.
	ow := dtbackend.NewOrchestrationWorker(b, exec, quietLogger())
	aw := dtbackend.NewActivityTaskWorker(b, exec, quietLogger())
	next := func(w dtbackend.TaskWorker, what string, done func() bool) {
		t.Helper()
		if ok, err := w.ProcessNext(ctx); !ok || err != nil {
			t.Fatalf("%s: fetched %v, %v", what, ok, err)
		}
		poll(t, 20*time.Second, what, done)
	}
	history := func(typ string) int { return countType(historyOf(ctx, t, c, id), typ) }
	if _, err := dtbackend.NewTaskHubClient(c).ScheduleNewOrchestration(ctx, "Two", api.WithInstanceID(id)); err != nil {
		t.Fatal(err)
	}
	next(ow, "the first episode (schedules A)", func() bool { st := cachedEntry(b, id); return st != nil && len(st.sent) == 1 && settled(b, id) })
	next(aw, "A to run and answer", func() bool {
		if runs.Load() != 1 {
			return false
		}
		b.mu.Lock()
		buffered := len(b.pending[id]) > 0 // by hand, or carried
		b.mu.Unlock()
		n, err := queueDepth(ctx, b.control[0])
		return buffered || err == nil && n > 0
	})
	// The episode for A's answer, built from the cache, handed back.
	wi, err := b.GetOrchestrationWorkItem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !fromCache(itemOf(wi).state) {
		t.Fatal("the episode was not built from the cache")
	}
	if err := b.AbandonOrchestrationWorkItem(ctx, wi); err != nil {
		t.Fatal(err)
	}
	next(ow, "the answer's episode to commit", func() bool { return settled(b, id) && history("TaskCompleted") == 1 })
	if n, err := queueDepth(ctx, b.work); err != nil || n != 0 {
		t.Errorf("%d activity messages queued after the answer's episode (%v); want 0: the episode that read the "+
			"partition after the hand-back found the outbox row of the first commit (sent, its delete left to the "+
			"next commit by the cache) and sent A again, which has run and answered: an abandoned episode must "+
			"delete its taken entry's sent rows.", n, err)
	}
	if history("TaskScheduled") != 1 {
		t.Errorf("history: %d TaskScheduled", history("TaskScheduled"))
	}
}
