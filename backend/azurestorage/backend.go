// Package azurestorage is dronehub's Azure Storage task hub: durabletask-go's
// backend contract on Azure queues, tables and blobs, shared by many workers.
//
// See docs/storage-layout.md for every queue, table and blob it uses and the
// checkpoint protocol. In short: an instance's status row ("sentinel") lives
// in the same table partition as its history, so status and history change
// in one entity-group transaction guarded by the sentinel's ETag; messages
// travel on partitioned control queues and one activity queue; partitions
// are owned through ETag-guarded lease rows.
package azurestorage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/taskhub"
)

// ErrPartitionMismatch is returned by Open when the hub was created with a
// different partition count.
var ErrPartitionMismatch = errors.New("azurestorage: partition count does not match the task hub's")

// Backend is the Azure Storage task hub. It implements taskhub.Backend.
type Backend struct {
	opts  Options
	cfg   Config
	cl    *clients
	names names
	log   *slog.Logger

	history *aztables.Client
	dead    *aztables.Client
	index   *aztables.Client
	leases  *aztables.Client
	control []*azqueue.QueueClient
	work    *azqueue.QueueClient
	tele    *azqueue.QueueClient // <hub>-telemetry
	fleet   *Fleet

	orchWake, actWake taskhub.Wake

	mu       sync.Mutex
	created  bool
	pending  map[string][]*inMsg // dequeued control messages per instance, not yet in a work item
	ready    []string            // instances with pending messages, oldest first
	inflight map[string]bool     // instances in a work item
	actBuf   []*inMsg            // dequeued activity messages
	// orchPolling is when GetOrchestrationWorkItem last looked for work
	// (unix ns): control messages are delivered by hand only while it runs.
	orchPolling atomic.Int64
	// actPolling is the same for GetActivityWorkItem.
	actPolling atomic.Int64
	timers     []time.Time // due times of delayed messages this process sent
	lm         *leaseManager
	// confirmed holds, per instance, the seenKeys of consumed messages
	// whose deletion succeeded since its last commit (see dedupe.go).
	confirmed map[string]map[string]bool
	blobs     *blobCache
	cache     *instanceCache // nil when disabled
	wakeups   *waker
	poll      *pollState
	hooks     testHooks
	held      map[*inMsg]struct{} // messages whose locks keepLocks renews

	bg     context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ taskhub.Backend = (*Backend)(nil)

// testHooks let the package's tests stop an episode at a point of the
// checkpoint protocol, as a worker that dies there would. A hook that
// returns true "crashes": nothing after that point happens, and the work
// item's messages stay locked until LockTimeout. All are nil outside tests.
type testHooks struct {
	workItem     func(wi *dtbackend.OrchestrationWorkItem) // sees each fetched work item
	beforeCommit func(id string) bool
	afterCommit  func(id string) bool
	afterSend    func(id string) bool
	// dropActivity "kills" the worker holding a fetched activity message:
	// it is neither run nor renewed, and reappears after LockTimeout.
	dropActivity func(m *inMsg) bool
	// enqueued sees every message sent (its body and the queue's answer,
	// which holds the pop receipt that can update it while invisible).
	enqueued func(q *azqueue.QueueClient, body string, resp azqueue.EnqueueMessagesResponse)
	// heldBack sees an instance whose messages wait for its status row.
	heldBack func(id string)
}

func crashAt(h func(string) bool, id string) bool { return h != nil && h(id) }

// errSimulatedCrash is returned by a work item that a test hook crashed.
var errSimulatedCrash = errors.New("azurestorage: simulated crash (test hook)")

// Open connects to the task hub, creating its queues, tables and container
// if needed, and checks the partition count against the hub's metadata.
func Open(ctx context.Context, opts Options) (*Backend, error) {
	adopt := opts.Partitions == 0
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	cfg, err := ParseConnectionString(opts.ConnectionString)
	if err != nil {
		return nil, err
	}
	cl, err := newClients(cfg, opts.Counter, opts.TracerProvider)
	if err != nil {
		return nil, err
	}
	if adopt {
		// No count asked for: an existing hub keeps the one it was created
		// with; only an explicit, different count is a mismatch.
		if p, ok := recordedPartitions(ctx, cl, opts.HubName); ok {
			opts.Partitions = p
		}
	}
	n := newNames(opts.HubName, opts.Partitions)
	b := &Backend{
		opts: opts, cfg: cfg, cl: cl, names: n, log: opts.Logger.With("hub", opts.HubName),
		history:  cl.table.NewClient(n.historyTable),
		dead:     cl.table.NewClient(n.deadTable),
		index:    cl.table.NewClient(n.indexTable),
		leases:   cl.table.NewClient(n.leaseTable),
		work:     cl.queue.NewQueueClient(n.workItems),
		tele:     cl.queue.NewQueueClient(n.telemetry),
		pending:  map[string][]*inMsg{},
		inflight: map[string]bool{},
		// Large events and properties read by episodes; bounded memory.
		blobs:     newBlobCache(64 << 20),
		confirmed: map[string]map[string]bool{},
		held:      map[*inMsg]struct{}{},
	}
	for p := 0; p < n.partitions; p++ {
		b.control = append(b.control, cl.queue.NewQueueClient(n.controlQueue(p)))
	}
	b.poll = newPollState(opts.MaxPollInterval)
	b.wakeups = newWaker(b)
	if opts.InstanceCache > 0 {
		b.cache = newInstanceCache(opts.InstanceCache)
	}
	b.bg, b.cancel = context.WithCancel(context.Background())
	b.lm = newLeaseManager(b)
	b.wg.Add(1)
	go func() { defer b.wg.Done(); b.keepLocks() }()
	if err := b.CreateTaskHub(ctx); err != nil && !errors.Is(err, dtbackend.ErrTaskHubExists) {
		b.cancel()
		return nil, err
	}
	f, err := newFleet(ctx, cl.table, n)
	if err != nil {
		b.cancel()
		return nil, err
	}
	b.fleet = f
	return b, nil
}

// Fleet returns the domain store on the same storage account.
func (b *Backend) Fleet() *Fleet { return b.fleet }

// Counter returns the storage request counter.
func (b *Backend) Counter() *Counter { return b.opts.Counter }

// Close releases partition leases and stops background work. Stop the
// worker using the backend first.
//
// Messages it has dequeued but not handed out are made visible again at
// once, so a deploy does not leave them locked for LockTimeout.
func (b *Backend) Close() error {
	b.mu.Lock()
	var idle []*inMsg
	for id, list := range b.pending {
		if !b.inflight[id] {
			idle = append(idle, list...)
			delete(b.pending, id)
		}
	}
	idle = append(idle, b.actBuf...)
	b.actBuf = nil
	b.mu.Unlock()
	b.releaseAll(idle, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Before the leases go: the next owners would send these outboxes again.
	b.flushCache(ctx)
	b.cancel()
	b.wg.Wait()
	b.lm.releaseAll(ctx)
	return nil
}

// String describes the hub without secrets.
func (b *Backend) String() string {
	return fmt.Sprintf("%s hub %s (%d partitions)", b.cfg, b.opts.HubName, b.opts.Partitions)
}

const (
	metaPK = "hub"
	metaRK = "taskhub"
)

// CreateTaskHub creates the hub's resources idempotently and records its
// partition count. It returns ErrTaskHubExists (unwrapped) if the hub was
// already there.
func (b *Backend) CreateTaskHub(ctx context.Context) error {
	for _, t := range []string{b.names.historyTable, b.names.deadTable, b.names.indexTable, b.names.leaseTable} {
		if err := createTable(ctx, b.cl.table, t); err != nil {
			return err
		}
	}
	for _, q := range b.queues() {
		if _, err := q.Create(ctx, nil); err != nil && !isConflict(err) {
			return fmt.Errorf("azurestorage: create queue %s: %w", queueName(q), err)
		}
	}
	if _, err := b.cl.blob.CreateContainer(ctx, b.names.largeMessages, nil); err != nil && !isConflict(err) {
		return fmt.Errorf("azurestorage: create container %s: %w", b.names.largeMessages, err)
	}
	meta := newEntity(metaPK, metaRK)
	meta["Partitions"] = b.opts.Partitions
	meta["CreatedTime"] = formatTime(time.Now())
	_, err := b.leases.AddEntity(ctx, meta.marshal(), nil)
	switch {
	case err == nil:
		b.mu.Lock()
		b.created = true
		b.mu.Unlock()
		return nil
	case !isConflict(err):
		return fmt.Errorf("azurestorage: record hub metadata: %w", err)
	}
	resp, err := b.leases.GetEntity(ctx, metaPK, metaRK, nil)
	if err != nil {
		return fmt.Errorf("azurestorage: read hub metadata: %w", err)
	}
	e, err := parseEntity(resp.Value)
	if err != nil {
		return fmt.Errorf("azurestorage: read hub metadata: %w", err)
	}
	if got := int(e.int64("Partitions")); got != b.opts.Partitions {
		return fmt.Errorf("%w: hub %s has %d partitions, Options.Partitions is %d", ErrPartitionMismatch, b.opts.HubName, got, b.opts.Partitions)
	}
	return dtbackend.ErrTaskHubExists
}

// HubExists reports whether the hub named hub exists in the storage account
// of the connection string, without creating anything.
func HubExists(ctx context.Context, conn, hub string) (bool, error) {
	if hub == "" {
		hub = DefaultHubName
	}
	cfg, err := ParseConnectionString(conn)
	if err != nil {
		return false, err
	}
	cl, err := newClients(cfg, &Counter{}, nil)
	if err != nil {
		return false, err
	}
	_, err = cl.table.NewClient(newNames(hub, 1).leaseTable).GetEntity(ctx, metaPK, metaRK, nil)
	switch {
	case err == nil:
		return true, nil
	case isNotFound(err):
		return false, nil
	}
	return false, fmt.Errorf("azurestorage: look up hub %s: %w", hub, err)
}

// recordedPartitions reads the partition count an existing hub was created
// with; ok is false for a hub that does not exist yet.
func recordedPartitions(ctx context.Context, cl *clients, hub string) (int, bool) {
	resp, err := cl.table.NewClient(newNames(hub, 1).leaseTable).GetEntity(ctx, metaPK, metaRK, nil)
	if err != nil {
		return 0, false
	}
	e, err := parseEntity(resp.Value)
	if err != nil {
		return 0, false
	}
	p := int(e.int64("Partitions"))
	return p, p >= 1 && p <= 16
}

// queues are every queue of the hub: control queues, work items, telemetry.
func (b *Backend) queues() []*azqueue.QueueClient {
	return append(append([]*azqueue.QueueClient{}, b.control...), b.work, b.tele)
}

// DeleteTaskHub deletes every queue, table and container of the hub, the
// fleet tables included.
func (b *Backend) DeleteTaskHub(ctx context.Context) error {
	if _, err := b.leases.GetEntity(ctx, metaPK, metaRK, nil); err != nil {
		if isNotFound(err) {
			return dtbackend.ErrTaskHubNotFound
		}
		return fmt.Errorf("azurestorage: read hub metadata: %w", err)
	}
	var errs []error
	for _, t := range []string{b.names.historyTable, b.names.deadTable, b.names.indexTable, b.names.dronesTable, b.names.effectsTable, b.names.leaseTable} {
		if _, err := b.cl.table.DeleteTable(ctx, t, nil); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete table %s: %w", t, err))
		}
	}
	for _, q := range b.queues() {
		if _, err := q.Delete(ctx, nil); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete queue %s: %w", queueName(q), err))
		}
	}
	if _, err := b.cl.blob.DeleteContainer(ctx, b.names.largeMessages, nil); err != nil && !isNotFound(err) {
		errs = append(errs, fmt.Errorf("delete container %s: %w", b.names.largeMessages, err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("azurestorage: delete task hub %s: %w", b.opts.HubName, err)
	}
	return nil
}

// Start implements backend.Backend: it begins claiming partitions.
func (b *Backend) Start(ctx context.Context) error {
	b.lm.start()
	return nil
}

// Stop implements backend.Backend. Leases are kept until Close, so a worker
// restarted on the same backend resumes its partitions.
func (b *Backend) Stop(context.Context) error { return nil }

// timeLayout is fixed-width, so stored times sort as strings.
const timeLayout = "2006-01-02T15:04:05.000000000Z"

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func parseTime(s string) time.Time {
	t, _ := time.Parse(timeLayout, s)
	return t
}

// noteTimer remembers when a delayed message this process sent is due, so
// an idle consumer wakes for it instead of waiting a full poll interval.
func (b *Backend) noteTimer(at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.timers) >= 1024 {
		return
	}
	b.timers = append(b.timers, at)
	sort.Slice(b.timers, func(i, j int) bool { return b.timers[i].Before(b.timers[j]) })
}

// timerDue reports whether delayed messages this process sent came due,
// and forgets them: the poll round that follows looks for them.
func (b *Backend) timerDue() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	due := false
	for len(b.timers) > 0 && !b.timers[0].After(now) {
		b.timers, due = b.timers[1:], true
	}
	return due
}

// untilTimer is the time until the next noted timer, capped at d.
func (b *Backend) untilTimer(d time.Duration) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	for len(b.timers) > 0 && !b.timers[0].After(now) {
		b.timers = b.timers[1:]
		return 0 // one came due since the last poll
	}
	if len(b.timers) > 0 {
		if u := time.Until(b.timers[0]) + 50*time.Millisecond; u < d {
			return u
		}
	}
	return d
}
