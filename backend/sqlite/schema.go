package sqlite

import (
	"context"
	"fmt"
)

// taskHubSchema is durabletask-go v0.6.0's SQLite schema (backend/sqlite/
// schema.sql), unchanged, so that files written by earlier versions of
// dronehub (which wrapped that backend) open as they are.
//
// How dronehub uses the columns:
//   - Instances.LockedBy/LockExpiration: the lock of the instance's work
//     item, its owner unique per fetch and renewed while the work item is
//     out. An unlocked row (LockedBy NULL) with a LockExpiration in the
//     future is an instance whose scheduled start lies ahead: it is not
//     fetched until then.
//   - NewEvents.DequeueCount, NewTasks.DequeueCount: the deliveries whose
//     execution failed (not every fetch).
//   - NewEvents.ExecutionID, NewTasks.ExecutionID: the execution that sent a
//     message, where known, so that a dead letter can tell whether its
//     execution still exists.
const taskHubSchema = `
CREATE TABLE IF NOT EXISTS Instances (
    [InstanceID] TEXT PRIMARY KEY NOT NULL,
    [ExecutionID] TEXT NOT NULL,
    [Name] TEXT NOT NULL,
    [Version] TEXT NULL,
    [RuntimeStatus] TEXT NOT NULL,
    [CreatedTime] DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    [LastUpdatedTime] DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    [CompletedTime] DATETIME NULL,
    [LockedBy] TEXT NULL,
    [LockExpiration] DATETIME NULL,
    [Input] TEXT NULL,
    [Output] TEXT NULL,
    [CustomStatus] TEXT NULL,
    [FailureDetails] BLOB NULL,
    [ParentInstanceID] TEXT NULL
);
CREATE INDEX IF NOT EXISTS IX_Instances_RuntimeStatus ON Instances(RuntimeStatus);
CREATE INDEX IF NOT EXISTS IX_Instances_CreatedTime ON Instances(CreatedTime);
CREATE TABLE IF NOT EXISTS History (
    [InstanceID] TEXT NOT NULL,
    [SequenceNumber] INTEGER NOT NULL,
    [EventPayload] BLOB NOT NULL,
    CONSTRAINT PK_History PRIMARY KEY (InstanceID, SequenceNumber)
);
CREATE TABLE IF NOT EXISTS NewEvents (
    [SequenceNumber] INTEGER PRIMARY KEY,
    [InstanceID] TEXT NOT NULL,
    [ExecutionID] TEXT NULL,
    [Timestamp] DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    [VisibleTime] DATETIME NULL,
    [DequeueCount] INTEGER NOT NULL DEFAULT 0,
    [LockedBy] TEXT NULL,
    [EventPayload] BLOB NOT NULL,
    CONSTRAINT UX_NewEvents UNIQUE (InstanceID, SequenceNumber)
);
CREATE TABLE IF NOT EXISTS NewTasks (
    [SequenceNumber] INTEGER PRIMARY KEY,
    [InstanceID] TEXT NOT NULL,
    [ExecutionID] TEXT NULL,
    [Timestamp] DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    [DequeueCount] INTEGER NOT NULL DEFAULT 0,
    [LockedBy] TEXT NULL,
    [LockExpiration] DATETIME NULL,
    [EventPayload] BLOB NOT NULL
);`

// deadLetterSchema holds the messages set aside. ExecutionID (added after
// the first release; NULL in older rows) is the execution the message
// belonged to. A file without the column was written by a version that
// counted every fetch in DequeueCount; migrate resets those counts.
const deadLetterSchema = `
CREATE TABLE IF NOT EXISTS DronehubDeadLetters (
    ID INTEGER PRIMARY KEY AUTOINCREMENT,
    Queue TEXT NOT NULL,
    InstanceID TEXT NOT NULL,
    EventPayload BLOB NOT NULL,
    DequeueCount INTEGER NOT NULL,
    Reason TEXT NOT NULL,
    DeadAt TEXT NOT NULL,
    ExecutionID TEXT NULL
);`

// migrate creates the tables, and adds the columns later versions need.
func migrate(ctx context.Context, tx *stx) error {
	if _, err := tx.ExecContext(ctx, taskHubSchema); err != nil {
		return fmt.Errorf("create task hub tables: %w", err)
	}
	if _, err := tx.ExecContext(ctx, deadLetterSchema); err != nil {
		return fmt.Errorf("create dead-letter table: %w", err)
	}
	var has int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM pragma_table_info('DronehubDeadLetters') WHERE name = 'ExecutionID'`).Scan(&has); err != nil {
		return fmt.Errorf("inspect dead-letter table: %w", err)
	}
	if has == 0 {
		// The first open by this version: DequeueCount counted every fetch
		// before; it counts failed executions now, so start from zero.
		for _, q := range []string{
			`ALTER TABLE DronehubDeadLetters ADD COLUMN ExecutionID TEXT NULL`,
			`UPDATE NewEvents SET DequeueCount = 0`,
			`UPDATE NewTasks SET DequeueCount = 0`,
		} {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("upgrade the schema: %w", err)
			}
		}
	}
	return nil
}
