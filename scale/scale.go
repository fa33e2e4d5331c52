// Package scale computes a task hub's scale signal: how many workers it
// needs now and why, from samples of its queues taken at most once per
// Options.Interval, however often the signal is read. GET /api/hub/scale
// serves it and the worker's /metrics exports the same figures; the rule is
// written down in docs/deploy.md ("Scaling rule").
//
// The input is what DurableTask.AzureStorage's performance monitor, which
// drives Durable Functions' scale controller, reads: for every control
// queue and the work-item queue, the approximate message count and the age
// of the message at the front (a peek). Like it, the signal scales out on
// sustained high latency (control queues up to one worker per partition,
// the work-item queue by its backlog), scales in one worker at a time while
// every queue stays fast, and goes to zero when the hub is idle. Unlike it,
// it answers with a worker count rather than a vote, counts invisible
// messages (pending timers, work in flight) as work, and keeps a worker
// while a drone is on a mission (the watchdog runs in the workers).
package scale

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/taskhub"
)

// Defaults of Options.
const (
	DefaultInterval            = 5 * time.Second
	DefaultIdleAfter           = 5 * time.Minute
	DefaultHighLatency         = time.Second
	DefaultLowLatency          = 200 * time.Millisecond
	DefaultCalm                = 30 * time.Second
	DefaultActivitiesPerWorker = 32
)

// sampleTimeout bounds one sample of storage.
const sampleTimeout = 10 * time.Second

