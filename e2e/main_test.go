package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dronehub/dronehub/internal/azurite"
)

// dronehubBin is the dronehub binary built by TestMain.
var dronehubBin string

// shared is the Azurite server (on-disk persistence) of the tests that do
// not stop it; TestAzuriteOutage runs its own.
var shared = azurite.Shared{}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "dronehub-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: temp dir: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)

	start := time.Now()
	dronehubBin = filepath.Join(dir, "dronehub")
	// Built without -race: the workers share two cores with Azurite, and
	// the race detector would slow them several times over.
	build := exec.Command(goTool(), "build", "-o", dronehubBin, "github.com/dronehub/dronehub/cmd/dronehub")
	build.Dir = ".." // the module root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/dronehub: %v\n%s", err, out)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: built %s in %s\n", dronehubBin, time.Since(start).Round(time.Millisecond))

	loc := filepath.Join(dir, "azurite")
	if err := os.MkdirAll(loc, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	shared.Options = azurite.Options{Location: loc}
	code := m.Run()
	shared.Close()
	return code
}

// goTool is the go command: the one on PATH, else the one in GOROOT.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	return "go"
}
