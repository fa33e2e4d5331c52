package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/taskhub"
)

// Orchestrator is what the API knows of a registered orchestrator.
type Orchestrator struct {
	// PublicEvents are the event names clients may raise on its instances
	// with POST /api/instances/{id}/events/{event}. Any other name is
	// refused with 403. Events an orchestration trusts, such as
	// DeliveryMission's "signal" that carries telemetry, must not be
	// public: raise those from Go with the task hub client.
	PublicEvents []string
}

// Bounds of the strings the API stores.
const (
	// MaxNameLength bounds orchestrator names, in characters.
	MaxNameLength = 256
	// MaxEventNameLength bounds event names, in characters.
	MaxEventNameLength = 100
	// MaxReasonLength bounds the reason of a terminate, suspend, resume or
	// cancel, in characters.
	MaxReasonLength = 1000
)

// checkText reports why s is not 1 to max characters of printable UTF-8.
func checkText(what, s string, max int) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", what)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s is not valid UTF-8", what)
	case utf8.RuneCountInString(s) > max:
		return fmt.Errorf("%s is %d characters long; at most %d are allowed", what, utf8.RuneCountInString(s), max)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return fmt.Errorf("%s contains a control character", what)
	}
	return nil
}

// CheckEventName reports why name cannot be an event name: 1 to
// MaxEventNameLength printable characters, not all blank.
func CheckEventName(name string) error {
	if strings.TrimSpace(name) == "" {
		return errors.New("event name is blank")
	}
	return checkText("event name", name, MaxEventNameLength)
}

// Accepted is the 202 body of a start request: where to find and manage the
// new instance.
type Accepted struct {
	ID                    string `json:"id"`
	StatusQueryGetURI     string `json:"statusQueryGetUri"`
	SendEventPostURI      string `json:"sendEventPostUri"`
	TerminatePostURI      string `json:"terminatePostUri"`
	SuspendPostURI        string `json:"suspendPostUri"`
	ResumePostURI         string `json:"resumePostUri"`
	PurgeHistoryDeleteURI string `json:"purgeHistoryDeleteUri"`
}

func (h *handler) accepted(w http.ResponseWriter, r *http.Request, sc Scope, id string) {
	u := baseURL(r) + sc.base() + "/" + url.PathEscape(id)
	w.Header().Set("Location", u)
	w.Header().Set("Retry-After", "1")
	writeJSON(w, http.StatusAccepted, Accepted{
		ID:                    id,
		StatusQueryGetURI:     u,
		SendEventPostURI:      u + "/events/{eventName}",
		TerminatePostURI:      u + "/terminate?reason={text}",
		SuspendPostURI:        u + "/suspend?reason={text}",
		ResumePostURI:         u + "/resume?reason={text}",
		PurgeHistoryDeleteURI: u,
	})
}

// queryValues parses the request's query, naming the parameter whose
// percent-encoding is broken (r.URL.Query drops it silently).
func queryValues(r *http.Request) (url.Values, error) {
	v, err := url.ParseQuery(r.URL.RawQuery)
	if err == nil {
		return v, nil
	}
	for _, part := range strings.Split(r.URL.RawQuery, "&") {
		key, value, _ := strings.Cut(part, "=")
		name, kerr := url.QueryUnescape(key)
		if kerr != nil {
			return nil, fmt.Errorf("query parameter %q is not valid percent-encoding", CapEcho(key, 100))
		}
		if _, verr := url.QueryUnescape(value); verr != nil {
			return nil, fmt.Errorf("query parameter %s: %q is not valid percent-encoding (write %%25 for a literal %%)", name, CapEcho(value, 100))
		}
	}
	return nil, fmt.Errorf("the query string is not valid: %v", err)
}

// startAt reads the startAt parameter; it is zero when there is none.
func startAt(r *http.Request) (at time.Time, err error) {
	q, err := queryValues(r)
	if err != nil {
		return at, err
	}
	if s := q.Get("startAt"); s != "" {
		at, err = time.Parse(time.RFC3339, s)
		if err != nil {
			return at, fmt.Errorf("startAt %q is not an RFC 3339 time (e.g. 2026-11-22T12:00:00Z)", s)
		}
	}
	return at, nil
}

