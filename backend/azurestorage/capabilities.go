package azurestorage

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"

	"github.com/dronehub/dronehub/taskhub"
)

// The optional taskhub capabilities this backend has.
var (
	_ taskhub.DeadLetterer   = (*Backend)(nil)
	_ taskhub.Inspector      = (*Backend)(nil)
	_ taskhub.TelemetryQueue = (*Backend)(nil)
	_ taskhub.RequestCounter = (*Backend)(nil)
)

// DeadLetters implements taskhub.DeadLetterer: every dead letter, oldest
// first. ReplayDeadLetter (deadletter.go) is the other half.
func (b *Backend) DeadLetters(ctx context.Context) ([]taskhub.DeadLetter, error) {
	dls, err := b.ListDeadLetters(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]taskhub.DeadLetter, len(dls))
	for i, d := range dls {
		out[i] = taskhub.DeadLetter{ID: d.ID, Queue: d.Queue, InstanceID: d.InstanceID, EventType: d.EventType,
			Reason: d.Reason, DequeueCount: int(d.DequeueCount), DeadAt: d.At}
	}
	return out, nil
}

// RequestCounts implements taskhub.RequestCounter: the storage requests made
// so far (every attempt, retries included) by kind, e.g. "queue.dequeue".
func (b *Backend) RequestCounts() map[string]int64 { return b.opts.Counter.Snapshot() }

// HubInfo implements taskhub.Inspector: partition owners (live leases only)
// and the live workers' host names and HTTP addresses (their heartbeats),
// the approximate depth of every queue of the hub (control queues, work
// items, telemetry; the count includes invisible messages such as pending
// timers and messages being processed), instance counts by status and the
// number of dead letters. It reads, in parallel, the lease rows, one
// property request per queue, the status rows (Status only) and the
// dead-letter keys.
func (b *Backend) HubInfo(ctx context.Context) (taskhub.HubInfo, error) {
	info := taskhub.HubInfo{
		Kind: "azurestorage", Name: b.opts.HubName, Partitions: b.names.partitions,
		Owners: map[int]string{}, Workers: map[string]taskhub.WorkerInfo{}, QueueDepths: map[string]int{}, Instances: map[string]int{},
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				fail(err)
			}
		}()
	}
	run(func() error {
		rows, err := b.lm.list(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		for _, e := range rows {
			if liveHeartbeat(e, now) {
				mu.Lock()
				info.Workers[heartbeatID(e)] = taskhub.WorkerInfo{Host: e.str("Host"), HTTPAddr: e.str("HTTP")}
				mu.Unlock()
				continue
			}
			if e.str("PartitionKey") != leasePK || e.str("Owner") == "" || !parseTime(e.str("Expires")).After(now) {
				continue
			}
			if p, ok := leasePartition(e.str("RowKey")); ok {
				mu.Lock()
				info.Owners[p] = e.str("Owner")
				mu.Unlock()
			}
		}
		return nil
	})
	for _, q := range b.queues() {
		run(func() error {
			n, err := queueDepth(ctx, q)
			if err != nil {
				return err
			}
			mu.Lock()
			info.QueueDepths[queueName(q)] = n
			mu.Unlock()
			return nil
		})
	}
	run(func() error {
		counts, err := countRows(ctx, b.index, "", "Status", func(e entity) string {
			return taskhub.StatusName(sentinelStatus(e))
		})
		if err != nil {
			return fmt.Errorf("azurestorage: count instances: %w", err)
		}
		mu.Lock()
		info.Instances = counts
		mu.Unlock()
		return nil
	})
	run(func() error {
		counts, err := countRows(ctx, b.dead, "PartitionKey eq "+quote(deadPK), "RowKey", func(entity) string { return "" })
		if err != nil {
			return fmt.Errorf("azurestorage: count dead letters: %w", err)
		}
		mu.Lock()
		info.DeadLetters = counts[""]
		mu.Unlock()
		return nil
	})
	wg.Wait()
	if len(errs) > 0 {
		return taskhub.HubInfo{}, errs[0]
	}
	return info, nil
}

// queueDepth is a queue's approximate message count.
func queueDepth(ctx context.Context, q *azqueue.QueueClient) (int, error) {
	resp, err := q.GetProperties(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("azurestorage: properties of queue %s: %w", queueName(q), err)
	}
	if resp.ApproximateMessagesCount == nil {
		return 0, nil
	}
	return int(*resp.ApproximateMessagesCount), nil
}

// countRows counts the rows matching filter by key(row), reading only the
// selected properties.
func countRows(ctx context.Context, t *aztables.Client, filter, sel string, key func(entity) string) (map[string]int, error) {
	o := &aztables.ListEntitiesOptions{Select: &sel}
	if filter != "" {
		o.Filter = &filter
	}
	pager := t.NewListEntitiesPager(o)
	out := map[string]int{}
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, raw := range page.Entities {
			e, err := parseEntity(raw)
			if err != nil {
				return nil, err
			}
			out[key(e)]++
		}
	}
	return out, nil
}

var _ taskhub.Pinger = (*Backend)(nil)

// Ping implements taskhub.Pinger with one point read of the hub's metadata
// row: it proves the account, the credentials and the hub are all there.
func (b *Backend) Ping(ctx context.Context) error {
	if _, err := b.leases.GetEntity(ctx, metaPK, metaRK, nil); err != nil {
		return fmt.Errorf("azurestorage: ping hub %s: %w", b.opts.HubName, err)
	}
	return nil
}
