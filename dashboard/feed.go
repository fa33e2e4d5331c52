package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dronehub/dronehub/httpapi"
	"github.com/dronehub/dronehub/taskhub"
)

// topic is a set of the feed's topics, as bits.
type topic uint8

const (
	topicInstances topic = 1 << iota // instances of every orchestrator
	topicFleet                       // drones and the fleet summary
	topicHub                         // the hub's description, dead letters, request counts
	allTopics      = topicInstances | topicFleet | topicHub
)

// parseTopics reads the topics query parameter: comma-separated names, ""
// for all.
func parseTopics(s string) (topic, error) {
	if strings.TrimSpace(s) == "" {
		return allTopics, nil
	}
	var t topic
	for _, p := range strings.Split(s, ",") {
		switch strings.TrimSpace(p) {
		case "instances":
			t |= topicInstances
		case "fleet":
			t |= topicFleet
		case "hub":
			t |= topicHub
		default:
			return 0, fmt.Errorf("unknown topic %q: use instances, fleet or hub, comma-separated", httpapi.CapEcho(p, 40))
		}
	}
	return t, nil
}

func (t topic) names() []string {
	var out []string
	for _, n := range []struct {
		t    topic
		name string
	}{{topicInstances, "instances"}, {topicFleet, "fleet"}, {topicHub, "hub"}} {
		if t&n.t != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

// Bounds of one read of the task hub.
const (
	// maxLivePages bounds the pages of not-ended instances read per tick
	// (1,000 each).
	maxLivePages = 10
	// maxRecentPages bounds the pages of recently created instances.
	maxRecentPages = 5
	// maxPointReads bounds the instances read one by one per tick (those
	// that left the not-ended listing); the rest wait for the next tick.
	maxPointReads = 200
	// maxChanges bounds the changed instances read per tick from a
	// ChangeSource; more, and the tick lists in full.
	maxChanges = 1000
	// resyncEvery is how often a feed over a ChangeSource lists the
	// instances in full (which also notices the purged ones).
	resyncEvery = time.Minute
	// changeOverlap is how far before the store's time of the last read
	// the next read of changes starts: a row is stamped before it is
	// visible (a commit in flight), and stores stamp to the second.
	changeOverlap = 5 * time.Second
	// subscriberBuffer is how many updates a feed may fall behind before it
	// is ended (the page reconnects and starts from a snapshot).
	subscriberBuffer = 64
	// keepAlive is how often an idle feed gets a comment, so proxies keep
	// it open and a vanished client is noticed.
	keepAlive = 15 * time.Second
	// writeTimeout bounds writing one update to a feed.
	writeTimeout = 10 * time.Second
)

// The runtime statuses of instances that have not ended, and of those that
// have.
const (
	liveStatuses  = "Running,Pending,Suspended,ContinuedAsNew"
	endedStatuses = "Completed,Failed,Terminated,Canceled"
)

// Stats is what the live feed has done since the dashboard was created.
type Stats struct {
	// Clients is the number of feeds open now.
	Clients int `json:"clients"`
	// Polling reports whether the poller runs (it does while Clients > 0).
	Polling bool `json:"polling"`
	// Ticks counts the poller's reads of the task hub.
	Ticks int64 `json:"ticks"`
	// Reads counts the Source calls the poller made; each is one storage
	// query or more (a listing of many pages, a hub description).
	Reads int64 `json:"reads"`
	// Messages counts the updates queued to feeds.
	Messages int64 `json:"messages"`
	// Dropped counts the feeds ended for falling behind.
	Dropped int64 `json:"dropped"`
}

// subscriber is one open feed.
type subscriber struct {
	topics topic
	ch     chan []byte
	done   chan struct{} // closed when the feed ends it; why says why
	why    string
	fresh  bool // waiting for its snapshot
	warned bool // told of a problem while waiting for its snapshot
}

// instance is the state the feed holds of one instance.
type instance struct {
	raw     json.RawMessage
	ended   bool
	changed time.Time
}

// state is what the feed last read, by topic.
type state struct {
	loaded    topic
	instances map[string]*instance
	drones    map[string]json.RawMessage
	fleet     json.RawMessage
	hub       json.RawMessage
	hubAt     time.Time
	lastRead  time.Time // when instances were last read successfully
	// changesAt is the store's time to read the changes from (less
	// changeOverlap) on the next read; zero when it lists in full.
	changesAt time.Time
	syncedAt  time.Time // when instances were last listed in full with a changesAt
	problem   string
}

func newState() state {
	return state{instances: map[string]*instance{}, drones: map[string]json.RawMessage{}}
}

// feed is the live feed: one poller, many subscribers.
type feed struct {
	opts Options
	src  Source
	log  *slog.Logger
	kick chan struct{}
	wg   sync.WaitGroup // the poller
	// noChanges is set once the source answered that it cannot list
	// changes (a ChangeSource over a backend without the capability).
	noChanges atomic.Bool

	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	gen    uint64             // the poller run whose results count
	cancel context.CancelFunc // stops the current run; nil when none
	closed bool
	st     state
	stats  Stats
}

func newFeed(opts Options) *feed {
	return &feed{opts: opts, src: opts.Source, log: opts.Logger, kick: make(chan struct{}, 1), subs: map[*subscriber]struct{}{}, st: newState()}
}

// recentMargin is how far back each tick lists instances by creation time,
// to see those that were created and ended between two ticks. It covers a
// slow tick and clock skew between workers.
func (f *feed) recentMargin() time.Duration { return max(5*time.Second, 3*f.opts.Interval) }

// retain is how long an ended instance stays in the feed's state (and in
// snapshots) after its last change.
func (f *feed) retain() time.Duration { return max(time.Minute, 4*f.recentMargin()) }

// readTimeout bounds one tick's storage reads.
func (f *feed) readTimeout() time.Duration { return max(10*time.Second, 2*f.opts.Interval) }

var (
	errClosed = errors.New("the worker is shutting down; the dashboard reconnects to another worker or when it is back")
	errFull   = errors.New("too many dashboards are open on this worker; retry later")
)

// subscribe opens a feed for topics t. Its first update is a snapshot: at
// once when the poller holds the topics, else after the next read.
func (f *feed) subscribe(t topic) (*subscriber, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errClosed
	}
	if len(f.subs) >= f.opts.MaxClients {
		return nil, errFull
	}
	s := &subscriber{topics: t, ch: make(chan []byte, subscriberBuffer), done: make(chan struct{}), fresh: true}
	f.subs[s] = struct{}{}
	switch {
	case f.cancel == nil:
		f.startLocked()
	case f.st.loaded&t == t:
		f.sendLocked(s, f.snapshotLocked(t))
		s.fresh = false
	default:
		select {
		case f.kick <- struct{}{}:
		default:
		}
	}
	return s, nil
}

// unsubscribe closes a feed; the poller stops with the last one.
func (f *feed) unsubscribe(s *subscriber) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.subs[s]; ok {
		delete(f.subs, s)
		f.stopIfIdleLocked()
	}
}

