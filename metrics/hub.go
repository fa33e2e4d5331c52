package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/taskhub"
)

// Hub is the storage WatchHub reads at scrape time.
type Hub struct {
	// Backend is the task hub. The optional capabilities it has decide
	// which series appear: taskhub.Inspector (queues, instances, dead
	// letters), taskhub.PartitionObserver (control queues and leases),
	// taskhub.StatusCounter or taskhub.RequestCounter (storage requests).
	Backend taskhub.Backend
	// Fleet, when set, gives the drones by state and condition.
	Fleet fleet.Store
	// MissionName, when set, is the orchestrator whose running instances
	// are counted by the phase in their custom status.
	MissionName string
	// BatteryFloor is the charge under which a drone counts as
	// low_battery; default 0.2.
	BatteryFloor float64
}

// Bounds of one snapshot of storage.
const (
	// snapshotTimeout bounds reading a snapshot.
	snapshotTimeout = 20 * time.Second
	// scrapeWait is the longest a scrape waits for a snapshot it started
	// (then it serves the last one, or none): a scrape must answer while
	// storage is down.
	scrapeWait = 250 * time.Millisecond
	// maxMissionPages bounds the listing of running missions (1000 a page).
	maxMissionPages = 100
)

// phases are the mission phases dronehub_missions reports, each always.
var phases = []domain.Phase{
	domain.PhaseCreated, domain.PhaseDroneReserved, domain.PhaseHeadedToPickup, domain.PhasePickedUp,
	domain.PhaseHeadedToDropoff, domain.PhaseDelivered, domain.PhaseReturning,
	domain.PhaseCompleted, domain.PhaseFailed, domain.PhaseCancelled,
}

// WatchHub registers the series read from the hub's storage and the storage
// request counters. Storage is read in the background when a scrape finds
// the last snapshot older than SnapshotTTL: at most once per TTL however
// often it is scraped, for at most 20 s. A scrape waits at most 250 ms for
// it, then serves the previous snapshot (none before the first), so
// /metrics answers at once while storage is down.
func (m *Metrics) WatchHub(h Hub) error {
	if h.BatteryFloor == 0 {
		h.BatteryFloor = 0.2
	}
	c := &hubCollector{m: m, hub: h}
	c.define()
	if err := m.register(c, false); err != nil {
		return err
	}
	return nil
}

type hubCollector struct {
	m   *Metrics
	hub Hub

	queueMessages, instances, deadLetters           *prometheus.Desc
	controlMessages, controlAge                     *prometheus.Desc
	partitionsOwned, leaseAcq, leaseTake, leaseLost *prometheus.Desc
	storageRequests                                 *prometheus.Desc
	missions, drones, droneCondition                *prometheus.Desc
	snapshotAge, snapshotDuration, snapshotErrs     *prometheus.Desc

	mu         sync.Mutex
	cur        *snapshot     // nil before the first
	refreshing chan struct{} // closed when the refresh in progress ends
	errs       map[string]int64
}

// snapshot is one read of storage; a part that failed is nil.
type snapshot struct {
	at       time.Time
	took     time.Duration
	info     *taskhub.HubInfo
	loads    []taskhub.QueueLoad // by partition
	missions map[domain.Phase]int
	drones   map[string]int
	cond     map[string]int
}

// Parts of a snapshot, for snapshot_errors_total.
const (
	partHub        = "hub"
	partPartitions = "partitions"
	partMissions   = "missions"
	partDrones     = "drones"
)

