package azurestorage

import (
	"testing"
	"time"

	"github.com/dronehub/dronehub/backend/backendtest"
	"github.com/dronehub/dronehub/taskhub"
)

func TestAddNewOrchestrationEvents(t *testing.T) {
	backendtest.RunEventRaiser(t, func(t *testing.T) taskhub.Backend {
		return openTest(t, Options{Partitions: 4, LockTimeout: 2 * time.Second})
	})
}
