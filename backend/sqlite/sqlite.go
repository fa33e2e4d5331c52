// Package sqlite is dronehub's embedded task hub, on a SQLite file, with the
// fleet.Store in the same file. It implements durabletask-go v0.6.0's
// backend contract on durabletask-go's own SQLite schema (files written by
// earlier versions, which wrapped durabletask-go's SQLite backend, open as
// they are), and adds what that backend lacks: instance listing, scheduled
// start, in-process wake-ups, protection against stale timers, lock renewal,
// and dead letters that reach their workflow. It needs nothing installed:
// the driver is pure Go.
//
// Connections: one writer connection runs every write, each in an immediate
// transaction (so a read-then-write transaction never fails on the upgrade
// to a write lock, and writers in this process queue on the pool instead of
// spinning on SQLITE_BUSY), and a small pool of read-only connections serves
// status reads, histories and listings, which WAL lets proceed while a
// write commits.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/proto"
	_ "modernc.org/sqlite" // the "sqlite" driver

	"github.com/dronehub/dronehub/taskhub"
)

// Options configures the SQLite task hub. The zero value of every field but
// Path means its default.
type Options struct {
	// Path is the database file; it is created if missing.
	Path string
	// LockTimeout is how long a work item stays locked to the worker that
	// fetched it without being renewed. The backend renews the locks of the
	// work items it handed out every LockTimeout/3 until they are completed
	// or abandoned, so this bounds how long the work of a worker that died
	// (or called Stop) stays locked, not how long work may take. Default 2
	// minutes.
	LockTimeout time.Duration
	// PollInterval is how often an idle consumer re-checks the database for
	// work written by other processes. Work this process enqueues wakes its
	// consumers at once, and timers wake them when due. Default 500ms.
	PollInterval time.Duration
	// MaxDequeueCount is how many deliveries of an orchestration work item
	// may fail (its orchestrator's execution failed, e.g. it panicked in
	// dronehub's worker) before its messages are moved to the dead letters
	// and the instance ends Failed. Hand-backs, failed commits and expired
	// locks do not count; see taskhub/deadletter.go. Default 10.
	MaxDequeueCount int
	// FetchBatch is how many work items of a kind one fetch may lock in
	// its transaction; the ones beyond the first wait, locked and renewed,
	// for the next fetches of this backend (see ahead.go). 1 turns fetching
	// ahead off, e.g. to share work evenly among processes on one file.
	// Default 8.
	FetchBatch int
	// Logger receives the backend's logs; default slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.LockTimeout == 0 {
		o.LockTimeout = 2 * time.Minute
	}
	if o.PollInterval == 0 {
		o.PollInterval = 500 * time.Millisecond
	}
	if o.MaxDequeueCount == 0 {
		o.MaxDequeueCount = 10
	}
	if o.FetchBatch == 0 {
		o.FetchBatch = 8
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

func (o Options) validate() error {
	switch {
	case o.Path == "":
		return errors.New("sqlite: Options.Path is required: the database file, e.g. dronehub.db")
	case strings.ContainsAny(o.Path, "?#"):
		return fmt.Errorf("sqlite: database path %q must not contain '?' or '#'", o.Path)
	case o.LockTimeout < time.Second:
		return fmt.Errorf("sqlite: Options.LockTimeout %s is below the 1s minimum", o.LockTimeout)
	case o.MaxDequeueCount < 1:
		return fmt.Errorf("sqlite: Options.MaxDequeueCount %d must be at least 1", o.MaxDequeueCount)
	case o.FetchBatch < 1 || o.FetchBatch > 100:
		return fmt.Errorf("sqlite: Options.FetchBatch %d must be between 1 and 100", o.FetchBatch)
	case o.PollInterval < time.Millisecond:
		return fmt.Errorf("sqlite: Options.PollInterval %s is below the 1ms minimum", o.PollInterval)
	}
	return nil
}

// readConns bounds the read-only pool.
const readConns = 4

// Backend is the SQLite task hub. It implements taskhub.Backend.
type Backend struct {
	wdb *sql.DB // the writer: one connection, immediate transactions
	// wstmts are the writer's prepared statements.
	wstmts *stmtCache
	rdb    *sql.DB // readers: up to readConns read-only connections
	opts   Options
	log    *slog.Logger

	ownerPrefix string        // host,pid,uuid of this Backend
	ownerSeq    atomic.Uint64 // makes each fetch's lock owner unique

	orchWake, actWake taskhub.Wake
	leases            leases
	// orchAhead and actAhead are work items fetched ahead (ahead.go).
	orchAhead ahead[dtbackend.OrchestrationWorkItem]
	actAhead  ahead[dtbackend.ActivityWorkItem]
	group     writeGroup

	mu      sync.Mutex
	created bool
	closed  bool
	fleet   *Fleet
}

var (
	_ taskhub.Backend              = (*Backend)(nil)
	_ taskhub.DeadLetterer         = (*Backend)(nil)
	_ taskhub.ActivityDeadLetterer = (*Backend)(nil)
	_ taskhub.Inspector            = (*Backend)(nil)
	_ taskhub.Pinger               = (*Backend)(nil)
)

// Durability. The writer runs in WAL mode with synchronous=NORMAL: a commit
// is not flushed to disk until the next checkpoint, so a power loss or an OS
// crash (not a crash of the process) may roll back the transactions of the
// last moments, though never leave the file inconsistent: what survives is
// the state at an earlier point in time. For the worker's own commits
// (locks, turns, activity results) that is the at-least-once contract: the
// lost work runs again. Writes acknowledged to a client who will not repeat
// them (creating an instance, raising, terminating, suspending or resuming,
// purging, replaying a dead letter) commit with synchronous=FULL instead
// (writeDurable), which also makes every earlier commit durable. The fleet
// store's writes (drone state, effect records) stay NORMAL: after a power
// loss a drone's state may step back to earlier frames until its next
// frames arrive. See docs/architecture.md.
//
// busy_timeout makes writers of other processes on the same file wait for
// each other instead of failing at once; in this process, writes queue on
// the single writer connection.
func writerDSN(path string) string {
	return fileURL(path) + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
}

func readerDSN(path string) string {
	return fileURL(path) + "?_pragma=busy_timeout(10000)&_pragma=query_only(1)"
}

func fileURL(path string) string {
	u := url.URL{Scheme: "file", Opaque: (&url.URL{Path: path}).EscapedPath()}
	return u.String()
}

// Open opens (creating if needed) the task hub in the database file.
func Open(ctx context.Context, opts Options) (*Backend, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	wdb, err := sql.Open("sqlite", writerDSN(opts.Path))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", opts.Path, err)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	if err := wdb.PingContext(ctx); err != nil {
		wdb.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", opts.Path, err)
	}
	rdb, err := sql.Open("sqlite", readerDSN(opts.Path))
	if err != nil {
		wdb.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", opts.Path, err)
	}
	rdb.SetMaxOpenConns(readConns)
	rdb.SetMaxIdleConns(readConns)
	host, _ := os.Hostname()
	b := &Backend{
		wdb:         wdb,
		wstmts:      &stmtCache{db: wdb, stmts: map[string]*sql.Stmt{}},
		rdb:         rdb,
		opts:        opts,
		log:         opts.Logger,
		ownerPrefix: fmt.Sprintf("%s,%d,%s", host, os.Getpid(), uuid.NewString()),
	}
	b.leases.stop = make(chan struct{})
	if err := b.CreateTaskHub(ctx); err != nil && !errors.Is(err, dtbackend.ErrTaskHubExists) {
		b.Close()
		return nil, err
	}
	f, err := newFleet(ctx, wdb)
	if err != nil {
		b.Close()
		return nil, err
	}
	b.fleet = f
	return b, nil
}

