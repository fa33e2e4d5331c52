// Package sqlite is dronehub's embedded task hub: durabletask-go's SQLite
// backend, wrapped to add what v0.6.0 lacks (instance listing, scheduled
// start, in-process wake-ups, protection against stale timers), plus the
// fleet.Store on the same database file. It needs nothing installed: the
// driver is pure Go.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	dtsqlite "github.com/microsoft/durabletask-go/backend/sqlite"
	"google.golang.org/protobuf/proto"

	"github.com/dronehub/dronehub/taskhub"
)

// Options configures the SQLite task hub. The zero value of every field but
// Path means its default.
type Options struct {
	// Path is the database file; it is created if missing.
	Path string
	// LockTimeout is how long a work item stays locked to the worker that
	// fetched it; a worker that dies releases its work after this long.
	// Default 2 minutes.
	LockTimeout time.Duration
	// PollInterval is how often an idle consumer re-checks the database for
	// work written by other processes. Work this process enqueues wakes its
	// consumers at once, and timers wake them when due. Default 500ms.
	PollInterval time.Duration
	// MaxDequeueCount is how many times a work item may be fetched without
	// completing before its messages are moved to the dead letters (see
	// DeadLetters). Default 10.
	MaxDequeueCount int
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
	case o.PollInterval < time.Millisecond:
		return fmt.Errorf("sqlite: Options.PollInterval %s is below the 1ms minimum", o.PollInterval)
	}
	return nil
}

// Backend is the SQLite task hub. It implements taskhub.Backend.
type Backend struct {
	inner dtbackend.Backend
	db    *sql.DB // ours: listing, scheduling look-ups and the fleet store
	opts  Options
	log   *slog.Logger

	orchWake, actWake taskhub.Wake

	mu      sync.Mutex
	created bool
	fleet   *Fleet
}

var _ taskhub.Backend = (*Backend)(nil)

// dsn builds a SQLite URI. WAL lets readers (status polls, listings) proceed
// while a worker commits; busy_timeout makes the two connection pools wait
// for each other instead of failing with SQLITE_BUSY.
func dsn(path string) string {
	u := url.URL{Scheme: "file", Opaque: (&url.URL{Path: path}).EscapedPath()}
	return u.String() + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
}

// Open opens (creating if needed) the task hub in the database file.
func Open(ctx context.Context, opts Options) (*Backend, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", dsn(opts.Path))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", opts.Path, err)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", opts.Path, err)
	}
	dtOpts := dtsqlite.NewSqliteOptions(dsn(opts.Path))
	dtOpts.OrchestrationLockTimeout = opts.LockTimeout
	dtOpts.ActivityLockTimeout = opts.LockTimeout
	b := &Backend{
		inner: dtsqlite.NewSqliteBackend(dtOpts, taskhub.Logger(opts.Logger)),
		db:    db,
		opts:  opts,
		log:   opts.Logger,
	}
	if err := b.CreateTaskHub(ctx); err != nil && !errors.Is(err, dtbackend.ErrTaskHubExists) {
		db.Close()
		return nil, err
	}
	f, err := newFleet(ctx, db)
	if err != nil {
		db.Close()
		return nil, err
	}
	if _, err := db.ExecContext(ctx, deadLetterSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite: create dead-letter table: %w", err)
	}
	b.fleet = f
	return b, nil
}

// Fleet returns the domain store on the same database file.
func (b *Backend) Fleet() *Fleet { return b.fleet }

// Close releases the database. Stop the worker using the backend first.
func (b *Backend) Close() error { return b.db.Close() }

// String names the backend in logs.
func (b *Backend) String() string { return "sqlite:" + b.opts.Path }

// CreateTaskHub creates the schema. The wrapped backend panics on failure, so
// the call is guarded: a damaged file becomes an error, not a crash.
func (b *Backend) CreateTaskHub(ctx context.Context) (err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.created {
		return dtbackend.ErrTaskHubExists
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sqlite: create task hub in %s: %v", b.opts.Path, r)
		}
	}()
	if err := b.inner.CreateTaskHub(ctx); err != nil {
		return err
	}
	b.created = true
	return nil
}