func (c *hubCollector) define() {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
	}
	c.queueMessages = d("queue_messages", "Approximate messages in each queue of the task hub (Azure Storage: control queues, work items, telemetry; SQLite: NewEvents, NewTasks), from a cached snapshot.", "queue")
	c.instances = d("orchestration_instances", "Orchestration instances in the hub by runtime status, from a cached snapshot.", "status")
	c.deadLetters = d("dead_letters", "Dead letters in the hub, from a cached snapshot.")
	c.controlMessages = d("control_queue_messages", "Approximate messages in each control-queue partition, invisible ones (timers, messages being processed) included (Azure Storage), from a cached snapshot.", "partition")
	c.controlAge = d("control_queue_oldest_message_age_seconds", "Age of the oldest visible message of each control-queue partition, 0 when none (Azure Storage), from a cached snapshot.", "partition")
	c.partitionsOwned = d("partitions_owned", "Control-queue partitions whose lease this worker holds (Azure Storage).")
	c.leaseAcq = d("partition_lease_acquisitions_total", "Partition leases this worker claimed (Azure Storage).")
	c.leaseTake = d("partition_lease_takeovers_total", "Partition leases this worker claimed after another worker's lease expired unreleased (Azure Storage).")
	c.leaseLost = d("partition_lease_losses_total", "Partition leases this worker lost to another worker or a failed renewal (Azure Storage).")
	c.storageRequests = d("storage_requests_total", "Storage requests by operation kind and status class of the answer (2xx, 3xx, 4xx, 5xx, error when none came); every attempt, retries included (Azure Storage).", "kind", "status_class")
	c.missions = d("missions", "Running missions by phase (their custom status), from a cached snapshot.", "phase")
	c.drones = d("drones", "Drones by state: idle, reserved (not yet dispatched), dispatched, from a cached snapshot.", "state")
	c.droneCondition = d("drones_condition", "Drones by condition, as GET /api/fleet counts them: no_telemetry, faulted, low_battery, ok, from a cached snapshot.", "condition")
	c.snapshotAge = d("store_snapshot_age_seconds", "Age of the snapshot of storage the gauges above were read from.")
	c.snapshotDuration = d("store_snapshot_duration_seconds", "Time the last snapshot of storage took to read.")
	c.snapshotErrs = d("store_snapshot_errors_total", "Snapshots of storage whose part (hub, partitions, missions, drones) failed to read.", "part")
}

// Describe implements prometheus.Collector.
func (c *hubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.queueMessages, c.instances, c.deadLetters, c.controlMessages, c.controlAge,
		c.partitionsOwned, c.leaseAcq, c.leaseTake, c.leaseLost, c.storageRequests, c.missions, c.drones,
		c.droneCondition, c.snapshotAge, c.snapshotDuration, c.snapshotErrs} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *hubCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	be := c.hub.Backend
	// In-memory counters first: no request.
	if po, ok := be.(taskhub.PartitionObserver); ok {
		ls := po.LeaseStats()
		gauge(c.partitionsOwned, float64(ls.Owned))
		counter(c.leaseAcq, float64(ls.Acquired))
		counter(c.leaseTake, float64(ls.TakenOver))
		counter(c.leaseLost, float64(ls.Lost))
	}
	switch sc := be.(type) {
	case taskhub.StatusCounter:
		for kind, byClass := range sc.RequestCountsByStatus() {
			for class, n := range byClass {
				counter(c.storageRequests, float64(n), kind, class)
			}
		}
	case taskhub.RequestCounter:
		for kind, n := range sc.RequestCounts() {
			counter(c.storageRequests, float64(n), kind, "unknown")
		}
	}

	s, errs := c.get()
	for _, part := range []string{partHub, partPartitions, partMissions, partDrones} {
		if n, ok := errs[part]; ok {
			counter(c.snapshotErrs, float64(n), part)
		}
	}
	if s == nil {
		return
	}
	gauge(c.snapshotAge, time.Since(s.at).Seconds())
	gauge(c.snapshotDuration, s.took.Seconds())
	if s.info != nil {
		for q, n := range s.info.QueueDepths {
			gauge(c.queueMessages, float64(n), q)
		}
		for st, n := range s.info.Instances {
			gauge(c.instances, float64(n), st)
		}
		gauge(c.deadLetters, float64(s.info.DeadLetters))
	}
	for i, l := range s.loads {
		p := strconv.Itoa(i)
		gauge(c.controlMessages, float64(l.Messages), p)
		gauge(c.controlAge, l.OldestAge.Seconds(), p)
	}
	if s.missions != nil {
		for _, ph := range phases {
			gauge(c.missions, float64(s.missions[ph]), string(ph))
		}
	}
	if s.drones != nil {
		for _, st := range []string{"idle", "reserved", "dispatched"} {
			gauge(c.drones, float64(s.drones[st]), st)
		}
		for _, cd := range []string{"ok", "no_telemetry", "faulted", "low_battery"} {
			gauge(c.droneCondition, float64(s.cond[cd]), cd)
		}
	}
}

