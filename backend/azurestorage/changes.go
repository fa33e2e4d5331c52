package azurestorage

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/microsoft/durabletask-go/api"

	"github.com/dronehub/dronehub/taskhub"
)

var _ taskhub.ChangeLister = (*Backend)(nil)

// InstancesChangedSince implements taskhub.ChangeLister: one query over the
// history table for the status rows (RowKey "meta") whose Timestamp, the
// last-modified time the service stamps on every write, is at or after
// since (to the whole second), following continuation pages. Every commit
// of an instance writes its status row (its ETag fences the commit), so a
// change of runtime status or custom status moves its Timestamp.
//
// next is the service's clock: the Date of the first page's answer (whole
// seconds, taken when the query ran), or, without one, the latest
// Timestamp seen. The billed cost is one request per page of results (up
// to 1,000 rows) however many instances the hub holds; the service scans
// the table to answer, which makes the query slower, not dearer, as the
// table grows.
func (b *Backend) InstancesChangedSince(ctx context.Context, since time.Time, limit int) ([]*api.OrchestrationMetadata, time.Time, error) {
	if limit <= 0 {
		limit = taskhub.MaxPageSize
	}
	filter := fmt.Sprintf("RowKey eq %s and Timestamp ge datetime'%s'", quote(sentinelRK), since.UTC().Truncate(time.Second).Format("2006-01-02T15:04:05Z"))
	pager := b.history.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter, Top: ptr(int32(min(limit+1, 1000)))})
	var (
		rows []entity
		next time.Time
	)
	for pager.More() {
		var resp *http.Response
		p, err := pager.NextPage(policy.WithCaptureResponse(ctx, &resp))
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("azurestorage: list changed instances: %w", err)
		}
		if next.IsZero() && resp != nil {
			next, _ = http.ParseTime(resp.Header.Get("Date"))
		}
		for _, raw := range p.Entities {
			e, err := parseEntity(raw)
			if err != nil {
				return nil, time.Time{}, err
			}
			if len(rows) == limit {
				return nil, time.Time{}, fmt.Errorf("azurestorage: list changed instances: %w", taskhub.ErrTooManyChanges)
			}
			rows = append(rows, e)
		}
	}
	if next.IsZero() {
		next = since
		for _, e := range rows {
			if t, err := time.Parse(time.RFC3339Nano, e.str("Timestamp")); err == nil && t.After(next) {
				next = t
			}
		}
	}
	// Large values live in blobs (read through the cache), as for a
	// listing: read them side by side.
	out, err := metadataOfRows(rows, func(e entity) (*api.OrchestrationMetadata, error) { return b.metadata(ctx, e) })
	if err != nil {
		return nil, time.Time{}, err
	}
	return out, next.UTC(), nil
}
