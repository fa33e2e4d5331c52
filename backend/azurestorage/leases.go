package azurestorage

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
)

// Partition ownership and load-aware balancing.
//
// The <Hub>Partitions table holds one lease row per control queue
// (PartitionKey "lease", RowKey "control-NN") and one heartbeat row per
// live worker (PartitionKey "worker"). Every change to a lease row is
// conditional on its ETag, so two workers can never both win the same
// claim, and a worker whose renewal fails stops polling the partition.
//
// Every LeaseDuration/3 a worker runs a round:
//
//  1. heartbeat; measure the control queues it owns and that look busy
//     (the last dequeue returned a full batch, or none happened lately):
//     depth (approximate message count) and lag (age of the oldest
//     visible message);
//  2. renew its leases, publishing Depth and LagMs in each row;
//  3. claim free or expired partitions up to ceil(partitions / live
//     workers), and partitions handed to it by name;
//  4. finish handing off partitions it is draining;
//  5. if it is the heaviest live worker, shed partitions to the lightest.
//
// Weights: a partition weighs 1, plus Depth/loadUnit when its lag is over
// lagThreshold (a queue whose owner keeps up weighs 1 however deep it is:
// pending timers and messages being processed are not load). A worker's
// weight is the sum over the partitions it holds. The heaviest worker moves
// its heaviest partition p to the lightest worker L when w(p)+1 <= W(me) -
// W(L), i.e. when the move shrinks the gap between them; with no load this
// is balancing by count. Moves are one way at a time: a worker sheds only
// while it is the heaviest, and never while a hand-off of its own is in
// progress.
//
// Hand-off (drain, then release): the owner marks the row Draining=<target>
// (still its owner), stops taking new work from the partition and returns
// its buffered messages to the queue; once no work item of the partition is
// in flight it writes Owner="", Next=<target>, NextUntil=now+LeaseDuration.
// Only the target may claim the row until NextUntil; after that anyone may.
// A worker that dies keeps nothing: its leases expire after LeaseDuration
// and the others claim them. A commit by a worker that lost a partition
// mid-episode is still rejected by the instance sentinel's ETag.
type leaseManager struct {
	b    *Backend
	once sync.Once

	mu    sync.Mutex
	owned map[int]*lease
	ready chan struct{} // closed after the first round

	// active[p] is the time (unix ns) until which this worker may poll
	// partition p: its lease renewed and not being handed off; 0 if not.
	active [16]atomic.Int64
	// lastPoll[p] is when partition p was last dequeued (unix ns), and
	// fullPoll[p] whether that dequeue returned a full batch.
	lastPoll [16]atomic.Int64
	fullPoll [16]atomic.Bool
}

// lease is this worker's view of a lease it holds.
type lease struct {
	etag     azcore.ETag
	until    time.Time // when this worker stops trusting it without renewal
	draining string    // worker it is being handed to; "" if none
	depth    int64
	lag      time.Duration
}

const (
	leasePK  = "lease"
	workerPK = "worker"
	// loadUnit lagging messages weigh as much as one partition.
	loadUnit = 16
	// controlBatch is how many messages one dequeue takes from a control queue.
	controlBatch = 32
	// heartbeatRetention is how long a dead worker's heartbeat row stays.
	heartbeatRetention = time.Hour
)

func newLeaseManager(b *Backend) *leaseManager {
	return &leaseManager{b: b, owned: map[int]*lease{}, ready: make(chan struct{})}
}

func leaseRK(p int) string { return fmt.Sprintf("control-%02d", p) }

func leasePartition(rk string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(rk, "control-"))
	return n, err == nil && strings.HasPrefix(rk, "control-")
}

// lagThreshold is the lag over which a control queue counts as loaded: an
// idle consumer may take up to MaxPollInterval to see a message.
func (lm *leaseManager) lagThreshold() time.Duration {
	return max(2*time.Second, 2*lm.b.opts.MaxPollInterval)
}