// DeleteTaskHub removes the database file and its WAL.
func (b *Backend) DeleteTaskHub(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.created = false
	b.db.Close()
	err := os.Remove(b.opts.Path)
	os.Remove(b.opts.Path + "-wal")
	os.Remove(b.opts.Path + "-shm")
	if os.IsNotExist(err) {
		return dtbackend.ErrTaskHubNotFound
	}
	return err
}

// Start implements backend.Backend.
func (b *Backend) Start(ctx context.Context) error { return b.inner.Start(ctx) }

// Stop implements backend.Backend.
func (b *Backend) Stop(ctx context.Context) error { return b.inner.Stop(ctx) }

// CreateOrchestrationInstance implements backend.Backend.
func (b *Backend) CreateOrchestrationInstance(ctx context.Context, e *dtbackend.HistoryEvent, opts ...dtbackend.OrchestrationIdReusePolicyOptions) error {
	if err := b.inner.CreateOrchestrationInstance(ctx, e, opts...); err != nil {
		return err
	}
	b.orchWake.Notify()
	return nil
}

// AddNewOrchestrationEvent implements backend.Backend. Events for an instance
// that does not exist yet are kept and delivered once it is created.
func (b *Backend) AddNewOrchestrationEvent(ctx context.Context, id api.InstanceID, e *dtbackend.HistoryEvent) error {
	if err := b.inner.AddNewOrchestrationEvent(ctx, id, e); err != nil {
		return err
	}
	b.orchWake.Notify()
	return nil
}

// GetOrchestrationWorkItem waits until an instance has work or ctx ends; it
// then returns ErrNoWorkItems (wrapping ctx's error). Waiting here, woken by
// this process's own enqueues and by due timers, gives low latency without
// the polling worker's backoff.
func (b *Backend) GetOrchestrationWorkItem(ctx context.Context) (*dtbackend.OrchestrationWorkItem, error) {
	for {
		wake := b.orchWake.C()
		wi, err := b.inner.GetOrchestrationWorkItem(ctx)
		if err == nil {
			if at, ok := taskhub.ScheduledStart(wi.NewEvents, time.Now()); ok {
				if err := b.postpone(ctx, wi, at); err != nil {
					return nil, err
				}
				continue
			}
			if int(wi.RetryCount) >= b.opts.MaxDequeueCount {
				b.log.Error("orchestration work item dead-lettered: it keeps failing", "instance", wi.InstanceID, "dequeues", wi.RetryCount+1)
				if err := b.deadLetterOrchestration(ctx, wi); err != nil {
					return nil, err
				}
				continue
			}
			return wi, nil
		}
		if !errors.Is(err, dtbackend.ErrNoWorkItems) {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
			}
			return nil, err
		}
		if !taskhub.Sleep(ctx, wake, b.untilNextEvent(ctx)) {
			return nil, fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
		}
	}
}

// postpone returns a work item whose start time lies in the future to the
// queue until then. The wrapped backend derives the abandon delay from the
// retry count (one second per retry, up to 100), so the count is set to the
// whole seconds left: the instance starts at most a second late, never early.
func (b *Backend) postpone(ctx context.Context, wi *dtbackend.OrchestrationWorkItem, at time.Time) error {
	secs := math.Ceil(time.Until(at).Seconds())
	wi.RetryCount = int32(min(max(secs, 1), 100))
	// The abandon must happen even if ctx was just cancelled (shutdown), or
	// the instance would stay locked until the lock timeout.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := b.inner.AbandonOrchestrationWorkItem(actx, wi); err != nil {
		return fmt.Errorf("sqlite: postpone scheduled start of %s: %w", wi.InstanceID, err)
	}
	// Waiting for the start time is not a failure: do not let it count
	// towards the dead-letter limit.
	if _, err := b.db.ExecContext(actx, `UPDATE NewEvents SET DequeueCount = 0 WHERE InstanceID = ? AND LockedBy IS NULL`, string(wi.InstanceID)); err != nil {
		return fmt.Errorf("sqlite: postpone scheduled start of %s: %w", wi.InstanceID, err)
	}
	return nil
}