// fail answers a Service error, logging a storage failure.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = storageFailed(r.Method+" "+r.URL.Path, err)
	}
	if e.Err != nil && e.Status == http.StatusServiceUnavailable {
		h.log.Error(e.Op+" failed", "path", r.URL.Path, "err", e.Err)
		w.Header().Set("Retry-After", storageRetryAfter)
	}
	problem(w, e.Status, e.Detail, e.Fields...)
}

func (h *handler) startMission(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, MaxMissionBody, true)
	if !ok {
		return
	}
	var req domain.MissionRequest
	if err := domain.DecodeStrict(bytes.NewReader(body), &req); err != nil {
		problem(w, http.StatusBadRequest, "mission request: "+err.Error())
		return
	}
	at, err := startAt(r)
	if err != nil {
		problem(w, http.StatusBadRequest, err.Error())
		return
	}
	id, _, err := h.svc.StartMission(r.Context(), req, at) // Service counts the start (metrics)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.accepted(w, r, ScopeMissions, id)
}

func (h *handler) startGeneric(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	// The name is checked before the body is read.
	if err := h.svc.checkOrchestrator(name); err != nil {
		h.fail(w, r, err)
		return
	}
	body, ok := readBody(w, r, MaxEventBody, false)
	if !ok {
		return
	}
	at, err := startAt(r)
	if err != nil {
		problem(w, http.StatusBadRequest, err.Error())
		return
	}
	id, err := h.svc.StartOrchestration(r.Context(), name, r.URL.Query().Get("instanceId"), body, at)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.accepted(w, r, ScopeInstances, id)
}

// Status is the body of GET /api/missions/{id} and /api/instances/{id}.
type Status struct {
	Name            string          `json:"name"`
	InstanceID      string          `json:"instanceId"`
	RuntimeStatus   string          `json:"runtimeStatus"`
	Input           json.RawMessage `json:"input"`
	CustomStatus    json.RawMessage `json:"customStatus"`
	Output          json.RawMessage `json:"output"`
	CreatedTime     time.Time       `json:"createdTime"`
	LastUpdatedTime time.Time       `json:"lastUpdatedTime"`
	FailureDetails  *Failure        `json:"failureDetails"`
	History         []HistoryEvent  `json:"history,omitempty"`
}

// Failure describes why an instance failed.
type Failure struct {
	ErrorType    string   `json:"errorType"`
	ErrorMessage string   `json:"errorMessage"`
	Inner        *Failure `json:"innerFailure,omitempty"`
}

func (h *handler) status(sc Scope) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		history := false
		if v := r.URL.Query().Get("showHistory"); v != "" {
			show, err := strconv.ParseBool(v)
			if err != nil {
				problem(w, http.StatusBadRequest, fmt.Sprintf("showHistory=%q: use true or false", v))
				return
			}
			history = show
		}
		body, err := h.svc.Status(r.Context(), sc, r.PathValue("id"), history)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		code := http.StatusOK
		if !terminalName(body.RuntimeStatus) {
			code = http.StatusAccepted
			w.Header().Set("Retry-After", "1")
			w.Header().Set("Location", baseURL(r)+sc.base()+"/"+url.PathEscape(body.InstanceID))
		}
		writeJSON(w, code, body)
	}
}

// terminalName reports whether a runtime status name is one of an ended
// instance.
func terminalName(name string) bool {
	st, err := taskhub.ParseStatus(name)
	return err == nil && terminal(st)
}

// ListPage is the body of a list request.
type ListPage struct {
	Instances         []Status `json:"instances"`
	ContinuationToken string   `json:"continuationToken,omitempty"`
}

func (h *handler) list(sc Scope) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := queryValues(r)
		if err != nil {
			problem(w, http.StatusBadRequest, err.Error())
			return
		}
		if v.Get("continuationToken") == "" {
			if t := r.Header.Get("x-ms-continuation-token"); t != "" {
				v.Set("continuationToken", t)
			}
		}
		out, err := h.svc.List(r.Context(), sc, v)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if out.ContinuationToken != "" {
			w.Header().Set("x-ms-continuation-token", out.ContinuationToken)
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// reason returns the request's reason parameter, answering 400 itself when
// the query cannot be parsed. The Service checks the reason itself.
func reason(w http.ResponseWriter, r *http.Request) (string, bool) {
	q, err := queryValues(r)
	if err != nil {
		problem(w, http.StatusBadRequest, err.Error())
		return "", false
	}
	return q.Get("reason"), true
}

func (h *handler) raise(sc Scope) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		event := r.PathValue("event")
		// The name is checked before the body is read.
		if err := checkEvent(event); err != nil {
			h.fail(w, r, err)
			return
		}
		body, ok := readBody(w, r, MaxEventBody, false)
		if !ok {
			return
		}
		if err := h.svc.RaiseEvent(r.Context(), sc, r.PathValue("id"), event, body); err != nil {
			h.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}
}

