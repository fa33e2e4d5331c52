package bench

import (
	"slices"
	"time"
)

// Report is a bench's results and the conditions they were measured in. It
// marshals to JSON as it is.
type Report struct {
	// Date is when the bench began (UTC).
	Date time.Time `json:"date"`
	// Seconds is the wall time of the whole bench, opening engines included.
	Seconds     float64      `json:"seconds"`
	GoVersion   string       `json:"goVersion"`
	Machine     Machine      `json:"machine"`
	LoadAverage LoadAverages `json:"loadAverage"`
	Settings    Settings     `json:"settings"`
	// Flags are the command line's flags and their values, when the bench
	// was run by a command (secrets left out).
	Flags map[string]string `json:"flags,omitempty"`
	// Notes say what a reader needs to know about this run (e.g. which
	// storage the Azure engine used).
	Notes   []string     `json:"notes,omitempty"`
	Engines []EngineInfo `json:"engines"`
	Results []Result     `json:"results"`
}

// Machine describes the machine a bench ran on.
type Machine struct {
	OS   string `json:"os"`
	Arch string `json:"arch"`
	// CPUs is runtime.NumCPU(); GOMAXPROCS the Go scheduler's setting.
	CPUs       int `json:"cpus"`
	GOMAXPROCS int `json:"gomaxprocs"`
	// CPUModel is /proc/cpuinfo's model name; MemoryBytes /proc/meminfo's
	// MemTotal. Empty or zero where those cannot be read.
	CPUModel    string `json:"cpuModel,omitempty"`
	MemoryBytes int64  `json:"memoryBytes,omitempty"`
}

// LoadAverages are the 1, 5 and 15 minute load averages (/proc/loadavg)
// when the bench began and when it ended; zero where unreadable.
type LoadAverages struct {
	Start [3]float64 `json:"start"`
	End   [3]float64 `json:"end"`
}

// Settings are the effective sizes of a bench (Options after defaults).
type Settings struct {
	Engines          []string `json:"engines"`
	Workloads        []string `json:"workloads"`
	W1Orchestrations int      `json:"w1Orchestrations"`
	W1Steps          int      `json:"w1Steps"`
	W2Orchestrations int      `json:"w2Orchestrations"`
	W2Fanout         int      `json:"w2Fanout"`
	SoloRuns         int      `json:"soloRuns"`
	Concurrency      int      `json:"concurrency"`
	// Repeat is how many times W1 and W2 ran on each engine; CeilingOps
	// how many operations of each kind Ceiling did.
	Repeat     int `json:"repeat"`
	CeilingOps int `json:"ceilingOps"`
	// W3 and W4's sizes (see Options).
	W3Missions        int     `json:"w3Missions"`
	W3FrameIntervalMs float64 `json:"w3FrameIntervalMs"`
	W3SpeedMps        float64 `json:"w3SpeedMps"`
	W3Batch           int     `json:"w3Batch"`
	W4Drones          int     `json:"w4Drones"`
	W4FramesPerDrone  int     `json:"w4FramesPerDrone"`
	W4Batch           int     `json:"w4Batch"`
}

func settingsOf(o Options) Settings {
	return Settings{
		Engines: o.Engines, Workloads: o.Workloads,
		W1Orchestrations: o.W1Orchestrations, W1Steps: SequenceSteps,
		W2Orchestrations: o.W2Orchestrations, W2Fanout: o.W2Fanout,
		SoloRuns: o.SoloRuns, Concurrency: o.Concurrency,
		Repeat: o.Repeat, CeilingOps: o.CeilingOps,
		W3Missions: o.W3Missions, W3FrameIntervalMs: float64(o.W3FrameInterval) / float64(time.Millisecond),
		W3SpeedMps: o.W3SpeedMps, W3Batch: o.W3Batch,
		W4Drones: o.W4Drones, W4FramesPerDrone: o.W4FramesPerDrone, W4Batch: o.W4Batch,
	}
}

// EngineInfo names an engine and the storage it ran on (without secrets).
type EngineInfo struct {
	Name    string `json:"name"`
	Storage string `json:"storage"`
}

