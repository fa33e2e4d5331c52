package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dronehub/dronehub/internal/azurite"
	"github.com/dronehub/dronehub/internal/testkit"
)

// run invokes the command line with env as the environment.
func run(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code = Main(ctx, args, &out, &errOut, func(k string) string { return env[k] })
	return code, out.String(), errOut.String()
}

func TestUsageAndUnknownCommands(t *testing.T) {
	t.Parallel()
	if code, _, errOut := run(t, nil); code != 2 || !strings.Contains(errOut, "Usage:") {
		t.Errorf("no args: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := run(t, nil, "fly"); code != 2 || !strings.Contains(errOut, `unknown command "fly"`) {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := run(t, nil, "mission", "launch"); code != 2 || !strings.Contains(errOut, `unknown mission command "launch"`) {
		t.Errorf("unknown mission command: exit %d, stderr %q", code, errOut)
	}
	if code, out, _ := run(t, nil, "help"); code != 0 || !strings.Contains(out, "dronehub worker") {
		t.Errorf("help: exit %d, stdout %q", code, out)
	}
}

func TestWorkerRejectsBadSettingsNamingTheFlag(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"bad duration flag", nil, []string{"--watchdog", "soon"}, "watchdog"},
		{"bad env twin", map[string]string{"DRONEHUB_WATCHDOG": "soon"}, nil, "DRONEHUB_WATCHDOG"},
		{"dashboard interval too short", nil, []string{"--dashboard-interval", "1ms"}, "dashboard interval"},
		{"open address without keys", nil, []string{"--listen", "0.0.0.0:0"}, "--api-keys"},
		{"malformed listen", nil, []string{"--listen", "8080"}, "HOST:PORT"},
		{"bad log level", nil, []string{"--log-level", "loud"}, "--log-level"},
		{"bad storage", nil, []string{"--storage", "postgres://x"}, "unsupported connection string"},
		{"short api key", nil, []string{"--api-keys", "short"}, "at least 16"},
		{"heartbeat too long", nil, []string{"--watchdog", "10s", "--heartbeat", "9s"}, "heartbeat"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"worker", "--listen", "127.0.0.1:0", "--storage", t.TempDir() + "/hub.db"}, tc.args...)
			code, _, errOut := run(t, tc.env, args...)
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q: want a failure mentioning %q", code, errOut, tc.want)
			}
		})
	}
}

func TestFlagBeatsItsEnvironmentVariable(t *testing.T) {
	t.Parallel()
	fs := (&App{Stderr: &bytes.Buffer{}}).flagSet("x", "x")
	a := &App{Stderr: &bytes.Buffer{}, Env: func(k string) string {
		return map[string]string{"DRONEHUB_HUB": "from-env", "DRONEHUB_LISTEN": "10.0.0.1:1"}[k]
	}}
	hub := fs.String("hub", "default", "")
	listen := fs.String("listen", "default", "")
	if err := a.parse(fs, []string{"--listen", "127.0.0.1:9"}); err != nil {
		t.Fatal(err)
	}
	if *hub != "from-env" || *listen != "127.0.0.1:9" {
		t.Fatalf("hub %q listen %q: want the variable where no flag is given, the flag where it is", *hub, *listen)
	}
}

func TestCheckExposure(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		listen         string
		keys, insecure bool
		wantErr        bool
	}{
		{"127.0.0.1:8080", false, false, false},
		{"localhost:8080", false, false, false},
		{"[::1]:8080", false, false, false},
		{":8080", false, false, true},
		{"0.0.0.0:8080", false, false, true},
		{"0.0.0.0:8080", true, false, false},
		{"0.0.0.0:8080", false, true, false},
	} {
		if err := checkExposure(tc.listen, tc.keys, tc.insecure); (err != nil) != tc.wantErr {
			t.Errorf("checkExposure(%q, keys=%t, insecure=%t) = %v, want error %t", tc.listen, tc.keys, tc.insecure, err, tc.wantErr)
		}
	}
}

