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
// The hand-off completes as soon as the partition's last work item ends
// (watchDrain), not at the next round, and the target runs its next round
// early (soonRound) while a hand-off to it is pending: a partition is
// without a poller for about one request time plus soonRound, instead of
// up to two rounds (20 s at the default LeaseDuration).
// A worker that dies keeps nothing: its leases expire after LeaseDuration
// and the others claim them. A commit by a worker that lost a partition
// mid-episode is still rejected by the instance sentinel's ETag.
//
// The lease invariant, and what the clock is (and is not) trusted with.
//
// The lease decides who polls a control queue, nothing more. Every write of
// an instance's history and status is one entity-group transaction
// conditional on the instance sentinel's ETag as read when the work item
// was loaded (fencing): if anyone committed that instance since, the commit
// fails with ErrWorkItemLockLost and nothing of it is visible. No clock is
// read in that decision, so two workers that both believe they own a
// partition (a skewed clock, a process paused past its lease, a renewal
// whose answer came back after the lease had run out) can at worst both run
// an episode of an instance: one commit wins, the other is rejected, and its
// outbound messages, sent only after a successful commit, are never sent
// (and would be dropped by id if they were). The clock only bounds how
// often that wasted work can happen.
//
// To keep it rare, a lease row's Expires is the time the request that wrote
// it was sent plus LeaseDuration, and the writer polls the partition only
// until that send time plus LeaseDuration-pollGuard (see untilFor): a
// renewal is measured from when it was sent, never from when its answer
// arrived, so a round that runs late (a slow heartbeat or listing, a
// storage stall, a CPU-starved process) shortens polling instead of
// stretching it past the lease. pollGuard is LeaseDuration/6 (5 s at the
// default 15 s, 0.5 s at 3 s) and covers
//
//   - clock skew between workers: we assume any two workers' clocks differ
//     by less than maxClockSkew = LeaseDuration/12 (1.25 s at the default 15 s;
//     NTP keeps hosts within milliseconds, and test workers share one
//     clock), since another worker compares Expires with its own clock;
//   - one dequeue still in flight when polling stops (the other
//     LeaseDuration/12): a batch dequeued after that is returned to the
//     queue by the poller, which checks isActive again after the dequeue.
//
// A skew larger than that lets two workers poll one partition for a while;
// fencing keeps the histories right all the same.
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
	// watching[p] is set while a watchDrain goroutine runs for p.
	watching [16]atomic.Bool
	// stats counts claims and losses for metrics (observe.go).
	stats leaseCounters
	// kick asks for a round now (kickRound): another worker released
	// partitions, joined the hub, or handed this one a partition.
	kick chan struct{}
}

// lease is this worker's view of a lease it holds.
type lease struct {
	etag     azcore.ETag
	until    time.Time // when this worker stops polling it without renewal (untilFor)
	draining string    // worker it is being handed to; "" if none
	depth    int64
	lag      time.Duration
	// received is when this worker claimed it by hand-off (zero
	// otherwise): see shed.
	received time.Time
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
	// drainCheck is how often a draining partition is checked for work in
	// flight (in memory, no requests).
	drainCheck = 50 * time.Millisecond
)

// maxClockSkew is the largest difference between two workers' clocks the
// lease timing allows for (see the lease invariant above).
func maxClockSkew(leaseDuration time.Duration) time.Duration { return leaseDuration / 12 }

// pollGuard is how long before its row's Expires a worker stops polling a
// partition: the clock skew, plus one dequeue in flight.
func pollGuard(leaseDuration time.Duration) time.Duration {
	return maxClockSkew(leaseDuration) + leaseDuration/12
}

// untilFor is how long a lease row written by a request sent at sent lets
// this worker poll: up to pollGuard before the Expires that request wrote
// (sent + LeaseDuration), whenever its answer arrives.
func (lm *leaseManager) untilFor(sent time.Time) time.Time {
	d := lm.b.opts.LeaseDuration
	return sent.Add(d - pollGuard(d))
}

// soonRound is how soon the next round runs when a hand-off to this worker
// is pending, instead of LeaseDuration/3: 1.25 s at the default 15 s.
func (lm *leaseManager) soonRound() time.Duration {
	return max(lm.b.opts.LeaseDuration/12, 250*time.Millisecond)
}