func (f *feed) startLocked() {
	ctx, cancel := context.WithCancel(context.Background())
	f.gen++
	f.cancel = cancel
	f.st = newState()
	f.wg.Add(1)
	go f.run(ctx, f.gen)
}

func (f *feed) stopIfIdleLocked() {
	if len(f.subs) > 0 || f.cancel == nil {
		return
	}
	f.cancel()
	f.cancel = nil
	f.gen++ // a read in progress is discarded
	f.st = newState()
}

// dropLocked ends a feed, telling it why.
func (f *feed) dropLocked(s *subscriber, why string) {
	if _, ok := f.subs[s]; !ok {
		return
	}
	delete(f.subs, s)
	s.why = why
	close(s.done)
	f.stopIfIdleLocked()
}

// sendLocked queues msg to s, ending a feed that fell too far behind.
func (f *feed) sendLocked(s *subscriber, msg []byte) {
	select {
	case s.ch <- msg:
		f.stats.Messages++
	default:
		f.stats.Dropped++
		f.dropLocked(s, "this dashboard fell behind the live feed; reconnecting")
	}
}

func (f *feed) closeStreams(why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.subs {
		f.dropLocked(s, why)
	}
}

func (f *feed) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.closeStreams(errClosed.Error())
	f.wg.Wait()
}

func (f *feed) statsNow() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stats
	s.Clients = len(f.subs)
	s.Polling = f.cancel != nil
	return s
}

// run is the poller: a read at once, then one per interval, or sooner when
// a subscriber needs a topic the feed does not hold.
func (f *feed) run(ctx context.Context, gen uint64) {
	defer f.wg.Done()
	t := time.NewTicker(f.opts.Interval)
	defer t.Stop()
	for {
		f.tick(ctx, gen)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-f.kick:
		}
	}
}