// Result is one workload measured on one engine. Times are measured over a
// window that begins just before the first orchestration is scheduled and
// ends when the last one's completion has been committed by the worker.
//
// For W3 an orchestration is a mission: Orchestrations, the rates and
// LatencyMs are the missions' (LatencyMs from the StartMission call to the
// turn that completed the mission), Activities are the mission activities
// that returned without error, ActivitiesPerOrchestration is 0 (it varies),
// and Missions has the rest. W4 runs no orchestration: its figures are in
// Ingest, with the common CPU, RSS and request fields. Ceiling runs no
// orchestration either: its figures are in Ceiling, and Seconds is the sum
// of its four measured windows.
//
// When W1 and W2 ran more than once (Options.Repeat), the figures are the
// median run's and Repetitions has every run's window.
type Result struct {
	Engine   string `json:"engine"`
	Workload string `json:"workload"`
	// Orchestrations were run, each with ActivitiesPerOrchestration
	// activities: Activities is their product, the activity tasks that
	// completed. ActivityExecutions counts the runs of the activity
	// function, more than Activities if a work item was delivered again.
	Orchestrations             int `json:"orchestrations"`
	ActivitiesPerOrchestration int `json:"activitiesPerOrchestration"`
	Activities                 int `json:"activities"`
	ActivityExecutions         int `json:"activityExecutions"`
	// Concurrency is the bound on orchestration and on activity work items.
	Concurrency int `json:"concurrency"`
	// Seconds is the measured window.
	Seconds float64 `json:"seconds"`
	// OrchestrationsPerSecond and ActivitiesPerSecond are Orchestrations
	// and Activities over the window. For the solo workloads they are the
	// serial rate, not a capacity.
	OrchestrationsPerSecond float64 `json:"orchestrationsPerSecond"`
	ActivitiesPerSecond     float64 `json:"activitiesPerSecond"`
	// LatencyMs is each orchestration's time from the call that schedules
	// it to the worker's commit of its completion. For the solo workloads
	// it is the latency of an orchestration on an idle worker.
	LatencyMs Percentiles `json:"latencyMs"`
	// GapMs, for sequences, is the time from one activity's return to the
	// next activity's start in the same orchestration: committing the
	// result, running the orchestrator's turn, dispatching the next one.
	GapMs *Percentiles `json:"gapMs,omitempty"`
	// Requests are the storage requests of the worker's backend during the
	// window, when the backend counts them (taskhub.RequestCounter). The
	// client has a backend of its own, not counted.
	Requests *Requests `json:"requests,omitempty"`
	// RequestsPerSecondOfCeiling, for DronehubAzure's W1 and W2 when
	// Ceiling ran on it in the same bench, is Requests.PerSecond divided by
	// Ceiling.RequestsPerSecond: the share of the storage's raw request
	// rate at the same concurrency that the engine's worker used.
	RequestsPerSecondOfCeiling float64 `json:"requestsPerSecondOfCeiling,omitempty"`
	// Repetitions, for W1 and W2 run more than once (Options.Repeat), has
	// every run's window; the other figures are the median run's.
	Repetitions *Repetitions `json:"repetitions,omitempty"`
	// CPUSeconds is the process's user and system CPU time over the window
	// (getrusage): the workers, the in-process client and the bench's own
	// bookkeeping; CPUPerActivityUs divides it by Activities. Zero where
	// getrusage is not available.
	CPUSeconds       float64 `json:"cpuSeconds"`
	CPUPerActivityUs float64 `json:"cpuPerActivityUs"`
	// PeakRSSBytes is the process's resident-set high-water mark (VmHWM),
	// reset at the start of the window, so it is the peak during this
	// workload, of the whole process. PeakRSSOfProcess is true when the
	// mark could not be reset: it is then the peak since the process began.
	// Zero where /proc is not available.
	PeakRSSBytes     int64 `json:"peakRssBytes,omitempty"`
	PeakRSSOfProcess bool  `json:"peakRssOfProcess,omitempty"`
	// VsBaseline compares the result with the Baseline engine's result for
	// the same workload, when the baseline ran.
	VsBaseline *Ratios `json:"vsBaseline,omitempty"`
	// Missions holds W3's own figures; nil for other workloads.
	Missions *MissionFigures `json:"missions,omitempty"`
	// Ingest holds W4's figures; nil for other workloads.
	Ingest *IngestFigures `json:"ingest,omitempty"`
	// Ceiling holds Ceiling's figures; nil for other workloads.
	Ceiling *CeilingFigures `json:"ceiling,omitempty"`
}

