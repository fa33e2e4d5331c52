// Package taskhub defines what dronehub adds to durabletask-go's backend
// contract (v0.6.0) and the helpers every task hub backend shares.
//
// durabletask-go cannot list instances, ignores scheduled start times, and
// lets a timer from a finished execution fire into the next one. Every
// backend dronehub ships implements [Backend], which adds listing, and uses
// [DropStaleTimers] and [ScheduledStart] to close the other two gaps.
package taskhub

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// Backend is a durabletask-go backend that can also list instances.
type Backend interface {
	dtbackend.Backend
	// ListInstances returns one page of instances matching q, oldest first.
	ListInstances(ctx context.Context, q Query) (*Page, error)
}

// Errors callers branch on.
var (
	// ErrInvalidQuery is wrapped by errors about a malformed Query.
	ErrInvalidQuery = errors.New("invalid instance query")
	// ErrNotSupported is returned for an operation a backend cannot perform.
	ErrNotSupported = errors.New("not supported by this backend")
)

// DefaultPageSize and MaxPageSize bound Query.PageSize.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// Query selects instances. The zero value lists every instance, a page of
// DefaultPageSize at a time.
type Query struct {
	// Name keeps instances of this orchestrator name; "" keeps all.
	Name string
	// RuntimeStatus keeps instances in any of these statuses; empty keeps all.
	RuntimeStatus []api.OrchestrationStatus
	// CreatedFrom and CreatedTo bound the creation time (inclusive, exclusive);
	// a zero time leaves that side open.
	CreatedFrom, CreatedTo time.Time
	// InstanceIDPrefix keeps instances whose id starts with it.
	InstanceIDPrefix string
	// PageSize is 1 to MaxPageSize; 0 means DefaultPageSize.
	PageSize int
	// ContinuationToken is the token of the previous page, or "" for the first.
	ContinuationToken string
}

// Normalize applies defaults and reports what is wrong with q.
func (q Query) Normalize() (Query, error) {
	if q.PageSize == 0 {
		q.PageSize = DefaultPageSize
	}
	if q.PageSize < 0 || q.PageSize > MaxPageSize {
		return q, fmt.Errorf("%w: page size %d is out of range 1-%d", ErrInvalidQuery, q.PageSize, MaxPageSize)
	}
	if !q.CreatedFrom.IsZero() && !q.CreatedTo.IsZero() && !q.CreatedFrom.Before(q.CreatedTo) {
		return q, fmt.Errorf("%w: createdTimeFrom %s is not before createdTimeTo %s", ErrInvalidQuery,
			q.CreatedFrom.Format(time.RFC3339), q.CreatedTo.Format(time.RFC3339))
	}
	if q.ContinuationToken != "" {
		if _, err := DecodeCursor(q.ContinuationToken); err != nil {
			return q, err
		}
	}
	return q, nil
}

// Page is one page of a listing.
type Page struct {
	Instances []*api.OrchestrationMetadata
	// ContinuationToken fetches the next page; "" on the last page.
	ContinuationToken string
}

// Cursor is the position a continuation token encodes: the sort key of the
// last instance on the previous page. Backends list in (created, id) order
// and resume strictly after the cursor, so pages never repeat or skip an
// instance that existed when the listing began.
type Cursor struct {
	Created string `json:"c"`
	ID      string `json:"i"`
}

// cursorToken is a token's JSON: the cursor and a check that marks it as one
// this service issued, so a token made up or taken from another service is
// refused instead of silently listing from the wrong place.
type cursorToken struct {
	Created string `json:"c"`
	ID      string `json:"i"`
	Check   string `json:"k"`
}

func (c Cursor) check() string {
	sum := sha256.Sum256([]byte("dronehub continuation token v1\x00" + c.Created + "\x00" + c.ID))
	return base64.RawURLEncoding.EncodeToString(sum[:9])
}

