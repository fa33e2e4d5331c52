package azurestorage

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"

	"github.com/dronehub/dronehub/internal/azurite"
)

// azr is the one Azurite server the package's tests share.
var azr azurite.Shared

func TestMain(m *testing.M) {
	// On disk, not in memory: in memory, Azurite keeps every queue message
	// ever written as an extent and frees them in a sweep that blocks it
	// for tens of seconds once a few thousand have piled up (the tests here
	// write tens of thousands), which made unrelated tests time out.
	dir, err := os.MkdirTemp("", "azurestorage-azurite-")
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

// testHub returns a fresh hub name, so tests sharing a server do not meet.
func testHub(t testing.TB) string {
	t.Helper()
	b := make([]byte, 5)
	rand.Read(b)
	return "t" + hex.EncodeToString(b)
}
