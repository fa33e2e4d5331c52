package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/internal/keyed"
)

const fleetSchema = `
CREATE TABLE IF NOT EXISTS DronehubDrones (
    ID TEXT PRIMARY KEY NOT NULL,
    Version INTEGER NOT NULL,
    Data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS DronehubEffects (
    Seq INTEGER PRIMARY KEY AUTOINCREMENT,
    MissionID TEXT NOT NULL,
    Kind TEXT NOT NULL,
    Detail TEXT NOT NULL,
    At TEXT NOT NULL,
    UNIQUE (MissionID, Kind)
);`

// watchSchema adds the watch index to DronehubDrones: each row's
// fleet.Watch keys (Quiet and DeadlineKey in Unix nanoseconds, NULL when
// unset; Attention 1 or NULL), written with its Data by every write, and
// partial indexes over the rows that have them. Indexed is 0 on rows
// written before the columns existed, until they are indexed at open.
var watchSchema = []string{
	`ALTER TABLE DronehubDrones ADD COLUMN QuietAt INTEGER NULL`,
	`ALTER TABLE DronehubDrones ADD COLUMN DeadlineAt INTEGER NULL`,
	`ALTER TABLE DronehubDrones ADD COLUMN Attention INTEGER NULL`,
	`ALTER TABLE DronehubDrones ADD COLUMN Indexed INTEGER NOT NULL DEFAULT 0`,
	`CREATE INDEX IF NOT EXISTS IX_DronehubDrones_QuietAt ON DronehubDrones (QuietAt) WHERE QuietAt IS NOT NULL`,
	`CREATE INDEX IF NOT EXISTS IX_DronehubDrones_DeadlineAt ON DronehubDrones (DeadlineAt) WHERE DeadlineAt IS NOT NULL`,
	`CREATE INDEX IF NOT EXISTS IX_DronehubDrones_Attention ON DronehubDrones (ID) WHERE Attention = 1`,
}

// Fleet is the fleet.Store on the task hub's SQLite file. Each drone is one
// row holding its JSON record and a version that guards updates, the same
// shape as the Azure Tables store, so both behave alike under contention.
type Fleet struct {
	db *sql.DB
	// locks queues the updates of one drone made through this Fleet.
	locks keyed.Locks[struct{}]
	// backoff paces retries after lost races with other processes.
	backoff keyed.Backoff
}

var _ fleet.Store = (*Fleet)(nil)

func newFleet(ctx context.Context, db *sql.DB) (*Fleet, error) {
	if _, err := db.ExecContext(ctx, fleetSchema); err != nil {
		return nil, fmt.Errorf("sqlite: create fleet tables: %w", err)
	}
	if err := migrateWatch(ctx, db); err != nil {
		return nil, fmt.Errorf("sqlite: create the fleet's watch index: %w", err)
	}
	return &Fleet{db: db, backoff: conflictBackoff}, nil
}

