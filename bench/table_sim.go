package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dronehub/dronehub/domain"
)

// settingsLine describes the sizes of the workloads that ran.
func settingsLine(s Settings) string {
	var parts []string
	ran := func(w string) bool { return len(s.Workloads) == 0 || slices.Contains(s.Workloads, w) }
	if ran(W1) {
		parts = append(parts, fmt.Sprintf("w1 %d×%d", s.W1Orchestrations, s.W1Steps))
	}
	if ran(W2) {
		parts = append(parts, fmt.Sprintf("w2 %d×%d", s.W2Orchestrations, s.W2Fanout))
	}
	if ran(SoloW1) || ran(SoloW2) {
		parts = append(parts, fmt.Sprintf("solo %d runs each", s.SoloRuns))
	}
	if slices.Contains(s.Workloads, W3) {
		parts = append(parts, fmt.Sprintf("w3 %d missions, a frame per drone every %s at %g m/s, posts of ≤%d frames",
			s.W3Missions, time.Duration(s.W3FrameIntervalMs*float64(time.Millisecond)), s.W3SpeedMps, s.W3Batch))
	}
	if slices.Contains(s.Workloads, W4) {
		parts = append(parts, fmt.Sprintf("w4 %d drones × %d frames, posts of %d frames", s.W4Drones, s.W4FramesPerDrone, s.W4Batch))
	}
	return strings.Join(append(parts, fmt.Sprintf("concurrency %d", s.Concurrency)), ", ")
}

// writeSimTables writes the rows of W3 and W4, if they ran, each with its
// requests by kind and its legend.
func (r *Report) writeSimTables(w io.Writer) error {
	var missions, ingest []Result
	for _, res := range r.Results {
		switch {
		case res.Missions != nil:
			missions = append(missions, res)
		case res.Ingest != nil:
			ingest = append(ingest, res)
		}
	}
	if len(missions) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ENGINE\tWORKLOAD\tMISSIONS\tFAILED\tMISSIONS/S\tP50\tP99\tSTATUS P50\tSTATUS P99\tFROM SEND P50\tFRAMES/S\tTICK P50\tTICK MAX\tRETRIES\tSIGNALS/MISSION\tREQ/MISSION\tREQ/FRAME\tCPU/MISSION\tPEAK RSS\tEND RSS\tRSS 2ND HALF")
		for _, res := range missions {
			m := res.Missions
			reqM, reqF := "-", "-"
			if res.Requests != nil {
				reqM, reqF = fmt.Sprintf("%.1f", res.Requests.PerOrchestration), fmt.Sprintf("%.2f", res.Requests.PerFrame)
			}
			cpu := "-"
			if res.CPUSeconds > 0 {
				cpu = millis(m.CPUPerMissionMs)
			}
			half := "-"
			if m.RSS.SecondHalfMaxBytes > 0 {
				half = mib(m.RSS.SecondHalfMinBytes) + "–" + mib(m.RSS.SecondHalfMaxBytes)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\n",
				res.Engine, res.Workload, m.Missions, m.Failed, rate(res.OrchestrationsPerSecond),
				millis(res.LatencyMs.P50), millis(res.LatencyMs.P99),
				millis(m.TelemetryToStatusMs.P50), millis(m.TelemetryToStatusMs.P99), millis(m.TelemetryToStatusFromSendMs.P50),
				rate(m.FramesPerSecond), millis(m.TickMs.P50), millis(m.MaxTickMs), m.Retries, float64(m.Signals)/float64(max(1, m.Missions)),
				reqM, reqF, cpu, peakRSSCell(res), mib(m.RSS.EndBytes), half)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		writeKinds(w, missions, "storage requests per mission by kind (the worker's backend only)",
			func(k KindRequests) float64 { return k.PerOrchestration })
		writeStatusByPhase(w, missions)
		fmt.Fprintf(w, "\nw3: P50, P99: a mission's StartMission call to the turn that completed it. STATUS P50, P99: a frame that\n"+
			"moves a mission to its next phase, from its post's answer to a status poll showing that phase; FROM SEND: from\n"+
			"the post's sending. TICK: one tick's start to the next (the frame interval while the worker keeps up). RETRIES:\n"+
			"posts sent again (503, 429, no answer). SIGNALS/MISSION: events ingestion raised to the missions. CPU/MISSION:\n"+
			"the whole process (worker, simulator, HTTP client) per mission. END RSS, RSS 2ND HALF: resident set at the end,\n"+
			"and the range of its samples (every %s) in the second half of the workload. Status sampled: %s.\n",
			rssSampleEvery, statusSampling(missions))
	}
	if len(ingest) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ENGINE\tWORKLOAD\tDRONES×FRAMES\tBATCH\tFRAMES/S\tPOSTS/S\tPOST P50\tPOST P99\tRETRIES\tREQ/FRAME\tCPU/FRAME\tPEAK RSS\tCHECKED")
		for _, res := range ingest {
			g := res.Ingest
			reqF := "-"
			if res.Requests != nil {
				reqF = fmt.Sprintf("%.2f", res.Requests.PerFrame)
			}
			cpu := "-"
			if res.CPUSeconds > 0 {
				cpu = micros(g.CPUPerFrameUs)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d×%d\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%d/%d drones\n",
				res.Engine, res.Workload, g.Drones, g.FramesPerDrone, g.Batch, rate(g.FramesPerSecond), rate(g.PostsPerSecond),
				millis(g.PostLatencyMs.P50), millis(g.PostLatencyMs.P99), g.Retries, reqF, cpu, peakRSSCell(res), g.VerifiedDrones, g.Drones)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		writeKinds(w, ingest, "storage requests per frame by kind (the worker's backend only)",
			func(k KindRequests) float64 { return k.PerFrame })
		fmt.Fprintf(w, "\nw4: POST P50, P99: per post, first send to answer. CPU/FRAME: the whole process (worker and the bridges'\n"+
			"encoding and HTTP) per frame. CHECKED: drones whose stored state equals the last frame sent to them.\n")
	}
	return nil
}