// Repetitions are the runs of a W1 or W2 run Options.Repeat times back to
// back on the same engine, each on fresh instance ids.
type Repetitions struct {
	// Seconds is each run's window, in the order they ran.
	Seconds []float64 `json:"seconds"`
	// Median is the run (1-based, in Seconds' order) whose figures the
	// Result reports: the median by window, the faster of the two middle
	// runs for an even count.
	Median int `json:"median"`
	// SlowestToMedian is the slowest run's window divided by the median
	// run's: at least 1 (issue #8 asks for no run above 2).
	SlowestToMedian float64 `json:"slowestToMedian"`
	// ActivityExecutions is each run's count of activity function runs,
	// and ExactlyOnce whether in every run it equalled Result.Activities:
	// every activity ran exactly once (every orchestration completed, so
	// each ran at least once).
	ActivityExecutions []int `json:"activityExecutions"`
	ExactlyOnce        bool  `json:"exactlyOnce"`
}

// CeilingFigures are Ceiling's figures: the raw rate of an Azure Storage
// account (or Azurite) through the Azure SDK's clients, without an engine:
// OpsPerKind operations of each kind, Concurrency at a time, on a scratch
// queue and table created for it and deleted after. The kinds run one after the other: enqueue,
// dequeue+delete (of the messages enqueued), batch, point read (of the rows
// the batches wrote).
type CeilingFigures struct {
	// Storage names the account (without secrets) and the scratch queue
	// and table.
	Storage     string `json:"storage"`
	OpsPerKind  int    `json:"opsPerKind"`
	Concurrency int    `json:"concurrency"`
	// Enqueue is one message (64 bytes) put on the queue per operation.
	Enqueue CeilingKind `json:"enqueue"`
	// DequeueDelete is one message dequeued then deleted per operation (two
	// requests).
	DequeueDelete CeilingKind `json:"dequeueDelete"`
	// PointRead is one GetEntity of an existing row per operation.
	PointRead CeilingKind `json:"pointRead"`
	// Batch is one transaction of 10 upserts (InsertReplace) in a partition
	// of its own per operation.
	Batch CeilingKind `json:"batch"`
	// RequestsPerSecond is the four kinds' requests over the sum of their
	// windows: the rate of a mix with as many operations of each kind.
	RequestsPerSecond float64 `json:"requestsPerSecond"`
}

// CeilingKind is one kind of operation of Ceiling.
type CeilingKind struct {
	// Ops operations made Requests storage requests over Seconds, from the
	// first one's start to the last one's end: PerSecond operations a
	// second.
	Ops       int     `json:"ops"`
	Requests  int     `json:"requests"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"perSecond"`
	// LatencyMs is each operation's time (for DequeueDelete, both
	// requests).
	LatencyMs Percentiles `json:"latencyMs"`
	// Empty counts the dequeues that found no message visible and were
	// tried again (DequeueDelete only).
	Empty int `json:"empty,omitempty"`
}

// kinds returns the four kinds with their names.
func (c *CeilingFigures) kinds() []struct {
	name string
	k    CeilingKind
} {
	return []struct {
		name string
		k    CeilingKind
	}{{"enqueue", c.Enqueue}, {"dequeue+delete", c.DequeueDelete}, {"point read", c.PointRead}, {"batch of 10", c.Batch}}
}

// operations is the number of operations of every kind.
func (c *CeilingFigures) operations() int {
	n := 0
	for _, k := range c.kinds() {
		n += k.k.Ops
	}
	return n
}

