package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/taskhub"
)

// Service carries out the API's operations without HTTP. Each route decodes
// its request, calls one Service method and writes what it returns; the
// in-process Go client (package client) calls the same methods, so both
// validate, compose statuses and refuse alike. A refusal or failure is an
// *Error holding the HTTP status and problem detail the API answers with.
type Service struct {
	opts Options
}

// NewService returns the operations on opts' task hub and fleet. Client,
// Backend and Fleet are required; the fields that only concern HTTP
// (APIKeys, PublicURL, limits) are ignored.
func NewService(opts Options) *Service {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Mission = opts.Mission.WithDefaults()
	return &Service{opts: opts}
}

// Scope is the family of instances an operation addresses.
type Scope int

const (
	// ScopeInstances addresses instances of any orchestrator, missions
	// included: the /api/instances routes.
	ScopeInstances Scope = iota
	// ScopeMissions addresses DeliveryMission instances only: the
	// /api/missions routes. Any other id is not found, and messages say
	// "mission" instead of "instance".
	ScopeMissions
)

// name is the orchestrator the scope is limited to; "" for any.
func (sc Scope) name() string {
	if sc == ScopeMissions {
		return orchestrations.DeliveryMissionName
	}
	return ""
}

// base is the scope's route prefix.
func (sc Scope) base() string {
	if sc == ScopeMissions {
		return "/api/missions"
	}
	return "/api/instances"
}

func (sc Scope) noun() string {
	if sc == ScopeMissions {
		return "mission"
	}
	return "instance"
}

// Error is an operation's refusal or failure: the HTTP status and problem
// detail the API answers it with. What it echoes of the request is capped
// as in every answer.
type Error struct {
	Status int
	Detail string
	// Fields lists each invalid field of a 400 for invalid input.
	Fields []FieldProblem
	// Op and Err are set when storage failed (Status 503): the operation
	// and the storage error. The worker logs them; the answer shows neither,
	// since storage errors can carry paths and endpoints.
	Op  string
	Err error
}

func (e *Error) Error() string { return e.Detail }

// Unwrap returns the storage error of a 503.
func (e *Error) Unwrap() error { return e.Err }

// refuse is an Error for a request the API will not carry out.
func refuse(status int, detail string, fields ...FieldProblem) *Error {
	if len(fields) > maxFieldProblems {
		fields = fields[:maxFieldProblems]
	}
	for i := range fields {
		fields[i].Field = CapEcho(fields[i].Field, maxEchoID)
		fields[i].Message = CapEcho(fields[i].Message, maxEchoReason)
	}
	return &Error{Status: status, Detail: CapEcho(detail, maxDetail), Fields: fields}
}

// storageFailed is the Error for an operation whose storage call failed.
// Its detail starts with ErrStorageUnavailable, as every storage 503 does.
func storageFailed(op string, err error) *Error {
	return &Error{
		Status: http.StatusServiceUnavailable,
		Detail: fmt.Sprintf("%s: %s failed: the task hub storage did not answer; retry later", ErrStorageUnavailable, op),
		Op:     op, Err: err,
	}
}

// invalidInput is the 400 for a validation error, naming each bad field.
func invalidInput(err error) *Error {
	var ve *domain.ValidationError
	if errors.As(err, &ve) {
		fields := make([]FieldProblem, len(ve.Problems))
		for i, p := range ve.Problems {
			fields[i] = FieldProblem(p)
		}
		return refuse(http.StatusBadRequest, err.Error(), fields...)
	}
	return refuse(http.StatusBadRequest, err.Error())
}

// --- Starting instances ------------------------------------------------------

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

