package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/taskhub"
)

// scope is a family of management routes: the missions (one orchestrator)
// or the generic instances (any orchestrator).
type scope struct {
	name string // orchestrator name the scope is limited to; "" for any
	base string // route prefix
}

func (sc scope) noun() string {
	if sc.name == orchestrations.DeliveryMissionName {
		return "mission"
	}
	return "instance"
}

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

// public reports whether clients may raise event on instances of the
// orchestrator name.
func (h *handler) public(name, event string) bool {
	o, ok := h.opts.Orchestrators[name]
	return ok && slices.Contains(o.PublicEvents, event)
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

func (h *handler) accepted(w http.ResponseWriter, r *http.Request, sc scope, id string) {
	u := baseURL(r) + sc.base + "/" + url.PathEscape(id)
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
			return nil, fmt.Errorf("query parameter %q is not valid percent-encoding", capEcho(key, 100))
		}
		if _, verr := url.QueryUnescape(value); verr != nil {
			return nil, fmt.Errorf("query parameter %s: %q is not valid percent-encoding (write %%25 for a literal %%)", name, capEcho(value, 100))
		}
	}
	return nil, fmt.Errorf("the query string is not valid: %v", err)
}

// startOptions reads startAt; at is zero when there is none.
func startOptions(r *http.Request) (opts []api.NewOrchestrationOptions, at time.Time, err error) {
	q, err := queryValues(r)
	if err != nil {
		return nil, at, err
	}
	if s := q.Get("startAt"); s != "" {
		at, err = time.Parse(time.RFC3339, s)
		if err != nil {
			return nil, at, fmt.Errorf("startAt %q is not an RFC 3339 time (e.g. 2026-11-22T12:00:00Z)", s)
		}
		opts = append(opts, api.WithStartTime(at))
	}
	return opts, at, nil
}

// startedMission is the input a mission is started with: the orchestration
// reads the MissionInput part; StartAt records the request's startAt ("" for
// none) so that a retry can be checked against it. It is nil in inputs
// written before it existed and after a continue-as-new, which are then not
// checked.
type startedMission struct {
	orchestrations.MissionInput
	StartAt *string `json:"startAt,omitempty"`
}

func startText(at time.Time) string {
	if at.IsZero() {
		return ""
	}
	return at.UTC().Format(time.RFC3339Nano)
}

func ptrTo[T any](v T) *T { return &v }

// sameMission reports whether two mission requests ask for the same
// mission, comparing times as instants (the same deadline may be written
// with any offset).
func sameMission(a, b domain.MissionRequest) bool {
	a.Deadline, b.Deadline = a.Deadline.UTC(), b.Deadline.UTC()
	return a.Equivalent(&b)
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
	if err := req.Validate(h.opts.Now()); err != nil {
		badInput(w, err)
		return
	}
	opts, startAt, err := startOptions(r)
	if err != nil {
		problem(w, http.StatusBadRequest, err.Error())
		return
	}
	if !startAt.IsZero() && !startAt.Before(req.Deadline) {
		problem(w, http.StatusBadRequest, fmt.Sprintf("startAt %s is not before the deadline %s: the mission could never be on time",
			startAt.Format(time.RFC3339), req.Deadline.Format(time.RFC3339)),
			FieldProblem{Field: "startAt", Message: "must be before the deadline"})
		return
	}
	if req.MissionID == "" {
		req.MissionID = uuid.NewString()
	}
	sc := scope{name: orchestrations.DeliveryMissionName, base: "/api/missions"}
	in := startedMission{MissionInput: orchestrations.MissionInput{Request: req, Settings: h.opts.Mission}, StartAt: ptrTo(startText(startAt))}
	opts = append(opts, api.WithInstanceID(api.InstanceID(req.MissionID)), api.WithInput(in))
	_, err = h.opts.Client.ScheduleNewOrchestration(r.Context(), orchestrations.DeliveryMissionName, opts...)
	if err != nil && !errors.Is(err, api.ErrDuplicateInstance) {
		h.storageError(w, r, "start mission", err)
		return
	}
	if err != nil {
		// Same id again: the same request is a retry and gets the same
		// answer; a different request is a conflict.
		md, ferr := h.opts.Client.FetchOrchestrationMetadata(r.Context(), api.InstanceID(req.MissionID))
		if ferr != nil {
			h.storageError(w, r, "start mission", ferr)
			return
		}
		var existing startedMission
		if md.Name != orchestrations.DeliveryMissionName || json.Unmarshal([]byte(md.SerializedInput), &existing) != nil || !sameMission(existing.Request, req) {
			problem(w, http.StatusConflict, fmt.Sprintf("mission %q already exists with a different request; choose another missionId or omit it", req.MissionID))
			return
		}
		if existing.StartAt != nil && *existing.StartAt != startText(startAt) {
			was, now := *existing.StartAt, startText(startAt)
			if was == "" {
				was = "none (it started at once)"
			}
			if now == "" {
				now = "none"
			}
			problem(w, http.StatusConflict, fmt.Sprintf("mission %q already exists with startAt %s; this request's startAt is %s; repeat the original startAt, or choose another missionId", req.MissionID, was, now),
				FieldProblem{Field: "startAt", Message: "differs from the existing mission's"})
			return
		}
	} else {
		h.metrics.missionsStarted.Add(1)
	}
	h.accepted(w, r, sc, req.MissionID)
}