// TestClientCommandsAgainstAWorker drives a real worker through the mission,
// drone and simulate commands.
func TestClientCommandsAgainstAWorker(t *testing.T) {
	t.Parallel()
	cfg := testkit.Config(t)
	cfg.APIKeys = []string{"test-key-0123456789"}
	w := testkit.Start(t, cfg)
	srv := httptest.NewServer(w.Handler())
	t.Cleanup(srv.Close)
	env := map[string]string{"DRONEHUB_URL": srv.URL, "DRONEHUB_API_KEY": "test-key-0123456789"}

	code, out, errOut := run(t, env, "mission", "start", "--id", "cli-1", "--pickup", "47.6440,-122.1300", "--dropoff", "47.6480,-122.1370", "--package", "pkg-cli")
	if code != 0 || !strings.Contains(out, "mission cli-1 started") {
		t.Fatalf("start: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, _, errOut := run(t, env, "mission", "start", "--pickup", "95,0", "--dropoff", "1,1", "--package", "p"); code != 1 || !strings.Contains(errOut, "pickup.lat") {
		t.Errorf("invalid start: exit %d, stderr %q: want the field named", code, errOut)
	}
	if code, _, errOut := run(t, map[string]string{"DRONEHUB_URL": srv.URL}, "mission", "list"); code != 1 || !strings.Contains(errOut, "HTTP 401") {
		t.Errorf("no key: exit %d, stderr %q", code, errOut)
	}

	code, out, errOut = run(t, env, "simulate", "--attach", "cli-1", "--fps", "200", "--speed", "40")
	if code != 0 || !strings.Contains(out, "Completed") {
		t.Fatalf("simulate: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if !strings.Contains(errOut, "flights over") {
		t.Errorf("simulate shows no progress: %q", errOut)
	}

	code, out, _ = run(t, env, "mission", "status", "cli-1")
	if code != 0 || !strings.Contains(out, "phase           Completed") {
		t.Fatalf("status: exit %d, stdout %q", code, out)
	}
	code, out, _ = run(t, env, "mission", "status", "cli-1", "--json")
	var st struct {
		RuntimeStatus string `json:"runtimeStatus"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.RuntimeStatus != "Completed" {
		t.Fatalf("status --json: exit %d, stdout %q", code, out)
	}
	code, out, _ = run(t, env, "mission", "list", "--status", "Completed")
	if code != 0 || !strings.Contains(out, "cli-1") || !strings.HasPrefix(out, "ID") {
		t.Fatalf("list: exit %d, stdout %q", code, out)
	}
	if code, _, errOut := run(t, env, "mission", "cancel", "cli-1"); code != 1 || !strings.Contains(errOut, "HTTP 410") {
		t.Errorf("cancel after end: exit %d, stderr %q", code, errOut)
	}
	if code, out, _ := run(t, env, "mission", "purge", "cli-1"); code != 0 || !strings.Contains(out, "purged") {
		t.Errorf("purge: exit %d, stdout %q", code, out)
	}
	if code, _, errOut := run(t, env, "mission", "status", "cli-1"); code != 1 || !strings.Contains(errOut, "HTTP 404") {
		t.Errorf("status after purge: exit %d, stderr %q", code, errOut)
	}

	if code, out, _ := run(t, env, "drone", "add", "drone-x", "--home", "47.64,-122.13"); code != 0 || !strings.Contains(out, "drone drone-x added") {
		t.Errorf("drone add: exit %d, stdout %q", code, out)
	}
	if code, out, _ := run(t, env, "drone", "list"); code != 0 || !strings.Contains(out, "drone-x") || !strings.Contains(out, "drone-1") {
		t.Errorf("drone list: exit %d, stdout %q", code, out)
	}
	if code, _, errOut := run(t, env, "drone", "status", "nope"); code != 1 || !strings.Contains(errOut, "HTTP 404") {
		t.Errorf("drone status unknown: exit %d, stderr %q", code, errOut)
	}
}

// TestWorkerCommandServesAndStops runs the worker command until its context
// is cancelled, as SIGINT does.
func TestWorkerCommandServesAndStops(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	var errOut lockedBuffer
	done := make(chan int, 1)
	storage := t.TempDir() + "/hub.db"
	go func() {
		done <- Main(ctx, []string{"worker", "--listen", "127.0.0.1:0", "--storage", storage, "--log-format", "json"}, &out, &errOut, func(string) string { return "" })
	}()
	testkit.Eventually(t, 10*time.Second, "the worker to log that it listens", func() bool {
		return strings.Contains(errOut.String(), `"msg":"listening"`)
	})
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("worker exited %d: %s", code, errOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("worker did not stop within 20s of cancellation")
	}
	if !strings.Contains(errOut.String(), `"msg":"stopped"`) {
		t.Errorf("no graceful stop logged: %s", errOut.String())
	}
}

// lockedBuffer is a bytes.Buffer safe to read while the worker logs into it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestHubCommands(t *testing.T) {
	t.Parallel()
	db := t.TempDir() + "/hub.db"
	if code, _, errOut := run(t, nil, "hub", "info", "--storage", db); code != 1 || !strings.Contains(errOut, "task hub not found") || !strings.Contains(errOut, "dronehub hub create") {
		t.Fatalf("info on a missing hub: exit %d, %q: want not found, suggesting hub create", code, errOut)
	}
	if _, err := os.Stat(db); err == nil {
		t.Fatal("hub info created the missing hub")
	}
	if code, out, errOut := run(t, nil, "hub", "create", "--storage", db); code != 0 || !strings.Contains(out, "is ready") {
		t.Fatalf("create: exit %d, %q %q", code, out, errOut)
	}
	code, out, _ := run(t, map[string]string{"DRONEHUB_STORAGE": db}, "hub", "info", "--json")
	var info struct {
		Kind      string         `json:"kind"`
		Instances map[string]int `json:"instances"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil || info.Kind != "sqlite" || info.Instances == nil {
		t.Fatalf("info: exit %d, %q", code, out)
	}
	if code, _, errOut := run(t, nil, "hub", "delete", "--storage", db); code != 1 || !strings.Contains(errOut, "--yes") {
		t.Fatalf("delete without --yes: exit %d, %q", code, errOut)
	}
	if code, out, _ := run(t, nil, "hub", "delete", "--storage", db, "--yes"); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("delete: exit %d, %q", code, out)
	}
}

func TestHubInfoOnAzurite(t *testing.T) {
	t.Parallel()
	srv := azurite.Start(t, azurite.Options{})
	env := map[string]string{"DRONEHUB_STORAGE": srv.ConnectionString(), "DRONEHUB_HUB": testkit.HubName()}
	if code, _, errOut := run(t, env, "hub", "delete", "--yes"); code != 1 || !strings.Contains(errOut, "task hub not found") {
		t.Fatalf("delete of a missing hub: exit %d, %q", code, errOut)
	}
	if code, _, errOut := run(t, env, "hub", "create", "--partitions", "2"); code != 0 {
		t.Fatalf("create: exit %d, %s", code, errOut)
	}
	code, out, errOut := run(t, env, "hub", "info")
	if code != 0 || !strings.Contains(out, "azurestorage") || !strings.Contains(out, "partitions") || !strings.Contains(out, "partition 1") {
		t.Fatalf("info: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, _, errOut := run(t, env, "hub", "create", "--partitions", "3"); code == 0 || !strings.Contains(errOut, "partition") {
		t.Fatalf("reopening with another partition count: exit %d, %q: want a refusal naming partitions", code, errOut)
	}
}

func TestDeadLetterCommandsOnSQLite(t *testing.T) {
	t.Parallel()
	w := testkit.Start(t, testkit.Config(t))
	srv := httptest.NewServer(w.Handler())
	t.Cleanup(srv.Close)
	env := map[string]string{"DRONEHUB_URL": srv.URL}
	code, out, errOut := run(t, env, "deadletter", "list")
	if code != 0 || !strings.HasPrefix(out, "ID") {
		t.Fatalf("deadletter list: exit %d, %q %q", code, out, errOut)
	}
	if code, _, errOut := run(t, env, "deadletter", "replay", "12345"); code != 1 || !strings.Contains(errOut, "HTTP 404") {
		t.Fatalf("replay unknown: exit %d, %q", code, errOut)
	}
}