// StartMission validates req and starts a DeliveryMission with the
// service's mission settings, at startAt when it is not zero. It returns
// the mission id (req.MissionID, or a new UUID) and whether this call
// created the mission: a start repeating an existing mission's request (and
// startAt) is answered like the first, with created false. The same id with
// a different request or startAt is a 409.
func (s *Service) StartMission(ctx context.Context, req domain.MissionRequest, startAt time.Time) (id string, created bool, err error) {
	if err := req.Validate(s.opts.Now()); err != nil {
		return "", false, invalidInput(err)
	}
	if !startAt.IsZero() && !startAt.Before(req.Deadline) {
		return "", false, refuse(http.StatusBadRequest, fmt.Sprintf("startAt %s is not before the deadline %s: the mission could never be on time",
			startAt.Format(time.RFC3339), req.Deadline.Format(time.RFC3339)),
			FieldProblem{Field: "startAt", Message: "must be before the deadline"})
	}
	if req.MissionID == "" {
		req.MissionID = uuid.NewString()
	}
	in := startedMission{MissionInput: orchestrations.MissionInput{Request: req, Settings: s.opts.Mission}, StartAt: ptrTo(startText(startAt))}
	opts := []api.NewOrchestrationOptions{api.WithInstanceID(api.InstanceID(req.MissionID)), api.WithInput(in)}
	if !startAt.IsZero() {
		opts = append(opts, api.WithStartTime(startAt))
	}
	_, err = s.opts.Client.ScheduleNewOrchestration(ctx, orchestrations.DeliveryMissionName, opts...)
	if err == nil {
		s.opts.Metrics.MissionStarted()
		return req.MissionID, true, nil
	}
	if !errors.Is(err, api.ErrDuplicateInstance) {
		return "", false, storageFailed("start mission", err)
	}
	// Same id again: the same request is a retry and gets the same answer; a
	// different request is a conflict.
	md, err := s.opts.Client.FetchOrchestrationMetadata(ctx, api.InstanceID(req.MissionID))
	if err != nil {
		return "", false, storageFailed("start mission", err)
	}
	var existing startedMission
	if md.Name != orchestrations.DeliveryMissionName || json.Unmarshal([]byte(md.SerializedInput), &existing) != nil || !sameMission(existing.Request, req) {
		return "", false, refuse(http.StatusConflict, fmt.Sprintf("mission %q already exists with a different request; choose another missionId or omit it", req.MissionID))
	}
	if existing.StartAt != nil && *existing.StartAt != startText(startAt) {
		was, now := *existing.StartAt, startText(startAt)
		if was == "" {
			was = "none (it started at once)"
		}
		if now == "" {
			now = "none"
		}
		return "", false, refuse(http.StatusConflict, fmt.Sprintf("mission %q already exists with startAt %s; this request's startAt is %s; repeat the original startAt, or choose another missionId", req.MissionID, was, now),
			FieldProblem{Field: "startAt", Message: "differs from the existing mission's"})
	}
	return req.MissionID, false, nil
}

// checkOrchestrator reports why instances of name cannot be started.
func (s *Service) checkOrchestrator(name string) error {
	if name == orchestrations.DeliveryMissionName {
		// Missions need their request validated and the worker's settings.
		return refuse(http.StatusBadRequest, "start delivery missions with POST /api/missions")
	}
	if err := checkText("orchestrator name", name, MaxNameLength); err != nil {
		return refuse(http.StatusBadRequest, err.Error())
	}
	if _, ok := s.opts.Orchestrators[name]; !ok {
		return refuse(http.StatusNotFound, fmt.Sprintf("no orchestrator named %q is registered on this worker; register it with worker.Config.Register", name))
	}
	return nil
}