// get returns the current snapshot, starting a refresh when it is older
// than the TTL and waiting a little for it, and the error counts.
func (c *hubCollector) get() (*snapshot, map[string]int64) {
	c.mu.Lock()
	cur := c.cur
	if cur != nil && time.Since(cur.at) < c.m.ttl {
		errs := c.errCounts()
		c.mu.Unlock()
		return cur, errs
	}
	if c.refreshing == nil {
		done := make(chan struct{})
		c.refreshing = done
		go c.refresh(done)
	}
	done := c.refreshing
	c.mu.Unlock()

	t := time.NewTimer(scrapeWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	case <-c.m.ctx.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, c.errCounts()
}

func (c *hubCollector) errCounts() map[string]int64 {
	out := make(map[string]int64, len(c.errs))
	for k, v := range c.errs {
		out[k] = v
	}
	return out
}

// refresh reads a snapshot; the parts run concurrently.
func (c *hubCollector) refresh(done chan struct{}) {
	ctx, cancel := context.WithTimeout(c.m.ctx, snapshotTimeout)
	defer cancel()
	s := &snapshot{}
	start := time.Now()
	failed := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	run := func(part string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				mu.Lock()
				failed[part] = true
				mu.Unlock()
			}
		}()
	}
	be := c.hub.Backend
	if in, ok := be.(taskhub.Inspector); ok {
		run(partHub, func() error {
			info, err := in.HubInfo(ctx)
			if err == nil {
				mu.Lock()
				s.info = &info
				mu.Unlock()
			}
			return err
		})
	}
	if po, ok := be.(taskhub.PartitionObserver); ok {
		run(partPartitions, func() error {
			loads, err := po.PartitionLoads(ctx)
			if err == nil {
				mu.Lock()
				s.loads = loads
				mu.Unlock()
			}
			return err
		})
	}
	if c.hub.MissionName != "" && be != nil {
		run(partMissions, func() error {
			byPhase, err := missionPhases(ctx, be, c.hub.MissionName)
			if err == nil {
				mu.Lock()
				s.missions = byPhase
				mu.Unlock()
			}
			return err
		})
	}
	if c.hub.Fleet != nil {
		run(partDrones, func() error {
			drones, err := c.hub.Fleet.Drones(ctx)
			if err != nil {
				return err
			}
			states, cond := droneCounts(drones, c.hub.BatteryFloor)
			mu.Lock()
			s.drones, s.cond = states, cond
			mu.Unlock()
			return nil
		})
	}
	wg.Wait()
	s.at, s.took = time.Now(), time.Since(start)

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.errs == nil {
		c.errs = map[string]int64{}
	}
	for part := range failed {
		c.errs[part]++
	}
	// A part that failed keeps the last value read, so a storage hiccup
	// does not blank the dashboard (store_snapshot_errors_total tells).
	if prev := c.cur; prev != nil {
		if s.info == nil {
			s.info = prev.info
		}
		if s.loads == nil {
			s.loads = prev.loads
		}
		if s.missions == nil {
			s.missions = prev.missions
		}
		if s.drones == nil {
			s.drones, s.cond = prev.drones, prev.cond
		}
	}
	c.cur = s
	c.refreshing = nil
	close(done)
}

// missionPhases counts the running instances of name by the phase of
// their custom status (a domain.MissionStatus).
func missionPhases(ctx context.Context, be taskhub.Backend, name string) (map[domain.Phase]int, error) {
	out := map[domain.Phase]int{}
	q := taskhub.Query{
		Name:          name,
		RuntimeStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_PENDING, api.RUNTIME_STATUS_RUNNING, api.RUNTIME_STATUS_SUSPENDED},
		PageSize:      taskhub.MaxPageSize,
	}
	for page := 0; ; page++ {
		if page == maxMissionPages {
			return out, nil // the first 100,000: enough to see the shape
		}
		p, err := be.ListInstances(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("metrics: list running missions: %w", err)
		}
		for _, md := range p.Instances {
			phase := domain.PhaseCreated
			var st struct {
				Phase domain.Phase `json:"phase"`
			}
			if md.SerializedCustomStatus != "" && json.Unmarshal([]byte(md.SerializedCustomStatus), &st) == nil && st.Phase != "" {
				phase = st.Phase
			}
			out[phase]++
		}
		if p.ContinuationToken == "" {
			return out, nil
		}
		q.ContinuationToken = p.ContinuationToken
	}
}

// droneCounts counts drones by state and by condition (fleet.Drone.Condition,
// as activities.Summarize does for GET /api/fleet).
func droneCounts(drones []fleet.Drone, floor float64) (states, cond map[string]int) {
	states, cond = map[string]int{}, map[string]int{}
	for _, d := range drones {
		switch {
		case d.MissionID == "":
			states["idle"]++
		case d.Route == nil:
			states["reserved"]++
		default:
			states["dispatched"]++
		}
		cond[d.Condition(floor)]++
	}
	return states, cond
}
