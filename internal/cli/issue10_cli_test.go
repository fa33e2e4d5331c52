package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/taskhub"
	"github.com/dronehub/dronehub/worker"
)

// Issue #10: every command group prints its help on -h and exits 0; each
// command's usage names its arguments; hub commands list only their own
// flags. None of these reach a worker.
func TestHelpAndUsageLines(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DRONEHUB_URL": "http://127.0.0.1:1"} // never dialled
	for _, tc := range []struct {
		args    []string
		code    int
		stdout  bool // the text is on stdout, else stderr
		want    []string
		notWant []string
	}{
		// Groups: -h on stdout, exit 0; nothing at all is a usage error.
		{[]string{"mission", "-h"}, 0, true, []string{"Usage: dronehub mission COMMAND", "watch      ID", "Exit status: 0 delivered"}, nil},
		{[]string{"mission", "--help"}, 0, true, []string{"Usage: dronehub mission COMMAND"}, nil},
		{[]string{"drone", "-h"}, 0, true, []string{"Usage: dronehub drone COMMAND", "reset   ID... | --all"}, nil},
		{[]string{"hub", "-h"}, 0, true, []string{"Usage: dronehub hub COMMAND"}, nil},
		{[]string{"deadletter", "-h"}, 0, true, []string{"Usage: dronehub deadletter COMMAND", "replay  ID | --all"}, nil},
		{[]string{"deadletter", "help"}, 0, true, []string{"Usage: dronehub deadletter COMMAND"}, nil},
		{[]string{"mission"}, 2, false, []string{"Usage: dronehub mission COMMAND"}, nil},
		{[]string{"drone", "fly"}, 2, false, []string{`unknown drone command "fly"`, "Usage: dronehub drone COMMAND"}, nil},
		{[]string{"hub", "shrink"}, 2, false, []string{`unknown hub command "shrink"`}, nil},
		{[]string{"deadletter", "purge"}, 2, false, []string{`unknown deadletter command "purge"`}, nil},

		// A command's -h: its usage line with its arguments, then its flags.
		{[]string{"mission", "status", "-h"}, 0, false, []string{"Usage: dronehub mission status ID [--history]", "-history"}, nil},
		{[]string{"mission", "watch", "-h"}, 0, false, []string{"Usage: dronehub mission watch ID", "-interval", "one line per change"}, nil},
		{[]string{"drone", "reset", "-h"}, 0, false, []string{"Usage: dronehub drone reset ID... | --all", "-all"}, nil},
		{[]string{"deadletter", "replay", "-h"}, 0, false, []string{"Usage: dronehub deadletter replay ID | --all", "-all"}, nil},
		{[]string{"hub", "create", "-h"}, 0, false, []string{"Usage: dronehub hub create --storage CONN", "-storage", "-hub", "-partitions", "-json"}, []string{"-yes"}},
		{[]string{"hub", "info", "-h"}, 0, false, []string{"Usage: dronehub hub info --storage CONN", "-storage", "-json"}, []string{"-yes", "-partitions"}},
		{[]string{"hub", "delete", "-h"}, 0, false, []string{"Usage: dronehub hub delete --storage CONN", "-yes"}, []string{"-partitions", "-json"}},

		// Wrong arguments: the usage line with the arguments.
		{[]string{"mission", "status"}, 2, false, []string{"Usage: dronehub mission status ID"}, nil},
		{[]string{"mission", "watch"}, 2, false, []string{"Usage: dronehub mission watch ID"}, nil},
		{[]string{"mission", "watch", "a", "b"}, 2, false, []string{"Usage: dronehub mission watch ID"}, nil},
		{[]string{"mission", "raise", "m-1"}, 2, false, []string{"Usage: dronehub mission raise ID EVENT [JSON]"}, nil},
		{[]string{"mission", "cancel"}, 2, false, []string{"Usage: dronehub mission cancel ID [--reason TEXT]"}, nil},
		{[]string{"mission", "terminate"}, 2, false, []string{"Usage: dronehub mission terminate ID"}, nil},
		{[]string{"mission", "purge", "a", "b"}, 2, false, []string{"Usage: dronehub mission purge ID"}, nil},
		{[]string{"drone", "add", "d-1"}, 2, false, []string{"Usage: dronehub drone add ID --home LAT,LON"}, nil},
		{[]string{"drone", "status"}, 2, false, []string{"Usage: dronehub drone status ID"}, nil},
		{[]string{"drone", "list", "extra"}, 2, false, []string{"Usage: dronehub drone list"}, nil},
		{[]string{"drone", "reset"}, 2, false, []string{"Usage: dronehub drone reset ID... | --all"}, nil},
		{[]string{"drone", "reset", "drone-1", "--all"}, 2, false, []string{"Usage: dronehub drone reset ID... | --all"}, nil},
		{[]string{"deadletter", "replay"}, 2, false, []string{"Usage: dronehub deadletter replay ID | --all"}, nil},
		{[]string{"deadletter", "replay", "7", "--all"}, 2, false, []string{"Usage: dronehub deadletter replay ID | --all"}, nil},
		{[]string{"deadletter", "list", "7"}, 2, false, []string{"Usage: dronehub deadletter list"}, nil},
		{[]string{"hub", "info", "extra", "--storage", "x.db"}, 2, false, []string{"Usage: dronehub hub info --storage CONN"}, nil},
		{[]string{"hub", "info", "--yes"}, 2, false, []string{"flag provided but not defined: -yes"}, nil},

		// A bad flag value is named (exit 1).
		{[]string{"mission", "watch", "m-1", "--interval", "1ms"}, 1, false, []string{"--interval 1ms"}, nil},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			code, out, errOut := run(t, env, tc.args...)
			text, other := errOut, out
			if tc.stdout {
				text, other = out, errOut
			}
			if code != tc.code {
				t.Errorf("exit %d, want %d; stdout %q, stderr %q", code, tc.code, out, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("output %q lacks %q", text, w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(text, w) {
					t.Errorf("output %q has %q", text, w)
				}
			}
			if tc.code == 0 && strings.Contains(text, "Usage:") && strings.Contains(other, "Usage:") {
				t.Errorf("usage on both streams: %q and %q", out, errOut)
			}
		})
	}
}