func (h *handler) startGeneric(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if name == orchestrations.DeliveryMissionName {
		// Missions need their request validated and the worker's settings.
		problem(w, http.StatusBadRequest, "start delivery missions with POST /api/missions")
		return
	}
	if err := checkText("orchestrator name", name, MaxNameLength); err != nil {
		problem(w, http.StatusBadRequest, err.Error())
		return
	}
	if _, ok := h.opts.Orchestrators[name]; !ok {
		problem(w, http.StatusNotFound, fmt.Sprintf("no orchestrator named %q is registered on this worker; register it with worker.Config.Register", name))
		return
	}
	body, ok := readBody(w, r, MaxEventBody, false)
	if !ok {
		return
	}
	opts, _, err := startOptions(r)
	if err != nil {
		problem(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(bytes.TrimSpace(body)) > 0 {
		if !json.Valid(body) {
			problem(w, http.StatusBadRequest, "the body must be the orchestration input as JSON")
			return
		}
		opts = append(opts, api.WithRawInput(string(bytes.TrimSpace(body))))
	}
	id := r.URL.Query().Get("instanceId")
	if id == "" {
		id = uuid.NewString()
	} else if !domain.ValidID(id) {
		problem(w, http.StatusBadRequest, fmt.Sprintf("instanceId %q must be 1-100 letters, digits, '.', '_', ':' or '-'", id))
		return
	}
	opts = append(opts, api.WithInstanceID(api.InstanceID(id)))
	if _, err := h.opts.Client.ScheduleNewOrchestration(r.Context(), name, opts...); err != nil {
		if errors.Is(err, api.ErrDuplicateInstance) {
			problem(w, http.StatusConflict, fmt.Sprintf("instance %q already exists", id))
			return
		}
		h.storageError(w, r, "start orchestration", err)
		return
	}
	h.accepted(w, r, scope{base: "/api/instances"}, id)
}

func badInput(w http.ResponseWriter, err error) {
	var ve *domain.ValidationError
	if errors.As(err, &ve) {
		fields := make([]FieldProblem, len(ve.Problems))
		for i, p := range ve.Problems {
			fields[i] = FieldProblem(p)
		}
		problem(w, http.StatusBadRequest, err.Error(), fields...)
		return
	}
	problem(w, http.StatusBadRequest, err.Error())
}

func (h *handler) storageError(w http.ResponseWriter, r *http.Request, what string, err error) {
	h.log.Error(what+" failed", "path", r.URL.Path, "err", err)
	w.Header().Set("Retry-After", "5")
	problem(w, http.StatusServiceUnavailable, what+" failed: the task hub storage did not answer; retry later")
}

// lookup fetches an instance in scope, answering 404 itself.
func (h *handler) lookup(w http.ResponseWriter, r *http.Request, sc scope) (*api.OrchestrationMetadata, bool) {
	id := r.PathValue("id")
	md, err := h.opts.Client.FetchOrchestrationMetadata(r.Context(), api.InstanceID(id))
	if errors.Is(err, api.ErrInstanceNotFound) || (err == nil && sc.name != "" && md.Name != sc.name) {
		problem(w, http.StatusNotFound, fmt.Sprintf("no %s with id %q", sc.noun(), id))
		return nil, false
	}
	if err != nil {
		h.storageError(w, r, "read "+sc.noun(), err)
		return nil, false
	}
	return md, true
}

func terminal(s api.OrchestrationStatus) bool {
	switch s {
	case api.RUNTIME_STATUS_COMPLETED, api.RUNTIME_STATUS_FAILED, api.RUNTIME_STATUS_TERMINATED, api.RUNTIME_STATUS_CANCELED:
		return true
	}
	return false
}

// live fetches an instance that can still take operations: 404 when
// unknown, 410 when it already ended.
func (h *handler) live(w http.ResponseWriter, r *http.Request, sc scope) (*api.OrchestrationMetadata, bool) {
	md, ok := h.lookup(w, r, sc)
	if !ok {
		return nil, false
	}
	if terminal(md.RuntimeStatus) {
		problem(w, http.StatusGone, fmt.Sprintf("%s %q already ended (%s)", sc.noun(), md.InstanceID, taskhub.StatusName(md.RuntimeStatus)))
		return nil, false
	}
	return md, true
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

func toFailure(fd *dtbackend.TaskFailureDetails) *Failure {
	if fd == nil {
		return nil
	}
	return &Failure{ErrorType: fd.GetErrorType(), ErrorMessage: fd.GetErrorMessage(), Inner: toFailure(fd.GetInnerFailure())}
}

// rawJSON returns s as JSON: itself when it is valid JSON, else as a string.
func rawJSON(s string) json.RawMessage {
	if s == "" {
		return json.RawMessage("null")
	}
	if json.Valid([]byte(s)) {
		return json.RawMessage(s)
	}
	b, _ := json.Marshal(s)
	return b
}

func (h *handler) statusBody(sc scope, md *api.OrchestrationMetadata) Status {
	input := rawJSON(md.SerializedInput)
	if md.Name == orchestrations.DeliveryMissionName {
		// Clients sent the request; the settings are the worker's business,
		// on every route that shows the mission (/api/instances too).
		var in orchestrations.MissionInput
		if json.Unmarshal([]byte(md.SerializedInput), &in) == nil {
			input, _ = json.Marshal(in.Request)
		}
	}
	return Status{
		Name:            md.Name,
		InstanceID:      string(md.InstanceID),
		RuntimeStatus:   taskhub.StatusName(md.RuntimeStatus),
		Input:           input,
		CustomStatus:    rawJSON(md.SerializedCustomStatus),
		Output:          rawJSON(md.SerializedOutput),
		CreatedTime:     md.CreatedAt.UTC(),
		LastUpdatedTime: md.LastUpdatedAt.UTC(),
		FailureDetails:  toFailure(md.FailureDetails),
	}
}

func (h *handler) status(sc scope) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		md, ok := h.lookup(w, r, sc)
		if !ok {
			return
		}
		body := h.statusBody(sc, md)
		if v := r.URL.Query().Get("showHistory"); v != "" {
			show, err := strconv.ParseBool(v)
			if err != nil {
				problem(w, http.StatusBadRequest, fmt.Sprintf("showHistory=%q: use true or false", v))
				return
			}
			if show {
				state, err := h.opts.Backend.GetOrchestrationRuntimeState(r.Context(), &dtbackend.OrchestrationWorkItem{InstanceID: md.InstanceID})
				if err != nil {
					h.storageError(w, r, "read history", err)
					return
				}
				body.History = summarizeHistory(state.OldEvents())
			}
		}
		code := http.StatusOK
		if !terminal(md.RuntimeStatus) {
			code = http.StatusAccepted
			w.Header().Set("Retry-After", "1")
			w.Header().Set("Location", baseURL(r)+sc.base+"/"+url.PathEscape(string(md.InstanceID)))
		}
		writeJSON(w, code, body)
	}
}

// ListPage is the body of a list request.
type ListPage struct {
	Instances         []Status `json:"instances"`
	ContinuationToken string   `json:"continuationToken,omitempty"`
}

func parseQuery(r *http.Request, sc scope) (taskhub.Query, error) {
	v, err := queryValues(r)
	if err != nil {
		return taskhub.Query{}, err
	}
	q := taskhub.Query{Name: sc.name, InstanceIDPrefix: v.Get("instanceIdPrefix")}
	if s := v.Get("runtimeStatus"); s != "" {
		for _, part := range strings.Split(s, ",") {
			st, err := taskhub.ParseStatus(strings.TrimSpace(part))
			if err != nil {
				return q, err
			}
			q.RuntimeStatus = append(q.RuntimeStatus, st)
		}
	}
	for key, dst := range map[string]*time.Time{"createdTimeFrom": &q.CreatedFrom, "createdTimeTo": &q.CreatedTo} {
		if s := v.Get(key); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return q, fmt.Errorf("%s %q is not an RFC 3339 time (e.g. 2026-11-22T12:00:00Z)", key, s)
			}
			*dst = t
		}
	}
	if s := v.Get("top"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > taskhub.MaxPageSize {
			return q, fmt.Errorf("top=%q must be a whole number from 1 to %d", s, taskhub.MaxPageSize)
		}
		q.PageSize = n
	}
	q.ContinuationToken = v.Get("continuationToken")
	if q.ContinuationToken == "" {
		q.ContinuationToken = r.Header.Get("x-ms-continuation-token")
	}
	return q.Normalize()
}