// MissionFigures are W3's figures beyond the common ones.
type MissionFigures struct {
	// Storage is the fresh storage the workload's worker ran on.
	Storage string `json:"storage"`
	// Missions were started; Failed of them did not end as a completed
	// delivery (Failures names the first ones and why). With no fault
	// injected Failed must be 0: the workload fails otherwise.
	Missions int      `json:"missions"`
	Failed   int      `json:"failed"`
	Failures []string `json:"failures,omitempty"`
	// FrameIntervalMs, SpeedMps and Batch are the simulation's settings.
	FrameIntervalMs float64 `json:"frameIntervalMs"`
	SpeedMps        float64 `json:"speedMps"`
	Batch           int     `json:"batch"`
	// TelemetryToStatusMs is, for the frames that move a sampled mission to
	// its next phase, the time from the answer to the post that carried the
	// frame to the first poll of the mission's status (every StatusPollMs)
	// that shows the phase; TelemetryToStatusFromSendMs the same from the
	// moment the post was sent. The frame was applied, and its signal
	// raised, somewhere between the two. TelemetryToStatusUnobserved counts
	// the samples whose mission ended without showing it. SampledMissions
	// is how many missions were sampled (every k-th, at most 20).
	TelemetryToStatusMs         Percentiles `json:"telemetryToStatusMs"`
	TelemetryToStatusFromSendMs Percentiles `json:"telemetryToStatusFromSendMs"`
	TelemetryToStatusUnobserved int         `json:"telemetryToStatusUnobserved,omitempty"`
	// TelemetryToStatusByPhaseMs is TelemetryToStatusMs for each phase the
	// frames moved a mission to (the first, PickedUp, comes while the
	// starts of every mission are still being worked through).
	TelemetryToStatusByPhaseMs map[string]Percentiles `json:"telemetryToStatusByPhaseMs,omitempty"`
	SampledMissions            int                    `json:"sampledMissions"`
	StatusPollMs               float64                `json:"statusPollMs"`
	// TickMs is the time from one tick's start to the next's while drones
	// fly: FrameInterval when the worker takes a tick's posts in time,
	// longer when it does not (a drone then reports less often than once
	// a FrameInterval); MaxTickMs is the longest.
	TickMs    Percentiles `json:"tickMs"`
	MaxTickMs float64     `json:"maxTickMs"`
	// Frames were posted in Posts posts (FramesPerSecond over the window);
	// Signals is the sum of the posts' "signals" (events raised to
	// missions). Retries counts posts sent again after a 503, a 429 or no
	// answer; Duplicates the frames those answered as already applied.
	Frames          int     `json:"frames"`
	Posts           int     `json:"posts"`
	FramesPerSecond float64 `json:"framesPerSecond"`
	Signals         int     `json:"signals"`
	Retries         int     `json:"retries"`
	Duplicates      int     `json:"duplicates"`
	// CPUPerMissionMs is Result.CPUSeconds per mission.
	CPUPerMissionMs float64 `json:"cpuPerMissionMs"`
	// RSS is the resident set over the workload, sampled every few seconds.
	RSS RSSFigures `json:"rss"`
}

// RSSFigures describe the process's resident set (VmRSS) over a workload:
// at its end, and the smallest and largest sample of its second half (close
// together when memory stays flat, apart when it grows).
type RSSFigures struct {
	EndBytes           int64   `json:"endBytes,omitempty"`
	SecondHalfMinBytes int64   `json:"secondHalfMinBytes,omitempty"`
	SecondHalfMaxBytes int64   `json:"secondHalfMaxBytes,omitempty"`
	Samples            int     `json:"samples"`
	SampleEverySeconds float64 `json:"sampleEverySeconds"`
}

// IngestFigures are W4's figures.
type IngestFigures struct {
	// Storage is the fresh storage the workload's worker ran on.
	Storage string `json:"storage"`
	// Drones each sent FramesPerDrone frames, in posts of Batch frames,
	// from Bridges bridges posting at once.
	Drones         int `json:"drones"`
	FramesPerDrone int `json:"framesPerDrone"`
	Batch          int `json:"batch"`
	Bridges        int `json:"bridges"`
	// Frames in Posts, over the window (first post sent to last answer).
	Frames          int     `json:"frames"`
	Posts           int     `json:"posts"`
	FramesPerSecond float64 `json:"framesPerSecond"`
	PostsPerSecond  float64 `json:"postsPerSecond"`
	// PostLatencyMs is each post's time from its first send to its answer
	// (retries included).
	PostLatencyMs Percentiles `json:"postLatencyMs"`
	// Retries counts posts sent again after a 503, a 429 or no answer.
	Retries int `json:"retries"`
	// The verdicts of the answers.
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	Stale      int `json:"stale"`
	Rejected   int `json:"rejected"`
	// CPUPerFrameUs is Result.CPUSeconds per frame.
	CPUPerFrameUs float64 `json:"cpuPerFrameUs"`
	// VerifiedDrones is how many drones' stored state was read back and
	// found equal to the last frame sent to them (all of them, or the
	// workload fails).
	VerifiedDrones int `json:"verifiedDrones"`
}

