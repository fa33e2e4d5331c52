//go:build unix

package bench

import (
	"syscall"
	"time"
)

// processCPU returns the process's user and system CPU time so far
// (getrusage RUSAGE_SELF), or 0 if it cannot be read.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
