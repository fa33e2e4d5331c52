package metrics_test

import (
	"os"
	"testing"

	"github.com/dronehub/dronehub/internal/azurite"
)

// azr is the Azurite server this package's tests share.
var azr azurite.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	azr.Close()
	os.Exit(code)
}