// Solo reports whether r is a solo workload (one orchestration at a time).
func (r Result) Solo() bool { return r.Workload == SoloW1 || r.Workload == SoloW2 }

// Simulated reports whether r is W3 or W4, which ran a dronehub worker and
// the simulator instead of the bench's orchestrations.
func (r Result) Simulated() bool { return r.Missions != nil || r.Ingest != nil }

// TaskHub reports whether r is W1, W2 or a solo workload, which ran the
// bench's orchestrations on the engine's task-hub stack.
func (r Result) TaskHub() bool { return !r.Simulated() && r.Ceiling == nil }

// Percentiles of a set of durations, in milliseconds (nearest rank: with 20
// samples, P99 is the largest).
type Percentiles struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	// N is the number of samples.
	N int `json:"n"`
}

// Requests are storage requests counted during a window.
type Requests struct {
	Total int64 `json:"total"`
	// PerSecond is Total over the window.
	PerSecond        float64 `json:"perSecond"`
	PerActivity      float64 `json:"perActivity"`
	PerOrchestration float64 `json:"perOrchestration"`
	// PerFrame is per telemetry frame posted (W3 and W4).
	PerFrame float64 `json:"perFrame,omitempty"`
	// ByKind breaks them down by request kind, e.g. "queue.dequeue".
	ByKind map[string]KindRequests `json:"byKind"`
}

// KindRequests are the requests of one kind.
type KindRequests struct {
	Count            int64   `json:"count"`
	PerActivity      float64 `json:"perActivity"`
	PerOrchestration float64 `json:"perOrchestration"`
	PerFrame         float64 `json:"perFrame,omitempty"`
}

// Ratios compare a result with the baseline's result for the same workload:
// the result's figure divided by the baseline's. Throughput above 1 is
// faster than the baseline; latency, gap and CPU below 1 are better. A
// ratio is 0 where either figure is missing.
type Ratios struct {
	Baseline       string  `json:"baseline"`
	Throughput     float64 `json:"throughput"`
	LatencyP50     float64 `json:"latencyP50"`
	LatencyP99     float64 `json:"latencyP99"`
	GapP50         float64 `json:"gapP50,omitempty"`
	CPUPerActivity float64 `json:"cpuPerActivity,omitempty"`
}

// compare sets VsBaseline on every result whose workload the baseline ran.
func (r *Report) compare() {
	base := map[string]Result{}
	for _, res := range r.Results {
		if res.Engine == Baseline {
			base[res.Workload] = res
		}
	}
	for i := range r.Results {
		b, ok := base[r.Results[i].Workload]
		if !ok {
			continue
		}
		res := &r.Results[i]
		v := &Ratios{
			Baseline:       Baseline,
			Throughput:     ratio(res.OrchestrationsPerSecond, b.OrchestrationsPerSecond),
			LatencyP50:     ratio(res.LatencyMs.P50, b.LatencyMs.P50),
			LatencyP99:     ratio(res.LatencyMs.P99, b.LatencyMs.P99),
			CPUPerActivity: ratio(res.CPUPerActivityUs, b.CPUPerActivityUs),
		}
		if res.GapMs != nil && b.GapMs != nil {
			v.GapP50 = ratio(res.GapMs.P50, b.GapMs.P50)
		}
		res.VsBaseline = v
	}
}

// relateToCeiling sets RequestsPerSecondOfCeiling on DronehubAzure's W1 and
// W2 results when Ceiling ran on DronehubAzure too.
func (r *Report) relateToCeiling() {
	i := slices.IndexFunc(r.Results, func(res Result) bool { return res.Engine == DronehubAzure && res.Ceiling != nil })
	if i < 0 {
		return
	}
	c := r.Results[i].Ceiling
	for j := range r.Results {
		res := &r.Results[j]
		if res.Engine == DronehubAzure && (res.Workload == W1 || res.Workload == W2) && res.Requests != nil {
			res.RequestsPerSecondOfCeiling = ratio(res.Requests.PerSecond, c.RequestsPerSecond)
		}
	}
}

func ratio(a, b float64) float64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	return a / b
}
