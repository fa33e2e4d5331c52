package sqlite_test

import (
	"testing"

	"github.com/dronehub/dronehub/backend/backendtest"
	"github.com/dronehub/dronehub/taskhub"
)

func TestAddNewOrchestrationEvents(t *testing.T) {
	backendtest.RunEventRaiser(t, func(t *testing.T) taskhub.Backend { return newBackend(t) })
}