// Fleet returns the domain store on the same database file. It writes
// through the task hub's writer connection.
func (b *Backend) Fleet() *Fleet { return b.fleet }

// Close stops renewing locks and closes every database handle the backend
// opened. Stop the worker using the backend first: work items still out are
// delivered again once their locks expire.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closeLocked()
}

func (b *Backend) closeLocked() error {
	if b.closed {
		return nil
	}
	b.closed = true
	ctx, cancel := handBack(context.Background())
	b.handBackAhead(ctx)
	cancel()
	b.closeLeases()
	b.wstmts.close()
	rerr := b.rdb.Close()
	werr := b.wdb.Close() // last, so that it checkpoints the WAL
	return errors.Join(werr, rerr)
}

// String names the backend in logs.
func (b *Backend) String() string { return "sqlite:" + b.opts.Path }

// CreateTaskHub creates the schema.
func (b *Backend) CreateTaskHub(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.created {
		return dtbackend.ErrTaskHubExists
	}
	if err := b.write(ctx, func(tx *stx) error { return migrate(ctx, tx) }); err != nil {
		return fmt.Errorf("sqlite: create task hub in %s: %w", b.opts.Path, err)
	}
	b.created = true
	return nil
}

// DeleteTaskHub closes the backend and removes the database file and its WAL.
func (b *Backend) DeleteTaskHub(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.created = false
	b.closeLocked()
	err := os.Remove(b.opts.Path)
	os.Remove(b.opts.Path + "-wal")
	os.Remove(b.opts.Path + "-shm")
	if os.IsNotExist(err) {
		return dtbackend.ErrTaskHubNotFound
	}
	return err
}

