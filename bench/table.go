package bench

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
)

// WriteTable writes the report as an aligned table: the conditions, one row
// per result, the requests by kind of the engines that count them, and the
// notes.
func (r *Report) WriteTable(w io.Writer) error {
	m := r.Machine
	cpu := fmt.Sprintf("%d CPUs", m.CPUs)
	if m.CPUModel != "" {
		cpu += " (" + m.CPUModel + ")"
	}
	mem := ""
	if m.MemoryBytes > 0 {
		mem = fmt.Sprintf(", %.1f GiB", float64(m.MemoryBytes)/(1<<30))
	}
	s, la := r.Settings, r.LoadAverage
	fmt.Fprintf(w, "dronehub bench, %s, %s %s/%s, %s%s, load average %.2f %.2f %.2f at the start, %.2f %.2f %.2f at the end\n",
		r.Date.Format("2006-01-02 15:04 UTC"), r.GoVersion, m.OS, m.Arch, cpu, mem,
		la.Start[0], la.Start[1], la.Start[2], la.End[0], la.End[1], la.End[2])
	fmt.Fprintln(w, settingsLine(s))
	if err := r.writeTaskHubTable(w); err != nil {
		return err
	}
	if err := r.writeSimTables(w); err != nil {
		return err
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "Note: %s\n", n)
	}
	return nil
}

// writeTaskHubTable writes the rows of the task-hub workloads (W1, W2,
// solo), if any ran, with their requests by kind and their legend.
func (r *Report) writeTaskHubTable(w io.Writer) error {
	if !slices.ContainsFunc(r.Results, func(res Result) bool { return !res.Simulated() }) {
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENGINE\tWORKLOAD\tORCH×ACT\tORCH/S\tACT/S\tP50\tP99\tGAP P50\tREQ/ACT\tREQ/ORCH\tCPU/ACT\tPEAK RSS\tTHRU×\tP50×")
	for _, res := range r.Results {
		if res.Simulated() {
			continue
		}
		thru, acts, thruX := rate(res.OrchestrationsPerSecond), rate(res.ActivitiesPerSecond), "-"
		if res.Solo() {
			thru, acts = "-", "-"
		}
		p50X := "-"
		if v := res.VsBaseline; v != nil {
			if !res.Solo() {
				thruX = times(v.Throughput)
			}
			p50X = times(v.LatencyP50)
		}
		gap := "-"
		if res.GapMs != nil && res.GapMs.N > 0 {
			gap = millis(res.GapMs.P50)
		}
		reqA, reqO := "-", "-"
		if res.Requests != nil {
			reqA, reqO = fmt.Sprintf("%.2f", res.Requests.PerActivity), fmt.Sprintf("%.1f", res.Requests.PerOrchestration)
		}
		cpuA := "-"
		if res.CPUSeconds > 0 {
			cpuA = micros(res.CPUPerActivityUs)
		}
		rss := "-"
		if res.PeakRSSBytes > 0 {
			rss = fmt.Sprintf("%.0f MiB", float64(res.PeakRSSBytes)/(1<<20))
			if res.PeakRSSOfProcess {
				rss += "*"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d×%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			res.Engine, res.Workload, res.Orchestrations, res.ActivitiesPerOrchestration, thru, acts,
			millis(res.LatencyMs.P50), millis(res.LatencyMs.P99), gap, reqA, reqO, cpuA, rss, thruX, p50X)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	var kinds []string
	for _, res := range r.Results {
		if res.Requests == nil || len(res.Requests.ByKind) == 0 || res.Simulated() {
			continue
		}
		keys := make([]string, 0, len(res.Requests.ByKind))
		for k := range res.Requests.ByKind {
			keys = append(keys, k)
		}
		// Largest first.
		sort.Slice(keys, func(i, j int) bool {
			a, b := res.Requests.ByKind[keys[i]].Count, res.Requests.ByKind[keys[j]].Count
			return a > b || a == b && keys[i] < keys[j]
		})
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s %.2f", k, res.Requests.ByKind[k].PerActivity)
		}
		kinds = append(kinds, fmt.Sprintf("  %s %s: %s", res.Engine, res.Workload, strings.Join(parts, ", ")))
	}
	if len(kinds) > 0 {
		fmt.Fprintf(w, "\nstorage requests per activity by kind (the worker's backend only):\n%s\n", strings.Join(kinds, "\n"))
	}

	fmt.Fprintf(w, "\nP50, P99: schedule to completion committed, per orchestration (solo: one at a time on an idle worker).\n"+
		"GAP P50: one activity's return to the next one's start in a sequence. CPU/ACT: the process's user+sys CPU\n"+
		"(workers and in-process client) per activity. PEAK RSS: the whole process's peak during the workload%s.\n"+
		"THRU×, P50×: throughput and p50 latency divided by %s's on the same workload.\n",
		rssNote(r.Results), Baseline)
	return nil
}

func rssNote(rs []Result) string {
	for _, r := range rs {
		if r.PeakRSSOfProcess {
			return " (*: since the process began; the peak could not be reset)"
		}
	}
	return ""
}

func rate(v float64) string {
	switch {
	case v <= 0:
		return "-"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func millis(ms float64) string {
	switch {
	case ms <= 0:
		return "-"
	case ms < 1:
		return fmt.Sprintf("%.0fµs", ms*1000)
	case ms < 10:
		return fmt.Sprintf("%.2fms", ms)
	case ms < 100:
		return fmt.Sprintf("%.1fms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.0fms", ms)
	}
	return fmt.Sprintf("%.2fs", ms/1000)
}

func micros(us float64) string {
	if us >= 1000 {
		return fmt.Sprintf("%.2fms", us/1000)
	}
	return fmt.Sprintf("%.0fµs", us)
}

func times(v float64) string {
	if v <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", v)
}
