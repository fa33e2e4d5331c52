package bench

import (
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
}

func settingsOf(o Options) Settings {
	return Settings{
		Engines: o.Engines, Workloads: o.Workloads,
		W1Orchestrations: o.W1Orchestrations, W1Steps: SequenceSteps,
		W2Orchestrations: o.W2Orchestrations, W2Fanout: o.W2Fanout,
		SoloRuns: o.SoloRuns, Concurrency: o.Concurrency,
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
}

// Solo reports whether r is a solo workload (one orchestration at a time).
func (r Result) Solo() bool { return r.Workload == SoloW1 || r.Workload == SoloW2 }

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
	Total            int64   `json:"total"`
	PerActivity      float64 `json:"perActivity"`
	PerOrchestration float64 `json:"perOrchestration"`
	// ByKind breaks them down by request kind, e.g. "queue.dequeue".
	ByKind map[string]KindRequests `json:"byKind"`
}

// KindRequests are the requests of one kind.
type KindRequests struct {
	Count            int64   `json:"count"`
	PerActivity      float64 `json:"perActivity"`
	PerOrchestration float64 `json:"perOrchestration"`
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

func ratio(a, b float64) float64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	return a / b
}