// migrateWatch adds the watch index to a file that lacks it and indexes the
// rows written before it existed, in one immediate transaction (another
// process opening the file waits for it).
func migrateWatch(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var has int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM pragma_table_info('DronehubDrones') WHERE name = 'Indexed'`).Scan(&has); err != nil {
		return err
	}
	if has == 0 {
		for _, q := range watchSchema {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return err
			}
		}
	}
	rows, err := tx.QueryContext(ctx, `SELECT ID, Data FROM DronehubDrones WHERE Indexed = 0`)
	if err != nil {
		return err
	}
	type legacy struct{ id, data string }
	var todo []legacy
	for rows.Next() {
		var l legacy
		if err := rows.Scan(&l.id, &l.data); err != nil {
			rows.Close()
			return err
		}
		todo = append(todo, l)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, l := range todo {
		var d fleet.Drone
		if err := json.Unmarshal([]byte(l.data), &d); err != nil {
			continue // unreadable: reading it reports it; nothing to watch
		}
		quiet, deadline, attention := watchColumns(d)
		if _, err := tx.ExecContext(ctx, `UPDATE DronehubDrones SET QuietAt = ?, DeadlineAt = ?, Attention = ?, Indexed = 1 WHERE ID = ?`,
			quiet, deadline, attention, l.id); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// watchColumns returns the watch index columns of d.
func watchColumns(d fleet.Drone) (quiet, deadline, attention any) {
	w := d.Watch()
	if w.Attention() {
		attention = 1
	}
	return nanos(w.Quiet()), nanos(w.DeadlineKey()), attention
}

// nanos is t in Unix nanoseconds, saturated to the int64 range; nil for
// the zero time.
func nanos(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return unixNanos(t)
}

func unixNanos(t time.Time) int64 {
	switch {
	case t.Before(minNanosTime):
		return math.MinInt64
	case t.After(maxNanosTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

var (
	minNanosTime = time.Unix(0, math.MinInt64)
	maxNanosTime = time.Unix(0, math.MaxInt64)
)

// AddDrone implements fleet.Store.
func (f *Fleet) AddDrone(ctx context.Context, id string, home domain.LatLon) (fleet.Drone, error) {
	d := fleet.Drone{ID: id, Home: home}
	data, err := json.Marshal(d)
	if err != nil {
		return fleet.Drone{}, err
	}
	quiet, deadline, attention := watchColumns(d)
	res, err := f.db.ExecContext(ctx, `INSERT OR IGNORE INTO DronehubDrones (ID, Version, Data, QuietAt, DeadlineAt, Attention, Indexed) VALUES (?, 1, ?, ?, ?, ?, 1)`,
		id, string(data), quiet, deadline, attention)
	if err != nil {
		return fleet.Drone{}, fmt.Errorf("sqlite: add drone %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fleet.Drone{}, fmt.Errorf("%w: %s", fleet.ErrDroneExists, id)
	}
	return d, nil
}

func (f *Fleet) get(ctx context.Context, id string) (fleet.Drone, int64, error) {
	var version int64
	var data string
	err := f.db.QueryRowContext(ctx, `SELECT Version, Data FROM DronehubDrones WHERE ID = ?`, id).Scan(&version, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return fleet.Drone{}, 0, fmt.Errorf("%w: %s", fleet.ErrDroneNotFound, id)
	}
	if err != nil {
		return fleet.Drone{}, 0, fmt.Errorf("sqlite: read drone %s: %w", id, err)
	}
	var d fleet.Drone
	if err := json.Unmarshal([]byte(data), &d); err != nil {
		return fleet.Drone{}, 0, fmt.Errorf("sqlite: drone %s has an unreadable record: %w", id, err)
	}
	return d, version, nil
}

// Drone implements fleet.Store.
func (f *Fleet) Drone(ctx context.Context, id string) (fleet.Drone, error) {
	d, _, err := f.get(ctx, id)
	return d, err
}

// Drones implements fleet.Store.
func (f *Fleet) Drones(ctx context.Context) ([]fleet.Drone, error) {
	rows, err := f.db.QueryContext(ctx, `SELECT Data FROM DronehubDrones ORDER BY ID`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list drones: %w", err)
	}
	defer rows.Close()
	var out []fleet.Drone
	for rows.Next() {
		var data string
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("sqlite: list drones: %w", err)
		}
		var d fleet.Drone
		if err := json.Unmarshal([]byte(data), &d); err != nil {
			return nil, fmt.Errorf("sqlite: list drones: unreadable record: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// Watched implements fleet.Store: one indexed query per condition of q.
// The index columns are written with every write of a row, so they are
// exact (no fleet.WatchSlack).
func (f *Fleet) Watched(ctx context.Context, q fleet.WatchQuery) ([]fleet.Watch, error) {
	limit := q.Limited()
	type selection struct {
		query string
		args  []any
	}
	var sels []selection
	if !q.QuietUntil.IsZero() {
		sels = append(sels, selection{`SELECT Data FROM DronehubDrones WHERE QuietAt <= ? ORDER BY QuietAt LIMIT ?`, []any{unixNanos(q.QuietUntil), limit}})
	}
	if !q.QuietAfter.IsZero() {
		sels = append(sels, selection{`SELECT Data FROM DronehubDrones WHERE QuietAt > ? ORDER BY QuietAt LIMIT ?`, []any{unixNanos(q.QuietAfter), limit}})
	}
	if !q.DeadlineUntil.IsZero() {
		sels = append(sels, selection{`SELECT Data FROM DronehubDrones WHERE DeadlineAt <= ? ORDER BY DeadlineAt LIMIT ?`, []any{unixNanos(q.DeadlineUntil), limit}})
	}
	if q.Attention {
		sels = append(sels, selection{`SELECT Data FROM DronehubDrones WHERE Attention = 1 ORDER BY ID LIMIT ?`, []any{limit}})
	}
	var out []fleet.Watch
	seen := map[string]bool{}
	for _, sel := range sels {
		if err := f.watched(ctx, sel.query, sel.args, seen, &out); err != nil {
			return nil, fmt.Errorf("sqlite: watched drones: %w", err)
		}
	}
	return out, nil
}

func (f *Fleet) watched(ctx context.Context, query string, args []any, seen map[string]bool, out *[]fleet.Watch) error {
	rows, err := f.db.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var data string
		if err := rows.Scan(&data); err != nil {
			return err
		}
		var d fleet.Drone
		if err := json.Unmarshal([]byte(data), &d); err != nil {
			return fmt.Errorf("unreadable record: %w", err)
		}
		if !seen[d.ID] {
			seen[d.ID] = true
			*out = append(*out, d.Watch())
		}
	}
	return rows.Err()
}

// UpdateDrone implements fleet.Store with a version check.
//
// Updates of one drone through this Fleet queue on a per-drone lock, so the
// process never races itself; a write that loses to another process (the
// version changed) is retried on a fresh read with exponential back-off and
// jitter, for as long as ctx allows: there is no attempt limit a busy drone
// could exhaust.
func (f *Fleet) UpdateDrone(ctx context.Context, id string, fn func(*fleet.Drone) error) (fleet.Drone, error) {
	l, err := f.locks.Lock(ctx, id)
	if err != nil {
		return fleet.Drone{}, fmt.Errorf("sqlite: update drone %s: %w", id, err)
	}
	defer f.locks.Unlock(id, l)
	bo := f.backoff
	conflicts := 0
	for {
		d, version, err := f.get(ctx, id)
		if err != nil {
			return fleet.Drone{}, err
		}
		if err := fn(&d); err != nil {
			return fleet.Drone{}, err
		}
		d.ID = id
		data, err := json.Marshal(d)
		if err != nil {
			return fleet.Drone{}, err
		}
		quiet, deadline, attention := watchColumns(d)
		res, err := f.db.ExecContext(ctx, `UPDATE DronehubDrones SET Version = Version + 1, Data = ?, QuietAt = ?, DeadlineAt = ?, Attention = ?, Indexed = 1 WHERE ID = ? AND Version = ?`,
			string(data), quiet, deadline, attention, id, version)
		if err != nil {
			return fleet.Drone{}, fmt.Errorf("sqlite: update drone %s: %w", id, err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			return d, nil
		}
		// Another process wrote the drone since it was read (or removed it:
		// the next read tells).
		conflicts++
		if err := bo.Wait(ctx); err != nil {
			return fleet.Drone{}, fmt.Errorf("%w: drone %s lost %d races to other writers: %w", fleet.ErrConflict, id, conflicts, err)
		}
	}
}

// UpdateDrones implements fleet.Store in one immediate transaction: the
// drones are read and written under the file's write lock, so no version
// check can fail and fn runs once per drone. A drone fn refuses, or that is
// not found, is left as it is; a storage error rolls every drone back.
func (f *Fleet) UpdateDrones(ctx context.Context, ids []string, fn func(*fleet.Drone) error) ([]fleet.DroneUpdate, error) {
	if err := fleet.CheckDistinct(ids); err != nil {
		return nil, err
	}
	out := make([]fleet.DroneUpdate, len(ids))
	fail := func(err error) ([]fleet.DroneUpdate, error) {
		err = fmt.Errorf("sqlite: update %d drones: %w", len(ids), err)
		for i := range out {
			out[i] = fleet.DroneUpdate{Err: err}
		}
		return out, nil
	}
	tx, err := f.db.BeginTx(ctx, nil)
	if err != nil {
		return fail(err)
	}
	defer tx.Rollback()
	for i, id := range ids {
		var data string
		err := tx.QueryRowContext(ctx, `SELECT Data FROM DronehubDrones WHERE ID = ?`, id).Scan(&data)
		if errors.Is(err, sql.ErrNoRows) {
			out[i].Err = fmt.Errorf("%w: %s", fleet.ErrDroneNotFound, id)
			continue
		}
		if err != nil {
			return fail(err)
		}
		var d fleet.Drone
		if err := json.Unmarshal([]byte(data), &d); err != nil {
			out[i].Err = fmt.Errorf("sqlite: drone %s has an unreadable record: %w", id, err)
			continue
		}
		if err := fn(&d); err != nil {
			out[i].Err = err
			continue
		}
		d.ID = id
		enc, err := json.Marshal(d)
		if err != nil {
			out[i].Err = err
			continue
		}
		quiet, deadline, attention := watchColumns(d)
		if _, err := tx.ExecContext(ctx, `UPDATE DronehubDrones SET Version = Version + 1, Data = ?, QuietAt = ?, DeadlineAt = ?, Attention = ?, Indexed = 1 WHERE ID = ?`,
			string(enc), quiet, deadline, attention, id); err != nil {
			return fail(err)
		}
		out[i].Drone = d
	}
	if err := tx.Commit(); err != nil {
		return fail(err)
	}
	return out, nil
}

// conflictBackoff paces retries after losing a race to another process.
var conflictBackoff = keyed.Backoff{First: time.Millisecond, Max: 100 * time.Millisecond}

// RecordEffect implements fleet.Store.
func (f *Fleet) RecordEffect(ctx context.Context, e fleet.Effect) (bool, error) {
	if e.MissionID == "" || e.Kind == "" {
		return false, errors.New("sqlite: an effect needs a mission id and a kind")
	}
	res, err := f.db.ExecContext(ctx, `INSERT OR IGNORE INTO DronehubEffects (MissionID, Kind, Detail, At) VALUES (?, ?, ?, ?)`,
		e.MissionID, e.Kind, e.Detail, time.Now().UTC().Format(time.RFC3339Nano))
	if err != nil {
		return false, fmt.Errorf("sqlite: record effect %s/%s: %w", e.MissionID, e.Kind, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// Effects implements fleet.Store.
func (f *Fleet) Effects(ctx context.Context, missionID string) ([]fleet.Effect, error) {
	rows, err := f.db.QueryContext(ctx, `SELECT Seq, MissionID, Kind, Detail, At FROM DronehubEffects WHERE MissionID = ? ORDER BY Seq`, missionID)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list effects: %w", err)
	}
	defer rows.Close()
	var out []fleet.Effect
	for rows.Next() {
		var e fleet.Effect
		var at string
		if err := rows.Scan(&e.Seq, &e.MissionID, &e.Kind, &e.Detail, &at); err != nil {
			return nil, fmt.Errorf("sqlite: list effects: %w", err)
		}
		e.At, _ = time.Parse(time.RFC3339Nano, strings.TrimSpace(at))
		out = append(out, e)
	}
	return out, rows.Err()
}