// writeKinds writes the requests by kind of the results that count them,
// each kind's figure taken by per.
func writeKinds(w io.Writer, rs []Result, title string, per func(KindRequests) float64) {
	var lines []string
	for _, res := range rs {
		if res.Requests == nil || len(res.Requests.ByKind) == 0 {
			continue
		}
		keys := make([]string, 0, len(res.Requests.ByKind))
		for k := range res.Requests.ByKind {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			a, b := res.Requests.ByKind[keys[i]].Count, res.Requests.ByKind[keys[j]].Count
			return a > b || a == b && keys[i] < keys[j]
		})
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s %.2f", k, per(res.Requests.ByKind[k]))
		}
		lines = append(lines, fmt.Sprintf("  %s %s: %s", res.Engine, res.Workload, strings.Join(parts, ", ")))
	}
	if len(lines) > 0 {
		fmt.Fprintf(w, "\n%s:\n%s\n", title, strings.Join(lines, "\n"))
	}
}

// statusSampling says how the status latency was sampled.
func statusSampling(rs []Result) string {
	var parts []string
	for _, res := range rs {
		m := res.Missions
		parts = append(parts, fmt.Sprintf("%s: %d samples of %d missions, polled every %s", res.Engine,
			m.TelemetryToStatusMs.N, m.SampledMissions, millis(m.StatusPollMs)))
	}
	return strings.Join(parts, "; ")
}

func peakRSSCell(res Result) string {
	if res.PeakRSSBytes <= 0 {
		return "-"
	}
	s := mib(res.PeakRSSBytes)
	if res.PeakRSSOfProcess {
		s += "*"
	}
	return s
}

func mib(b int64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
}

// writeStatusByPhase lists STATUS P50/P99 for each phase a frame moved a
// sampled mission to, in the order missions go through them.
func writeStatusByPhase(w io.Writer, rs []Result) {
	var lines []string
	for _, res := range rs {
		by := res.Missions.TelemetryToStatusByPhaseMs
		if len(by) == 0 {
			continue
		}
		phases := slices.Collect(maps.Keys(by))
		slices.SortFunc(phases, func(a, b string) int {
			switch {
			case domain.Phase(a).Before(domain.Phase(b)):
				return -1
			case domain.Phase(b).Before(domain.Phase(a)):
				return 1
			}
			return strings.Compare(a, b)
		})
		var parts []string
		for _, p := range phases {
			pc := by[p]
			parts = append(parts, fmt.Sprintf("%s %s/%s", p, millis(pc.P50), millis(pc.P99)))
		}
		lines = append(lines, fmt.Sprintf("  %s %s: %s", res.Engine, res.Workload, strings.Join(parts, ", ")))
	}
	if len(lines) > 0 {
		fmt.Fprintf(w, "\nstatus p50/p99 by the phase the frame moved the mission to:\n%s\n", strings.Join(lines, "\n"))
	}
}
