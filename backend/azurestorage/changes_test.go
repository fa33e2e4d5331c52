package azurestorage

import (
	"testing"
	"time"

	"github.com/dronehub/dronehub/backend/backendtest"
	"github.com/dronehub/dronehub/taskhub"
)

func TestInstancesChangedSince(t *testing.T) {
	backendtest.RunChangeLister(t, func(t *testing.T) taskhub.Backend {
		return openTest(t, Options{Partitions: 2, LockTimeout: 2 * time.Second})
	})
}