// Start implements backend.Backend. Locks are renewed whenever work items
// are out; there is nothing else to start.
func (b *Backend) Start(context.Context) error {
	startAhead(&b.orchAhead)
	startAhead(&b.actAhead)
	return nil
}

// Stop implements backend.Backend: it stops renewing the locks of the work
// items handed out so far. The runner calls it once its work is drained;
// work still running then (cut off at the shutdown deadline) is delivered
// again when its lock expires, unless it is completed or abandoned first.
func (b *Backend) Stop(ctx context.Context) error {
	b.handBackAhead(ctx)
	b.dropLeases()
	return nil
}

// write runs fn in an immediate transaction on the writer connection,
// grouped with other writes (see runGroup). fn may run more than once, its
// earlier runs rolled back, so it must set its outputs afresh on each run.
func (b *Backend) write(ctx context.Context, fn func(*stx) error) error {
	req := &writeReq{ctx: ctx, fn: fn, done: make(chan error, 1)}
	b.group.mu.Lock()
	b.group.queue = append(b.group.queue, req)
	lead := !b.group.leading
	b.group.leading = true
	b.group.mu.Unlock()
	if lead {
		b.commitGroups()
	}
	return <-req.done
}

// Group commit. The task hub's writes (locking work items, recording turns
// and activity results) go through one writer connection one transaction
// at a time, and a commit costs far more than the few statements in it
// (the WAL frames and their system calls). So the writes waiting while a
// transaction commits are run together in the next one: each in a
// savepoint, so that one that fails is undone alone and reported to its
// caller while the others commit; a failed commit fails them all. The
// result is the same as running them one after another, in the order they
// arrived, and each caller still returns only once its write is committed.
// No goroutine waits for work: the caller that finds no group running
// leads, and hands the lead to a new goroutine if more writes are waiting
// when its group is done.

// writeReq is one write waiting for a group.
type writeReq struct {
	ctx  context.Context
	fn   func(*stx) error
	done chan error
	err  error // fn's error, or the group's
	ok   bool  // fn succeeded (its fate is the commit's)
}

// writeGroup is the queue of writes.
type writeGroup struct {
	mu      sync.Mutex
	queue   []*writeReq
	leading bool
}

// maxGroup bounds the writes in one transaction.
const maxGroup = 64

// commitGroups runs one group of the waiting writes, then leaves the lead
// to another goroutine if more are waiting.
func (b *Backend) commitGroups() {
	b.group.mu.Lock()
	n := min(len(b.group.queue), maxGroup)
	batch := b.group.queue[:n:n]
	b.group.queue = b.group.queue[n:]
	b.group.mu.Unlock()

	b.runGroup(batch)

	b.group.mu.Lock()
	more := len(b.group.queue) > 0
	b.group.leading = more
	b.group.mu.Unlock()
	if more {
		go b.commitGroups()
	}
}

func (b *Backend) runGroup(batch []*writeReq) {
	// Optimistically, the writes run one after another with no savepoints
	// between them: a savepoint costs its statement journal, allocated and
	// freed each time (with the embedded SQLite's allocator, a map and an
	// unmap of memory). Should one fail, the transaction is rolled back and
	// the group runs again with a savepoint around each write. Running a
	// write twice is safe: its first run is rolled back, and the writes set
	// their outputs afresh on each run (see write).
	if len(batch) > 1 && b.tryGroup(batch) {
		return
	}
	// The transaction outlives any one caller's context: database/sql
	// rolls a transaction back when its context ends.
	tx, err := b.wdb.BeginTx(context.Background(), nil)
	if err != nil {
		for _, r := range batch {
			r.done <- fmt.Errorf("sqlite: begin a write: %w", err)
		}
		return
	}
	defer tx.Rollback()
	t := &stx{Tx: tx, stmts: b.wstmts}
	if len(batch) == 1 {
		r := batch[0]
		r.err = r.ctx.Err()
		if r.err == nil {
			r.err = r.fn(t)
		}
		r.ok = r.err == nil
	} else {
		for _, r := range batch {
			if r.err = r.ctx.Err(); r.err != nil {
				continue
			}
			if _, err := t.ExecContext(r.ctx, `SAVEPOINT w`); err != nil {
				r.err = fmt.Errorf("sqlite: begin a write: %w", err)
				continue
			}
			if r.err = r.fn(t); r.err != nil {
				if _, err := t.ExecContext(context.WithoutCancel(r.ctx), `ROLLBACK TO w`); err != nil {
					b.abortGroup(batch, fmt.Errorf("sqlite: undo a failed write (%w): %w", r.err, err))
					return
				}
			}
			if _, err := t.ExecContext(context.WithoutCancel(r.ctx), `RELEASE w`); err != nil {
				b.abortGroup(batch, fmt.Errorf("sqlite: end a write: %w", err))
				return
			}
			r.ok = r.err == nil
		}
	}
	b.finishGroup(batch, tx.Commit())
}

