package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/domain"
)

// Exit codes of `dronehub mission watch` besides 0 (delivered), 1 (an error:
// the worker cannot be reached, no such mission, ...) and 2 (usage).
const (
	exitMissionFailed     = 3   // phase Failed, or the orchestration itself failed
	exitMissionCancelled  = 4   // phase Cancelled (mission cancel)
	exitMissionTerminated = 5   // runtime status Terminated (mission terminate)
	exitInterrupted       = 130 // Ctrl-C (SIGINT) or SIGTERM; the mission keeps running
)

// exitError ends a command with its own exit code; Main prints msg, if
// any, on stderr.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// minWatchInterval bounds --interval from below: a mission's status changes
// at most once per telemetry signal, and every read is a storage read.
const minWatchInterval = 50 * time.Millisecond

func (a *App) missionWatch(ctx context.Context, fs *flag.FlagSet, f *apiFlags, args []string) error {
	interval := fs.Duration("interval", 500*time.Millisecond, "how often the mission's status is read")
	fs.Lookup("json").Usage = "print one JSON object per line, one line per change"
	pos, err := a.parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr(a, missionSynopsis["watch"])
	}
	if *interval < minWatchInterval {
		return fmt.Errorf("--interval %s: use at least %s", *interval, minWatchInterval)
	}
	id := pos[0]
	// The first read fails fast (a wrong --url, an unknown mission); after
	// it, reads ride out a worker restart or a storage outage.
	once, err := f.dial(client.Options{})
	if err != nil {
		return err
	}
	w := newMissionWatcher(f.out, a.Stderr, id, f.asJSON, isTerminal(f.out))
	steady, err := f.dial(client.Options{
		Retry:   client.RetryPolicy{MaxAttempts: -1, MaxBackoff: 2 * time.Second},
		OnRetry: w.retrying,
	})
	if err != nil {
		return err
	}
	m, err := once.Mission(id).Status(ctx)
	if err != nil {
		return err
	}
	if err := w.show(m); err != nil {
		return err
	}
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for !m.Ended() {
		select {
		case <-ctx.Done():
			return w.interrupted()
		case <-tick.C:
		}
		next, err := steady.Mission(id).Status(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return w.interrupted()
			}
			return err
		}
		m = next
		if err := w.show(m); err != nil {
			return err
		}
	}
	return w.finish(m)
}

// missionWatcher shows a mission's status as it changes: on a terminal one
// block redrawn in place, otherwise a line per change (with --json, a JSON
// object per line).
type missionWatcher struct {
	out, errOut io.Writer
	id          string
	asJSON, tty bool

	last  *watchEvent // the last event shown
	lines int         // lines of the block drawn on the terminal

	mu         sync.Mutex // OnRetry may report from the client's goroutine
	lastNotice time.Time
}

func newMissionWatcher(out, errOut io.Writer, id string, asJSON, tty bool) *missionWatcher {
	return &missionWatcher{out: out, errOut: errOut, id: id, asJSON: asJSON, tty: tty && !asJSON}
}

// watchEvent is what watch shows of a mission: with --json, one line each.
type watchEvent struct {
	// At is when watch read this status; UpdatedAt when the mission last
	// updated it.
	At            time.Time                   `json:"at"`
	MissionID     string                      `json:"missionId"`
	RuntimeStatus client.RuntimeStatus        `json:"runtimeStatus"`
	Phase         domain.Phase                `json:"phase,omitempty"`
	DroneID       string                      `json:"droneId,omitempty"`
	ProgressPct   float64                     `json:"progressPct"`
	DistanceLeftM float64                     `json:"distanceLeftM"`
	ETA           *time.Time                  `json:"eta,omitempty"`
	Battery       *float64                    `json:"battery,omitempty"`
	Health        string                      `json:"health,omitempty"`
	Failure       string                      `json:"failure,omitempty"`
	Compensations []domain.CompensationResult `json:"compensations,omitempty"`
	UpdatedAt     *time.Time                  `json:"updatedAt,omitempty"`
	// Ended is set on the last line: the mission has ended.
	Ended bool `json:"ended"`
}

