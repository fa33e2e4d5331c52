package azurestorage

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/dronehub/dronehub/internal/azurite"
)

// azr is the one Azurite server the package's tests share.
var azr azurite.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	azr.Close()
	os.Exit(code)
}

// testHub returns a fresh hub name, so tests sharing a server do not meet.
func testHub(t testing.TB) string {
	t.Helper()
	b := make([]byte, 5)
	rand.Read(b)
	return "t" + hex.EncodeToString(b)
}