// weight is a partition's share of its holder's load.
func (lm *leaseManager) weight(depth int64, lag time.Duration) float64 {
	if lag < lm.lagThreshold() || depth <= 0 {
		return 1
	}
	return 1 + float64(depth)/loadUnit
}

// start runs the first round and the renewal loop, once. The loop never
// exits before Close: a failed round is logged and the next one runs on
// schedule; leases not renewed in time stop being polled (see active).
func (lm *leaseManager) start() {
	lm.once.Do(func() {
		b := lm.b
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			every := b.opts.LeaseDuration / 3
			failures := 0
			for {
				began := time.Now()
				ctx, cancel := context.WithTimeout(b.bg, b.opts.LeaseDuration/2)
				err := lm.round(ctx)
				cancel()
				switch {
				case err != nil && b.bg.Err() == nil:
					failures++
					if failures == 1 || failures%10 == 0 {
						b.log.Warn("azurestorage: partition lease round failed", "err", err, "failures", failures)
					}
				case err == nil && failures > 0:
					b.log.Info("azurestorage: partition lease rounds work again", "after", failures)
					failures = 0
				}
				select {
				case <-lm.ready:
				default:
					close(lm.ready)
				}
				t := time.NewTimer(max(every-time.Since(began), 0))
				select {
				case <-b.bg.Done():
					t.Stop()
					return
				case <-t.C:
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

// partitions returns the partitions this worker may poll now, in order.
func (lm *leaseManager) partitions() []int {
	now := time.Now().UnixNano()
	var out []int
	for p := 0; p < lm.b.names.partitions; p++ {
		if lm.active[p].Load() > now {
			out = append(out, p)
		}
	}
	return out
}

// isActive reports whether this worker may start work on partition p.
func (lm *leaseManager) isActive(p int) bool { return lm.active[p].Load() > time.Now().UnixNano() }

// notePoll records a dequeue of n messages from partition p.
func (lm *leaseManager) notePoll(p, n int) {
	lm.lastPoll[p].Store(time.Now().UnixNano())
	lm.fullPoll[p].Store(n >= controlBatch)
}

// setActive publishes l's state for partition p to the pollers.
func (lm *leaseManager) setActive(p int, l *lease) {
	if l == nil || l.draining != "" {
		lm.active[p].Store(0)
		return
	}
	lm.active[p].Store(l.until.UnixNano())
}

// measure refreshes depth and lag of the owned partitions that look busy;
// an idle worker makes no requests here. Errors keep the old figures.
func (lm *leaseManager) measure(ctx context.Context) {
	b := lm.b
	lm.mu.Lock()
	var ps []int
	for p, l := range lm.owned {
		if l.draining == "" {
			ps = append(ps, p)
		}
	}
	lm.mu.Unlock()
	stale := time.Now().Add(-lm.lagThreshold()).UnixNano()
	var wg sync.WaitGroup
	for _, p := range ps {
		if !lm.fullPoll[p].Load() && lm.lastPoll[p].Load() > stale {
			lm.mu.Lock()
			if l := lm.owned[p]; l != nil {
				l.depth, l.lag = 0, 0 // its owner keeps up
			}
			lm.mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			depth, lag, err := b.queueLoad(ctx, p)
			if err != nil {
				return
			}
			lm.mu.Lock()
			if l := lm.owned[p]; l != nil {
				l.depth, l.lag = depth, lag
			}
			lm.mu.Unlock()
		}()
	}
	wg.Wait()
}

// queueLoad measures control queue p: its approximate depth and the age of
// its oldest visible message (0 if none).
func (b *Backend) queueLoad(ctx context.Context, p int) (int64, time.Duration, error) {
	q := b.control[p]
	n, err := queueDepth(ctx, q)
	if err != nil || n == 0 {
		return 0, 0, err
	}
	one := int32(1)
	resp, err := q.PeekMessages(ctx, &azqueue.PeekMessagesOptions{NumberOfMessages: &one})
	if err != nil {
		return int64(n), 0, err
	}
	var lag time.Duration
	for _, m := range resp.Messages {
		lag = max(lag, messageAge(m.InsertionTime, m.MessageText))
	}
	return int64(n), lag, nil
}

func (lm *leaseManager) round(ctx context.Context) error {
	b := lm.b
	me := b.opts.WorkerID
	start := time.Now()
	expires := formatTime(start.Add(b.opts.LeaseDuration))
	until := start.Add(b.opts.LeaseDuration * 5 / 6)
	// Measuring runs beside the heartbeat and the listing, and may not
	// hold up the renewals for long.
	mctx, mcancel := context.WithTimeout(ctx, b.opts.LeaseDuration/6)
	measured := make(chan struct{})
	go func() { defer close(measured); lm.measure(mctx) }()
	defer func() { mcancel(); <-measured }()
	hb := newEntity(workerPK, escapeKey(me))
	hb["WorkerID"], hb["Expires"] = me, expires
	if _, err := b.leases.UpsertEntity(ctx, hb.marshal(), &aztables.UpsertEntityOptions{UpdateMode: aztables.UpdateModeReplace}); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	rows, err := lm.list(ctx)
	if err != nil {
		return err
	}
	<-measured
	now := time.Now()
	live := map[string]bool{me: true}
	leases := map[int]entity{}
	var dead []entity
	for _, e := range rows {
		switch e.str("PartitionKey") {
		case workerPK:
			switch exp := parseTime(e.str("Expires")); {
			case exp.After(now):
				id := e.str("WorkerID")
				if id == "" {
					id = e.str("RowKey")
				}
				live[id] = true
			case exp.Before(now.Add(-heartbeatRetention)) && len(dead) < 4:
				dead = append(dead, e)
			}
		case leasePK:
			if p, ok := leasePartition(e.str("RowKey")); ok && p < b.names.partitions {
				leases[p] = e
			}
		}
	}

	// Heartbeats of workers that died long ago (each process has a new
	// WorkerID by default) are removed, a few per round, unless renewed.
	for _, e := range dead {
		etag := e.etag()
		b.leases.DeleteEntity(ctx, workerPK, e.str("RowKey"), &aztables.DeleteEntityOptions{IfMatch: &etag})
	}

	lm.mu.Lock()
	defer lm.mu.Unlock()
	var errs []error
	// Renew what we hold, all at once; forget what someone else took.
	type renewal struct {
		p    int
		etag azcore.ETag
		err  error
	}
	renewed := make(chan renewal, len(lm.owned))
	pending := 0
	for p, l := range lm.owned {
		e, ok := leases[p]
		if !ok || e.str("Owner") != me {
			b.log.Warn("azurestorage: lost partition lease", "partition", p)
			lm.lose(p)
			continue
		}
		if l.draining != "" && !live[l.draining] {
			b.log.Info("azurestorage: hand-off target is gone; keeping partition", "partition", p, "target", l.draining)
			l.draining = ""
		}
		pending++
		row, etag := lm.ownerRow(p, l, expires), l.etag
		go func() {
			etag, err := lm.write(ctx, p, etag, row)
			renewed <- renewal{p, etag, err}
		}()
	}
	for ; pending > 0; pending-- {
		r := <-renewed
		l := lm.owned[r.p]
		switch {
		case r.err == nil:
			l.etag, l.until = r.etag, until
			lm.setActive(r.p, l)
		case transient(r.err):
			errs = append(errs, r.err) // try again next round; until still bounds polling
		default:
			b.log.Warn("azurestorage: lost partition lease", "partition", r.p, "err", r.err)
			lm.lose(r.p)
		}
	}

	// The holder and weight of every partition, as far as balancing goes:
	// a partition being handed off, or released for a named worker, counts
	// for that worker already.
	holder := map[int]string{}
	weight := map[int]float64{}
	for p := 0; p < b.names.partitions; p++ {
		if l, ok := lm.owned[p]; ok {
			holder[p], weight[p] = me, lm.weight(l.depth, l.lag)
			if l.draining != "" {
				holder[p] = l.draining
			}
			continue
		}
		e, ok := leases[p]
		if !ok {
			continue
		}
		weight[p] = lm.weight(e.int64("Depth"), time.Duration(e.int64("LagMs"))*time.Millisecond)
		owner, next := e.str("Owner"), e.str("Next")
		switch {
		case owner != "" && parseTime(e.str("Expires")).After(now):
			holder[p] = owner
			if d := e.str("Draining"); d != "" && live[d] {
				holder[p] = d
			}
		case owner == "" && next != "" && parseTime(e.str("NextUntil")).After(now) && live[next]:
			holder[p] = next
		}
	}

	// Claim free partitions up to a fair count, and those handed to us.
	share := (b.names.partitions + len(live) - 1) / len(live)
	held := 0
	for _, h := range holder {
		if h == me {
			held++
		}
	}
	for p := 0; p < b.names.partitions; p++ {
		if _, ok := lm.owned[p]; ok {
			continue
		}
		e, exists := leases[p]
		handed := exists && e.str("Owner") == "" && e.str("Next") == me && holder[p] == me
		// A row naming this worker as owner is left from an earlier run
		// with the same WorkerID; it is ours to take back at once.
		ours := exists && e.str("Owner") == me
		if !handed && !ours && (holder[p] != "" || held >= share) {
			continue
		}
		l := &lease{until: until}
		if exists {
			l.depth, l.lag = e.int64("Depth"), time.Duration(e.int64("LagMs"))*time.Millisecond
		}
		row := lm.ownerRow(p, l, expires)
		var etag azcore.ETag
		var err error
		if exists {
			etag, err = lm.write(ctx, p, e.etag(), row)
		} else {
			var resp aztables.AddEntityResponse
			if resp, err = b.leases.AddEntity(ctx, row.marshal(), nil); err == nil {
				etag = resp.ETag
			}
		}
		if err != nil {
			if transient(err) {
				errs = append(errs, err)
			}
			continue
		}
		l.etag = etag
		lm.owned[p] = l
		lm.setActive(p, l)
		if !handed && !ours {
			held++
		}
		holder[p] = me
		b.log.Debug("azurestorage: claimed partition", "partition", p, "from", e.str("Owner"), "handed", handed)
	}

	// Finish hand-offs whose partition has drained.
	draining := false
	for p, l := range lm.owned {
		if l.draining == "" {
			continue
		}
		if b.partitionBusy(p) {
			draining = true
			continue
		}
		if err := lm.handOff(ctx, p, l); err != nil {
			draining = true
			errs = append(errs, err)
		}
	}
	if !draining {
		lm.shed(ctx, expires, live, holder, weight)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d lease writes failed, e.g.: %w", len(errs), errs[0])
	}
	return nil
}

// shed starts handing partitions to lighter workers while this worker is
// the heaviest and a move narrows the gap (see the leaseManager comment).
// It runs with lm.mu held.
func (lm *leaseManager) shed(ctx context.Context, expires string, live map[string]bool, holder map[int]string, weight map[int]float64) {
	me := lm.b.opts.WorkerID
	load := map[string]float64{}
	for w := range live {
		load[w] = 0
	}
	for p, h := range holder {
		if live[h] {
			load[h] += weight[p]
		}
	}
	for {
		var heaviest, lightest string
		for w, x := range load {
			if heaviest == "" || x > load[heaviest] || x == load[heaviest] && w > heaviest {
				heaviest = w
			}
			if w != me && (lightest == "" || x < load[lightest] || x == load[lightest] && w < lightest) {
				lightest = w
			}
		}
		if heaviest != me || lightest == "" {
			return
		}
		gap := load[me] - load[lightest]
		pick := -1
		for p, l := range lm.owned {
			if l.draining != "" || weight[p]+1 > gap {
				continue
			}
			if pick < 0 || weight[p] > weight[pick] || weight[p] == weight[pick] && p > pick {
				pick = p
			}
		}
		if pick < 0 {
			return
		}
		if !lm.startHandOff(ctx, pick, lightest, expires) {
			return
		}
		load[me] -= weight[pick]
		load[lightest] += weight[pick]
	}
}

// startHandOff marks partition p as draining towards target, stops polling
// it and returns its buffered messages; the hand-off completes in handOff
// once no work item of p is in flight (possibly at once).
func (lm *leaseManager) startHandOff(ctx context.Context, p int, target, expires string) bool {
	b := lm.b
	l := lm.owned[p]
	prev := l.draining
	l.draining = target
	etag, err := lm.write(ctx, p, l.etag, lm.ownerRow(p, l, expires))
	if err != nil {
		l.draining = prev
		if !transient(err) {
			lm.lose(p)
		}
		return false
	}
	l.etag = etag
	lm.setActive(p, l)
	b.log.Info("azurestorage: shedding partition", "partition", p, "to", target, "depth", l.depth, "lag", l.lag)
	b.dropPending(p)
	if !b.partitionBusy(p) {
		if err := lm.handOff(ctx, p, l); err != nil {
			b.log.Debug("azurestorage: hand-off deferred", "partition", p, "err", err)
		}
	}
	return true
}

// handOff releases a drained partition for its target.
func (lm *leaseManager) handOff(ctx context.Context, p int, l *lease) error {
	b := lm.b
	b.dropPending(p) // anything a poll that raced the drain buffered
	now := time.Now()
	row := newEntity(leasePK, leaseRK(p))
	row["Owner"], row["Expires"] = "", formatTime(now)
	row["Next"], row["NextUntil"] = l.draining, formatTime(now.Add(b.opts.LeaseDuration))
	row.setInt64("Depth", l.depth)
	row.setInt64("LagMs", l.lag.Milliseconds())
	_, err := lm.write(ctx, p, l.etag, row)
	if err != nil && transient(err) {
		return err
	}
	delete(lm.owned, p)
	lm.active[p].Store(0)
	if err == nil {
		b.log.Info("azurestorage: handed partition off", "partition", p, "to", l.draining)
	}
	return nil
}

// lose forgets partition p and returns its buffered messages.
func (lm *leaseManager) lose(p int) {
	delete(lm.owned, p)
	lm.active[p].Store(0)
	lm.b.dropPending(p)
}

// ownerRow is lease row p as held by this worker.
func (lm *leaseManager) ownerRow(p int, l *lease, expires string) entity {
	row := newEntity(leasePK, leaseRK(p))
	row["Owner"], row["Expires"], row["Draining"] = lm.b.opts.WorkerID, expires, l.draining
	row.setInt64("Depth", l.depth)
	row.setInt64("LagMs", l.lag.Milliseconds())
	return row
}

// write replaces lease row p if its ETag is still etag.
func (lm *leaseManager) write(ctx context.Context, p int, etag azcore.ETag, row entity) (azcore.ETag, error) {
	resp, err := lm.b.leases.UpdateEntity(ctx, row.marshal(), &aztables.UpdateEntityOptions{IfMatch: &etag, UpdateMode: aztables.UpdateModeReplace})
	if err != nil {
		return "", err
	}
	return resp.ETag, nil
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

// owners returns the partitions this worker holds, in order, draining ones
// included (for tests and diagnostics).
func (lm *leaseManager) owners() []int {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	out := make([]int, 0, len(lm.owned))
	for p := range lm.owned {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// releaseAll gives up every lease and the heartbeat (at Close).
func (lm *leaseManager) releaseAll(ctx context.Context) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	now := formatTime(time.Now())
	for p, l := range lm.owned {
		row := newEntity(leasePK, leaseRK(p))
		row["Owner"], row["Expires"] = "", now
		lm.write(ctx, p, l.etag, row)
		delete(lm.owned, p)
		lm.active[p].Store(0)
	}
	select {
	case <-lm.ready:
		lm.b.leases.DeleteEntity(ctx, workerPK, escapeKey(lm.b.opts.WorkerID), nil)
	default:
	}
}
