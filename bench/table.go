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
// per result, the repetitions of W1 and W2, the requests by kind of the
// engines that count them, the storage's ceiling, and the notes.
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
	settings := settingsLine(s)
	if s.Repeat > 1 {
		switch w1, w2 := slices.Contains(s.Workloads, W1), slices.Contains(s.Workloads, W2); {
		case w1 && w2:
			settings += fmt.Sprintf(", w1 and w2 run %d times each", s.Repeat)
		case w1:
			settings += fmt.Sprintf(", w1 run %d times", s.Repeat)
		case w2:
			settings += fmt.Sprintf(", w2 run %d times", s.Repeat)
		}
	}
	fmt.Fprintln(w, settings)
	if err := r.writeTaskHubTable(w); err != nil {
		return err
	}
	r.writeCeiling(w)
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
	if !slices.ContainsFunc(r.Results, Result.TaskHub) {
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENGINE\tWORKLOAD\tORCH×ACT\tORCH/S\tACT/S\tP50\tP99\tGAP P50\tREQ/ACT\tREQ/ORCH\tCPU/ACT\tPEAK RSS\tTHRU×\tP50×")
	for _, res := range r.Results {
		if !res.TaskHub() {
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
	r.writeRepetitions(w)

	var kinds []string
	for _, res := range r.Results {
		if res.Requests == nil || len(res.Requests.ByKind) == 0 || !res.TaskHub() {
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

// writeRepetitions writes a line per W1 or W2 that ran more than once.
func (r *Report) writeRepetitions(w io.Writer) {
	first := true
	for _, res := range r.Results {
		p := res.Repetitions
		if p == nil || len(p.Seconds) < 2 {
			continue
		}
		if first {
			fmt.Fprintln(w)
			first = false
		}
		line := fmt.Sprintf("repetitions: %s %s: %d runs %s, slowest %.2f× the median",
			res.Engine, res.Workload, len(p.Seconds), secondsRange(slices.Min(p.Seconds), slices.Max(p.Seconds)), p.SlowestToMedian)
		if !p.ExactlyOnce {
			var again []string
			for i, n := range p.ActivityExecutions {
				if n != res.Activities {
					again = append(again, fmt.Sprintf("run %d: %d executions", i+1, n))
				}
			}
			line += fmt.Sprintf(", activities ran more than once (%d activities a run; %s)", res.Activities, strings.Join(again, ", "))
		}
		fmt.Fprintln(w, line)
	}
}

// writeCeiling writes Ceiling's figures, if it ran, and the share of its
// request rate that W1 and W2 used on the same engine.
func (r *Report) writeCeiling(w io.Writer) {
	for _, res := range r.Results {
		c := res.Ceiling
		if c == nil {
			continue
		}
		var parts []string
		for _, k := range c.kinds() {
			parts = append(parts, fmt.Sprintf("%s %s/s", k.name, rate(k.k.PerSecond)))
		}
		fmt.Fprintf(w, "\nazure ceiling (raw SDK, concurrency %d): %s\n", c.Concurrency, strings.Join(parts, ", "))
		fmt.Fprintf(w, "  %d operations of each kind on a scratch queue and table, one kind at a time: %s storage requests/s over the four\n",
			c.OpsPerKind, rate(c.RequestsPerSecond))
		for _, o := range r.Results {
			if o.Engine == res.Engine && o.RequestsPerSecondOfCeiling > 0 && o.Requests != nil {
				fmt.Fprintf(w, "  %s %s: the worker made %s storage requests/s, %.2f× the ceiling's\n",
					o.Engine, o.Workload, rate(o.Requests.PerSecond), o.RequestsPerSecondOfCeiling)
			}
		}
	}
}

// secondsRange writes lo to hi (seconds): "4.05–4.61 s", or in
// milliseconds below a second.
func secondsRange(lo, hi float64) string {
	if hi >= 1 {
		return fmt.Sprintf("%.2f–%.2f s", lo, hi)
	}
	return millis(lo*1000) + "–" + millis(hi*1000)
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
