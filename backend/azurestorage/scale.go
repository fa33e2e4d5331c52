package azurestorage

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"

	"github.com/dronehub/dronehub/taskhub"
)

var _ taskhub.ScaleSampler = (*Backend)(nil)

// queueLoadOf measures queue q: its approximate depth (invisible messages
// included) and the age of its oldest visible message, 0 if none (one
// properties request, and one peek when the queue is not empty). The age is
// measured from when a delayed message became visible (messageAge).
func queueLoadOf(ctx context.Context, q *azqueue.QueueClient) (int64, time.Duration, error) {
	n, err := queueDepth(ctx, q)
	if err != nil || n == 0 {
		return 0, 0, err
	}
	one := int32(1)
	resp, err := q.PeekMessages(ctx, &azqueue.PeekMessagesOptions{NumberOfMessages: &one})
	if err != nil {
		return int64(n), 0, fmt.Errorf("azurestorage: peek queue %s: %w", queueName(q), err)
	}
	var lag time.Duration
	for _, m := range resp.Messages {
		lag = max(lag, messageAge(m.InsertionTime, m.MessageText))
	}
	return int64(n), lag, nil
}

// ScaleSample implements taskhub.ScaleSampler: every control queue and the
// work-item queue measured by queueLoadOf, the telemetry queue's depth and
// the live workers' heartbeats, all read concurrently: partitions + 3
// requests, plus one peek per non-empty queue (12 at most with 4
// partitions). It is what DurableTask.AzureStorage's performance monitor
// reads (a peek and the approximate count of each queue), plus the
// heartbeats: their count, and the buffered waits each worker published
// (see publishWaits), which raise a queue's OldestAge when work waits in a
// worker's buffer rather than in the queue.
func (b *Backend) ScaleSample(ctx context.Context) (taskhub.ScaleSample, error) {
	s := taskhub.ScaleSample{Control: make([]taskhub.QueueLoad, b.names.partitions)}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		errs     []error
		waits    = map[int]time.Duration{} // published by the live workers (see publishWaits)
		workWait time.Duration
	)
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	run(func() error {
		loads, err := b.PartitionLoads(ctx)
		copy(s.Control, loads)
		return err
	})
	run(func() error {
		n, age, err := queueLoadOf(ctx, b.work)
		s.WorkItems = taskhub.QueueLoad{Messages: n, OldestAge: age}
		return err
	})
	run(func() error {
		n, err := queueDepth(ctx, b.tele)
		s.Other = int64(n)
		return err
	})
	run(func() error {
		rows, err := b.lm.list(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		live := 0
		for _, e := range rows {
			if liveHeartbeat(e, now) {
				live++
				c, w := publishedWaits(e)
				for p, d := range c {
					waits[p] = max(waits[p], d)
				}
				workWait = max(workWait, w)
			}
		}
		s.Workers = live
		return nil
	})
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return taskhub.ScaleSample{}, fmt.Errorf("azurestorage: scale sample: %w", err)
	}
	// This worker's own buffer as it is now, not as its last heartbeat
	// published it (nothing for a process that is not a worker).
	own, ownWork := b.waits(time.Now())
	for p := range s.Control {
		s.Control[p].OldestAge = max(s.Control[p].OldestAge, waits[p], own[p])
	}
	s.WorkItems.OldestAge = max(s.WorkItems.OldestAge, workWait, ownWork)
	return s, nil
}

// Buffered waits. A worker dequeues control messages ahead of its free
// orchestration slots (up to 32 per poll, and messages it sends itself are
// handed over without a dequeue), so once its slots are all busy the
// backlog sits in its buffer, invisible in the queue: the queue's front
// message looks young however long the work waits. Each worker therefore
// publishes in its heartbeat row, every lease round, how long the oldest
// message of each partition has waited in its buffer for a slot ("Waits":
// "partition:ms …", only those waiting), and the same for the activities
// it buffered ("WorkWaitMs"); ScaleSample takes, per queue, the larger of
// the front message's age and the waits the live workers published.

// waits measures how long the oldest buffered message of each partition,
// and of the activity buffer, has waited at now: only instances ready for
// an episode (not those whose messages wait for their own episode in
// progress, which is no lack of capacity).
func (b *Backend) waits(now time.Time) (map[int]time.Duration, time.Duration) {
	age := func(m *inMsg) time.Duration {
		since := m.inserted
		if since.IsZero() {
			since = m.lockedAt()
		}
		if va := time.UnixMilli(m.env.VisibleAt); m.env.VisibleAt > 0 && va.After(since) {
			since = va
		}
		return max(now.Sub(since), 0)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	control := map[int]time.Duration{}
	for _, id := range b.ready {
		if b.inflight[id] {
			continue
		}
		for _, m := range b.pending[id] {
			if m.partition >= 0 {
				control[m.partition] = max(control[m.partition], age(m))
			}
		}
	}
	var work time.Duration
	for _, m := range b.actBuf {
		work = max(work, age(m))
	}
	return control, work
}

// publishWaits writes the buffered waits into a heartbeat row (nothing
// when no work waits).
func (b *Backend) publishWaits(hb entity, now time.Time) {
	control, work := b.waits(now)
	var parts []string
	for p, d := range control {
		if ms := d.Milliseconds(); ms > 0 {
			parts = append(parts, fmt.Sprintf("%d:%d", p, ms))
		}
	}
	if len(parts) > 0 {
		sort.Strings(parts)
		hb["Waits"] = strings.Join(parts, " ")
	}
	if ms := work.Milliseconds(); ms > 0 {
		hb.setInt64("WorkWaitMs", ms)
	}
}

// publishedWaits reads the waits a heartbeat row published.
func publishedWaits(e entity) (map[int]time.Duration, time.Duration) {
	control := map[int]time.Duration{}
	for _, f := range strings.Fields(e.str("Waits")) {
		ps, ms, ok := strings.Cut(f, ":")
		p, err1 := strconv.Atoi(ps)
		n, err2 := strconv.ParseInt(ms, 10, 64)
		if ok && err1 == nil && err2 == nil && p >= 0 {
			control[p] = max(control[p], time.Duration(n)*time.Millisecond)
		}
	}
	return control, time.Duration(e.int64("WorkWaitMs")) * time.Millisecond
}