// Options configures a Monitor. Backend is required.
type Options struct {
	// Backend is the task hub. A taskhub.ScaleSampler (Azure Storage) is
	// sampled; any other backend is served by a single process (SQLite):
	// its signal is 1, or 0 when idle, from its HubInfo queue depths.
	Backend taskhub.Backend
	// Fleet, when set, keeps a worker while a drone is bound to a mission
	// (its watchdog runs in the workers), whatever the queues say.
	Fleet fleet.Store
	// Interval is the least time between two samples of storage; the
	// signal is read from the last sample in between. Default 5 s.
	Interval time.Duration
	// IdleAfter is how long the hub must be idle (nothing queued, no drone
	// on a mission) before the signal says 0. Default 5 minutes.
	IdleAfter time.Duration
	// HighLatency is the age of a queue's oldest visible message, in two
	// samples in a row, over which the queue needs more workers. Default
	// 1 s (DurableTask's threshold at its default polling interval).
	HighLatency time.Duration
	// LowLatency is the age under which a queue counts as fast. Default
	// 200 ms (DurableTask's).
	LowLatency time.Duration
	// Calm is how long every queue must stay under LowLatency, with the
	// worker count unchanged, before one worker is removed. Default 30 s.
	Calm time.Duration
	// ActivitiesPerWorker is the work-item backlog one worker takes on at
	// once: beyond the partition count, workers are only worth adding
	// while the work-item queue holds more than this many messages per
	// worker. Default 32 (the worker's default activity concurrency).
	ActivitiesPerWorker int
	// Logger receives a line whenever the recommendation changes; default
	// slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	o.Interval = max(o.Interval, 100*time.Millisecond)
	if o.IdleAfter <= 0 {
		o.IdleAfter = DefaultIdleAfter
	}
	if o.HighLatency <= 0 {
		o.HighLatency = DefaultHighLatency
	}
	if o.LowLatency <= 0 {
		o.LowLatency = DefaultLowLatency
	}
	if o.Calm <= 0 {
		o.Calm = DefaultCalm
	}
	if o.ActivitiesPerWorker <= 0 {
		o.ActivitiesPerWorker = DefaultActivitiesPerWorker
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Status is the scale signal: the body of GET /api/hub/scale
// (taskhub.ScaleStatus, whose JSON names are a contract).
type Status = taskhub.ScaleStatus

// Rule names the rule behind a recommendation.
type Rule string

// The rules, in the order they are tried (docs/deploy.md).
const (
	RuleIdle          Rule = "idle"            // idle for IdleAfter, or idle with no worker: 0
	RuleIdleWait      Rule = "idle_wait"       // idle for less than IdleAfter: 1
	RuleFirstWorker   Rule = "first_worker"    // work and no worker: 1
	RuleSingleProcess Rule = "single_process"  // SQLite: 1
	RuleUnsampled     Rule = "unsampled"       // a backend that cannot be sampled: 1
	RuleWorkItemLag   Rule = "work_item_lag"   // work items wait: one more worker, up to their backlog
	RuleControlLag    Rule = "control_lag"     // control queues wait: a worker for each
	RuleOverCapacity  Rule = "over_capacity"   // more workers than partitions and backlog can use
	RuleWorkItemsIdle Rule = "work_items_idle" // no activity: a worker per active control queue
	RuleCalm          Rule = "calm"            // every queue fast for Calm: one worker fewer
	RuleSteady        Rule = "steady"          // none of the above: keep the count
	RuleNotEnoughYet  Rule = "not_enough_yet"  // fewer than two samples since the count changed

	ruleNone Rule = "" // no rule decided yet
)

// Rules lists every rule, in the order they are tried.
func Rules() []Rule {
	return []Rule{RuleUnsampled, RuleIdle, RuleIdleWait, RuleSingleProcess, RuleFirstWorker, RuleNotEnoughYet,
		RuleWorkItemLag, RuleControlLag, RuleOverCapacity, RuleWorkItemsIdle, RuleCalm, RuleSteady}
}

// Source serves the scale signal: a *Monitor.
type Source interface {
	Status(ctx context.Context) (Status, error)
}

// Monitor samples a task hub and computes its scale signal. Its methods are
// safe for concurrent use.
type Monitor struct {
	opts    Options
	sampler taskhub.ScaleSampler // nil: a single process (or unsampled)
	single  bool                 // a taskhub.Inspector served by one process
	ctx     context.Context      // ends at Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu         sync.Mutex
	history    []sample  // oldest first, since the worker count last changed
	idleSince  time.Time // first sample of the current idle run; zero when not idle
	cur        *Status   // nil before the first sample
	tried      time.Time // when the last sample was started
	lastErr    error
	failures   int           // samples failed in a row
	refreshing chan struct{} // closed when the sample in progress ends
}

// sample is one look at the hub.
type sample struct {
	at time.Time
	s  taskhub.ScaleSample
	// idle: nothing queued anywhere and no drone bound to a mission (the
	// fleet is only read when the queues are empty).
	idle bool
}

// New returns a Monitor; it reads storage only when asked (Status).
func New(opts Options) *Monitor {
	opts = opts.withDefaults()
	m := &Monitor{opts: opts}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if s, ok := opts.Backend.(taskhub.ScaleSampler); ok {
		m.sampler = s
	} else if _, ok := opts.Backend.(taskhub.Inspector); ok {
		m.single = true
	}
	return m
}

// Close stops a sample in progress and waits for it; Status then serves
// the last signal without sampling again.
func (m *Monitor) Close() {
	m.mu.Lock() // Status starts samples under it
	m.cancel()
	m.mu.Unlock()
	m.wg.Wait()
}

// Options returns the options in effect (defaults applied).
func (m *Monitor) Options() Options { return m.opts }

// Status returns the scale signal. It samples storage when the last sample
// was started more than Interval ago (one sample at a time, shared by every
// caller), waiting for it until ctx ends; it then returns the last signal
// computed, however old (Status.SampledAt says), or an error when no
// sample has succeeded yet.
func (m *Monitor) Status(ctx context.Context) (Status, error) {
	m.mu.Lock()
	if m.refreshing == nil && m.ctx.Err() == nil && (m.tried.IsZero() || time.Since(m.tried) >= m.opts.Interval) {
		done := make(chan struct{})
		m.refreshing, m.tried = done, time.Now()
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.refresh(done) }()
	}
	done := m.refreshing
	m.mu.Unlock()
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
		case <-m.ctx.Done():
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil {
		err := m.lastErr
		if err == nil {
			err = ctx.Err()
		}
		if err == nil {
			err = errors.New("scale: no sample yet")
		}
		return Status{}, err
	}
	st := *m.cur
	if age := time.Since(st.SampledAt); m.lastErr != nil && age > 2*m.opts.Interval {
		st.Reason += fmt.Sprintf(" (from a sample %s old: sampling storage fails)", age.Round(time.Second))
	}
	return st, nil
}

// refresh takes one sample and recomputes the signal.
func (m *Monitor) refresh(done chan struct{}) {
	defer func() {
		m.mu.Lock()
		m.refreshing = nil
		m.mu.Unlock()
		close(done)
	}()
	ctx, cancel := context.WithTimeout(m.ctx, sampleTimeout)
	defer cancel()
	smp, err := m.take(ctx)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.lastErr = err
		if m.failures++; m.failures == 1 || m.failures%10 == 0 {
			m.opts.Logger.Warn("scale: sampling the task hub failed; the signal keeps its last value", "err", err, "failures", m.failures)
		}
		return
	}
	m.lastErr, m.failures = nil, 0
	prev := m.cur
	st := m.add(smp)
	m.cur = &st
	if prev == nil || prev.RecommendedWorkers != st.RecommendedWorkers || prev.Rule != st.Rule {
		m.opts.Logger.Info("scale: recommendation", "workers", st.RecommendedWorkers, "current", st.CurrentWorkers,
			"rule", st.Rule, "reason", st.Reason)
	}
}

