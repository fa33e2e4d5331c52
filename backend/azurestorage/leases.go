package azurestorage

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
)

// Partition ownership. The <Hub>Partitions table holds one lease row per
// control queue (PartitionKey "lease", RowKey "control-NN": Owner, Expires)
// and one heartbeat row per live worker (PartitionKey "worker"). Every
// change to a lease row is conditional on its ETag, so two workers can
// never both believe they won the same claim. Each round a worker renews
// its leases, counts live workers, and aims for an equal share: it claims
// free or expired partitions up to its share and hands back any surplus
// after draining it (no work item of that partition in flight). A worker
// that dies loses its partitions when their leases expire. A commit by a
// worker that lost a partition mid-episode is still rejected, by the
// instance sentinel's ETag.
type leaseManager struct {
	b    *Backend
	once sync.Once

	mu    sync.Mutex
	owned map[int]azcore.ETag
	ready chan struct{} // closed after the first round
}

const (
	leasePK  = "lease"
	workerPK = "worker"
)

func newLeaseManager(b *Backend) *leaseManager {
	return &leaseManager{b: b, owned: map[int]azcore.ETag{}, ready: make(chan struct{})}
}

func leaseRK(p int) string { return fmt.Sprintf("control-%02d", p) }

// start runs the first round and the renewal loop, once.
func (lm *leaseManager) start() {
	lm.once.Do(func() {
		b := lm.b
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			every := b.opts.LeaseDuration / 3
			for {
				ctx, cancel := context.WithTimeout(b.bg, every)
				if err := lm.round(ctx); err != nil && b.bg.Err() == nil {
					b.log.Warn("azurestorage: partition lease round failed", "err", err)
				}
				cancel()
				select {
				case <-lm.ready:
				default:
					close(lm.ready)
				}
				select {
				case <-b.bg.Done():
					return
				case <-time.After(every):
				}
			}
		}()
	})
}

// waitReady waits for the first lease round (or ctx).
func (lm *leaseManager) waitReady(ctx context.Context) {
	lm.start()
	select {
	case <-lm.ready:
	case <-ctx.Done():
	}
}

// partitions returns the partitions this worker owns, in order.
func (lm *leaseManager) partitions() []int {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	out := make([]int, 0, len(lm.owned))
	for p := range lm.owned {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

func (lm *leaseManager) round(ctx context.Context) error {
	b := lm.b
	now := time.Now()
	expires := formatTime(now.Add(b.opts.LeaseDuration))
	hb := newEntity(workerPK, escapeKey(b.opts.WorkerID))
	hb["Expires"] = expires
	if _, err := b.leases.UpsertEntity(ctx, hb.marshal(), &aztables.UpsertEntityOptions{UpdateMode: aztables.UpdateModeReplace}); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	rows, err := lm.list(ctx)
	if err != nil {
		return err
	}
	live := 0
	leases := map[string]entity{}
	for _, e := range rows {
		switch e.str("PartitionKey") {
		case workerPK:
			if parseTime(e.str("Expires")).After(now) {
				live++
			}
		case leasePK:
			leases[e.str("RowKey")] = e
		}
	}
	live = max(live, 1)
	P := b.names.partitions
	share := (P + live - 1) / live

	lm.mu.Lock()
	defer lm.mu.Unlock()
	// Renew what we hold; forget what someone else took.
	for p := range lm.owned {
		e, ok := leases[leaseRK(p)]
		if !ok || e.str("Owner") != b.opts.WorkerID {
			b.log.Warn("azurestorage: lost partition lease", "partition", p)
			delete(lm.owned, p)
			continue
		}
		if etag, ok := lm.write(ctx, p, e.etag(), b.opts.WorkerID, expires); ok {
			lm.owned[p] = etag
		} else {
			delete(lm.owned, p)
		}
	}
	// Claim free or expired partitions up to our share.
	for p := 0; p < P && len(lm.owned) < share; p++ {
		if _, ok := lm.owned[p]; ok {
			continue
		}
		e, ok := leases[leaseRK(p)]
		if !ok {
			row := newEntity(leasePK, leaseRK(p))
			row["Owner"], row["Expires"] = b.opts.WorkerID, expires
			if resp, err := b.leases.AddEntity(ctx, row.marshal(), nil); err == nil {
				lm.owned[p] = resp.ETag
				b.log.Debug("azurestorage: claimed partition", "partition", p)
			}
			continue
		}
		if parseTime(e.str("Expires")).After(now) && e.str("Owner") != b.opts.WorkerID {
			continue
		}
		if etag, ok := lm.write(ctx, p, e.etag(), b.opts.WorkerID, expires); ok {
			lm.owned[p] = etag
			b.log.Debug("azurestorage: claimed partition", "partition", p, "from", e.str("Owner"))
		}
	}
	// Hand back surplus once drained.
	if len(lm.owned) > share {
		var mine []int
		for p := range lm.owned {
			mine = append(mine, p)
		}
		sort.Sort(sort.Reverse(sort.IntSlice(mine)))
		for _, p := range mine[:len(lm.owned)-share] {
			if b.partitionBusy(p) {
				continue
			}
			if _, ok := lm.write(ctx, p, lm.owned[p], "", formatTime(now)); ok {
				b.log.Debug("azurestorage: released partition", "partition", p)
			}
			delete(lm.owned, p)
			b.dropPending(p)
		}
	}
	return nil
}

// write replaces lease row p if its ETag is still etag.
func (lm *leaseManager) write(ctx context.Context, p int, etag azcore.ETag, owner, expires string) (azcore.ETag, bool) {
	row := newEntity(leasePK, leaseRK(p))
	row["Owner"], row["Expires"] = owner, expires
	resp, err := lm.b.leases.UpdateEntity(ctx, row.marshal(), &aztables.UpdateEntityOptions{IfMatch: &etag, UpdateMode: aztables.UpdateModeReplace})
	if err != nil {
		return "", false
	}
	return resp.ETag, true
}

func (lm *leaseManager) list(ctx context.Context) ([]entity, error) {
	filter := fmt.Sprintf("PartitionKey eq %s or PartitionKey eq %s", quote(leasePK), quote(workerPK))
	pager := lm.b.leases.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter})
	var out []entity
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list leases: %w", err)
		}
		for _, raw := range page.Entities {
			e, err := parseEntity(raw)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// releaseAll gives up every lease and the heartbeat (at Close).
func (lm *leaseManager) releaseAll(ctx context.Context) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	now := formatTime(time.Now())
	for p, etag := range lm.owned {
		lm.write(ctx, p, etag, "", now)
		delete(lm.owned, p)
	}
	select {
	case <-lm.ready:
		lm.b.leases.DeleteEntity(ctx, workerPK, escapeKey(lm.b.opts.WorkerID), nil)
	default:
	}
}
