package azurestorage

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/microsoft/durabletask-go/api"

	"github.com/dronehub/dronehub/taskhub"
)

// The instance index, <Hub>Instances, makes listing cost what it returns.
//
// One row per instance: PartitionKey = the UTC day of its creation
// ("2006-01-02"), RowKey = "<created time>|<escaped id>", with Status,
// Name (when short) and InstanceID. The table's natural order is then the
// listing order (created, id), so a page is one range query that stops
// after PageSize rows, with status, name and time filters evaluated by the
// service; each listed instance's metadata is then read from its status
// row (the truth), one point read each.
//
// The index is a projection, written after the fenced commit and only
// when an instance's status (or creation time, after continue-as-new)
// changes: at creation, at its first episode, at its end. It can lag:
// a worker that dies between the commit and the index write leaves the
// old status until the instance's messages are redelivered (the episode
// built from a redelivery writes it again) or its next status change.
// Listing therefore re-checks every row against the status row and drops
// rows that no longer match (an index row left by a purge that died is
// deleted when met).
const maxIndexedName = 1024

// indexKey is where an instance's index row lives.
func indexKey(created, id string) (pk, rk string) {
	day := created
	if len(day) >= 10 {
		day = day[:10]
	}
	return day, created + "|" + escapeKey(id)
}

// indexRow is the index row of a status row.
func indexRow(sentinel entity) entity {
	pk, rk := indexKey(sentinel.str("CreatedTime"), sentinel.str("InstanceID"))
	e := newEntity(pk, rk)
	e["InstanceID"] = sentinel.str("InstanceID")
	e["Status"] = sentinel.str("Status")
	if name := sentinel.str("Name"); len(name) <= maxIndexedName && sentinel.str("NameBlob") == "" {
		e["Name"] = name
	} else {
		e["LongName"] = true
	}
	return e
}

// indexChanged reports whether committing next over prev changes the
// instance's index row.
func indexChanged(prev, next entity) bool {
	return prev == nil || prev.str("Status") != next.str("Status") || prev.str("CreatedTime") != next.str("CreatedTime")
}

// writeIndex upserts the index row of sentinel and deletes the one of
// prev if it lived elsewhere. Failures are logged: the index can lag.
func (b *Backend) writeIndex(ctx context.Context, prev, sentinel entity) {
	row := indexRow(sentinel)
	err := b.storage(ctx, "index instance", func(ctx context.Context) error {
		_, err := b.index.UpsertEntity(ctx, row.marshal(), &aztables.UpsertEntityOptions{UpdateMode: aztables.UpdateModeReplace})
		return err
	})
	if err != nil {
		b.log.Warn("azurestorage: update the instance index (it catches up later)", "instance", sentinel.str("InstanceID"), "err", err)
		return
	}
	if prev != nil && prev.str("CreatedTime") != sentinel.str("CreatedTime") {
		pk, rk := indexKey(prev.str("CreatedTime"), prev.str("InstanceID"))
		b.deleteIndex(ctx, pk, rk)
	}
}

func (b *Backend) deleteIndex(ctx context.Context, pk, rk string) {
	err := b.storage(ctx, "index instance", func(ctx context.Context) error {
		_, err := b.index.DeleteEntity(ctx, pk, rk, nil)
		return err
	})
	if err != nil && !isNotFound(err) {
		b.log.Debug("azurestorage: delete index row", "row", pk+"/"+rk, "err", err)
	}
}

