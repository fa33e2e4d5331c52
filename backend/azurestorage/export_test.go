package azurestorage

import (
	"testing"
	"time"

	"github.com/dronehub/dronehub/internal/azurite"
)

// SharedAzurite gives external tests of this package the shared server.
func SharedAzurite(t testing.TB) *azurite.Server { return azr.Get(t) }

// FreshHubName gives external tests a fresh hub name.
func FreshHubName(t testing.TB) string { return testHub(t) }

// WithMaxVisibility shortens the queue visibility limit, so a test can see
// long timers being chained.
func WithMaxVisibility(o Options, d time.Duration) Options {
	o.maxVisibility = d
	return o
}
