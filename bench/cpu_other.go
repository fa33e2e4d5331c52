//go:build !unix

package bench

import "time"

// processCPU is not measured here: getrusage is a Unix call.
func processCPU() time.Duration { return 0 }
