package sqlite_test

import (
	"testing"

	"github.com/dronehub/dronehub/backend/backendtest"
	"github.com/dronehub/dronehub/taskhub"
)

func TestInstancesChangedSince(t *testing.T) {
	backendtest.RunChangeLister(t, func(t *testing.T) taskhub.Backend { return newBackend(t) })
}