// plan is what one tick reads.
type plan struct {
	want       topic
	hub        bool
	live       []string // instances held as not ended
	recentFrom time.Time
	// changes: read only the instances changed since since (a
	// ChangeSource between resyncs), instead of listing them in full.
	changes bool
	since   time.Time
	now     time.Time
}

// reading is what one tick read.
type reading struct {
	plan
	instances map[string]httpapi.Status
	gone      []string
	instErr   error
	// changesAt is the store's time to read changes from next; zero when
	// the source gave none (the next read lists in full).
	changesAt time.Time
	drones    []httpapi.DroneStatus
	droneErr  error
	hub       *hubView
	hubErr    error
	reads     int64
}

func (f *feed) tick(ctx context.Context, gen uint64) {
	f.mu.Lock()
	if gen != f.gen {
		f.mu.Unlock()
		return
	}
	p := f.planLocked()
	f.mu.Unlock()

	rctx, cancel := context.WithTimeout(ctx, f.readTimeout())
	r := f.read(rctx, p)
	cancel()

	f.mu.Lock()
	defer f.mu.Unlock()
	if gen != f.gen {
		return
	}
	f.stats.Ticks++
	f.stats.Reads += r.reads
	f.applyLocked(r)
}

func (f *feed) planLocked() plan {
	p := plan{now: f.opts.Now()}
	for s := range f.subs {
		p.want |= s.topics
	}
	if p.want&topicHub != 0 && (f.st.loaded&topicHub == 0 || p.now.Sub(f.st.hubAt) >= f.opts.HubInterval) {
		p.hub = true
	}
	for id, in := range f.st.instances {
		if !in.ended {
			p.live = append(p.live, id)
		}
	}
	sort.Strings(p.live)
	from := p.now
	if !f.st.lastRead.IsZero() && f.st.lastRead.Before(from) {
		from = f.st.lastRead
	}
	p.recentFrom = from.Add(-f.recentMargin())
	if _, ok := f.src.(ChangeSource); ok && !f.noChanges.Load() && f.st.loaded&topicInstances != 0 &&
		!f.st.changesAt.IsZero() && p.now.Sub(f.st.syncedAt) < resyncEvery {
		p.changes, p.since = true, f.st.changesAt.Add(-changeOverlap)
	}
	return p
}

func (f *feed) read(ctx context.Context, p plan) reading {
	r := reading{plan: p}
	if p.want&topicInstances != 0 {
		r.instErr = f.readInstances(ctx, &r)
	}
	if p.want&topicFleet != 0 {
		r.reads++
		r.drones, r.droneErr = f.src.Drones(ctx)
	}
	if p.hub {
		r.hub, r.hubErr = f.readHub(ctx, &r)
	}
	return r
}

// readInstances reads, between resyncs over a ChangeSource, the instances
// changed since the last read. Otherwise it lists in full: the instances
// that have not ended, those that ended already though created since
// shortly before the last read (they lived between two reads), and, one by
// one, those the feed held as not ended that are in neither listing (they
// ended, or were purged); over a ChangeSource it first reads the store's
// time, to read the changes from next.
func (f *feed) readInstances(ctx context.Context, r *reading) error {
	cs, _ := f.src.(ChangeSource)
	if r.changes {
		r.reads++
		changed, next, err := cs.InstancesChangedSince(ctx, r.since, maxChanges)
		switch {
		case err == nil:
			r.instances = make(map[string]httpapi.Status, len(changed))
			for _, st := range changed {
				r.instances[st.InstanceID] = st
			}
			r.changesAt = next
			return nil
		case notImplemented(err):
			f.noChanges.Store(true)
		case errors.Is(err, taskhub.ErrTooManyChanges):
		default:
			return err
		}
		r.changes = false // list in full instead
	}
	r.instances = map[string]httpapi.Status{}
	if cs != nil && !f.noChanges.Load() {
		// Before the listing, so that what changes while it runs is read
		// next time. Only the store's time matters here.
		r.reads++
		_, next, err := cs.InstancesChangedSince(ctx, r.now.Add(-changeOverlap), maxChanges)
		switch {
		case err == nil:
			r.changesAt = next
		case notImplemented(err):
			f.noChanges.Store(true)
		case errors.Is(err, taskhub.ErrTooManyChanges): // lists in full again next time
		default:
			return err
		}
	}
	live := url.Values{"runtimeStatus": {liveStatuses}, "top": {"1000"}}
	if err := f.listAll(ctx, r, live, maxLivePages); err != nil {
		return err
	}
	recent := url.Values{"runtimeStatus": {endedStatuses}, "createdTimeFrom": {r.recentFrom.UTC().Format(time.RFC3339Nano)}, "top": {"1000"}}
	if err := f.listAll(ctx, r, recent, maxRecentPages); err != nil {
		return err
	}
	n := 0
	for _, id := range r.live {
		if _, ok := r.instances[id]; ok {
			continue
		}
		if n == maxPointReads {
			break
		}
		n++
		r.reads++
		st, err := f.src.Status(ctx, httpapi.ScopeInstances, id, false)
		var e *httpapi.Error
		switch {
		case errors.As(err, &e) && e.Status == http.StatusNotFound:
			r.gone = append(r.gone, id)
		case err != nil:
			return err
		default:
			r.instances[id] = st
		}
	}
	return nil
}