// operation serves a route that takes a reason and answers 202 with no body:
// terminate, suspend, resume and cancel.
func (h *handler) operation(sc Scope, op func(s *Service, ctx context.Context, sc Scope, id, reason string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rs, ok := reason(w, r)
		if !ok {
			return
		}
		if err := op(h.svc, r.Context(), sc, r.PathValue("id"), rs); err != nil {
			h.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}
}

// PurgeResult is the body of a purge.
type PurgeResult struct {
	InstancesDeleted int `json:"instancesDeleted"`
}

func (h *handler) purge(sc Scope) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		res, err := h.svc.Purge(r.Context(), sc, r.PathValue("id"))
		if err != nil {
			h.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	}
}

// HistoryEvent is one history entry as shown by ?showHistory=true.
type HistoryEvent struct {
	EventID   int32     `json:"eventId"`
	EventType string    `json:"eventType"`
	Timestamp time.Time `json:"timestamp"`
	Name      string    `json:"name,omitempty"`
	Detail    string    `json:"detail,omitempty"`
}

func summarizeHistory(events []*dtbackend.HistoryEvent) []HistoryEvent {
	out := make([]HistoryEvent, 0, len(events))
	for _, e := range events {
		he := HistoryEvent{EventID: e.GetEventId(), Timestamp: e.GetTimestamp().AsTime()}
		switch {
		case e.GetExecutionStarted() != nil:
			he.EventType, he.Name = "ExecutionStarted", e.GetExecutionStarted().GetName()
		case e.GetExecutionCompleted() != nil:
			he.EventType, he.Detail = "ExecutionCompleted", taskhub.StatusName(e.GetExecutionCompleted().GetOrchestrationStatus())
		case e.GetExecutionTerminated() != nil:
			he.EventType = "ExecutionTerminated"
		case e.GetExecutionSuspended() != nil:
			he.EventType = "ExecutionSuspended"
		case e.GetExecutionResumed() != nil:
			he.EventType = "ExecutionResumed"
		case e.GetTaskScheduled() != nil:
			he.EventType, he.Name = "TaskScheduled", e.GetTaskScheduled().GetName()
		case e.GetTaskCompleted() != nil:
			he.EventType, he.Detail = "TaskCompleted", fmt.Sprintf("task %d", e.GetTaskCompleted().GetTaskScheduledId())
		case e.GetTaskFailed() != nil:
			he.EventType, he.Detail = "TaskFailed", e.GetTaskFailed().GetFailureDetails().GetErrorMessage()
		case e.GetTimerCreated() != nil:
			he.EventType, he.Detail = "TimerCreated", e.GetTimerCreated().GetFireAt().AsTime().UTC().Format(time.RFC3339Nano)
		case e.GetTimerFired() != nil:
			he.EventType, he.Detail = "TimerFired", fmt.Sprintf("timer %d", e.GetTimerFired().GetTimerId())
		case e.GetEventRaised() != nil:
			he.EventType, he.Name = "EventRaised", e.GetEventRaised().GetName()
		case e.GetSubOrchestrationInstanceCreated() != nil:
			he.EventType, he.Name = "SubOrchestrationInstanceCreated", e.GetSubOrchestrationInstanceCreated().GetName()
		case e.GetSubOrchestrationInstanceCompleted() != nil:
			he.EventType = "SubOrchestrationInstanceCompleted"
		case e.GetSubOrchestrationInstanceFailed() != nil:
			he.EventType = "SubOrchestrationInstanceFailed"
		case e.GetOrchestratorStarted() != nil, e.GetOrchestratorCompleted() != nil:
			continue // replay markers, not part of the instance's story
		default:
			he.EventType = "Other"
		}
		out = append(out, he)
	}
	return out
}