// StartOrchestration starts an instance of the registered orchestrator
// name with input, raw JSON (empty for none), under id ("" for a new UUID),
// at startAt when it is not zero. There is no idempotency: an existing id is
// a 409. It returns the instance id.
func (s *Service) StartOrchestration(ctx context.Context, name, id string, input []byte, startAt time.Time) (string, error) {
	if err := s.checkOrchestrator(name); err != nil {
		return "", err
	}
	var opts []api.NewOrchestrationOptions
	if !startAt.IsZero() {
		opts = append(opts, api.WithStartTime(startAt))
	}
	if in := bytes.TrimSpace(input); len(in) > 0 {
		if !json.Valid(in) {
			return "", refuse(http.StatusBadRequest, "the body must be the orchestration input as JSON")
		}
		opts = append(opts, api.WithRawInput(string(in)))
	}
	if id == "" {
		id = uuid.NewString()
	} else if !domain.ValidID(id) {
		return "", refuse(http.StatusBadRequest, fmt.Sprintf("instanceId %q must be 1-100 letters, digits, '.', '_', ':' or '-'", id))
	}
	opts = append(opts, api.WithInstanceID(api.InstanceID(id)))
	if _, err := s.opts.Client.ScheduleNewOrchestration(ctx, name, opts...); err != nil {
		if errors.Is(err, api.ErrDuplicateInstance) {
			return "", refuse(http.StatusConflict, fmt.Sprintf("instance %q already exists", id))
		}
		return "", storageFailed("start orchestration", err)
	}
	return id, nil
}

// --- Reading instances -------------------------------------------------------

// lookup fetches an instance in scope: 404 when unknown.
func (s *Service) lookup(ctx context.Context, sc Scope, id string) (*api.OrchestrationMetadata, error) {
	md, err := s.opts.Client.FetchOrchestrationMetadata(ctx, api.InstanceID(id))
	if errors.Is(err, api.ErrInstanceNotFound) || (err == nil && sc.name() != "" && md.Name != sc.name()) {
		return nil, refuse(http.StatusNotFound, fmt.Sprintf("no %s with id %q", sc.noun(), id))
	}
	if err != nil {
		return nil, storageFailed("read "+sc.noun(), err)
	}
	return md, nil
}

// live fetches an instance that can still take operations: 404 when
// unknown, 410 when it already ended.
func (s *Service) live(ctx context.Context, sc Scope, id string) (*api.OrchestrationMetadata, error) {
	md, err := s.lookup(ctx, sc, id)
	if err != nil {
		return nil, err
	}
	if terminal(md.RuntimeStatus) {
		return nil, refuse(http.StatusGone, fmt.Sprintf("%s %q already ended (%s)", sc.noun(), md.InstanceID, taskhub.StatusName(md.RuntimeStatus)))
	}
	return md, nil
}

