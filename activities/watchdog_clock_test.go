package activities_test

import (
	"sync"
	"time"

	"github.com/dronehub/dronehub/activities"
)

// testClock is a watchdog's two clocks, moved by the test: the wall clock
// (WatchdogOptions.Now), which can be stepped, and the monotonic clock
// (WatchdogOptions.Elapsed), which only moves forward.
type testClock struct {
	mu   sync.Mutex
	wall time.Time
	mono time.Duration
}

func newTestClock(wall time.Time) *testClock { return &testClock{wall: wall, mono: time.Hour} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wall
}

func (c *testClock) Elapsed() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mono
}

// Advance lets d pass on both clocks.
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wall, c.mono = c.wall.Add(d), c.mono+d
}

// StepWall sets the wall clock d forward (or back), as an operator or NTP
// stepping it does; no time passes.
func (c *testClock) StepWall(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wall = c.wall.Add(d)
}

// options returns watchdog options on c.
func (c *testClock) options(silence time.Duration) activities.WatchdogOptions {
	return activities.WatchdogOptions{Silence: silence, Interval: 5 * time.Second, Logger: quiet(), Now: c.Now, Elapsed: c.Elapsed}
}