func (f *feed) listAll(ctx context.Context, r *reading, q url.Values, maxPages int) error {
	for page := 0; page < maxPages; page++ {
		r.reads++
		res, err := f.src.List(ctx, httpapi.ScopeInstances, q)
		if err != nil {
			return err
		}
		for _, st := range res.Instances {
			r.instances[st.InstanceID] = st
		}
		if res.ContinuationToken == "" {
			return nil
		}
		q = maps.Clone(q)
		q.Set("continuationToken", res.ContinuationToken)
	}
	return nil
}

// hubView is the hub topic: what the task hub page shows.
type hubView struct {
	Info *taskhub.HubInfo `json:"info,omitempty"`
	// Workers are the workers holding partition leases (Azure Storage).
	Workers     []string             `json:"workers,omitempty"`
	DeadLetters []taskhub.DeadLetter `json:"deadLetters"`
	// Unsupported names what this backend cannot show.
	Unsupported   []string         `json:"unsupported,omitempty"`
	RequestCounts map[string]int64 `json:"requestCounts,omitempty"`
	// Feed is the feed's own work, as of this read.
	Feed   Stats     `json:"feed"`
	ReadAt time.Time `json:"readAt"`
}

func notImplemented(err error) bool {
	var e *httpapi.Error
	return errors.As(err, &e) && e.Status == http.StatusNotImplemented
}

func (f *feed) readHub(ctx context.Context, r *reading) (*hubView, error) {
	hv := &hubView{ReadAt: r.now.UTC(), DeadLetters: []taskhub.DeadLetter{}}
	r.reads++
	info, err := f.src.HubInfo(ctx)
	switch {
	case notImplemented(err):
		hv.Unsupported = append(hv.Unsupported, "hub inspection")
	case err != nil:
		return nil, err
	default:
		hv.Info = &info
		owners := map[string]bool{}
		for _, o := range info.Owners {
			owners[o] = true
		}
		hv.Workers = slices.Sorted(maps.Keys(owners))
	}
	r.reads++
	dls, err := f.src.DeadLetters(ctx)
	switch {
	case notImplemented(err):
		hv.Unsupported = append(hv.Unsupported, "dead-letter queue")
	case err != nil:
		return nil, err
	default:
		hv.DeadLetters = dls
	}
	if f.opts.RequestCounts != nil {
		hv.RequestCounts = f.opts.RequestCounts()
	}
	return hv, nil
}

// change is one tick's changes, before encoding per topic set.
type change struct {
	instances     []json.RawMessage
	removed       []string
	drones        []json.RawMessage
	removedDrones []string
	fleet         json.RawMessage
	hub           json.RawMessage
	problem       *string
}