// Encode returns the opaque token for c.
func (c Cursor) Encode() string {
	b, _ := json.Marshal(cursorToken{Created: c.Created, ID: c.ID, Check: c.check()})
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeCursor parses a continuation token; any token Encode did not return
// is refused.
func DecodeCursor(token string) (Cursor, error) {
	var t cursorToken
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err == nil {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		err = dec.Decode(&t)
	}
	c := Cursor{Created: t.Created, ID: t.ID}
	if err != nil || c.ID == "" || c.Created == "" || t.Check != c.check() || c.Encode() != token {
		return Cursor{}, fmt.Errorf("%w: continuationToken %q is not one this service issued; start again without it", ErrInvalidQuery, capToken(token))
	}
	return c, nil
}

func capToken(s string) string {
	if len(s) > 100 {
		return s[:100] + "..."
	}
	return s
}

var allStatuses = []api.OrchestrationStatus{
	api.RUNTIME_STATUS_RUNNING, api.RUNTIME_STATUS_COMPLETED, api.RUNTIME_STATUS_CONTINUED_AS_NEW,
	api.RUNTIME_STATUS_FAILED, api.RUNTIME_STATUS_CANCELED, api.RUNTIME_STATUS_TERMINATED,
	api.RUNTIME_STATUS_PENDING, api.RUNTIME_STATUS_SUSPENDED,
}

// StatusName is the Durable-Functions-style name of a runtime status:
// Running, Completed, ContinuedAsNew, Failed, Canceled, Terminated, Pending,
// Suspended.
func StatusName(s api.OrchestrationStatus) string {
	raw := strings.TrimPrefix(s.String(), "ORCHESTRATION_STATUS_")
	parts := strings.Split(strings.ToLower(raw), "_")
	for i, p := range parts {
		if p != "" {
			parts[i] = strings.ToUpper(p[:1]) + p[1:]
		}
	}
	return strings.Join(parts, "")
}

// StorageName is the upper-case name durabletask-go's SQL backends store.
func StorageName(s api.OrchestrationStatus) string {
	return strings.TrimPrefix(s.String(), "ORCHESTRATION_STATUS_")
}

// ParseStatus accepts a status name in any case, with or without
// underscores ("Running", "RUNNING", "continued_as_new").
func ParseStatus(name string) (api.OrchestrationStatus, error) {
	key := strings.ToLower(strings.ReplaceAll(name, "_", ""))
	if key == "cancelled" {
		key = "canceled"
	}
	names := make([]string, 0, len(allStatuses))
	for _, s := range allStatuses {
		n := StatusName(s)
		if strings.ToLower(n) == key {
			return s, nil
		}
		names = append(names, n)
	}
	return 0, fmt.Errorf("%w: unknown runtime status %q; use one of %s", ErrInvalidQuery, name, strings.Join(names, ", "))
}

// DropStaleTimers removes from newEvents every TimerFired event that does not
// match a timer the current execution created and has not yet seen fire.
//
// durabletask-go matches a TimerFired to a pending task by sequence number
// alone. After continue-as-new, a timer created by the previous execution
// (say a watchdog whose event arrived first) still fires, and would complete
// whatever task of the new execution has the same number. Matching on the
// fire time as well makes such leftovers harmless.
func DropStaleTimers(history, newEvents []*dtbackend.HistoryEvent) []*dtbackend.HistoryEvent {
	outstanding := map[int32]time.Time{}
	for _, e := range history {
		if tc := e.GetTimerCreated(); tc != nil {
			outstanding[e.EventId] = tc.GetFireAt().AsTime()
		} else if tf := e.GetTimerFired(); tf != nil {
			delete(outstanding, tf.TimerId)
		}
	}
	kept := newEvents[:0:0]
	for _, e := range newEvents {
		if tf := e.GetTimerFired(); tf != nil {
			fireAt, ok := outstanding[tf.TimerId]
			if !ok || !fireAt.Equal(tf.GetFireAt().AsTime()) {
				continue
			}
			delete(outstanding, tf.TimerId)
		}
		kept = append(kept, e)
	}
	return kept
}

// ScheduledStart returns the time an instance's start event asks it to begin
// at, if events contain such an event and the time is after now.
func ScheduledStart(events []*dtbackend.HistoryEvent, now time.Time) (time.Time, bool) {
	for _, e := range events {
		if es := e.GetExecutionStarted(); es != nil && es.GetScheduledStartTimestamp() != nil {
			at := es.GetScheduledStartTimestamp().AsTime()
			if at.After(now) {
				return at, true
			}
		}
	}
	return time.Time{}, false
}

// EventType names a history event's type, e.g. "TaskScheduled".
func EventType(e *dtbackend.HistoryEvent) string {
	switch {
	case e.GetExecutionStarted() != nil:
		return "ExecutionStarted"
	case e.GetExecutionCompleted() != nil:
		return "ExecutionCompleted"
	case e.GetExecutionTerminated() != nil:
		return "ExecutionTerminated"
	case e.GetExecutionSuspended() != nil:
		return "ExecutionSuspended"
	case e.GetExecutionResumed() != nil:
		return "ExecutionResumed"
	case e.GetTaskScheduled() != nil:
		return "TaskScheduled"
	case e.GetTaskCompleted() != nil:
		return "TaskCompleted"
	case e.GetTaskFailed() != nil:
		return "TaskFailed"
	case e.GetTimerCreated() != nil:
		return "TimerCreated"
	case e.GetTimerFired() != nil:
		return "TimerFired"
	case e.GetEventRaised() != nil:
		return "EventRaised"
	case e.GetSubOrchestrationInstanceCreated() != nil:
		return "SubOrchestrationInstanceCreated"
	case e.GetSubOrchestrationInstanceCompleted() != nil:
		return "SubOrchestrationInstanceCompleted"
	case e.GetSubOrchestrationInstanceFailed() != nil:
		return "SubOrchestrationInstanceFailed"
	case e.GetOrchestratorStarted() != nil:
		return "OrchestratorStarted"
	case e.GetOrchestratorCompleted() != nil:
		return "OrchestratorCompleted"
	}
	return "Unknown"
}