// watchEnv starts a worker for mission watch tests and returns it with the
// CLI's environment.
func watchEnv(t *testing.T) (*worker.Worker, map[string]string) {
	t.Helper()
	w := testkit.Start(t, testkit.Config(t))
	srv := httptest.NewServer(w.Handler())
	t.Cleanup(srv.Close)
	return w, map[string]string{"DRONEHUB_URL": srv.URL}
}

// startWatch runs `mission watch` in the background; the channel gets its
// exit code.
func startWatch(ctx context.Context, env map[string]string, out, errOut *lockedBuffer, args ...string) <-chan int {
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, append([]string{"mission", "watch"}, args...), out, errOut, func(k string) string { return env[k] })
	}()
	return done
}

func waitExit(t *testing.T, done <-chan int, errOut *lockedBuffer) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(60 * time.Second):
		t.Fatalf("mission watch did not end within 60s; stderr %q", errOut.String())
	}
	return -1
}

// Issue #10: `mission watch --json` streams a line per change while a real
// worker flies the mission, and exits 0 once it is delivered.
func TestMissionWatchJSONFollowsADelivery(t *testing.T) {
	t.Parallel()
	w, env := watchEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := client.Local(w).StartMission(ctx, testkit.Request("watch-1")); err != nil {
		t.Fatal(err)
	}
	var out, errOut lockedBuffer
	done := startWatch(ctx, env, &out, &errOut, "watch-1", "--json", "--interval", "50ms")

	st := testkit.AwaitDispatched(t, w, "watch-1")
	// Slow enough for a 50 ms poll to see the phases go by.
	if err := simulator.Fly(ctx, testkit.Sink(t, w), 40*time.Millisecond, testkit.Flight(t, w, st, simulator.FaultNone, 0)); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, done, &errOut); code != 0 {
		t.Fatalf("exit %d, want 0; stdout %q, stderr %q", code, out.String(), errOut.String())
	}

	var events []watchEvent
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var ev watchEvent
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("line %q is not a JSON object: %v", line, err)
		}
		events = append(events, ev)
	}
	var phases []domain.Phase
	for i, ev := range events {
		if ev.MissionID != "watch-1" {
			t.Errorf("line %d is about %q", i, ev.MissionID)
		}
		if i > 0 && ev.key() == events[i-1].key() {
			t.Errorf("lines %d and %d show the same status: %+v", i-1, i, ev)
		}
		if ev.Ended != (i == len(events)-1) {
			t.Errorf("line %d of %d: ended %t; want only the last line ended", i, len(events), ev.Ended)
		}
		if ev.Phase != "" && (len(phases) == 0 || phases[len(phases)-1] != ev.Phase) {
			phases = append(phases, ev.Phase)
		}
	}
	last := events[len(events)-1]
	if last.Phase != domain.PhaseCompleted || last.RuntimeStatus != client.StatusCompleted || last.ProgressPct != 100 || last.DroneID != st.DroneID {
		t.Errorf("last line %+v: want the delivery completed by %s", last, st.DroneID)
	}
	if len(phases) < 3 || !slices.Contains(phases, domain.PhaseHeadedToPickup) {
		t.Errorf("phases seen %v: want the mission's phases to go by, HeadedToPickup among them (at least 3 distinct)", phases)
	}
	for i := 1; i < len(phases); i++ {
		if !phases[i-1].Before(phases[i]) {
			t.Errorf("phases seen %v: %s came after %s", phases, phases[i], phases[i-1])
		}
	}
}

