package azurestorage

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// Duplicate detection.
//
// A queue message can reach an instance more than once: its consumer
// committed and then died (or failed) before deleting it, so it is
// redelivered; or its sender re-sent it from an outbox row after dying
// between the send and the outbox row's deletion. Two mechanisms drop the
// copies:
//
//   - Answers (TaskCompleted/Failed, TimerFired, SubOrchestration-
//     Completed/Failed) and starts are recognised by content: an answer to
//     a request that the current execution's history already answered, or
//     a start of an execution the history already started, is a copy. An
//     answer that names another execution, or a request the history does
//     not hold, is stale (it can only come from an earlier execution, since
//     requests are sent only after they commit) and is dropped too.
//   - Every other message (raised events, events from other instances,
//     terminate/suspend/resume) is recognised by its id, remembered in the
//     sentinel ("Seen") by the commit that consumed it.
//
// Invariant: a consumed message's id stays in Seen for as long as a copy
// of it can arrive. For redelivery that is until the message is deleted:
// an entry is pruned once the worker that deleted the message has seen the
// delete succeed (it prunes at the instance's next commit). An entry whose
// delete was never confirmed (the consumer died) stays until seenMaxAge.
// Messages sent by other orchestrations can also be re-sent from their
// outbox after a crash; their entries stay at least resendWindow. One
// episode consumes at most maxEpisodeMessages messages, far fewer than the
// entries Seen holds, so a single episode can never push out ids that are
// still needed.
const (
	maxEpisodeMessages = 100
	maxSeenEntries     = 3000
	seenMaxAge         = 24 * time.Hour
	resendWindow       = time.Hour
	seenProps          = 4     // Seen, Seen1, Seen2, Seen3
	seenPropChars      = 30000 // under the 32K-character string limit
)

type seenEntry struct {
	key    string // seenKey of the message id
	at     int64  // unix seconds of the commit that consumed it
	resend bool   // sent by an orchestration's outbox: copies may be re-sent later
}

// seenKey shortens a message id to 22 characters (128 bits of its hash).
func seenKey(msgID string) string {
	sum := sha256.Sum256([]byte(msgID))
	return base64.RawURLEncoding.EncodeToString(sum[:16])
}

func seenPropName(i int) string {
	if i == 0 {
		return "Seen"
	}
	return fmt.Sprintf("Seen%d", i)
}

func parseSeen(e entity) []seenEntry {
	var out []seenEntry
	if e == nil {
		return nil
	}
	for i := range seenProps {
		s := e.str(seenPropName(i))
		if s == "" {
			continue
		}
		for _, f := range strings.Split(s, ",") {
			parts := strings.Split(f, ".")
			if len(parts) < 2 {
				continue
			}
			at, _ := strconv.ParseInt(parts[1], 36, 64)
			out = append(out, seenEntry{key: parts[0], at: at, resend: len(parts) > 2 && parts[2] == "r"})
		}
	}
	return out
}

// pruneSeen applies the retention rules above and the count cap; it
// reports how many entries the cap pushed out before their time.
func pruneSeen(entries []seenEntry, confirmed map[string]bool, now time.Time) ([]seenEntry, int) {
	var out []seenEntry
	for _, s := range entries {
		age := now.Sub(time.Unix(s.at, 0))
		switch {
		case age > seenMaxAge:
		case confirmed[s.key] && (!s.resend || age > resendWindow):
		default:
			out = append(out, s)
		}
	}
	dropped := 0
	if len(out) > maxSeenEntries {
		dropped = len(out) - maxSeenEntries
		out = out[dropped:]
	}
	return out, dropped
}

// setSeen writes entries into e's Seen properties.
func setSeen(e entity, entries []seenEntry) {
	i := 0
	var sb strings.Builder
	flush := func() {
		e[seenPropName(i)] = sb.String()
		sb.Reset()
		i++
	}
	for _, s := range entries {
		f := s.key + "." + strconv.FormatInt(s.at, 36)
		if s.resend {
			f += ".r"
		}
		if sb.Len()+len(f)+1 > seenPropChars && i < seenProps-1 {
			flush()
		}
		if sb.Len() > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(f)
	}
	for i < seenProps {
		flush()
	}
}

// verdict is what an episode does with one message.
type verdict int