// ListInstances implements taskhub.Backend: one range query over the index
// (filters pushed to the service, stopping after a page), then one point
// read per listed instance.
func (b *Backend) ListInstances(ctx context.Context, q taskhub.Query) (*taskhub.Page, error) {
	q, err := q.Normalize()
	if err != nil {
		return nil, err
	}
	var conds []string
	if q.Name != "" {
		conds = append(conds, "Name eq "+quote(q.Name))
	}
	if len(q.RuntimeStatus) > 0 {
		var ors []string
		for _, s := range q.RuntimeStatus {
			ors = append(ors, "Status eq "+quote(taskhub.StorageName(s)))
		}
		conds = append(conds, "("+strings.Join(ors, " or ")+")")
	}
	if !q.CreatedFrom.IsZero() {
		from := formatTime(q.CreatedFrom)
		pk, _ := indexKey(from, "")
		conds = append(conds, "PartitionKey ge "+quote(pk), "RowKey ge "+quote(from))
	}
	if !q.CreatedTo.IsZero() {
		to := formatTime(q.CreatedTo)
		pk, _ := indexKey(to, "")
		conds = append(conds, "PartitionKey le "+quote(pk), "RowKey lt "+quote(to))
	}
	if q.InstanceIDPrefix != "" {
		conds = append(conds, "InstanceID ge "+quote(q.InstanceIDPrefix), "InstanceID lt "+quote(q.InstanceIDPrefix+"\U0010FFFF"))
	}
	if q.ContinuationToken != "" {
		cur, _ := taskhub.DecodeCursor(q.ContinuationToken)
		pk, rk := indexKey(cur.Created, cur.ID)
		conds = append(conds, "PartitionKey ge "+quote(pk), "RowKey gt "+quote(rk))
	}
	filter := strings.Join(conds, " and ")
	opts := &aztables.ListEntitiesOptions{Top: ptr(int32(min(q.PageSize+1, 1000)))}
	if filter != "" {
		opts.Filter = &filter
	}
	page := &taskhub.Page{}
	var rows []entity
	pager := b.index.NewListEntitiesPager(opts)
	for pager.More() && len(rows) <= q.PageSize {
		p, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("azurestorage: list instances: %w", err)
		}
		for _, raw := range p.Entities {
			e, err := parseEntity(raw)
			if err != nil {
				return nil, err
			}
			if strings.HasPrefix(e.str("InstanceID"), q.InstanceIDPrefix) {
				rows = append(rows, e)
			}
		}
	}
	if len(rows) > q.PageSize {
		rows = rows[:q.PageSize]
		last := rows[len(rows)-1]
		created, _, _ := strings.Cut(last.str("RowKey"), "|")
		page.ContinuationToken = taskhub.Cursor{Created: created, ID: last.str("InstanceID")}.Encode()
	}
	mds, err := metadataOfRows(rows, func(row entity) (*api.OrchestrationMetadata, error) { return b.listed(ctx, row, q) })
	if err != nil {
		return nil, err
	}
	for _, md := range mds {
		if md != nil {
			page.Instances = append(page.Instances, md)
		}
	}
	return page, nil
}

// metadataOfRows runs read on every row, 16 at a time (each may read
// blobs), and returns the results in row order, or the first row's error.
func metadataOfRows(rows []entity, read func(entity) (*api.OrchestrationMetadata, error)) ([]*api.OrchestrationMetadata, error) {
	mds := make([]*api.OrchestrationMetadata, len(rows))
	errs := make([]error, len(rows))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, row := range rows {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			mds[i], errs[i] = read(row)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return mds, nil
}

// listed reads the instance an index row names and checks it still
// matches the query; nil if it does not (or no longer exists).
func (b *Backend) listed(ctx context.Context, row entity, q taskhub.Query) (*api.OrchestrationMetadata, error) {
	id := row.str("InstanceID")
	e, _, err := b.getSentinel(ctx, id)
	if err != nil {
		return nil, err
	}
	if e == nil {
		b.deleteIndex(ctx, row.str("PartitionKey"), row.str("RowKey")) // left by a purge that died
		return nil, nil
	}
	if pk, rk := indexKey(e.str("CreatedTime"), id); pk != row.str("PartitionKey") || rk != row.str("RowKey") {
		return nil, nil // the instance was re-created or continued as new: its current row is elsewhere
	}
	md, err := b.metadata(ctx, e)
	if err != nil {
		return nil, err
	}
	if len(q.RuntimeStatus) > 0 && !containsStatus(q.RuntimeStatus, md.RuntimeStatus) {
		return nil, nil
	}
	if q.Name != "" && md.Name != q.Name {
		return nil, nil
	}
	return md, nil
}

func containsStatus(list []api.OrchestrationStatus, s api.OrchestrationStatus) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func ptr[T any](v T) *T { return &v }