func terminal(s api.OrchestrationStatus) bool {
	switch s {
	case api.RUNTIME_STATUS_COMPLETED, api.RUNTIME_STATUS_FAILED, api.RUNTIME_STATUS_TERMINATED, api.RUNTIME_STATUS_CANCELED:
		return true
	}
	return false
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

// statusOf is an instance's status as the API shows it.
func statusOf(md *api.OrchestrationMetadata) Status {
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

// Status reads an instance in scope, with its history when history is set.
func (s *Service) Status(ctx context.Context, sc Scope, id string, history bool) (Status, error) {
	md, err := s.lookup(ctx, sc, id)
	if err != nil {
		return Status{}, err
	}
	st := statusOf(md)
	if history {
		state, err := s.opts.Backend.GetOrchestrationRuntimeState(ctx, &dtbackend.OrchestrationWorkItem{InstanceID: md.InstanceID})
		if err != nil {
			return Status{}, storageFailed("read history", err)
		}
		st.History = summarizeHistory(state.OldEvents())
	}
	return st, nil
}

// parseQuery reads a listing's query parameters (runtimeStatus,
// createdTimeFrom, createdTimeTo, instanceIdPrefix, top, continuationToken,
// and on /api/instances name) into a query in scope.
func parseQuery(sc Scope, v url.Values) (taskhub.Query, error) {
	q := taskhub.Query{Name: sc.name(), InstanceIDPrefix: v.Get("instanceIdPrefix")}
	if sc == ScopeInstances {
		q.Name = v.Get("name") // the orchestrator's name; "" for all
	}
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
	return q.Normalize()
}

// List lists instances in scope, oldest first, one page at a time; query
// holds the listing's query parameters: runtimeStatus (comma-separated),
// createdTimeFrom, createdTimeTo, instanceIdPrefix, top and
// continuationToken, as GET /api/missions takes them, and in ScopeInstances
// name, the orchestrator's name.
func (s *Service) List(ctx context.Context, sc Scope, query url.Values) (ListPage, error) {
	q, err := parseQuery(sc, query)
	if err != nil {
		return ListPage{}, refuse(http.StatusBadRequest, err.Error())
	}
	page, err := s.opts.Backend.ListInstances(ctx, q)
	if errors.Is(err, taskhub.ErrInvalidQuery) {
		return ListPage{}, refuse(http.StatusBadRequest, err.Error())
	}
	if err != nil {
		return ListPage{}, storageFailed("list instances", err)
	}
	out := ListPage{Instances: make([]Status, 0, len(page.Instances)), ContinuationToken: page.ContinuationToken}
	for _, md := range page.Instances {
		out.Instances = append(out.Instances, statusOf(md))
	}
	return out, nil
}

// InstancesChangedSince lists the instances of any orchestrator whose
// status was written at or after since, as List shows them, and the time to
// pass as since next (see taskhub.ChangeLister: the store's clock; keep an
// overlap of a few seconds). A backend without the capability is a 501
// (*Error, Status http.StatusNotImplemented); more than limit changes is a
// 503 wrapping taskhub.ErrTooManyChanges.
func (s *Service) InstancesChangedSince(ctx context.Context, since time.Time, limit int) ([]Status, time.Time, error) {
	cl, ok := s.opts.Backend.(taskhub.ChangeLister)
	if !ok {
		return nil, time.Time{}, s.notSupported("listing of changed instances")
	}
	mds, next, err := cl.InstancesChangedSince(ctx, since, limit)
	if err != nil {
		return nil, time.Time{}, storageFailed("list changed instances", err)
	}
	out := make([]Status, 0, len(mds))
	for _, md := range mds {
		out = append(out, statusOf(md))
	}
	return out, next, nil
}

// --- Managing instances ------------------------------------------------------

// checkReason reports why reason cannot be an operation's reason: it is
// stored in the history and, on a terminate, becomes the output.
func checkReason(reason string) error {
	if reason == "" {
		return nil
	}
	if err := checkText("reason", reason, MaxReasonLength); err != nil {
		return refuse(http.StatusBadRequest, err.Error())
	}
	return nil
}

// public reports whether clients may raise event on instances of the
// orchestrator name.
func (s *Service) public(name, event string) bool {
	o, ok := s.opts.Orchestrators[name]
	return ok && slices.Contains(o.PublicEvents, event)
}

// notPublic is the 403 for an event the instance's orchestrator does not
// declare public.
func (s *Service) notPublic(md *api.OrchestrationMetadata, event string) *Error {
	var public []string
	if o, ok := s.opts.Orchestrators[md.Name]; ok {
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
	return refuse(http.StatusForbidden, detail)
}

// checkEvent reports why event cannot be raised through the API.
func checkEvent(event string) error {
	if CheckEventName(event) != nil {
		return refuse(http.StatusBadRequest, fmt.Sprintf("event name must be 1-%d printable characters", MaxEventNameLength))
	}
	return nil
}

// RaiseEvent raises event on a live instance in scope, with payload as its
// raw JSON data (empty for none). Only the events its orchestrator declares
// public can be raised: any other gets 403.
func (s *Service) RaiseEvent(ctx context.Context, sc Scope, id, event string, payload []byte) error {
	if err := checkEvent(event); err != nil {
		return err
	}
	var opts []api.RaiseEventOptions
	if b := bytes.TrimSpace(payload); len(b) > 0 {
		if !json.Valid(b) {
			return refuse(http.StatusBadRequest, "the event payload must be JSON")
		}
		opts = append(opts, api.WithRawEventData(string(b)))
	}
	md, err := s.live(ctx, sc, id)
	if err != nil {
		return err
	}
	if !s.public(md.Name, event) {
		return s.notPublic(md, event)
	}
	if err := s.opts.Client.RaiseEvent(ctx, md.InstanceID, event, opts...); err != nil {
		return storageFailed("raise event", err)
	}
	return nil
}

// Terminate stops a live instance in scope where it stands; a reason
// becomes its output.
func (s *Service) Terminate(ctx context.Context, sc Scope, id, reason string) error {
	md, err := s.liveWithReason(ctx, sc, id, reason)
	if err != nil {
		return err
	}
	var opts []api.TerminateOptions
	if reason != "" {
		opts = append(opts, api.WithOutput(reason))
	}
	if err := s.opts.Client.TerminateOrchestration(ctx, md.InstanceID, opts...); err != nil {
		return storageFailed("terminate", err)
	}
	return nil
}

// Suspend pauses a live instance in scope.
func (s *Service) Suspend(ctx context.Context, sc Scope, id, reason string) error {
	md, err := s.liveWithReason(ctx, sc, id, reason)
	if err != nil {
		return err
	}
	if err := s.opts.Client.SuspendOrchestration(ctx, md.InstanceID, reason); err != nil {
		return storageFailed("suspend", err)
	}
	return nil
}

// Resume continues a suspended instance in scope.
func (s *Service) Resume(ctx context.Context, sc Scope, id, reason string) error {
	md, err := s.liveWithReason(ctx, sc, id, reason)
	if err != nil {
		return err
	}
	if err := s.opts.Client.ResumeOrchestration(ctx, md.InstanceID, reason); err != nil {
		return storageFailed("resume", err)
	}
	return nil
}

// CancelMission asks a live mission to stop and compensate, unlike
// Terminate, which stops it where it stands.
func (s *Service) CancelMission(ctx context.Context, id, reason string) error {
	md, err := s.liveWithReason(ctx, ScopeMissions, id, reason)
	if err != nil {
		return err
	}
	payload, _ := json.Marshal(domain.Signal{Kind: domain.SignalCancel, Reason: reason})
	if err := s.opts.Client.RaiseEvent(ctx, md.InstanceID, domain.SignalEvent, api.WithRawEventData(string(payload))); err != nil {
		return storageFailed("cancel mission", err)
	}
	return nil
}

func (s *Service) liveWithReason(ctx context.Context, sc Scope, id, reason string) (*api.OrchestrationMetadata, error) {
	if err := checkReason(reason); err != nil {
		return nil, err
	}
	return s.live(ctx, sc, id)
}

// Purge deletes an ended instance in scope: 409 while it has not ended.
func (s *Service) Purge(ctx context.Context, sc Scope, id string) (PurgeResult, error) {
	md, err := s.lookup(ctx, sc, id)
	if err != nil {
		return PurgeResult{}, err
	}
	if !terminal(md.RuntimeStatus) {
		return PurgeResult{}, refuse(http.StatusConflict, fmt.Sprintf("%s %q is %s; terminate it before purging", sc.noun(), md.InstanceID, taskhub.StatusName(md.RuntimeStatus)))
	}
	err = s.opts.Client.PurgeOrchestrationState(ctx, md.InstanceID)
	switch {
	case errors.Is(err, api.ErrInstanceNotFound):
		return PurgeResult{}, refuse(http.StatusNotFound, fmt.Sprintf("no %s with id %q", sc.noun(), md.InstanceID))
	case errors.Is(err, api.ErrNotCompleted):
		return PurgeResult{}, refuse(http.StatusConflict, fmt.Sprintf("%s %q has not ended; terminate it before purging", sc.noun(), md.InstanceID))
	case err != nil:
		return PurgeResult{}, storageFailed("purge", err)
	}
	return PurgeResult{InstancesDeleted: 1}, nil
}

// --- Telemetry and the fleet -------------------------------------------------

// checkIngest reports why telemetry cannot be ingested at all.
func (s *Service) checkIngest() error {
	if s.opts.Ingestor == nil {
		return refuse(http.StatusNotFound, "telemetry ingestion is not enabled on this server")
	}
	return nil
}

// Ingest applies a batch of telemetry and returns one verdict per frame.
// Frames already applied when storage fails (503) stay applied: send the
// whole batch again, and they come back as duplicates. The result counts
// the frames judged even then.
func (s *Service) Ingest(ctx context.Context, frames []domain.DecodedFrame) (activities.IngestResult, error) {
	if err := s.checkIngest(); err != nil {
		return activities.IngestResult{}, err
	}
	if len(frames) > domain.MaxFramesPerBatch {
		return activities.IngestResult{}, refuse(http.StatusBadRequest, fmt.Sprintf("%s: %d frames in one batch, at most %d allowed; split the batch",
			domain.ErrBadBatch, len(frames), domain.MaxFramesPerBatch))
	}
	res, err := s.opts.Ingestor.Ingest(ctx, frames)
	res = capVerdicts(res)
	if err != nil {
		return res, &Error{
			Status: http.StatusServiceUnavailable,
			Detail: ErrStorageUnavailable.Error() + ": storage failed while applying the batch; send the whole batch again (frames already applied come back as duplicates)",
			Op:     "telemetry ingestion", Err: err,
		}
	}
	return res, nil
}

func droneStatus(d fleet.Drone) DroneStatus {
	ds := DroneStatus{DroneID: d.ID, Home: d.Home, MissionID: d.MissionID, Route: d.Route, State: d.Tracked.State, Frames: d.Frames, Health: "unknown"}
	if s := d.Tracked.State; s != nil {
		ds.Health = "ok"
		if f := s.Health.Fault(); f != "" {
			ds.Health = "fault: " + f
		}
	}
	if !d.LastSignalAt.IsZero() {
		t := d.LastSignalAt.UTC()
		ds.LastSignalAt = &t
	}
	return ds
}

// Drone reads one drone: 404 when unknown.
func (s *Service) Drone(ctx context.Context, id string) (DroneStatus, error) {
	d, err := s.opts.Fleet.Drone(ctx, id)
	if errors.Is(err, fleet.ErrDroneNotFound) {
		return DroneStatus{}, refuse(http.StatusNotFound, fmt.Sprintf("no drone with id %q", id))
	}
	if err != nil {
		return DroneStatus{}, storageFailed("read drone", err)
	}
	return droneStatus(d), nil
}

// Drones lists the fleet, ordered by id.
func (s *Service) Drones(ctx context.Context) ([]DroneStatus, error) {
	drones, err := s.opts.Fleet.Drones(ctx)
	if err != nil {
		return nil, storageFailed("list drones", err)
	}
	out := make([]DroneStatus, 0, len(drones))
	for _, d := range drones {
		out = append(out, droneStatus(d))
	}
	return out, nil
}

// AddDrone registers a drone: 400 naming each bad field, 409 when the id
// exists.
func (s *Service) AddDrone(ctx context.Context, nd NewDrone) (DroneStatus, error) {
	var fields []FieldProblem
	if !domain.ValidID(nd.ID) {
		fields = append(fields, FieldProblem{Field: "id", Message: "is required: 1-100 letters, digits, '.', '_', ':' or '-'"})
	}
	if nd.Home == nil {
		fields = append(fields, FieldProblem{Field: "home", Message: "is required: {\"lat\", \"lon\"}"})
	} else if nd.Home.Lat < -90 || nd.Home.Lat > 90 || nd.Home.Lon < -180 || nd.Home.Lon > 180 {
		fields = append(fields, FieldProblem{Field: "home", Message: "lat must be in [-90, 90] and lon in [-180, 180]"})
	}
	if len(fields) > 0 {
		return DroneStatus{}, refuse(http.StatusBadRequest, "invalid drone", fields...)
	}
	d, err := s.opts.Fleet.AddDrone(ctx, nd.ID, *nd.Home)
	if errors.Is(err, fleet.ErrDroneExists) {
		return DroneStatus{}, refuse(http.StatusConflict, fmt.Sprintf("drone %q already exists", nd.ID))
	}
	if err != nil {
		return DroneStatus{}, storageFailed("add drone", err)
	}
	return droneStatus(d), nil
}

// FleetSummary counts the fleet's drones by condition.
func (s *Service) FleetSummary(ctx context.Context) (activities.FleetSummary, error) {
	sum, err := activities.Summarize(ctx, s.opts.Fleet, s.opts.Mission.BatteryFloor)
	if err != nil {
		return activities.FleetSummary{}, storageFailed("summarize fleet", err)
	}
	return sum, nil
}

// --- Operations --------------------------------------------------------------

func (s *Service) notSupported(what string) *Error {
	return refuse(http.StatusNotImplemented, fmt.Sprintf("the %s task hub has no %s", s.kind(), what))
}

// kind names the backend without its location: a backend's String may
// carry a file path ("sqlite:/srv/dronehub/hub.db") or an account.
func (s *Service) kind() string {
	if i, ok := s.opts.Backend.(interface{ String() string }); ok {
		if k, _, ok := strings.Cut(i.String(), ":"); ok && k != "" && !strings.ContainsAny(k, " /\\") {
			return k
		}
	}
	return "current"
}

// HubInfo describes the task hub: 501 for a backend that cannot.
func (s *Service) HubInfo(ctx context.Context) (taskhub.HubInfo, error) {
	in, ok := s.opts.Backend.(taskhub.Inspector)
	if !ok {
		return taskhub.HubInfo{}, s.notSupported("hub inspection")
	}
	info, err := in.HubInfo(ctx)
	if err != nil {
		return taskhub.HubInfo{}, storageFailed("inspect hub", err)
	}
	// A SQLite hub is named by its file: show the file name, not where it
	// lives on the worker's disk.
	if strings.ContainsAny(info.Name, "/\\") {
		info.Name = path.Base(strings.ReplaceAll(info.Name, "\\", "/"))
	}
	return info, nil
}

// DeadLetters lists the dead letters, oldest first: 501 for a backend
// without a dead-letter queue.
func (s *Service) DeadLetters(ctx context.Context) ([]taskhub.DeadLetter, error) {
	dl, ok := s.opts.Backend.(taskhub.DeadLetterer)
	if !ok {
		return nil, s.notSupported("dead-letter queue")
	}
	list, err := dl.DeadLetters(ctx)
	if err != nil {
		return nil, storageFailed("list dead letters", err)
	}
	if list == nil {
		list = []taskhub.DeadLetter{}
	}
	return list, nil
}

// ReplayDeadLetter puts a dead letter back on its queue: 404 for an unknown
// id, 410 when it can no longer reach its execution (it is then dropped).
func (s *Service) ReplayDeadLetter(ctx context.Context, id string) error {
	dl, ok := s.opts.Backend.(taskhub.DeadLetterer)
	if !ok {
		return s.notSupported("dead-letter queue")
	}
	err := dl.ReplayDeadLetter(ctx, id)
	switch {
	case errors.Is(err, taskhub.ErrDeadLetterNotFound):
		return refuse(http.StatusNotFound, fmt.Sprintf("no dead letter with id %q", id))
	case errors.Is(err, taskhub.ErrDeadLetterStale):
		// Not a storage failure: the message can no longer reach its
		// execution, and the backend has dropped it.
		return refuse(http.StatusGone, fmt.Sprintf("dead letter %q was dropped, not replayed: %v", id, err))
	case err != nil:
		return storageFailed("replay dead letter", err)
	}
	return nil
}
