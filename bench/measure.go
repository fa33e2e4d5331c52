package bench

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/dronehub/dronehub/taskhub"
)

// window measures the process and the worker's storage requests over a
// workload.
type window struct {
	counter  taskhub.RequestCounter
	began    time.Time
	cpu0     time.Duration
	req0     map[string]int64
	rssReset bool
}

// measured is what a window saw.
type measured struct {
	window   time.Duration
	cpu      time.Duration
	peakRSS  int64
	rssReset bool
	requests map[string]int64 // nil without a counter
}

// beginWindow collects garbage and returns memory to the OS, so that the
// peak is this workload's, resets the peak RSS and notes the CPU time and
// request counts so far.
func beginWindow(c taskhub.RequestCounter) *window {
	debug.FreeOSMemory()
	w := &window{counter: c, rssReset: resetPeakRSS() == nil}
	if c != nil {
		w.req0 = c.RequestCounts()
	}
	w.cpu0 = processCPU()
	w.began = time.Now()
	return w
}

// end closes the window at last, the last completion.
func (w *window) end(last time.Time) measured {
	m := measured{window: last.Sub(w.began), cpu: processCPU() - w.cpu0, peakRSS: peakRSS(), rssReset: w.rssReset}
	if w.counter != nil {
		m.requests = map[string]int64{}
		for k, v := range w.counter.RequestCounts() {
			if d := v - w.req0[k]; d > 0 {
				m.requests[k] = d
			}
		}
	}
	return m
}

// peakRSS returns the process's resident-set high-water mark in bytes
// (VmHWM in /proc/self/status), or 0 where it cannot be read.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	return kibField(b, "VmHWM:")
}

// resetPeakRSS resets the high-water mark to the current RSS (Linux 4.0+).
func resetPeakRSS() error {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// kibField reads a "Name:   1234 kB" line of a /proc file as bytes.
func kibField(b []byte, name string) int64 {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0
			}
			return n << 10
		}
	}
	return 0
}

func machineInfo() Machine {
	m := Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0)}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.MemoryBytes = kibField(b, "MemTotal:")
	}
	return m
}

// loadAverage reads /proc/loadavg; zeros where it cannot.
func loadAverage() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	f := strings.Fields(string(b))
	for i := 0; i < 3 && i < len(f); i++ {
		l[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return l
}