func eventOf(m client.Mission, now time.Time) watchEvent {
	ms := m.Status
	ev := watchEvent{
		At: now.UTC(), MissionID: m.InstanceID, RuntimeStatus: m.RuntimeStatus, Phase: ms.Phase, DroneID: ms.DroneID,
		ProgressPct: ms.ProgressPct, DistanceLeftM: ms.DistanceLeftM, Battery: ms.Battery, Health: ms.Health,
		Failure: ms.Failure, Compensations: ms.Compensations, Ended: m.Ended(),
	}
	if ms.ETA != nil && !ms.Phase.Terminal() && !ev.Ended {
		ev.ETA = ms.ETA
	}
	if !ms.UpdatedAt.IsZero() {
		t := ms.UpdatedAt.UTC()
		ev.UpdatedAt = &t
	}
	return ev
}

// key is what a change is judged on: what the text shows, at the precision
// it shows it.
func (ev watchEvent) key() string {
	eta, battery := "-", "-"
	if ev.ETA != nil {
		eta = ev.ETA.Local().Format(time.TimeOnly)
	}
	if ev.Battery != nil {
		battery = fmt.Sprintf("%.0f", *ev.Battery*100)
	}
	return fmt.Sprintf("%s|%s|%s|%.0f|%.0f|%s|%s|%s|%s|%d|%t", ev.RuntimeStatus, ev.Phase, ev.DroneID, ev.ProgressPct, ev.DistanceLeftM,
		eta, battery, ev.Health, ev.Failure, len(ev.Compensations), ev.Ended)
}

// phase names where the mission stands: its phase, or its runtime status
// before it has one (Pending) and when it is not running (Suspended,
// Terminated).
func (ev watchEvent) phase() string {
	switch {
	case ev.Phase == "":
		return string(ev.RuntimeStatus)
	case ev.RuntimeStatus != client.StatusRunning && ev.RuntimeStatus != client.StatusCompleted:
		return fmt.Sprintf("%s (%s)", ev.Phase, ev.RuntimeStatus)
	}
	return string(ev.Phase)
}

func (ev watchEvent) etaText(now time.Time) string {
	if ev.ETA == nil {
		return ""
	}
	text := "ETA " + ev.ETA.Local().Format(time.TimeOnly)
	if d := ev.ETA.Sub(now).Round(time.Second); d > 0 {
		text += fmt.Sprintf(" (in %s)", d)
	}
	return text
}

func (ev watchEvent) batteryText() string {
	if ev.Battery == nil {
		return "battery -"
	}
	return fmt.Sprintf("battery %.0f%%", *ev.Battery*100)
}

// line is the event as one line of text (when stdout is not a terminal).
func (ev watchEvent) line() string {
	parts := []string{ev.At.Local().Format(time.TimeOnly), fmt.Sprintf("%-15s", ev.phase()), fmt.Sprintf("%3.0f%%", ev.ProgressPct)}
	if ev.DistanceLeftM > 0 {
		parts = append(parts, fmt.Sprintf("%.0f m left", ev.DistanceLeftM))
	}
	if ev.ETA != nil {
		parts = append(parts, "ETA "+ev.ETA.Local().Format(time.TimeOnly))
	}
	parts = append(parts, ev.batteryText(), "health "+orDash(ev.Health), "drone "+orDash(ev.DroneID))
	return strings.Join(parts, "  ")
}

// block is the event as the terminal shows it, redrawn in place.
func (ev watchEvent) block(now time.Time, notice string) []string {
	head := fmt.Sprintf("mission %s  drone %s  %s", ev.MissionID, orDash(ev.DroneID), ev.phase())
	progress := fmt.Sprintf("%s %3.0f%%", bar(ev.ProgressPct/100, 30), ev.ProgressPct)
	if ev.DistanceLeftM > 0 {
		progress += fmt.Sprintf("  %.0f m left", ev.DistanceLeftM)
	}
	if eta := ev.etaText(now); eta != "" {
		progress += "  " + eta
	}
	health := ev.batteryText() + "  health " + orDash(ev.Health)
	if notice != "" {
		health += "  (" + notice + ")"
	}
	return []string{head, progress, health}
}