const (
	accept    verdict = iota
	duplicate         // a copy of a message already applied
	stale             // an answer to a request the current execution never committed
)

// episodeView is what classify consults: the current execution's history
// plus the messages accepted so far in the episode being built.
type episodeView struct {
	exec      string
	started   map[string]bool // execution ids started
	scheduled map[string]bool // "task|7", "timer|3", "sub|2"
	answered  map[string]bool
	seen      map[string]bool // seenKeys
	// created is the execution id the status row names while the history
	// holds no start ("" when unknown): the execution the instance's
	// creator wrote the row for, the only one a start may begin.
	created string
}

func newEpisodeView(history []*dtbackend.HistoryEvent, seen []seenEntry) *episodeView {
	v := &episodeView{exec: executionOf(history), started: map[string]bool{}, scheduled: map[string]bool{},
		answered: map[string]bool{}, seen: map[string]bool{}}
	for _, s := range seen {
		v.seen[s.key] = true
	}
	for _, h := range history {
		v.note(h)
	}
	return v
}

func (v *episodeView) note(h *dtbackend.HistoryEvent) {
	switch {
	case h.GetExecutionStarted() != nil:
		v.started[h.GetExecutionStarted().GetOrchestrationInstance().GetExecutionId().GetValue()] = true
	case h.GetTaskScheduled() != nil:
		v.scheduled[fmt.Sprint("task|", h.EventId)] = true
	case h.GetTimerCreated() != nil:
		v.scheduled[fmt.Sprint("timer|", h.EventId)] = true
	case h.GetSubOrchestrationInstanceCreated() != nil:
		v.scheduled[fmt.Sprint("sub|", h.EventId)] = true
	}
	if k := answerKey(h); k != "" {
		v.answered[k] = true
	}
}

// answerKey names the request an answer answers, or "".
func answerKey(e *dtbackend.HistoryEvent) string {
	switch {
	case e.GetTaskCompleted() != nil:
		return fmt.Sprint("task|", e.GetTaskCompleted().GetTaskScheduledId())
	case e.GetTaskFailed() != nil:
		return fmt.Sprint("task|", e.GetTaskFailed().GetTaskScheduledId())
	case e.GetTimerFired() != nil:
		return fmt.Sprint("timer|", e.GetTimerFired().GetTimerId())
	case e.GetSubOrchestrationInstanceCompleted() != nil:
		return fmt.Sprint("sub|", e.GetSubOrchestrationInstanceCompleted().GetTaskScheduledId())
	case e.GetSubOrchestrationInstanceFailed() != nil:
		return fmt.Sprint("sub|", e.GetSubOrchestrationInstanceFailed().GetTaskScheduledId())
	}
	return ""
}

// classify decides what to do with m and, if it is accepted, records it
// in v so that a copy later in the same episode is a duplicate.
func (v *episodeView) classify(m *inMsg) (verdict, string) {
	key := seenKey(m.env.ID)
	if v.seen[key] {
		return duplicate, "message id already consumed"
	}
	e := m.event
	if k := answerKey(e); k != "" {
		switch {
		case m.env.Exec != "" && v.exec != "" && m.env.Exec != v.exec:
			return stale, "answer to execution " + m.env.Exec + ", current is " + v.exec
		case v.answered[k]:
			return duplicate, "request " + k + " already answered"
		case !v.scheduled[k]:
			return stale, "request " + k + " is not in the committed history"
		}
		v.answered[k] = true
		v.seen[key] = true
		return accept, ""
	}
	if es := e.GetExecutionStarted(); es != nil {
		switch {
		case v.started[es.GetOrchestrationInstance().GetExecutionId().GetValue()]:
			return duplicate, "execution already started"
		case len(v.started) > 0:
			// A replaced instance starts from an empty history, and a
			// continue-as-new start is made in process: a second start
			// by message is left over from an earlier incarnation.
			return stale, "instance already started another execution"
		case v.created != "" && es.GetOrchestrationInstance().GetExecutionId().GetValue() != v.created:
			// The status row was written for another execution: this
			// start is left over from an earlier incarnation (purged,
			// replaced) that never ran, e.g. a scheduled start whose
			// instance was terminated before it was due, or from a
			// create that lost the race for the id.
			return stale, "the instance was created for execution " + v.created
		}
	}
	v.seen[key] = true
	v.note(e)
	return accept, ""
}