// Update is one message of the live feed, an "update" server-sent event.
// The first a feed sends is a snapshot of its topics; each later one holds
// only what changed. Absent fields did not change.
type Update struct {
	// Snapshot marks the first update: it replaces whatever the page held
	// for Topics.
	Snapshot bool     `json:"snapshot,omitempty"`
	Topics   []string `json:"topics,omitempty"`
	At       string   `json:"at"`
	// Instances are instances (any orchestrator) as GET /api/instances/{id}
	// shows them: in a snapshot, those not ended and those that ended
	// lately; later, those that changed.
	Instances []json.RawMessage `json:"instances,omitempty"`
	// Removed are instances that were purged.
	Removed []string `json:"removed,omitempty"`
	// Drones are drones as GET /api/drones shows them, with their
	// condition (Drone).
	Drones        []json.RawMessage `json:"drones,omitempty"`
	RemovedDrones []string          `json:"removedDrones,omitempty"`
	// Fleet is the FleetSummary.
	Fleet json.RawMessage `json:"fleet,omitempty"`
	// Hub is the task hub's description, dead letters and request counts.
	Hub json.RawMessage `json:"hub,omitempty"`
	// Problem is set when reading the task hub failed ("" once it works
	// again, and in every snapshot while it works): the API's problem
	// detail, e.g. "storage is unavailable: …".
	Problem *string `json:"problem,omitempty"`
}

func frame(u Update) []byte {
	b, err := json.Marshal(u)
	if err != nil {
		panic(err) // raw parts are valid JSON, the rest are strings
	}
	var buf bytes.Buffer
	buf.Grow(len(b) + 24)
	buf.WriteString("event: update\ndata: ")
	buf.Write(b)
	buf.WriteString("\n\n")
	return buf.Bytes()
}

// encode returns the event holding the changes for topics t, or nil when
// there are none.
func (c *change) encode(t topic, at time.Time) []byte {
	u := Update{At: at.UTC().Format(time.RFC3339Nano), Problem: c.problem}
	if t&topicInstances != 0 {
		u.Instances, u.Removed = c.instances, c.removed
	}
	if t&topicFleet != 0 {
		u.Drones, u.RemovedDrones, u.Fleet = c.drones, c.removedDrones, c.fleet
	}
	if t&topicHub != 0 {
		u.Hub = c.hub
	}
	if u.Instances == nil && u.Removed == nil && u.Drones == nil && u.RemovedDrones == nil && u.Fleet == nil && u.Hub == nil && u.Problem == nil {
		return nil
	}
	return frame(u)
}

func (f *feed) snapshotLocked(t topic) []byte {
	// A snapshot always says whether reads work, so that a page that
	// reconnects forgets a problem that is over.
	p := f.st.problem
	u := Update{Snapshot: true, Topics: t.names(), At: f.opts.Now().UTC().Format(time.RFC3339Nano), Problem: &p}
	if t&topicInstances != 0 {
		for _, id := range slices.Sorted(maps.Keys(f.st.instances)) {
			u.Instances = append(u.Instances, f.st.instances[id].raw)
		}
	}
	if t&topicFleet != 0 {
		for _, id := range slices.Sorted(maps.Keys(f.st.drones)) {
			u.Drones = append(u.Drones, f.st.drones[id])
		}
		u.Fleet = f.st.fleet
	}
	if t&topicHub != 0 {
		u.Hub = f.st.hub
	}
	return frame(u)
}

// applyLocked merges a reading into the state and sends the changes.
func (f *feed) applyLocked(r reading) {
	var c change
	// Topics nobody wants any more are forgotten, so that a later
	// subscriber never gets them stale.
	if r.want&topicInstances == 0 {
		f.st.instances, f.st.lastRead, f.st.changesAt = map[string]*instance{}, time.Time{}, time.Time{}
	}
	if r.want&topicFleet == 0 {
		f.st.drones, f.st.fleet = map[string]json.RawMessage{}, nil
	}
	if r.want&topicHub == 0 {
		f.st.hub, f.st.hubAt = nil, time.Time{}
	}
	f.st.loaded &= r.want

	var problems []error
	if r.want&topicInstances != 0 {
		if r.instErr != nil {
			problems = append(problems, r.instErr)
			f.st.changesAt = time.Time{} // list in full next time
		} else {
			f.applyInstances(r, &c)
		}
	}
	if r.want&topicFleet != 0 {
		if r.droneErr != nil {
			problems = append(problems, r.droneErr)
		} else {
			f.applyDrones(r, &c)
		}
	}
	if r.hub != nil {
		r.hub.Feed = f.stats
		r.hub.Feed.Clients, r.hub.Feed.Polling = len(f.subs), true
		// Always news: it carries its read time and the feed's counters.
		raw := mustJSON(r.hub)
		c.hub = raw
		f.st.hub, f.st.hubAt = raw, r.now
		f.st.loaded |= topicHub
	} else if r.hubErr != nil {
		problems = append(problems, r.hubErr)
	}

	p := ""
	if len(problems) > 0 {
		p = f.problemText(problems[0])
	}
	if p != f.st.problem {
		f.st.problem = p
		c.problem = &p
	}
	f.fanoutLocked(&c, r.now)
}