// take reads one sample of storage.
func (m *Monitor) take(ctx context.Context) (sample, error) {
	smp := sample{at: time.Now()}
	switch {
	case m.sampler != nil:
		s, err := m.sampler.ScaleSample(ctx)
		if err != nil {
			return sample{}, err
		}
		smp.s = s
	case m.single:
		info, err := m.opts.Backend.(taskhub.Inspector).HubInfo(ctx)
		if err != nil {
			return sample{}, fmt.Errorf("scale: hub info: %w", err)
		}
		var events, tasks int64
		for q, n := range info.QueueDepths {
			if q == "NewTasks" {
				tasks += int64(n)
			} else {
				events += int64(n)
			}
		}
		smp.s = taskhub.ScaleSample{Control: []taskhub.QueueLoad{{Messages: events}}, WorkItems: taskhub.QueueLoad{Messages: tasks}, Workers: 1}
	default:
		smp.s = taskhub.ScaleSample{Workers: 1}
		return smp, nil
	}
	if queued(smp.s) > 0 {
		return smp, nil
	}
	smp.idle = true
	if m.opts.Fleet != nil {
		// Any drone dispatched (its Quiet is set) or reserved: one index
		// row is enough to know.
		ws, err := m.opts.Fleet.Watched(ctx, fleet.WatchQuery{QuietUntil: smp.at.AddDate(100, 0, 0), Attention: true, Limit: 1})
		if err != nil {
			return sample{}, fmt.Errorf("scale: drones on missions: %w", err)
		}
		smp.idle = len(ws) == 0
	}
	return smp, nil
}

// queued counts every message of a sample.
func queued(s taskhub.ScaleSample) int64 {
	n := s.WorkItems.Messages + s.Other
	for _, q := range s.Control {
		n += q.Messages
	}
	return n
}

// add records a sample and computes the signal. It runs with m.mu held.
func (m *Monitor) add(smp sample) Status {
	if n := len(m.history); n > 0 && m.history[n-1].s.Workers != smp.s.Workers {
		// Samples taken with another worker count say nothing about the
		// capacity of this one.
		m.history = m.history[:0]
	}
	m.history = append(m.history, smp)
	// Keep what the rules look at: the Calm window, and one sample
	// before it to know the window is covered.
	keep := len(m.history) - 1
	for keep > 0 && smp.at.Sub(m.history[keep-1].at) <= m.opts.Calm {
		keep--
	}
	if keep > 1 {
		m.history = append(m.history[:0], m.history[keep-1:]...)
	}
	switch {
	case !smp.idle:
		m.idleSince = time.Time{}
	case m.idleSince.IsZero():
		m.idleSince = smp.at
	}
	var idleFor time.Duration
	if smp.idle {
		idleFor = smp.at.Sub(m.idleSince)
	}
	n, rule, reason := m.decide(m.history, idleFor)
	s := smp.s
	st := Status{
		RecommendedWorkers: n, Reason: reason, Rule: string(rule), SampledAt: smp.at,
		Partitions: len(s.Control), WorkItemQueueDepth: int(s.WorkItems.Messages),
		OldestWorkItemAgeSeconds: s.WorkItems.OldestAge.Seconds(), IdleSeconds: idleFor.Seconds(), CurrentWorkers: s.Workers,
	}
	for _, q := range s.Control {
		st.ControlQueueDepth += int(q.Messages)
	}
	st.OldestControlMessageAgeSeconds = oldestControl(s).Seconds()
	if m.unsampled() {
		st.Partitions = 0
	}
	return st
}