// tryGroup runs a group's writes in one transaction without savepoints and
// commits it if every write succeeded; it reports whether it did (and
// answered the callers). Otherwise nothing was written.
func (b *Backend) tryGroup(batch []*writeReq) bool {
	for _, r := range batch {
		if r.ctx.Err() != nil {
			return false
		}
	}
	tx, err := b.wdb.BeginTx(context.Background(), nil)
	if err != nil {
		return false
	}
	t := &stx{Tx: tx, stmts: b.wstmts}
	for _, r := range batch {
		if err := r.fn(t); err != nil {
			_ = tx.Rollback()
			return false
		}
	}
	for _, r := range batch {
		r.ok, r.err = true, nil
	}
	b.finishGroup(batch, tx.Commit())
	return true
}

// finishGroup answers the callers of a group whose commit returned err.
func (b *Backend) finishGroup(batch []*writeReq, err error) {
	var cerr error
	if err != nil {
		cerr = fmt.Errorf("sqlite: commit: %w", err)
	}
	for _, r := range batch {
		switch {
		case r.ok && cerr != nil:
			r.done <- cerr
		case r.ok:
			r.done <- nil
		default:
			r.done <- r.err
		}
	}
}

// abortGroup fails every write of a group whose transaction is broken.
func (b *Backend) abortGroup(batch []*writeReq, err error) {
	for _, r := range batch {
		if !r.ok && r.err != nil && r.err != err {
			r.done <- r.err // its own failure, undone with the rest
			continue
		}
		r.done <- err
	}
}