func (f *feed) applyInstances(r reading, c *change) {
	for _, id := range slices.Sorted(maps.Keys(r.instances)) {
		st := r.instances[id]
		raw := mustJSON(st)
		old := f.st.instances[id]
		if old != nil && bytes.Equal(old.raw, raw) {
			continue
		}
		c.instances = append(c.instances, raw)
		f.st.instances[id] = &instance{raw: raw, ended: ended(st.RuntimeStatus), changed: r.now}
	}
	for _, id := range r.gone {
		if _, ok := f.st.instances[id]; ok {
			delete(f.st.instances, id)
			c.removed = append(c.removed, id)
		}
	}
	for id, in := range f.st.instances {
		if in.ended && r.now.Sub(in.changed) > f.retain() {
			delete(f.st.instances, id) // pages keep it; new snapshots leave it out
		}
	}
	f.st.lastRead = r.now
	if !r.changes {
		f.st.syncedAt = r.now
	}
	f.st.changesAt = r.changesAt
	f.st.loaded |= topicInstances
}

func (f *feed) applyDrones(r reading, c *change) {
	seen := make(map[string]bool, len(r.drones))
	views := make([]Drone, 0, len(r.drones))
	for _, d := range r.drones {
		v := droneView(d, r.now, f.opts.BatteryFloor, f.opts.SilentAfter)
		views = append(views, v)
		seen[d.DroneID] = true
		raw := mustJSON(v)
		if !bytes.Equal(raw, f.st.drones[d.DroneID]) {
			c.drones = append(c.drones, raw)
			f.st.drones[d.DroneID] = raw
		}
	}
	for _, id := range slices.Sorted(maps.Keys(f.st.drones)) {
		if !seen[id] {
			delete(f.st.drones, id)
			c.removedDrones = append(c.removedDrones, id)
		}
	}
	raw := mustJSON(summarize(views))
	if !bytes.Equal(raw, f.st.fleet) {
		c.fleet = raw
		f.st.fleet = raw
	}
	f.st.loaded |= topicFleet
}

// fanoutLocked sends each subscriber its snapshot, if it waits for one and
// the feed now holds its topics, or else the changes for its topics. Each
// distinct topic set's message is encoded once.
func (f *feed) fanoutLocked(c *change, now time.Time) {
	diffs := map[topic][]byte{}
	snaps := map[topic][]byte{}
	for s := range f.subs {
		if s.fresh {
			if f.st.loaded&s.topics != s.topics {
				if f.st.problem != "" && !s.warned {
					p := f.st.problem
					s.warned = true
					f.sendLocked(s, frame(Update{At: now.UTC().Format(time.RFC3339Nano), Problem: &p}))
				}
				continue
			}
			msg, ok := snaps[s.topics]
			if !ok {
				msg = f.snapshotLocked(s.topics)
				snaps[s.topics] = msg
			}
			s.fresh = false
			f.sendLocked(s, msg)
			continue
		}
		msg, ok := diffs[s.topics]
		if !ok {
			msg = c.encode(s.topics, now)
			diffs[s.topics] = msg
		}
		if msg != nil {
			f.sendLocked(s, msg)
		}
	}
}

// problemText is what a page is told of a failed read: the API's problem
// detail. Other errors are logged and summarized, as the API does, since
// storage errors can carry paths and endpoints.
func (f *feed) problemText(err error) string {
	var e *httpapi.Error
	if errors.As(err, &e) {
		if e.Err != nil {
			f.log.Warn("dashboard feed: reading the task hub failed", "op", e.Op, "err", e.Err)
		}
		return e.Detail
	}
	f.log.Warn("dashboard feed: reading the task hub failed", "err", err)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("%s: the task hub did not answer within %s", httpapi.ErrStorageUnavailable, f.readTimeout())
	}
	return httpapi.ErrStorageUnavailable.Error() + ": see the worker log"
}

// ended reports whether runtimeStatus is one of endedStatuses.
func ended(runtimeStatus string) bool {
	return runtimeStatus != "" && strings.Contains(","+endedStatuses+",", ","+runtimeStatus+",")
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("dashboard: encode %T: %v", v, err)) // API types always encode
	}
	return b
}