// untilNextEvent is how long to sleep before the next check: until the
// earliest delayed event (timer, postponed start, retry) becomes visible, but
// no longer than PollInterval. An event of a locked instance counts from the
// lock's expiry: its owner's completion wakes us sooner, and counting from
// the event would spin until the lock is released.
func (b *Backend) untilNextEvent(ctx context.Context) time.Duration {
	d := b.opts.PollInterval
	var next sql.NullString
	err := b.db.QueryRowContext(ctx, `SELECT MIN(CASE WHEN I.LockExpiration IS NOT NULL AND I.LockExpiration > E.VisibleTime
		THEN I.LockExpiration ELSE E.VisibleTime END)
		FROM NewEvents E JOIN Instances I ON I.InstanceID = E.InstanceID
		WHERE E.VisibleTime IS NOT NULL AND E.LockedBy IS NULL`).Scan(&next)
	if err != nil || !next.Valid {
		return d
	}
	if t, ok := parseTime(next.String); ok {
		if until := time.Until(t) + time.Millisecond; until < d {
			return max(until, time.Millisecond)
		}
	}
	return d
}

// GetOrchestrationRuntimeState implements backend.Backend. It also drops
// timer events that belong to an earlier execution (see taskhub.DropStaleTimers).
func (b *Backend) GetOrchestrationRuntimeState(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) (*dtbackend.OrchestrationRuntimeState, error) {
	state, err := b.inner.GetOrchestrationRuntimeState(ctx, wi)
	if err != nil {
		return nil, err
	}
	if kept := taskhub.DropStaleTimers(state.OldEvents(), wi.NewEvents); len(kept) != len(wi.NewEvents) {
		b.log.Debug("dropped stale timer events", "instance", wi.InstanceID, "dropped", len(wi.NewEvents)-len(kept))
		wi.NewEvents = kept
	}
	return state, nil
}

// GetOrchestrationMetadata implements backend.Backend.
func (b *Backend) GetOrchestrationMetadata(ctx context.Context, id api.InstanceID) (*api.OrchestrationMetadata, error) {
	return b.inner.GetOrchestrationMetadata(ctx, id)
}

// CompleteOrchestrationWorkItem implements backend.Backend.
func (b *Backend) CompleteOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	if err := b.inner.CompleteOrchestrationWorkItem(ctx, wi); err != nil {
		return err
	}
	if wi.State != nil {
		if len(wi.State.PendingTasks()) > 0 {
			b.actWake.Notify()
		}
		if len(wi.State.PendingMessages()) > 0 || len(wi.State.PendingTimers()) > 0 {
			b.orchWake.Notify()
		}
	}
	return nil
}

// AbandonOrchestrationWorkItem implements backend.Backend.
func (b *Backend) AbandonOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	err := b.inner.AbandonOrchestrationWorkItem(ctx, wi)
	b.orchWake.Notify()
	return err
}

// GetActivityWorkItem waits until an activity is ready or ctx ends, like
// GetOrchestrationWorkItem.
func (b *Backend) GetActivityWorkItem(ctx context.Context) (*dtbackend.ActivityWorkItem, error) {
	for {
		wake := b.actWake.C()
		wi, err := b.inner.GetActivityWorkItem(ctx)
		if err == nil {
			if n := b.activityDequeues(ctx, wi); n > b.opts.MaxDequeueCount {
				b.log.Error("activity work item dead-lettered: it keeps failing", "instance", wi.InstanceID, "activity", wi.NewEvent.GetTaskScheduled().GetName(), "dequeues", n)
				if err := b.deadLetterActivity(ctx, wi, n); err != nil {
					return nil, err
				}
				continue
			}
			return wi, nil
		}
		if !errors.Is(err, dtbackend.ErrNoWorkItems) {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
			}
			return nil, err
		}
		if !taskhub.Sleep(ctx, wake, b.opts.PollInterval) {
			return nil, fmt.Errorf("%w: %w", dtbackend.ErrNoWorkItems, ctx.Err())
		}
	}
}

