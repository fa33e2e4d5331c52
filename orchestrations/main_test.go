package orchestrations_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/dronehub/dronehub/internal/azurite"
)

// azr is the Azurite server this package's tests share.
var azr azurite.Shared

func TestMain(m *testing.M) {
	// On disk: an in-memory Azurite stalls for tens of seconds when it
	// sweeps thousands of old queue messages (see backend/azurestorage).
	dir, err := os.MkdirTemp("", "orchestrations-azurite-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	azr.Options = azurite.Options{Location: dir}
	code := m.Run()
	azr.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}
