package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
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

// Fleet is the fleet.Store on the task hub's SQLite file. Each drone is one
// row holding its JSON record and a version that guards updates, the same
// shape as the Azure Tables store, so both behave alike under contention.
type Fleet struct {
	db *sql.DB
}

var _ fleet.Store = (*Fleet)(nil)

func newFleet(ctx context.Context, db *sql.DB) (*Fleet, error) {
	if _, err := db.ExecContext(ctx, fleetSchema); err != nil {
		return nil, fmt.Errorf("sqlite: create fleet tables: %w", err)
	}
	return &Fleet{db: db}, nil
}

// AddDrone implements fleet.Store.
func (f *Fleet) AddDrone(ctx context.Context, id string, home domain.LatLon) (fleet.Drone, error) {
	d := fleet.Drone{ID: id, Home: home}
	data, err := json.Marshal(d)
	if err != nil {
		return fleet.Drone{}, err
	}
	res, err := f.db.ExecContext(ctx, `INSERT OR IGNORE INTO DronehubDrones (ID, Version, Data) VALUES (?, 1, ?)`, id, string(data))
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

// maxUpdateAttempts bounds optimistic-concurrency retries; losing this many
// races in a row means something is wrong, not merely busy.
const maxUpdateAttempts = 50

// UpdateDrone implements fleet.Store with a version check, retrying when a
// concurrent writer wins.
func (f *Fleet) UpdateDrone(ctx context.Context, id string, fn func(*fleet.Drone) error) (fleet.Drone, error) {
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
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
		res, err := f.db.ExecContext(ctx, `UPDATE DronehubDrones SET Version = Version + 1, Data = ? WHERE ID = ? AND Version = ?`, string(data), id, version)
		if err != nil {
			return fleet.Drone{}, fmt.Errorf("sqlite: update drone %s: %w", id, err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			return d, nil
		}
	}
	return fleet.Drone{}, fmt.Errorf("%w: drone %s", fleet.ErrConflict, id)
}

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