// CompleteActivityWorkItem implements backend.Backend.
func (b *Backend) CompleteActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem) error {
	if err := b.inner.CompleteActivityWorkItem(ctx, wi); err != nil {
		return err
	}
	b.orchWake.Notify()
	return nil
}

// AbandonActivityWorkItem implements backend.Backend.
func (b *Backend) AbandonActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem) error {
	err := b.inner.AbandonActivityWorkItem(ctx, wi)
	b.actWake.Notify()
	return err
}

// PurgeOrchestrationState implements backend.Backend.
func (b *Backend) PurgeOrchestrationState(ctx context.Context, id api.InstanceID) error {
	return b.inner.PurgeOrchestrationState(ctx, id)
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
	query := `SELECT InstanceID, Name, RuntimeStatus, CAST(CreatedTime AS TEXT), LastUpdatedTime, Input, Output, CustomStatus, FailureDetails FROM Instances`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY CAST(CreatedTime AS TEXT), InstanceID LIMIT ?"
	args = append(args, q.PageSize+1)

	rows, err := b.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list instances: %w", err)
	}
	defer rows.Close()
	page := &taskhub.Page{}
	var lastCreated string
	for rows.Next() {
		var (
			id, name, status, created string
			updated                   time.Time
			input, output, custom     sql.NullString
			failure                   []byte
		)
		if err := rows.Scan(&id, &name, &status, &created, &updated, &input, &output, &custom, &failure); err != nil {
			return nil, fmt.Errorf("sqlite: list instances: %w", err)
		}
		if len(page.Instances) == q.PageSize {
			last := page.Instances[len(page.Instances)-1]
			page.ContinuationToken = taskhub.Cursor{Created: lastCreated, ID: string(last.InstanceID)}.Encode()
			break
		}
		st, err := taskhub.ParseStatus(status)
		if err != nil {
			return nil, fmt.Errorf("sqlite: instance %s has unknown status %q", id, status)
		}
		createdAt, _ := parseTime(created)
		var fd *dtbackend.TaskFailureDetails
		if len(failure) > 0 {
			fd = &dtbackend.TaskFailureDetails{}
			if err := proto.Unmarshal(failure, fd); err != nil {
				return nil, fmt.Errorf("sqlite: instance %s: failure details: %w", id, err)
			}
		}
		page.Instances = append(page.Instances, api.NewOrchestrationMetadata(api.InstanceID(id), name, st,
			createdAt, updated, input.String, output.String, custom.String, fd))
		lastCreated = created
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list instances: %w", err)
	}
	return page, nil
}

// History returns an instance's stored history, for diagnostics and tests.
func (b *Backend) History(ctx context.Context, id api.InstanceID) ([]*dtbackend.HistoryEvent, error) {
	state, err := b.inner.GetOrchestrationRuntimeState(ctx, &dtbackend.OrchestrationWorkItem{InstanceID: id})
	if err != nil {
		return nil, err
	}
	return state.OldEvents(), nil
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

var _ taskhub.Inspector = (*Backend)(nil)

// HubInfo implements taskhub.Inspector: instance counts by status. SQLite
// has one implicit partition and no dead-letter queue.
func (b *Backend) HubInfo(ctx context.Context) (taskhub.HubInfo, error) {
	info := taskhub.HubInfo{Kind: "sqlite", Name: b.opts.Path, Instances: map[string]int{}}
	rows, err := b.db.QueryContext(ctx, `SELECT RuntimeStatus, COUNT(*) FROM Instances GROUP BY RuntimeStatus`)
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
	var pending int
	if err := b.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM NewEvents`).Scan(&pending); err == nil {
		info.QueueDepths = map[string]int{"NewEvents": pending}
	}
	if err := b.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM NewTasks`).Scan(&pending); err == nil {
		info.QueueDepths["NewTasks"] = pending
	}
	return info, nil
}

var _ taskhub.Pinger = (*Backend)(nil)

// Ping implements taskhub.Pinger.
func (b *Backend) Ping(ctx context.Context) error { return b.db.PingContext(ctx) }
