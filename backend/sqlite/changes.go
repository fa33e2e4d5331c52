package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/microsoft/durabletask-go/api"

	"github.com/dronehub/dronehub/taskhub"
)

var _ taskhub.ChangeLister = (*Backend)(nil)

// InstancesChangedSince implements taskhub.ChangeLister: one query of the
// Instances rows whose LastUpdatedTime is at or after since (to the whole
// second: rows created and not yet run hold SQLite's CURRENT_TIMESTAMP,
// without a fraction, and the times are compared as text). next is this
// process's clock, read before the query: a SQLite hub is written by one
// process, on this machine's clock.
func (b *Backend) InstancesChangedSince(ctx context.Context, since time.Time, limit int) ([]*api.OrchestrationMetadata, time.Time, error) {
	if limit <= 0 {
		limit = taskhub.MaxPageSize
	}
	next := time.Now().UTC()
	// Stored times are "2006-01-02 15:04:05" (the column's default) or
	// Go's "2006-01-02 15:04:05.999999999-07:00" in UTC: each sorts at or
	// after the whole second it lies in, written without a fraction.
	from := since.UTC().Truncate(time.Second).Format("2006-01-02 15:04:05")
	rows, err := b.rdb.QueryContext(ctx, `SELECT `+instanceColumns+`
		FROM Instances WHERE CAST(LastUpdatedTime AS TEXT) >= ? LIMIT ?`, from, limit+1)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("sqlite: list changed instances: %w", err)
	}
	defer rows.Close()
	var out []*api.OrchestrationMetadata
	for rows.Next() {
		if len(out) == limit {
			return nil, time.Time{}, fmt.Errorf("sqlite: list changed instances since %s: %w", from, taskhub.ErrTooManyChanges)
		}
		md, _, err := scanInstance(rows)
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("sqlite: list changed instances: %w", err)
		}
		out = append(out, md)
	}
	if err := rows.Err(); err != nil {
		return nil, time.Time{}, fmt.Errorf("sqlite: list changed instances: %w", err)
	}
	return out, next, nil
}
