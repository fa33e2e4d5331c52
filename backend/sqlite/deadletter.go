package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/taskhub"
)

const deadLetterSchema = `
CREATE TABLE IF NOT EXISTS DronehubDeadLetters (
    ID INTEGER PRIMARY KEY AUTOINCREMENT,
    Queue TEXT NOT NULL,
    InstanceID TEXT NOT NULL,
    EventPayload BLOB NOT NULL,
    DequeueCount INTEGER NOT NULL,
    Reason TEXT NOT NULL,
    DeadAt TEXT NOT NULL
);`

var _ taskhub.DeadLetterer = (*Backend)(nil)

func (b *Backend) reason(count int) string {
	return fmt.Sprintf("dequeued %d times without completing (limit %d)", count, b.opts.MaxDequeueCount)
}

// deadLetterOrchestration sets aside the events a poison orchestration work
// item locked, and unlocks the instance.
func (b *Backend) deadLetterOrchestration(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	count := int(wi.RetryCount) + 1
	return b.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO DronehubDeadLetters (Queue, InstanceID, EventPayload, DequeueCount, Reason, DeadAt)
			SELECT 'orchestration', InstanceID, EventPayload, DequeueCount, ?, ? FROM NewEvents WHERE InstanceID = ? AND LockedBy = ?`,
			b.reason(count), time.Now().UTC().Format(time.RFC3339Nano), string(wi.InstanceID), wi.LockedBy); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM NewEvents WHERE InstanceID = ? AND LockedBy = ?`, string(wi.InstanceID), wi.LockedBy); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `UPDATE Instances SET LockExpiration = NULL WHERE InstanceID = ? AND LockedBy = ?`, string(wi.InstanceID), wi.LockedBy)
		return err
	})
}

// activityDequeues returns how often an activity work item was dequeued.
func (b *Backend) activityDequeues(ctx context.Context, wi *dtbackend.ActivityWorkItem) int {
	var n int
	_ = b.db.QueryRowContext(ctx, `SELECT DequeueCount FROM NewTasks WHERE SequenceNumber = ?`, wi.SequenceNumber).Scan(&n)
	return n
}

func (b *Backend) deadLetterActivity(ctx context.Context, wi *dtbackend.ActivityWorkItem, count int) error {
	return b.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO DronehubDeadLetters (Queue, InstanceID, EventPayload, DequeueCount, Reason, DeadAt)
			SELECT 'activity', InstanceID, EventPayload, DequeueCount, ?, ? FROM NewTasks WHERE SequenceNumber = ? AND LockedBy = ?`,
			b.reason(count), time.Now().UTC().Format(time.RFC3339Nano), wi.SequenceNumber, wi.LockedBy); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM NewTasks WHERE SequenceNumber = ? AND LockedBy = ?`, wi.SequenceNumber, wi.LockedBy)
		return err
	})
}

func (b *Backend) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	// Finish even if ctx was just cancelled: half a move would lose nothing
	// (the transaction rolls back) but would retry the poison message again.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return fmt.Errorf("sqlite: dead-letter: %w", err)
	}
	return tx.Commit()
}

// DeadLetters implements taskhub.DeadLetterer.
func (b *Backend) DeadLetters(ctx context.Context) ([]taskhub.DeadLetter, error) {
	rows, err := b.db.QueryContext(ctx, `SELECT ID, Queue, InstanceID, EventPayload, DequeueCount, Reason, DeadAt FROM DronehubDeadLetters ORDER BY ID`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list dead letters: %w", err)
	}
	defer rows.Close()
	var out []taskhub.DeadLetter
	for rows.Next() {
		var d taskhub.DeadLetter
		var id int64
		var payload []byte
		var at string
		if err := rows.Scan(&id, &d.Queue, &d.InstanceID, &payload, &d.DequeueCount, &d.Reason, &at); err != nil {
			return nil, fmt.Errorf("sqlite: list dead letters: %w", err)
		}
		d.ID = strconv.FormatInt(id, 10)
		d.DeadAt, _ = time.Parse(time.RFC3339Nano, at)
		if e, err := dtbackend.UnmarshalHistoryEvent(payload); err == nil {
			d.EventType = taskhub.EventType(e)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// ReplayDeadLetter implements taskhub.DeadLetterer.
func (b *Backend) ReplayDeadLetter(ctx context.Context, id string) error {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %q", taskhub.ErrDeadLetterNotFound, id)
	}
	var queue string
	err = b.inTx(ctx, func(tx *sql.Tx) error {
		var instance string
		var payload []byte
		err := tx.QueryRowContext(ctx, `SELECT Queue, InstanceID, EventPayload FROM DronehubDeadLetters WHERE ID = ?`, n).Scan(&queue, &instance, &payload)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: %q", taskhub.ErrDeadLetterNotFound, id)
		}
		if err != nil {
			return err
		}
		table := "NewEvents"
		if queue == "activity" {
			table = "NewTasks"
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+table+` (InstanceID, EventPayload) VALUES (?, ?)`, instance, payload); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM DronehubDeadLetters WHERE ID = ?`, n)
		return err
	})
	if err != nil {
		return err
	}
	if queue == "activity" {
		b.actWake.Notify()
	} else {
		b.orchWake.Notify()
	}
	return nil
}