// writeDurable is write for a change acknowledged to a client: it commits
// with synchronous=FULL, so it survives a power loss once it returns.
func (b *Backend) writeDurable(ctx context.Context, fn func(*stx) error) error {
	conn, err := b.wdb.Conn(ctx)
	if err != nil {
		return fmt.Errorf("sqlite: begin a write: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `PRAGMA synchronous = FULL`); err != nil {
		return fmt.Errorf("sqlite: begin a write: %w", err)
	}
	defer func() {
		rctx, cancel := handBack(ctx)
		defer cancel()
		if _, err := conn.ExecContext(rctx, `PRAGMA synchronous = NORMAL`); err != nil {
			b.log.Warn("sqlite: could not reset synchronous to NORMAL; writes stay FULL", "err", err)
		}
	}()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: begin a write: %w", err)
	}
	defer tx.Rollback()
	if err := fn(&stx{Tx: tx, stmts: b.wstmts}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	return nil
}

// handBack is ctx without its cancellation, bounded: what a hand-back or a
// dead-letter move runs on, so that it happens even when the caller's
// context was just cancelled (at shutdown).
func handBack(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
}

// queryer is a *sql.DB or a *sql.Tx.
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// CreateOrchestrationInstance implements backend.Backend. An instance whose
// start time lies ahead stays Pending and is not fetched until then.
func (b *Backend) CreateOrchestrationInstance(ctx context.Context, e *dtbackend.HistoryEvent, opts ...dtbackend.OrchestrationIdReusePolicyOptions) error {
	err := b.writeDurable(ctx, func(tx *stx) error {
		return b.createInstance(ctx, tx, e, time.Now().UTC(), opts...)
	})
	if errors.Is(err, api.ErrIgnoreInstance) {
		return nil
	}
	if err != nil {
		return err
	}
	b.orchWake.Notify()
	return nil
}

// createInstance inserts the instance of the start event e and queues e for
// it, applying the reuse policy if the id is taken.
func (b *Backend) createInstance(ctx context.Context, tx *stx, e *dtbackend.HistoryEvent, now time.Time, opts ...dtbackend.OrchestrationIdReusePolicyOptions) error {
	if e == nil || e.Timestamp == nil {
		return errors.New("sqlite: a start event with a timestamp is required")
	}
	es := e.GetExecutionStarted()
	if es == nil {
		return errors.New("sqlite: CreateOrchestrationInstance needs an ExecutionStarted event")
	}
	id := es.GetOrchestrationInstance().GetInstanceId()
	policy := &api.OrchestrationIdReusePolicy{}
	for _, opt := range opts {
		if err := opt(policy); err != nil {
			return err
		}
	}
	insert := func() (int64, error) {
		res, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO Instances (Name, Version, InstanceID, ExecutionID, Input, RuntimeStatus, CreatedTime)
			VALUES (?, ?, ?, ?, ?, 'PENDING', ?)`,
			es.GetName(), es.GetVersion().GetValue(), id, es.GetOrchestrationInstance().GetExecutionId().GetValue(),
			es.GetInput().GetValue(), e.Timestamp.AsTime())
		if err != nil {
			return 0, fmt.Errorf("sqlite: create instance %s: %w", id, err)
		}
		return res.RowsAffected()
	}
	n, err := insert()
	if err != nil {
		return err
	}
	if n == 0 {
		var status string
		if err := tx.QueryRowContext(ctx, `SELECT RuntimeStatus FROM Instances WHERE InstanceID = ?`, id).Scan(&status); err != nil {
			return fmt.Errorf("sqlite: create instance %s: %w", id, err)
		}
		st, _ := taskhub.ParseStatus(status)
		matches := false
		for _, s := range policy.GetOperationStatus() {
			matches = matches || s == st
		}
		switch {
		case !matches:
			return api.ErrDuplicateInstance
		case policy.GetAction() == api.REUSE_ID_ACTION_IGNORE:
			b.log.Warn("sqlite: an instance with this id exists; ignoring the create request", "instance", id)
			return api.ErrIgnoreInstance
		case policy.GetAction() == api.REUSE_ID_ACTION_TERMINATE:
			if err := deleteInstance(ctx, tx, api.InstanceID(id)); err != nil {
				return err
			}
			if n, err = insert(); err != nil {
				return err
			} else if n == 0 {
				return fmt.Errorf("sqlite: create instance %s: the id is still taken", id)
			}
		default:
			return api.ErrDuplicateInstance
		}
	}
	payload, err := dtbackend.MarshalHistoryEvent(e)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO NewEvents (InstanceID, ExecutionID, EventPayload) VALUES (?, ?, ?)`,
		id, es.GetOrchestrationInstance().GetExecutionId().GetValue(), payload); err != nil {
		return fmt.Errorf("sqlite: create instance %s: %w", id, err)
	}
	if at, ok := taskhub.ScheduledStart([]*dtbackend.HistoryEvent{e}, now); ok {
		return deferInstance(ctx, tx, id, at)
	}
	return nil
}

// deferInstance keeps an unlocked instance from being fetched until at.
func deferInstance(ctx context.Context, tx *stx, id string, at time.Time) error {
	_, err := tx.ExecContext(ctx, `UPDATE Instances SET LockedBy = NULL, LockExpiration = ? WHERE InstanceID = ?`, at.UTC(), id)
	return err
}

// deleteInstance removes an instance and everything queued for it.
func deleteInstance(ctx context.Context, tx *stx, id api.InstanceID) error {
	for _, q := range []string{
		`DELETE FROM Instances WHERE InstanceID = ?`,
		`DELETE FROM History WHERE InstanceID = ?`,
		`DELETE FROM NewEvents WHERE InstanceID = ?`,
		`DELETE FROM NewTasks WHERE InstanceID = ?`,
	} {
		if _, err := tx.ExecContext(ctx, q, string(id)); err != nil {
			return fmt.Errorf("sqlite: delete instance %s: %w", id, err)
		}
	}
	return nil
}

// AddNewOrchestrationEvent implements backend.Backend. Events for an instance
// that does not exist yet are kept and delivered once it is created; events
// for an instance whose start lies ahead wait for the start, except a
// terminate, which acts at once.
func (b *Backend) AddNewOrchestrationEvent(ctx context.Context, id api.InstanceID, e *dtbackend.HistoryEvent) error {
	return b.AddNewOrchestrationEvents(ctx, []taskhub.RaisedEvent{{Instance: id, Event: e}})
}

// AddNewOrchestrationEvents implements taskhub.EventRaiser: every event in
// one transaction, so they are added all or none.
func (b *Backend) AddNewOrchestrationEvents(ctx context.Context, events []taskhub.RaisedEvent) error {
	payloads := make([][]byte, len(events))
	for i, r := range events {
		if r.Event == nil || r.Event.Timestamp == nil {
			return fmt.Errorf("sqlite: event %d for %s: an event with a timestamp is required", i, r.Instance)
		}
		p, err := dtbackend.MarshalHistoryEvent(r.Event)
		if err != nil {
			return fmt.Errorf("sqlite: event %d for %s: %w", i, r.Instance, err)
		}
		payloads[i] = p
	}
	if len(events) == 0 {
		return nil
	}
	err := b.writeDurable(ctx, func(tx *stx) error {
		for i, r := range events {
			if err := addEvent(ctx, tx, string(r.Instance), "", r.Event, payloads[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlite: add %d events: %w", len(events), err)
	}
	b.orchWake.Notify()
	return nil
}

// addEvent queues an event for an instance; a terminate also cancels the
// wait for a scheduled start.
func addEvent(ctx context.Context, tx *stx, id, execID string, e *dtbackend.HistoryEvent, payload []byte) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO NewEvents (InstanceID, ExecutionID, EventPayload) VALUES (?, ?, ?)`,
		id, nullIfEmpty(execID), payload); err != nil {
		return err
	}
	if e.GetExecutionTerminated() != nil {
		if _, err := tx.ExecContext(ctx, `UPDATE Instances SET LockExpiration = NULL WHERE InstanceID = ? AND LockedBy IS NULL`, id); err != nil {
			return err
		}
	}
	return nil
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// GetOrchestrationMetadata implements backend.Backend.
func (b *Backend) GetOrchestrationMetadata(ctx context.Context, id api.InstanceID) (*api.OrchestrationMetadata, error) {
	var (
		name, status          string
		created, updated      time.Time
		input, output, custom sql.NullString
		failure               []byte
	)
	err := b.rdb.QueryRowContext(ctx, `SELECT Name, RuntimeStatus, CreatedTime, LastUpdatedTime, Input, Output, CustomStatus, FailureDetails
		FROM Instances WHERE InstanceID = ?`, string(id)).Scan(&name, &status, &created, &updated, &input, &output, &custom, &failure)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, api.ErrInstanceNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: read instance %s: %w", id, err)
	}
	return metadataOf(string(id), name, status, created, updated, input, output, custom, failure)
}

func metadataOf(id, name, status string, created, updated time.Time, input, output, custom sql.NullString, failure []byte) (*api.OrchestrationMetadata, error) {
	st, err := taskhub.ParseStatus(status)
	if err != nil {
		return nil, fmt.Errorf("sqlite: instance %s has unknown status %q", id, status)
	}
	var fd *dtbackend.TaskFailureDetails
	if len(failure) > 0 {
		fd = &dtbackend.TaskFailureDetails{}
		if err := proto.Unmarshal(failure, fd); err != nil {
			return nil, fmt.Errorf("sqlite: instance %s: failure details: %w", id, err)
		}
	}
	return api.NewOrchestrationMetadata(api.InstanceID(id), name, st, created, updated, input.String, output.String, custom.String, fd), nil
}

// GetOrchestrationRuntimeState implements backend.Backend. It also drops
// timer events that belong to an earlier execution (see
// taskhub.DropStaleTimers).
func (b *Backend) GetOrchestrationRuntimeState(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) (*dtbackend.OrchestrationRuntimeState, error) {
	history, err := loadHistory(ctx, b.rdb, wi.InstanceID)
	b.update(wi.LockedBy, func(l *lease) {
		if err != nil {
			l.loadFailed = true
		} else {
			l.loaded, l.loadCtx = true, ctx
		}
	})
	if err != nil {
		return nil, err
	}
	state := dtbackend.NewOrchestrationRuntimeState(wi.InstanceID, history)
	if kept := taskhub.DropStaleTimers(state.OldEvents(), wi.NewEvents); len(kept) != len(wi.NewEvents) {
		b.log.Debug("dropped stale timer events", "instance", wi.InstanceID, "dropped", len(wi.NewEvents)-len(kept))
		wi.NewEvents = kept
	}
	return state, nil
}

// loadHistory reads an instance's history.
func loadHistory(ctx context.Context, q queryer, id api.InstanceID) ([]*dtbackend.HistoryEvent, error) {
	rows, err := q.QueryContext(ctx, `SELECT EventPayload FROM History WHERE InstanceID = ? ORDER BY SequenceNumber`, string(id))
	if err != nil {
		return nil, fmt.Errorf("sqlite: read history of %s: %w", id, err)
	}
	defer rows.Close()
	var out []*dtbackend.HistoryEvent
	for rows.Next() {
		var payload []byte
		if err := rows.Scan(&payload); err != nil {
			return nil, fmt.Errorf("sqlite: read history of %s: %w", id, err)
		}
		e, err := dtbackend.UnmarshalHistoryEvent(payload)
		if err != nil {
			return nil, fmt.Errorf("sqlite: history of %s: %w", id, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: read history of %s: %w", id, err)
	}
	return out, nil
}

// PurgeOrchestrationState implements backend.Backend: it deletes a
// completed, failed or terminated instance.
func (b *Backend) PurgeOrchestrationState(ctx context.Context, id api.InstanceID) error {
	return b.writeDurable(ctx, func(tx *stx) error {
		var status string
		err := tx.QueryRowContext(ctx, `SELECT RuntimeStatus FROM Instances WHERE InstanceID = ?`, string(id)).Scan(&status)
		if errors.Is(err, sql.ErrNoRows) {
			return api.ErrInstanceNotFound
		}
		if err != nil {
			return fmt.Errorf("sqlite: purge %s: %w", id, err)
		}
		switch status {
		case "COMPLETED", "FAILED", "TERMINATED":
		default:
			return api.ErrNotCompleted
		}
		return deleteInstance(ctx, tx, id)
	})
}

// ListInstances implements taskhub.Backend.
func (b *Backend) ListInstances(ctx context.Context, q taskhub.Query) (*taskhub.Page, error) {
	q, err := q.Normalize()
	if err != nil {
		return nil, err
	}
	var where []string
	var args []any
	if q.Name != "" {
		where = append(where, "Name = ?")
		args = append(args, q.Name)
	}
	if len(q.RuntimeStatus) > 0 {
		ph := make([]string, len(q.RuntimeStatus))
		for i, s := range q.RuntimeStatus {
			ph[i] = "?"
			args = append(args, taskhub.StorageName(s))
		}
		where = append(where, "RuntimeStatus IN ("+strings.Join(ph, ",")+")")
	}
	if !q.CreatedFrom.IsZero() {
		where = append(where, "CreatedTime >= ?")
		args = append(args, q.CreatedFrom.UTC())
	}
	if !q.CreatedTo.IsZero() {
		where = append(where, "CreatedTime < ?")
		args = append(args, q.CreatedTo.UTC())
	}
	if q.InstanceIDPrefix != "" {
		// substr, not LIKE: ids may contain '%' and '_'.
		where = append(where, "substr(InstanceID, 1, ?) = ?")
		args = append(args, len(q.InstanceIDPrefix), q.InstanceIDPrefix)
	}
	if q.ContinuationToken != "" {
		c, _ := taskhub.DecodeCursor(q.ContinuationToken)
		where = append(where, "(CAST(CreatedTime AS TEXT) > ? OR (CAST(CreatedTime AS TEXT) = ? AND InstanceID > ?))")
		args = append(args, c.Created, c.Created, c.ID)
	}
	query := `SELECT ` + instanceColumns + ` FROM Instances`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY CAST(CreatedTime AS TEXT), InstanceID LIMIT ?"
	args = append(args, q.PageSize+1)

	rows, err := b.rdb.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list instances: %w", err)
	}
	defer rows.Close()
	page := &taskhub.Page{}
	var lastCreated string
	for rows.Next() {
		md, created, err := scanInstance(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlite: list instances: %w", err)
		}
		if len(page.Instances) == q.PageSize {
			last := page.Instances[len(page.Instances)-1]
			page.ContinuationToken = taskhub.Cursor{Created: lastCreated, ID: string(last.InstanceID)}.Encode()
			break
		}
		page.Instances = append(page.Instances, md)
		lastCreated = created
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list instances: %w", err)
	}
	return page, nil
}

// instanceColumns are the columns scanInstance reads, in its order.
const instanceColumns = `InstanceID, Name, RuntimeStatus, CAST(CreatedTime AS TEXT), LastUpdatedTime, Input, Output, CustomStatus, FailureDetails`

// scanInstance reads a row of instanceColumns: the instance's metadata and
// its CreatedTime as stored (a listing's cursor).
func scanInstance(rows *sql.Rows) (*api.OrchestrationMetadata, string, error) {
	var (
		id, name, status, created string
		updated                   time.Time
		input, output, custom     sql.NullString
		failure                   []byte
	)
	if err := rows.Scan(&id, &name, &status, &created, &updated, &input, &output, &custom, &failure); err != nil {
		return nil, "", err
	}
	createdAt, _ := parseTime(created)
	md, err := metadataOf(id, name, status, createdAt, updated, input, output, custom, failure)
	return md, created, err
}

// History returns an instance's stored history, for diagnostics and tests.
func (b *Backend) History(ctx context.Context, id api.InstanceID) ([]*dtbackend.HistoryEvent, error) {
	return loadHistory(ctx, b.rdb, id)
}

// parseTime reads the driver's default time encoding (time.Time.String).
func parseTime(s string) (time.Time, bool) {
	if i := strings.Index(s, " m="); i > 0 {
		s = s[:i]
	}
	for _, layout := range []string{"2006-01-02 15:04:05.999999999 -0700 MST", "2006-01-02 15:04:05.999999999-07:00", "2006-01-02 15:04:05"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// HubInfo implements taskhub.Inspector: instance counts by status, queue
// depths and the number of dead letters. SQLite has one implicit partition.
func (b *Backend) HubInfo(ctx context.Context) (taskhub.HubInfo, error) {
	info := taskhub.HubInfo{Kind: "sqlite", Name: b.opts.Path, Instances: map[string]int{}, QueueDepths: map[string]int{}}
	rows, err := b.rdb.QueryContext(ctx, `SELECT RuntimeStatus, COUNT(*) FROM Instances GROUP BY RuntimeStatus`)
	if err != nil {
		return info, fmt.Errorf("sqlite: hub info: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var status string
		var n int
		if err := rows.Scan(&status, &n); err != nil {
			return info, fmt.Errorf("sqlite: hub info: %w", err)
		}
		if st, err := taskhub.ParseStatus(status); err == nil {
			status = taskhub.StatusName(st)
		}
		info.Instances[status] += n
	}
	if err := rows.Err(); err != nil {
		return info, fmt.Errorf("sqlite: hub info: %w", err)
	}
	var events, tasks int
	err = b.rdb.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM NewEvents), (SELECT COUNT(*) FROM NewTasks), (SELECT COUNT(*) FROM DronehubDeadLetters)`).
		Scan(&events, &tasks, &info.DeadLetters)
	if err != nil {
		return info, fmt.Errorf("sqlite: hub info: %w", err)
	}
	info.QueueDepths["NewEvents"], info.QueueDepths["NewTasks"] = events, tasks
	return info, nil
}

// Ping implements taskhub.Pinger.
func (b *Backend) Ping(ctx context.Context) error { return b.rdb.PingContext(ctx) }

// stx is a write transaction whose statements are prepared once per
// connection and reused: parsing the same SQL on every call was about a
// third of the CPU of a busy hub (pprof of the bench's W2).
type stx struct {
	*sql.Tx
	stmts *stmtCache
}

func (t *stx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	s := t.stmts.get(ctx, query)
	if s == nil {
		return t.Tx.ExecContext(ctx, query, args...)
	}
	return t.Tx.StmtContext(ctx, s).ExecContext(ctx, args...)
}

func (t *stx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	s := t.stmts.get(ctx, query)
	if s == nil {
		return t.Tx.QueryContext(ctx, query, args...)
	}
	return t.Tx.StmtContext(ctx, s).QueryContext(ctx, args...)
}

func (t *stx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	s := t.stmts.get(ctx, query)
	if s == nil {
		return t.Tx.QueryRowContext(ctx, query, args...)
	}
	return t.Tx.StmtContext(ctx, s).QueryRowContext(ctx, args...)
}

// stmtCache holds prepared statements by SQL text. A statement is
// prepared on the pool, not on the transaction that first runs it: the
// writer pool has one connection, which that transaction holds, so the
// first run goes unprepared and a goroutine prepares the statement once the
// connection is free. Transactions then use it through Tx.StmtContext,
// which reuses what was prepared on their connection.
type stmtCache struct {
	db      *sql.DB
	mu      sync.Mutex
	stmts   map[string]*sql.Stmt // nil value: being prepared, or failed
	closed  bool
	pending sync.WaitGroup
}

// maxCachedStmts bounds the cache; statements past it (there are fewer
// distinct ones in this package) run unprepared.
const maxCachedStmts = 256

// get returns the prepared statement for query, or nil to run it
// unprepared for now.
func (c *stmtCache) get(ctx context.Context, query string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.stmts[query]; ok || c.closed || len(c.stmts) >= maxCachedStmts {
		return s
	}
	c.stmts[query] = nil
	c.pending.Add(1)
	go func() {
		defer c.pending.Done()
		pctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s, err := c.db.PrepareContext(pctx, query)
		c.mu.Lock()
		defer c.mu.Unlock()
		switch {
		case err != nil:
			// Left nil: the statement runs unprepared; running it reports
			// any error in it.
		case c.closed:
			s.Close()
		default:
			c.stmts[query] = s
		}
	}()
	return nil
}

// close closes the statements, after any being prepared.
func (c *stmtCache) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.pending.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.stmts {
		if s != nil {
			s.Close()
		}
	}
	clear(c.stmts)
}