func newLeaseManager(b *Backend) *leaseManager {
	return &leaseManager{b: b, owned: map[int]*lease{}, ready: make(chan struct{}), kick: make(chan struct{}, 1)}
}

// kickSpacing is the least time between the start of a round and a round
// run early by kickRound: 500 ms at the default LeaseDuration, so that
// however many wake-ups arrive (a forged one included) a worker runs at
// most two rounds a second.
func (lm *leaseManager) kickSpacing() time.Duration {
	return max(lm.b.opts.LeaseDuration/30, 100*time.Millisecond)
}

// kickRound asks the renewal loop for a round now, or kickSpacing after
// the last one began, instead of at its schedule: another worker released
// partitions (it is shutting down), joined the hub (the heaviest worker
// sheds to it), or released a partition for this worker by name. It never
// blocks; kicks that arrive while one is pending are one kick.
func (lm *leaseManager) kickRound() {
	select {
	case lm.kick <- struct{}{}:
	default:
	}
}

func leaseRK(p int) string { return fmt.Sprintf("control-%02d", p) }

func leasePartition(rk string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(rk, "control-"))
	return n, err == nil && strings.HasPrefix(rk, "control-")
}

// lagThreshold is the lag over which a control queue counts as loaded: an
// idle consumer may take up to MaxPollInterval to see a message.
func (lm *leaseManager) lagThreshold() time.Duration {
	return max(2*time.Second, 2*lm.b.poll.idleCap())
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
		// A worker listens for wake-ups; its idle queues are then polled
		// every IdlePollInterval instead of MaxPollInterval.
		if lm.b.wakeups.listen(); lm.b.wakeups.listening() {
			lm.b.poll.setIdle(lm.b.opts.IdlePollInterval)
		}
		b := lm.b
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			every := b.opts.LeaseDuration / 3
			failures := 0
			joined := true
			for {
				began := time.Now()
				ctx, cancel := context.WithTimeout(b.bg, b.opts.LeaseDuration/2)
				soon, err := lm.round(ctx)
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
				if joined && err == nil {
					// A worker that joins tells the others once its
					// heartbeat is written, so that the heaviest sheds
					// partitions to it now rather than at its next round.
					joined = false
					b.wakeups.tellPeers()
				}
				next := every
				if soon {
					next = lm.soonRound()
				}
				t := time.NewTimer(max(next-time.Since(began), 0))
				select {
				case <-b.bg.Done():
					t.Stop()
					return
				case <-t.C:
				case <-lm.kick:
					t.Stop()
					if wait := lm.kickSpacing() - time.Since(began); wait > 0 {
						spacing := time.NewTimer(wait)
						select {
						case <-b.bg.Done():
							spacing.Stop()
							return
						case <-spacing.C:
						}
					}
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
			depth, lag, err := queueLoadOf(ctx, b.control[p])
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

// round runs one lease round (see the leaseManager comment). soon asks for
// the next round early: a hand-off to this worker is pending.
func (lm *leaseManager) round(ctx context.Context) (soon bool, err error) {
	b := lm.b
	me := b.opts.WorkerID
	start := time.Now()
	// Measuring runs beside the heartbeat and the listing, and may not
	// hold up the renewals for long.
	mctx, mcancel := context.WithTimeout(ctx, b.opts.LeaseDuration/6)
	measured := make(chan struct{})
	go func() { defer close(measured); lm.measure(mctx) }()
	defer func() { mcancel(); <-measured }()
	hb := newEntity(workerPK, escapeKey(me))
	hb["WorkerID"], hb["Expires"] = me, formatTime(start.Add(b.opts.LeaseDuration))
	if addr := b.wakeups.address(); addr != "" {
		hb["Wake"] = addr
	}
	// Where an operator finds this worker (HubInfo.Workers).
	hb["Host"] = hostName()
	if b.opts.HTTPAddr != "" {
		hb["HTTP"] = b.opts.HTTPAddr
	}
	// How long the work it buffered has waited for a free slot, for the
	// scale signal (scale.go).
	b.publishWaits(hb, start)
	if _, err := b.leases.UpsertEntity(ctx, hb.marshal(), &aztables.UpsertEntityOptions{UpdateMode: aztables.UpdateModeReplace}); err != nil {
		return false, fmt.Errorf("heartbeat: %w", err)
	}
	rows, err := lm.list(ctx)
	if err != nil {
		return false, err
	}
	b.wakeups.setView(viewOf(rows, b.names.partitions, time.Now()))
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
				id := heartbeatID(e)
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
		sent time.Time
		err  error
	}
	renewed := make(chan renewal, len(lm.owned))
	pending := 0
	var batch []renewing
	for p, l := range lm.owned {
		e, ok := leases[p]
		if !ok || e.str("Owner") != me {
			b.log.Warn("azurestorage: lost partition lease", "partition", p, "owner", e.str("Owner"))
			lm.lose(p)
			continue
		}
		if l.draining != "" && !live[l.draining] {
			b.log.Info("azurestorage: hand-off target is gone; keeping partition", "partition", p, "target", l.draining)
			l.draining = ""
		}
		// The row names this worker, so only this worker wrote it: an
		// ETag other than ours is a write of ours whose answer was lost
		// (a renewal that timed out on the client but went through, e.g.
		// during a storage stall). Renew from the row as listed; If-Match
		// still catches anyone who wrote it since the listing.
		etag := l.etag
		if et := e.etag(); et != "" && et != etag {
			etag = et
		}
		batch = append(batch, renewing{p: p, etag: etag, l: *l})
	}
	// All at once: one entity-group transaction when it can (the lease
	// rows share a partition), else one request per row, concurrently.
	for _, r := range lm.renewAll(ctx, batch) {
		pending++
		renewed <- renewal{r.p, r.etag, r.sent, r.err}
	}
	for ; pending > 0; pending-- {
		r := <-renewed
		l := lm.owned[r.p]
		switch {
		case r.err == nil:
			l.etag, l.until = r.etag, lm.untilFor(r.sent)
			if late := time.Since(r.sent); late > b.opts.LeaseDuration/3 {
				b.log.Warn("azurestorage: lease renewal answered late", "partition", r.p, "after", late, "pollable for", time.Until(l.until))
			}
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
		// The claim keeps the load the previous owner published, so the
		// partition weighs the same for everyone until this worker has
		// measured it itself.
		l := &lease{}
		if exists {
			l.depth, l.lag = e.int64("Depth"), time.Duration(e.int64("LagMs"))*time.Millisecond
		}
		var etag azcore.ETag
		var sent time.Time
		var err error
		if exists {
			etag, sent, err = lm.writeOwner(ctx, p, e.etag(), l)
		} else {
			sent = time.Now()
			row := lm.ownerRow(p, l, formatTime(sent.Add(b.opts.LeaseDuration)))
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
		l.etag, l.until = etag, lm.untilFor(sent)
		if handed {
			l.received = sent
		}
		lm.owned[p] = l
		lm.setActive(p, l)
		lm.stats.claimed(exists && e.str("Owner") != "" && e.str("Owner") != me)
		if !handed && !ours {
			held++
		}
		holder[p] = me
		b.log.Debug("azurestorage: claimed partition", "partition", p, "from", e.str("Owner"), "handed", handed)
	}

	// A hand-off to this worker that it could not claim yet (still
	// draining, or its claim failed): look again soon rather than in
	// LeaseDuration/3, so the partition is not left without a poller.
	for p, e := range leases {
		if _, ok := lm.owned[p]; ok {
			continue
		}
		toMe := e.str("Owner") != "" && e.str("Draining") == me && parseTime(e.str("Expires")).After(now) ||
			e.str("Owner") == "" && e.str("Next") == me && parseTime(e.str("NextUntil")).After(now)
		if toMe {
			soon = true
		}
	}

	// Finish hand-offs whose partition has drained; watchDrain finishes
	// the others as soon as their last work item ends.
	draining := false
	for p, l := range lm.owned {
		if l.draining == "" {
			continue
		}
		if b.partitionBusy(p) {
			draining = true
			lm.watchDrain(p, l.draining)
			continue
		}
		if err := lm.handOff(ctx, p, l); err != nil {
			draining = true
			errs = append(errs, err)
		}
	}
	if !draining {
		lm.shed(ctx, live, holder, weight)
	}
	if len(errs) > 0 {
		return soon, fmt.Errorf("%d lease writes failed, e.g.: %w", len(errs), errs[0])
	}
	return soon, nil
}

// shed starts handing partitions to lighter workers while this worker is
// the heaviest and a move narrows the gap (see the leaseManager comment).
// It runs with lm.mu held.
//
// A loaded partition (weight over 1) that this worker received by hand-off
// less than a LeaseDuration ago is not shed: the weights that justified the
// move were measured by the previous owner before it, and the previous
// owner's own weight drops as soon as it has one hot partition fewer to
// serve, so without this pause a hot partition could be sent straight back
// and forth, each trip leaving it unpolled for a drain and a claim. Idle
// partitions (weight 1, balancing by count) move at once.
func (lm *leaseManager) shed(ctx context.Context, live map[string]bool, holder map[int]string, weight map[int]float64) {
	me := lm.b.opts.WorkerID
	settled := time.Now().Add(-lm.b.opts.LeaseDuration)
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
			if weight[p] > 1 && l.received.After(settled) {
				continue
			}
			if pick < 0 || weight[p] > weight[pick] || weight[p] == weight[pick] && p > pick {
				pick = p
			}
		}
		if pick < 0 {
			return
		}
		if !lm.startHandOff(ctx, pick, lightest) {
			return
		}
		load[me] -= weight[pick]
		load[lightest] += weight[pick]
	}
}

// startHandOff marks partition p as draining towards target, stops polling
// it and returns its buffered messages; the hand-off completes in handOff
// once no work item of p is in flight (possibly at once).
func (lm *leaseManager) startHandOff(ctx context.Context, p int, target string) bool {
	b := lm.b
	l := lm.owned[p]
	prev := l.draining
	l.draining = target
	etag, sent, err := lm.writeOwner(ctx, p, l.etag, l)
	if err != nil {
		l.draining = prev
		if !transient(err) {
			lm.lose(p)
		}
		return false
	}
	l.etag, l.until = etag, lm.untilFor(sent)
	lm.setActive(p, l)
	b.log.Info("azurestorage: shedding partition", "partition", p, "to", target, "depth", l.depth, "lag", l.lag)
	b.dropPending(p)
	if b.partitionBusy(p) {
		lm.watchDrain(p, target)
		return true
	}
	if err := lm.handOff(ctx, p, l); err != nil {
		b.log.Debug("azurestorage: hand-off deferred", "partition", p, "err", err)
	}
	return true
}

// watchDrain finishes the hand-off of partition p to target as soon as no
// work item of p is in flight, instead of at the next round (up to
// LeaseDuration/3 later). It checks in memory every drainCheck, and looks
// at the lease (under lm.mu, which a round holds while it writes) only when
// the partition has drained or its poll limit has passed; it gives up when
// the hand-off is no longer pending (done, cancelled, lease lost), leaving
// the rest to the rounds. At most one watcher runs per partition. It is
// called with lm.mu held.
func (lm *leaseManager) watchDrain(p int, target string) {
	if !lm.watching[p].CompareAndSwap(false, true) {
		return
	}
	b := lm.b
	// pending reports whether the hand-off still waits, and until when
	// this worker may hold on to the lease without another round.
	pending := func() (*lease, time.Time, bool) {
		l := lm.owned[p]
		if l == nil || l.draining != target || !time.Now().Before(l.until) {
			return nil, time.Time{}, false
		}
		return l, l.until, true
	}
	_, until, ok := pending()
	if !ok {
		lm.watching[p].Store(false)
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer lm.watching[p].Store(false)
		t := time.NewTicker(drainCheck)
		defer t.Stop()
		for {
			select {
			case <-b.bg.Done():
				return
			case <-t.C:
			}
			busy := b.partitionBusy(p)
			if busy && time.Now().Before(until) {
				continue
			}
			lm.mu.Lock()
			l, u, ok := pending()
			if ok && !busy && !b.partitionBusy(p) {
				ctx, cancel := context.WithTimeout(b.bg, b.opts.LeaseDuration/3)
				if err := lm.handOff(ctx, p, l); err != nil {
					b.log.Debug("azurestorage: hand-off deferred to the next round", "partition", p, "err", err)
				}
				cancel()
				ok = false
			}
			lm.mu.Unlock()
			if !ok {
				return
			}
			until = u // renewed by a round meanwhile: keep waiting
		}
	}()
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
		b.wakeups.tellPeers(l.draining) // it claims now, not at its next round
	}
	return nil
}

// lose forgets partition p and returns its buffered messages.
func (lm *leaseManager) lose(p int) {
	lm.stats.lost.Add(1)
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

// renewing is one lease row to renew: its ETag and this worker's state of it.
type renewing struct {
	p    int
	etag azcore.ETag
	l    lease
}

// renewed is the outcome of one renewal.
type renewedRow struct {
	p    int
	etag azcore.ETag
	sent time.Time
	err  error
}

// renewAll renews the given lease rows. Two or more go in one entity-group
// transaction, each row If-Match its ETag: one request a round instead of
// one a partition. The transaction is all or nothing, so when it fails on
// one row (another worker took it) nothing was written, and the rows are
// renewed one by one to find out which; the same when the answer cannot be
// read (no ETags): the rows were written, the next round's listing gives
// their ETags, and each row as listed names this worker (see round).
func (lm *leaseManager) renewAll(ctx context.Context, rows []renewing) []renewedRow {
	out := make([]renewedRow, 0, len(rows))
	if len(rows) >= 2 {
		sent := time.Now()
		expires := formatTime(sent.Add(lm.b.opts.LeaseDuration))
		actions := make([]aztables.TransactionAction, len(rows))
		for i, r := range rows {
			etag := r.etag
			actions[i] = aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace,
				Entity: lm.ownerRow(r.p, &r.l, expires).marshal(), IfMatch: &etag}
		}
		capture := &bodyCapture{}
		_, err := lm.b.leases.SubmitTransaction(withCapture(ctx, capture), actions, nil)
		if err == nil {
			etags := operationETags(capture.get())
			for i, r := range rows {
				etag := r.etag
				if len(etags) == len(rows) && etags[i] != "" {
					etag = etags[i]
				}
				out = append(out, renewedRow{r.p, etag, sent, nil})
			}
			return out
		}
		if transient(err) {
			for _, r := range rows {
				out = append(out, renewedRow{r.p, r.etag, sent, err})
			}
			return out
		}
		// A row's If-Match failed: find which, one by one.
	}
	results := make(chan renewedRow, len(rows))
	for _, r := range rows {
		go func() {
			etag, sent, err := lm.writeOwner(ctx, r.p, r.etag, &r.l)
			results <- renewedRow{r.p, etag, sent, err}
		}()
	}
	for range rows {
		out = append(out, <-results)
	}
	return out
}

// writeOwner writes lease row p as held by this worker with l's state,
// If-Match etag. Its Expires is measured from the moment the request is
// sent, which writeOwner returns with the new ETag (see untilFor).
func (lm *leaseManager) writeOwner(ctx context.Context, p int, etag azcore.ETag, l *lease) (azcore.ETag, time.Time, error) {
	sent := time.Now()
	row := lm.ownerRow(p, l, formatTime(sent.Add(lm.b.opts.LeaseDuration)))
	newTag, err := lm.write(ctx, p, etag, row)
	return newTag, sent, err
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

// releaseAll gives up every lease (all at once) and the heartbeat (at
// Close), then tells the other workers, which claim the partitions at once
// (see tellPeers) instead of at their next round.
//
// Order: Close has already handed back the buffered messages and flushed
// the instance cache (whose outbox rows the next owner would otherwise
// send again) before it calls this; the leases are written free before the
// peers are told, or a woken peer would find them held and wait a round;
// the heartbeat goes before them too, so that their round does not count
// this worker among those sharing the partitions. A crash anywhere here is
// a dead worker: its leases and heartbeat expire, and the partitions are
// taken over then (TestKillOneWorker and the takeover tests), with every
// message it held coming back when its lock runs out.
func (lm *leaseManager) releaseAll(ctx context.Context) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	now := formatTime(time.Now())
	var wg sync.WaitGroup
	for p, l := range lm.owned {
		row := newEntity(leasePK, leaseRK(p))
		row["Owner"], row["Expires"] = "", now
		wg.Add(1)
		go func() {
			defer wg.Done()
			lm.write(ctx, p, l.etag, row)
		}()
		delete(lm.owned, p)
		lm.active[p].Store(0)
	}
	wg.Wait()
	select {
	case <-lm.ready:
		lm.b.leases.DeleteEntity(ctx, workerPK, escapeKey(lm.b.opts.WorkerID), nil)
		lm.b.wakeups.tellPeers()
	default:
	}
}

// LeaseRow is a partition's lease row as stored in <Hub>Partitions, for
// diagnostics (see docs/storage-layout.md).
type LeaseRow struct {
	Partition int
	Owner     string    // "" when released
	Expires   time.Time // by the owner's clock
	Draining  string    // worker it is being handed to
	Next      string    // worker it was released for, until NextUntil
	NextUntil time.Time
	Depth     int64 // load published by the owner
	LagMs     int64
}

// WorkerHeartbeat is a worker's heartbeat row.
type WorkerHeartbeat struct {
	WorkerID string
	Expires  time.Time
	Host     string // its host name
	HTTP     string // its HTTP listen address; "" if it published none
}

// Leases reads the hub's lease rows (in partition order) and worker
// heartbeats in one query, for diagnostics: unlike HubInfo it shows expired
// and released rows, hand-offs and the published load.
func (b *Backend) Leases(ctx context.Context) ([]LeaseRow, []WorkerHeartbeat, error) {
	rows, err := b.lm.list(ctx)
	if err != nil {
		return nil, nil, err
	}
	var leases []LeaseRow
	var hbs []WorkerHeartbeat
	for _, e := range rows {
		switch e.str("PartitionKey") {
		case leasePK:
			p, ok := leasePartition(e.str("RowKey"))
			if !ok {
				continue
			}
			leases = append(leases, LeaseRow{
				Partition: p, Owner: e.str("Owner"), Expires: parseTime(e.str("Expires")),
				Draining: e.str("Draining"), Next: e.str("Next"), NextUntil: parseTime(e.str("NextUntil")),
				Depth: e.int64("Depth"), LagMs: e.int64("LagMs"),
			})
		case workerPK:
			hbs = append(hbs, WorkerHeartbeat{WorkerID: heartbeatID(e), Expires: parseTime(e.str("Expires")), Host: e.str("Host"), HTTP: e.str("HTTP")})
		}
	}
	sort.Slice(leases, func(i, j int) bool { return leases[i].Partition < leases[j].Partition })
	sort.Slice(hbs, func(i, j int) bool { return hbs[i].WorkerID < hbs[j].WorkerID })
	return leases, hbs, nil
}

// FormatLeases renders lease rows and heartbeats one per line, times
// relative to now ("expires +2.1s", "expired -40.3s").
func FormatLeases(leases []LeaseRow, hbs []WorkerHeartbeat, now time.Time) string {
	rel := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return fmt.Sprintf("%+.1fs", t.Sub(now).Seconds())
	}
	var sb strings.Builder
	for _, l := range leases {
		owner := l.Owner
		if owner == "" {
			owner = "(released)"
		}
		fmt.Fprintf(&sb, "  control-%02d owner=%s expires=%s", l.Partition, owner, rel(l.Expires))
		if l.Draining != "" {
			fmt.Fprintf(&sb, " draining-to=%s", l.Draining)
		}
		if l.Next != "" {
			fmt.Fprintf(&sb, " next=%s next-until=%s", l.Next, rel(l.NextUntil))
		}
		fmt.Fprintf(&sb, " depth=%d lag=%dms\n", l.Depth, l.LagMs)
	}
	for _, h := range hbs {
		fmt.Fprintf(&sb, "  worker %s heartbeat expires=%s", h.WorkerID, rel(h.Expires))
		if h.HTTP != "" {
			fmt.Fprintf(&sb, " http=%s", h.HTTP)
		}
		sb.WriteString("\n")
	}
	return sb.String()
}

// localView describes the leases this worker believes it holds and until
// when it may poll each, for test failure messages: a worker whose view
// disagrees with the rows has not run a round since the change.
func (lm *leaseManager) localView() string {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	now := time.Now()
	ps := make([]int, 0, len(lm.owned))
	for p := range lm.owned {
		ps = append(ps, p)
	}
	sort.Ints(ps)
	var parts []string
	for _, p := range ps {
		l := lm.owned[p]
		s := fmt.Sprintf("%d(until %+.1fs", p, l.until.Sub(now).Seconds())
		if !lm.isActive(p) {
			s += ", not polled"
		}
		if l.draining != "" {
			s += ", draining to " + l.draining
		}
		parts = append(parts, s+")")
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// heartbeatID is the worker id of heartbeat row e (older rows name it only
// in their RowKey).
func heartbeatID(e entity) string {
	if id := e.str("WorkerID"); id != "" {
		return id
	}
	return e.str("RowKey")
}

// liveHeartbeat reports whether e is a worker's heartbeat that has not
// expired at now.
func liveHeartbeat(e entity, now time.Time) bool {
	return e.str("PartitionKey") == workerPK && parseTime(e.str("Expires")).After(now)
}