func (h *handler) list(sc scope) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q, err := parseQuery(r, sc)
		if err != nil {
			problem(w, http.StatusBadRequest, err.Error())
			return
		}
		page, err := h.opts.Backend.ListInstances(r.Context(), q)
		if errors.Is(err, taskhub.ErrInvalidQuery) {
			problem(w, http.StatusBadRequest, err.Error())
			return
		}
		if err != nil {
			h.storageError(w, r, "list instances", err)
			return
		}
		out := ListPage{Instances: make([]Status, 0, len(page.Instances)), ContinuationToken: page.ContinuationToken}
		for _, md := range page.Instances {
			out.Instances = append(out.Instances, h.statusBody(sc, md))
		}
		if out.ContinuationToken != "" {
			w.Header().Set("x-ms-continuation-token", out.ContinuationToken)
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// reason returns the request's reason parameter, answering 400 itself
// when it is too long or not printable text: it is stored in the history
// and, on a terminate, becomes the instance's output.
func reason(w http.ResponseWriter, r *http.Request) (string, bool) {
	q, err := queryValues(r)
	if err != nil {
		problem(w, http.StatusBadRequest, err.Error())
		return "", false
	}
	rs := q.Get("reason")
	if rs == "" {
		return "", true
	}
	if err := checkText("reason", rs, MaxReasonLength); err != nil {
		problem(w, http.StatusBadRequest, err.Error())
		return "", false
	}
	return rs, true
}

func (h *handler) raise(sc scope) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		event := r.PathValue("event")
		if CheckEventName(event) != nil {
			problem(w, http.StatusBadRequest, fmt.Sprintf("event name must be 1-%d printable characters", MaxEventNameLength))
			return
		}
		body, ok := readBody(w, r, MaxEventBody, false)
		if !ok {
			return
		}
		var opts []api.RaiseEventOptions
		if b := bytes.TrimSpace(body); len(b) > 0 {
			if !json.Valid(b) {
				problem(w, http.StatusBadRequest, "the event payload must be JSON")
				return
			}
			opts = append(opts, api.WithRawEventData(string(b)))
		}
		md, ok := h.live(w, r, sc)
		if !ok {
			return
		}
		if !h.public(md.Name, event) {
			h.notPublic(w, md, event)
			return
		}
		if err := h.opts.Client.RaiseEvent(r.Context(), md.InstanceID, event, opts...); err != nil {
			h.storageError(w, r, "raise event", err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}
}

// notPublic answers 403 for an event the instance's orchestrator does not
// declare public.
func (h *handler) notPublic(w http.ResponseWriter, md *api.OrchestrationMetadata, event string) {
	var public []string
	if o, ok := h.opts.Orchestrators[md.Name]; ok {
		public = o.PublicEvents
	}
	list := "none"
	if len(public) > 0 {
		list = strings.Join(public, ", ")
	}
	detail := fmt.Sprintf("event %q is not public on %s instances, so it cannot be raised over HTTP (public events: %s)", event, md.Name, list)
	if md.Name == orchestrations.DeliveryMissionName {
		detail += "; stop a mission with POST /api/missions/{id}/cancel"
	}
	problem(w, http.StatusForbidden, detail)
}

func (h *handler) terminate(sc scope) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rs, ok := reason(w, r)
		if !ok {
			return
		}
		md, ok := h.live(w, r, sc)
		if !ok {
			return
		}
		var opts []api.TerminateOptions
		if rs != "" {
			opts = append(opts, api.WithOutput(rs))
		}
		if err := h.opts.Client.TerminateOrchestration(r.Context(), md.InstanceID, opts...); err != nil {
			h.storageError(w, r, "terminate", err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}
}

func (h *handler) suspend(sc scope) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rs, ok := reason(w, r)
		if !ok {
			return
		}
		md, ok := h.live(w, r, sc)
		if !ok {
			return
		}
		if err := h.opts.Client.SuspendOrchestration(r.Context(), md.InstanceID, rs); err != nil {
			h.storageError(w, r, "suspend", err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}
}

func (h *handler) resume(sc scope) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rs, ok := reason(w, r)
		if !ok {
			return
		}
		md, ok := h.live(w, r, sc)
		if !ok {
			return
		}
		if err := h.opts.Client.ResumeOrchestration(r.Context(), md.InstanceID, rs); err != nil {
			h.storageError(w, r, "resume", err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}
}

// cancelMission asks a mission to stop and compensate, unlike terminate,
// which stops it where it stands.
func (h *handler) cancelMission(sc scope) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rs, ok := reason(w, r)
		if !ok {
			return
		}
		md, ok := h.live(w, r, sc)
		if !ok {
			return
		}
		payload, _ := json.Marshal(domain.Signal{Kind: domain.SignalCancel, Reason: rs})
		if err := h.opts.Client.RaiseEvent(r.Context(), md.InstanceID, domain.SignalEvent, api.WithRawEventData(string(payload))); err != nil {
			h.storageError(w, r, "cancel mission", err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}
}

// PurgeResult is the body of a purge.
type PurgeResult struct {
	InstancesDeleted int `json:"instancesDeleted"`
}

func (h *handler) purge(sc scope) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		md, ok := h.lookup(w, r, sc)
		if !ok {
			return
		}
		if !terminal(md.RuntimeStatus) {
			problem(w, http.StatusConflict, fmt.Sprintf("%s %q is %s; terminate it before purging", sc.noun(), md.InstanceID, taskhub.StatusName(md.RuntimeStatus)))
			return
		}
		err := h.opts.Client.PurgeOrchestrationState(r.Context(), md.InstanceID)
		switch {
		case errors.Is(err, api.ErrInstanceNotFound):
			problem(w, http.StatusNotFound, fmt.Sprintf("no %s with id %q", sc.noun(), md.InstanceID))
		case errors.Is(err, api.ErrNotCompleted):
			problem(w, http.StatusConflict, fmt.Sprintf("%s %q has not ended; terminate it before purging", sc.noun(), md.InstanceID))
		case err != nil:
			h.storageError(w, r, "purge", err)
		default:
			writeJSON(w, http.StatusOK, PurgeResult{InstancesDeleted: 1})
		}
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
