package azurestorage

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/dronehub/dronehub/taskhub"
)

// What the backend tells package metrics (docs/metrics.md).
var (
	_ taskhub.PartitionObserver = (*Backend)(nil)
	_ taskhub.StatusCounter     = (*Backend)(nil)
)

// leaseCounters counts lease claims and losses; the zero value is ready.
type leaseCounters struct {
	acquired, takenOver, lost atomic.Int64
}

// claimed counts a claim; takeover marks the claim of a lease another
// worker held and let expire.
func (c *leaseCounters) claimed(takeover bool) {
	c.acquired.Add(1)
	if takeover {
		c.takenOver.Add(1)
	}
}

// LeaseStats implements taskhub.PartitionObserver.
func (b *Backend) LeaseStats() taskhub.LeaseStats {
	s := &b.lm.stats
	return taskhub.LeaseStats{
		Owned:     len(b.lm.owners()),
		Acquired:  s.acquired.Load(),
		TakenOver: s.takenOver.Load(),
		Lost:      s.lost.Load(),
	}
}

// PartitionLoads implements taskhub.PartitionObserver: the depth of every
// control queue and the age of its oldest visible message, indexed by
// partition, measured concurrently (one request per partition, two when it
// is not empty); the scale sample takes the same measure.
func (b *Backend) PartitionLoads(ctx context.Context) ([]taskhub.QueueLoad, error) {
	out := make([]taskhub.QueueLoad, b.names.partitions)
	errs := make([]error, b.names.partitions)
	var wg sync.WaitGroup
	for p := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, age, err := queueLoadOf(ctx, b.control[p])
			out[p] = taskhub.QueueLoad{Messages: n, OldestAge: age}
			errs[p] = err
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// RequestCountsByStatus implements taskhub.StatusCounter.
func (b *Backend) RequestCountsByStatus() map[string]map[string]int64 {
	return b.opts.Counter.StatusSnapshot()
}