// show shows m if it changed since the last status shown (on a terminal,
// every time: the ETA counts down).
func (w *missionWatcher) show(m client.Mission) error {
	now := time.Now()
	ev := eventOf(m, now)
	w.mu.Lock()
	defer w.mu.Unlock()
	changed := w.last == nil || w.last.key() != ev.key()
	w.last = &ev
	switch {
	case w.tty:
		w.draw(ev.block(now, ""))
		return nil
	case !changed:
		return nil
	case w.asJSON:
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w.out, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintln(w.out, ev.line())
	return err
}

// draw replaces the block on the terminal with lines.
func (w *missionWatcher) draw(lines []string) {
	var sb strings.Builder
	if w.lines > 0 {
		fmt.Fprintf(&sb, "\r\033[%dA", w.lines)
	}
	for _, l := range lines {
		sb.WriteString("\r\033[K" + l + "\n")
	}
	for i := len(lines); i < w.lines; i++ { // a shorter block: blank the rest
		sb.WriteString("\r\033[K\n")
	}
	if extra := w.lines - len(lines); extra > 0 {
		fmt.Fprintf(&sb, "\033[%dA", extra)
	}
	w.lines = len(lines)
	io.WriteString(w.out, sb.String())
}

// retrying is told of each failed read that will be repeated: on a
// terminal it shows in the block, elsewhere on stderr, at most once a
// second.
func (w *missionWatcher) retrying(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if time.Since(w.lastNotice) < time.Second {
		return
	}
	w.lastNotice = time.Now()
	if w.tty {
		if w.last != nil {
			w.draw(w.last.block(time.Now(), "retrying: "+firstLine(err)))
		}
		return
	}
	fmt.Fprintf(w.errOut, "retrying: %v\n", firstLine(err))
}

// interrupted ends the watch on Ctrl-C: the mission itself goes on.
func (w *missionWatcher) interrupted() error {
	return &exitError{code: exitInterrupted, msg: fmt.Sprintf("interrupted; mission %s keeps running (dronehub mission status %s)", w.id, w.id)}
}

// finish reports how the mission ended and returns the exit code's error:
// nil when it delivered.
func (w *missionWatcher) finish(m client.Mission) error {
	ms := m.Status
	if !w.asJSON {
		if ms.Failure != "" {
			fmt.Fprintf(w.out, "failure: %s\n", ms.Failure)
		}
		for _, c := range ms.Compensations {
			detail := c.Step + ": " + c.Status
			if c.Error != "" {
				detail += " (" + c.Error + ")"
			}
			fmt.Fprintf(w.out, "compensation: %s\n", detail)
		}
	}
	ee := watchOutcome(m)
	if ee == nil && !w.asJSON {
		fmt.Fprintf(w.out, "mission %s delivered (drone %s)\n", m.InstanceID, orDash(ms.DroneID))
	}
	if ee == nil {
		return nil
	}
	return ee
}

// watchOutcome is the exit code's error of an ended mission: nil when it
// delivered.
func watchOutcome(m client.Mission) *exitError {
	ms := m.Status
	switch {
	case m.RuntimeStatus == client.StatusTerminated:
		reason := ""
		if err := json.Unmarshal(m.Output, &reason); err != nil || reason == "" {
			reason = "no reason given"
		}
		return &exitError{code: exitMissionTerminated, msg: fmt.Sprintf("mission %s was terminated (%s); no compensation ran", m.InstanceID, reason)}
	case m.RuntimeStatus == client.StatusFailed:
		why := "see dronehub mission status " + m.InstanceID
		if m.FailureDetails != nil {
			why = m.FailureDetails.ErrorMessage
		}
		return &exitError{code: exitMissionFailed, msg: fmt.Sprintf("the orchestration of mission %s failed: %s", m.InstanceID, why)}
	case m.RuntimeStatus == client.StatusCanceled || ms.Phase == domain.PhaseCancelled:
		return &exitError{code: exitMissionCancelled, msg: fmt.Sprintf("mission %s was cancelled: %s", m.InstanceID, orDash(ms.Failure))}
	case ms.Phase == domain.PhaseCompleted:
		return nil
	}
	return &exitError{code: exitMissionFailed, msg: fmt.Sprintf("mission %s failed (phase %s): %s", m.InstanceID, orDash(string(ms.Phase)), orDash(ms.Failure))}
}