// Issue #10: the exit status says how the mission ended; Ctrl-C stops the
// watch, not the mission.
func TestMissionWatchExitStatus(t *testing.T) {
	t.Parallel()
	w, env := watchEnv(t)
	c := client.Local(w)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := func(id string) *client.MissionHandle {
		t.Helper()
		m, err := c.StartMission(ctx, testkit.Request(id))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.WaitPhase(ctx, domain.PhaseHeadedToPickup); err != nil {
			t.Fatal(err)
		}
		return m
	}

	// Interrupted: the watch ends with 130, the mission runs on.
	m := start("watch-int")
	wctx, stop := context.WithCancel(ctx)
	var out, errOut lockedBuffer
	done := startWatch(wctx, env, &out, &errOut, "watch-int", "--interval", "50ms")
	testkit.Eventually(t, 20*time.Second, "the watch to show the mission", func() bool { return strings.Contains(out.String(), "HeadedToPickup") })
	stop()
	if code := waitExit(t, done, &errOut); code != exitInterrupted || !strings.Contains(errOut.String(), "keeps running") {
		t.Errorf("interrupted: exit %d, stderr %q; want %d and the mission said to keep running", code, errOut.String(), exitInterrupted)
	}
	if st, err := m.Status(ctx); err != nil || st.Ended() {
		t.Errorf("the mission after the watch was interrupted: %s, %v; want it running", st.RuntimeStatus, err)
	}
	// Plain lines, one per change, no escape sequences: stdout is no terminal.
	if s := out.String(); strings.Contains(s, "\033") || !strings.Contains(s, "drone drone-") {
		t.Errorf("watch output %q: want plain lines", s)
	}

	// Cancelled: 4. Terminated: 5. Failed: 3.
	if err := m.Cancel(ctx, "changed plans"); err != nil {
		t.Fatal(err)
	}
	code, out2, errOut2 := run(t, env, "mission", "watch", "watch-int")
	if code != exitMissionCancelled || !strings.Contains(errOut2, "cancelled: changed plans") || !strings.Contains(out2, "compensation: release-drone") {
		t.Errorf("cancelled: exit %d, stdout %q, stderr %q; want %d", code, out2, errOut2, exitMissionCancelled)
	}
	m = start("watch-term")
	if err := m.Terminate(ctx, "stuck"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Wait(ctx); err == nil {
		t.Fatal("terminated mission waited without error")
	}
	if code, _, errOut := run(t, env, "mission", "watch", "watch-term", "--json"); code != exitMissionTerminated || !strings.Contains(errOut, "terminated (stuck)") {
		t.Errorf("terminated: exit %d, stderr %q; want %d", code, errOut, exitMissionTerminated)
	}
	m = start("watch-fail")
	st, _ := m.Status(ctx)
	if err := simulator.Fly(ctx, testkit.Sink(t, w), 0, testkit.Flight(t, w, st.Status, simulator.FaultHealth, 0.3)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := run(t, env, "mission", "watch", "watch-fail"); code != exitMissionFailed || !strings.Contains(out, "failure: drone") || !strings.Contains(errOut, "fault") {
		t.Errorf("failed: exit %d, stdout %q, stderr %q; want %d", code, out, errOut, exitMissionFailed)
	}

	// Unknown mission: an error, exit 1, at once.
	if code, _, errOut := run(t, env, "mission", "watch", "nope"); code != 1 || !strings.Contains(errOut, "HTTP 404") {
		t.Errorf("unknown mission: exit %d, stderr %q", code, errOut)
	}
}

// On a terminal the watch redraws one block in place.
func TestMissionWatchRedrawsOneBlockOnATerminal(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	w := newMissionWatcher(&out, &out, "m-1", false, true)
	battery, eta := 0.96, time.Now().Add(time.Minute)
	m := client.Mission{Instance: client.Instance{InstanceID: "m-1", RuntimeStatus: client.StatusRunning},
		Status: domain.MissionStatus{Phase: domain.PhaseHeadedToDropoff, DroneID: "drone-1", ProgressPct: 52, DistanceLeftM: 2398, Battery: &battery, Health: "ok", ETA: &eta}}
	if err := w.show(m); err != nil {
		t.Fatal(err)
	}
	first := out.String()
	if strings.Contains(first, "\033[3A") || !strings.Contains(first, "mission m-1  drone drone-1  HeadedToDropoff") ||
		!strings.Contains(first, "█") || !strings.Contains(first, "52%  2398 m left  ETA ") || !strings.Contains(first, "battery 96%  health ok") {
		t.Errorf("first block %q", first)
	}
	out.Reset()
	m.Status.ProgressPct = 60
	w.show(m)
	if s := out.String(); !strings.HasPrefix(s, "\r\033[3A") || strings.Count(s, "\n") != 3 || !strings.Contains(s, " 60%") {
		t.Errorf("second block %q: want the 3 lines redrawn in place", s)
	}
}

func TestOwnerName(t *testing.T) {
	t.Parallel()
	workers := map[string]taskhub.WorkerInfo{
		"node-7-42-ab": {Host: "node-7", HTTPAddr: "127.0.0.1:8080"},
		"node-8-42-cd": {Host: "node-8", HTTPAddr: "0.0.0.0:8080"},
		"node-9-42-ef": {Host: "node-9", HTTPAddr: "[::]:9090"},
		"embedded-1":   {Host: "node-1"},
	}
	for id, want := range map[string]string{
		"node-7-42-ab": "node-7 http://127.0.0.1:8080 (worker node-7-42-ab)",
		"node-8-42-cd": "node-8 http://node-8:8080 (worker node-8-42-cd)",
		"node-9-42-ef": "node-9 http://node-9:9090 (worker node-9-42-ef)",
		"embedded-1":   "node-1 (worker embedded-1)",
		"old-worker":   "old-worker", // a heartbeat from before issue #10, or gone
	} {
		if got := ownerName(id, workers); got != want {
			t.Errorf("ownerName(%q) = %q, want %q", id, got, want)
		}
	}
}

// Issue #10: `drone reset` puts a faulted, drained drone back in service,
// and refuses one a mission holds.
func TestDroneResetCommand(t *testing.T) {
	t.Parallel()
	w, env := watchEnv(t)
	c := client.Local(w)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// drone-1 is held by a mission; drone-2 reports a fault at 10% charge.
	if _, err := c.StartMission(ctx, testkit.Request("reset-held")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 15*time.Second, "the mission to reserve drone-1", func() bool {
		d, err := c.Drone(ctx, "drone-1")
		return err == nil && d.MissionID == "reset-held"
	})
	seq, ts, battery, mode := int64(40), time.Now().UTC(), 0.1, domain.ModeInflight
	yes, no := true, false
	pos := domain.Position{Lat: 47.65, Lon: -122.14, Alt: 120}
	frame := domain.Frame{DeviceID: "drone-2", Seq: &seq, Timestamp: &ts, Battery: &battery, FlightMode: &mode, Position: &pos,
		Health: &domain.Health{GyrometerOK: &no, AccelerometerOK: &yes, MagnetometerOK: &yes}, IsKeyFrame: true}
	if res, err := c.Ingest(ctx, []domain.Frame{frame}); err != nil || res.Accepted != 1 {
		t.Fatalf("faulted frame: %+v, %v", res, err)
	}

	code, out, errOut := run(t, env, "drone", "reset", "drone-1")
	if code != 1 || !strings.Contains(errOut, `held by mission "reset-held"`) || out != "" {
		t.Errorf("reset of a held drone: exit %d, stdout %q, stderr %q; want a refusal naming the mission", code, out, errOut)
	}
	code, out, errOut = run(t, env, "drone", "reset", "drone-2")
	if code != 0 || !strings.Contains(out, "drone drone-2 reset: ready at home") || !strings.Contains(out, "battery 100%, health ok") {
		t.Fatalf("reset: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	d, err := c.Drone(ctx, "drone-2")
	if err != nil {
		t.Fatal(err)
	}
	if s := d.State; d.Health != "ok" || s == nil || s.Battery != 1 || s.FlightMode != domain.ModeReady || s.Position.LatLon() != d.Home || s.Position.Alt != 0 || d.NextSeq() != 41 {
		t.Errorf("drone-2 after reset: %+v (state %+v): want healthy, charged, ready at home, next seq 41", d, d.State)
	}

	// --all resets the idle drones and lists the held one without failing.
	code, out, errOut = run(t, env, "drone", "reset", "--all", "--json")
	var res struct {
		Reset   []client.Drone `json:"reset"`
		Skipped []struct {
			DroneID string `json:"droneId"`
			Reason  string `json:"reason"`
		} `json:"skipped"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil {
		t.Fatalf("reset --all: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if len(res.Reset) != 2 || res.Reset[0].DroneID != "drone-2" || res.Reset[1].DroneID != "drone-3" ||
		len(res.Skipped) != 1 || res.Skipped[0].DroneID != "drone-1" || !strings.Contains(res.Skipped[0].Reason, "reset-held") {
		t.Errorf("reset --all: %+v: want drone-2 and drone-3 reset, drone-1 skipped as held", res)
	}
	if code, _, errOut := run(t, env, "drone", "reset", "nope"); code != 1 || !strings.Contains(errOut, "HTTP 404") {
		t.Errorf("reset of an unknown drone: exit %d, stderr %q", code, errOut)
	}
}

// Issue #10: `deadletter replay --all` replays every dead letter; with
// none it says so.
func TestDeadLetterReplayAll(t *testing.T) {
	t.Parallel()
	_, env := watchEnv(t)
	code, out, errOut := run(t, env, "deadletter", "replay", "--all")
	if code != 0 || out != "0 dead letters: 0 replayed, 0 dropped, 0 gone already\n" {
		t.Errorf("replay --all: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ = run(t, env, "deadletter", "replay", "--all", "--json")
	var res map[string][]any
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res["replayed"] == nil || res["dropped"] == nil {
		t.Errorf("replay --all --json: exit %d, stdout %q", code, out)
	}
}

func TestProgressBar(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		frac float64
		want string
	}{{0, "[░░░░]"}, {0.5, "[██░░]"}, {1, "[████]"}, {2, "[████]"}, {-1, "[░░░░]"}} {
		if got := bar(tc.frac, 4); got != tc.want {
			t.Errorf("bar(%g, 4) = %q, want %q", tc.frac, got, tc.want)
		}
	}
	if n := plannedFrames(domain.Route{}, 40, time.Second); n != 16 {
		t.Errorf("plannedFrames of a route going nowhere = %d, want 13 on the ground and 1 per leg", n)
	}
}