// decide applies the scaling rule (docs/deploy.md) to the samples h, oldest
// first, taken with the latest sample's worker count; idleFor is how long
// the hub has been idle (0 when the latest sample is not).
func (m *Monitor) decide(h []sample, idleFor time.Duration) (int, Rule, string) {
	o := m.opts
	last := h[len(h)-1]
	s := last.s
	w := s.Workers
	if m.unsampled() {
		return 1, RuleUnsampled, "the task hub's backend cannot be sampled: one worker"
	}
	if last.idle {
		switch {
		case w == 0:
			return 0, RuleIdle, "idle: nothing queued, no drone on a mission and no worker running"
		case idleFor >= o.IdleAfter:
			return 0, RuleIdle, fmt.Sprintf("idle for %s (at least %s): nothing queued and no drone on a mission", round(idleFor), o.IdleAfter)
		}
		return 1, RuleIdleWait, fmt.Sprintf("idle for %s: one worker until %s have passed, then none", round(idleFor), o.IdleAfter)
	}
	if m.single {
		return 1, RuleSingleProcess, "SQLite task hub: one process serves it (0 once idle)"
	}
	if w == 0 {
		return 1, RuleFirstWorker, fmt.Sprintf("no worker running and %s", describeWork(last))
	}
	if len(h) < 2 {
		return w, RuleNotEnoughYet, fmt.Sprintf("%d workers: waiting for a second sample with this count before deciding", w)
	}
	prev := h[len(h)-2].s
	p := len(s.Control)
	backlog := int((s.WorkItems.Messages + int64(o.ActivitiesPerWorker) - 1) / int64(o.ActivitiesPerWorker))
	limit := max(p, backlog, 1)
	high := func(now, before taskhub.QueueLoad) bool {
		return now.OldestAge >= o.HighLatency && before.OldestAge >= o.HighLatency
	}

	// Scale out.
	target, rule, reason := w, ruleNone, ""
	if high(s.WorkItems, prev.WorkItems) && w < limit {
		target, rule = w+1, RuleWorkItemLag
		reason = fmt.Sprintf("the oldest work item waited %s (at least %s in two samples): one more worker, up to %d (%d partitions, %d work items at %d per worker)",
			round(s.WorkItems.OldestAge), o.HighLatency, limit, p, s.WorkItems.Messages, o.ActivitiesPerWorker)
	}
	busy := 0
	for i := range s.Control {
		if i < len(prev.Control) && high(s.Control[i], prev.Control[i]) {
			busy++
		}
	}
	if busy > target {
		target, rule = busy, RuleControlLag
		reason = fmt.Sprintf("%d of %d control queues have had a message waiting at least %s in two samples (oldest %s): a worker for each",
			busy, p, o.HighLatency, round(oldestControl(s)))
	}
	if target > w {
		return min(target, limit), rule, reason
	}

	// Scale in.
	if w > limit {
		return limit, RuleOverCapacity, fmt.Sprintf("%d workers but at most %d can help: %d partitions, %d work items at %d per worker", w, limit, p, s.WorkItems.Messages, o.ActivitiesPerWorker)
	}
	span := last.at.Sub(h[0].at)
	if span >= o.Calm {
		window := h
		for len(window) > 1 && last.at.Sub(window[1].at) >= o.Calm {
			window = window[1:]
		}
		workIdle, allLow := true, true
		active := make([]bool, p)
		for _, x := range window {
			if x.s.WorkItems.Messages > 0 {
				workIdle = false
			}
			if x.s.WorkItems.OldestAge > o.LowLatency {
				allLow = false
			}
			for i, q := range x.s.Control {
				if i < p && q.Messages > 0 {
					active[i] = true
				}
				if q.OldestAge > o.LowLatency {
					allLow = false
				}
			}
		}
		nActive := 0
		for _, a := range active {
			if a {
				nActive++
			}
		}
		if workIdle && w > max(nActive, 1) {
			return max(nActive, 1), RuleWorkItemsIdle, fmt.Sprintf("no work item queued for %s and %d of %d control queues in use: a worker for each in use", round(o.Calm), nActive, p)
		}
		if allLow && w > 1 {
			return w - 1, RuleCalm, fmt.Sprintf("every queue's oldest message under %s for %s: one worker fewer", o.LowLatency, round(o.Calm))
		}
	}
	return w, RuleSteady, fmt.Sprintf("%d workers keep up: oldest control message %s, oldest work item %s", w, round(oldestControl(s)), round(s.WorkItems.OldestAge))
}

// describeWork says what keeps a hub busy, for the first-worker reason.
func describeWork(x sample) string {
	s := x.s
	if queued(s) == 0 {
		return "a drone is on a mission"
	}
	control := queued(s) - s.WorkItems.Messages - s.Other
	return fmt.Sprintf("%d control, %d work-item and %d other messages queued", control, s.WorkItems.Messages, s.Other)
}

// unsampled reports whether the monitor has neither a sampler nor a
// single-process backend to measure: it can only recommend one worker.
func (m *Monitor) unsampled() bool { return m.sampler == nil && !m.single }

func oldestControl(s taskhub.ScaleSample) time.Duration {
	var d time.Duration
	for _, q := range s.Control {
		d = max(d, q.OldestAge)
	}
	return d
}

// round shortens a duration for a reason: 1.234s → 1.2s, 61.5s → 1m2s.
func round(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	if d < time.Minute {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}
