package azurite

import (
	"os"
	"path/filepath"
	"testing"
)

// recorder is a testing.TB that records whether the test was skipped or
// failed instead of stopping it.
type recorder struct {
	testing.TB
	failed, skipped bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Fatalf(string, ...any) { r.failed = true }
func (r *recorder) Skipf(string, ...any)  { r.skipped = true }

// module makes a module root whose node_modules/.bin/azurite is script (or
// absent when script is ""), and runs the test from it.
func module(t *testing.T, script string) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if script != "" {
		bin := filepath.Join(dir, "node_modules", ".bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bin, "azurite"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
}

func TestInstalledButBrokenFailsEvenWithoutCI(t *testing.T) {
	t.Setenv("CI", "")
	module(t, "#!/bin/sh\necho 'azurite: cannot start' >&2\nexit 1\n")
	_, err := start(Options{})
	if err == nil {
		t.Fatal("a broken azurite started")
	}
	r := &recorder{}
	unavailable(r, err)
	if !r.failed || r.skipped {
		t.Fatalf("installed but broken azurite: failed=%v skipped=%v, want a failure (err: %v)", r.failed, r.skipped, err)
	}
}

func TestNotInstalledSkipsOutsideCIAndFailsInCI(t *testing.T) {
	module(t, "")
	_, err := start(Options{})
	if err == nil {
		t.Fatal("a missing azurite started")
	}
	t.Setenv("CI", "")
	r := &recorder{}
	unavailable(r, err)
	if r.failed || !r.skipped {
		t.Fatalf("missing azurite outside CI: failed=%v skipped=%v, want a skip", r.failed, r.skipped)
	}
	t.Setenv("CI", "true")
	r = &recorder{}
	unavailable(r, err)
	if !r.failed {
		t.Fatalf("missing azurite under CI=true was not a failure")
	}
}
