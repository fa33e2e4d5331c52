// Package artifacts keeps what a failed test needs to be understood (worker
// logs above all) after the test's temporary directory is gone, and formats
// the tails of those files for the failure message.
//
// Files go to $DRONEHUB_TEST_ARTIFACTS/<test>-<time> when that variable is
// set (CI can archive that directory), else to
// <os.TempDir()>/dronehub-test-artifacts/<test>-<time>. The package imports
// nothing of dronehub, so every test package can use it.
package artifacts

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Env names the directory under which artifacts are kept.
const Env = "DRONEHUB_TEST_ARTIFACTS"

var (
	mu   sync.Mutex
	dirs = map[testing.TB]string{}
)

// Dir returns the artifact directory of t, creating it on first use: one
// per test, so calls made while reporting a failure and from the test's
// cleanups share it.
func Dir(t testing.TB) (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if d, ok := dirs[t]; ok {
		return d, nil
	}
	base := os.Getenv(Env)
	if base == "" {
		base = filepath.Join(os.TempDir(), "dronehub-test-artifacts")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := strings.NewReplacer("/", "_", " ", "_", ":", "_").Replace(t.Name())
	d := filepath.Join(base, fmt.Sprintf("%s-%s-%s", name, time.Now().Format("20060102-150405"), hex.EncodeToString(b)))
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", err
	}
	// Kept for the life of the test binary: the failure report and the
	// cleanups that run after it must find the same directory.
	dirs[t] = d
	return d, nil
}

// Copy copies the files into t's artifact directory (a file that does not
// exist is skipped; a later copy of the same file replaces the earlier one)
// and returns the directory.
func Copy(t testing.TB, files ...string) (string, error) {
	d, err := Dir(t)
	if err != nil {
		return "", err
	}
	var errs []string
	for _, f := range files {
		if err := copyFile(f, filepath.Join(d, filepath.Base(f))); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return d, fmt.Errorf("copy artifacts: %s", strings.Join(errs, "; "))
	}
	return d, nil
}

// WriteFile stores data as name in t's artifact directory and returns its path.
func WriteFile(t testing.TB, name string, data []byte) (string, error) {
	d, err := Dir(t)
	if err != nil {
		return "", err
	}
	p := filepath.Join(d, name)
	return p, os.WriteFile(p, data, 0o644)
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Tail returns the last n lines of the file, each line cut to 400 bytes.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		if len(l) > 400 {
			lines[i] = l[:400] + "…"
		}
	}
	return strings.Join(lines, "\n")
}

// Report copies the files into t's artifact directory and returns a block
// for a failure message: where they are kept, then the last tail lines of
// each.
func Report(t testing.TB, tail int, files ...string) string {
	var sb strings.Builder
	d, err := Copy(t, files...)
	switch {
	case d == "":
		fmt.Fprintf(&sb, "(logs not kept: %v)\n", err)
	case err != nil:
		fmt.Fprintf(&sb, "logs kept in %s (%v)\n", d, err)
	default:
		fmt.Fprintf(&sb, "logs kept in %s\n", d)
	}
	for _, f := range files {
		fmt.Fprintf(&sb, "--- %s, last %d lines ---\n%s\n", filepath.Base(f), tail, Tail(f, tail))
	}
	return sb.String()
}

// KeepOnFailure registers a cleanup that, if t has failed by then, copies
// the files listed by files (called then, so it may name files created
// later) into t's artifact directory and logs where they are. Cleanups run
// last-registered first: register it after the t.TempDir call that holds
// the files (so it runs before their removal) and before the cleanups that
// stop the processes writing them (so the copies are complete).
func KeepOnFailure(t testing.TB, files func() []string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		fs := files()
		if len(fs) == 0 {
			return
		}
		d, err := Copy(t, fs...)
		if err != nil {
			t.Logf("keeping logs of the failed test: %v", err)
		}
		if d != "" {
			t.Logf("logs of the failed test kept in %s", d)
		}
	})
}
