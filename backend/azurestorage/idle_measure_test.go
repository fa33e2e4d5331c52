package azurestorage

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"
)

// TestIdleRequestRateDefaults measures an idle worker at the default
// settings (wake-ups on, IdlePollInterval 15 s, LeaseDuration 15 s) over a
// minute, after a 45 s back-off ramp. It is a measurement, not a check, and
// takes nearly two minutes, so it runs only when asked for:
//
//	DRONEHUB_MEASURE_IDLE=1 CI=true go test -count=1 -run TestIdleRequestRateDefaults -v ./backend/azurestorage
func TestIdleRequestRateDefaults(t *testing.T) {
	if os.Getenv("DRONEHUB_MEASURE_IDLE") == "" {
		t.Skip("a two-minute measurement: set DRONEHUB_MEASURE_IDLE=1")
	}
	b := openTest(t, Options{Partitions: 4, MaxPollInterval: time.Second})
	const ramp, window = 45 * time.Second, 60 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), ramp+window)
	defer cancel()
	b.lm.waitReady(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); b.GetActivityWorkItem(ctx) }()
	go func() { defer wg.Done(); b.GetOrchestrationWorkItem(ctx) }()
	time.Sleep(ramp)
	b.Counter().Reset()
	<-ctx.Done()
	wg.Wait()
	t.Logf("idle, defaults (wake-ups on, IdlePollInterval %s, LeaseDuration %s), 4 partitions: %d requests in %s (%s)", b.opts.IdlePollInterval, b.opts.LeaseDuration, b.Counter().Total(), window, b.Counter())
}
