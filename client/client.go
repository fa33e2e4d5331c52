package client

import (
	"context"
	"encoding/json"
	"iter"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/httpapi"
	"github.com/dronehub/dronehub/taskhub"
)

// Client manages missions, orchestrations, telemetry and the fleet of one
// task hub. Local and Dial return the two implementations; they answer every
// call alike (one conformance suite runs both), except that only Dial can
// meet ErrUnauthorized or an unreachable worker.
//
// Every method is safe for concurrent use.
type Client interface {
	// StartMission validates req and starts a delivery mission, returning
	// its handle. Without req.MissionID (or WithID) the mission gets a new
	// UUID. Starts are idempotent by mission id: repeating an existing
	// mission's request (and start time) returns its handle again, while a
	// different request under the same id is ErrConflict. Invalid input is
	// ErrInvalid, with each bad field in the *APIError's Fields.
	StartMission(ctx context.Context, req domain.MissionRequest, opts ...StartOption) (*MissionHandle, error)
	// Mission returns a handle on the mission id without reading it.
	Mission(id string) *MissionHandle
	// Missions lists missions, oldest first, a page at a time; the
	// sequence ends after the last page, or after yielding an error.
	Missions(ctx context.Context, opts ListOptions) iter.Seq2[Page[Mission], error]
	// CancelMission asks a running mission to stop and compensate its
	// completed steps; it then ends with runtime status Completed and
	// phase Cancelled. An ended mission is ErrGone.
	CancelMission(ctx context.Context, id, reason string) error

	// StartOrchestration starts an instance of an orchestrator the worker
	// registered (worker.Config.Register), with input encoded as JSON (nil
	// for none). There is no idempotency: an existing id is ErrConflict.
	// An unregistered name is ErrNotFound. Orchestration gives the same
	// with typed input and output.
	StartOrchestration(ctx context.Context, name string, input any, opts ...StartOption) (*Handle, error)
	// Instance returns a handle on the instance id, of any orchestrator,
	// without reading it.
	Instance(id string) *Handle
	// Instances lists instances of every orchestrator, missions included,
	// like Missions.
	Instances(ctx context.Context, opts ListOptions) iter.Seq2[Page[Instance], error]

	// Describe reads an instance. An unknown id, or with ref.Mission an
	// instance that is not a mission, is ErrNotFound.
	Describe(ctx context.Context, ref Ref, opts ...DescribeOption) (Instance, error)
	// RaiseEvent raises an event on a running instance, with payload
	// encoded as JSON (nil for none). Only the events its orchestrator
	// declares public (worker.Config.PublicEvents) can be raised: any other
	// is ErrForbidden. Missions declare none; use CancelMission.
	RaiseEvent(ctx context.Context, ref Ref, event string, payload any) error
	// Terminate stops a running instance where it stands, without
	// compensation; reason becomes its output. Suspend pauses it and
	// Resume continues it. An ended instance is ErrGone.
	Terminate(ctx context.Context, ref Ref, reason string) error
	Suspend(ctx context.Context, ref Ref, reason string) error
	Resume(ctx context.Context, ref Ref, reason string) error
	// Purge deletes an ended instance's state; one that has not ended is
	// ErrConflict.
	Purge(ctx context.Context, ref Ref) error

	// Ingest applies a batch of at most domain.MaxFramesPerBatch telemetry
	// frames and returns one verdict per frame, in batch order: accepted,
	// duplicate, stale or rejected (with a reason). An ErrUnavailable
	// error means storage failed partway; send the whole batch again, and
	// the frames already applied come back as duplicates.
	Ingest(ctx context.Context, frames []domain.Frame) (IngestResult, error)
	// AddDrone registers a drone at its home base: ErrConflict if the id
	// exists, ErrInvalid for a bad id or home.
	AddDrone(ctx context.Context, id string, home domain.LatLon) (Drone, error)
	// Drone reads one drone; Drones lists the fleet, ordered by id.
	Drone(ctx context.Context, id string) (Drone, error)
	Drones(ctx context.Context) ([]Drone, error)
	// ResetDrone puts an idle drone back in service after a failure: its
	// telemetry state says healthy, fully charged and on the ground at
	// home, and its sequence numbers continue (Drone.NextSeq). A drone a
	// mission holds is ErrConflict; an unknown one ErrNotFound.
	ResetDrone(ctx context.Context, id string) (Drone, error)
	// Fleet counts the fleet's drones by condition.
	Fleet(ctx context.Context) (FleetSummary, error)

	// HubInfo describes the task hub: partitions, owners, queue depths,
	// instances by status, dead letters.
	HubInfo(ctx context.Context) (HubInfo, error)
	// DeadLetters lists the work items set aside after failing too often,
	// oldest first; ReplayDeadLetter puts one back on its queue (ErrGone
	// when it can no longer reach its execution, and was dropped). A
	// backend without a dead-letter queue answers errors.ErrUnsupported.
	DeadLetters(ctx context.Context) ([]DeadLetter, error)
	ReplayDeadLetter(ctx context.Context, id string) error
}

// Ref names the instance an operation addresses.
type Ref struct {
	ID string
	// Mission limits the operation to delivery missions, as the
	// /api/missions routes do: an instance of another orchestrator is
	// ErrNotFound, and messages say "mission".
	Mission bool
}

// MissionRef refers to the mission id.
func MissionRef(id string) Ref { return Ref{ID: id, Mission: true} }

// InstanceRef refers to the instance id, of any orchestrator.
func InstanceRef(id string) Ref { return Ref{ID: id} }

func (r Ref) scope() httpapi.Scope {
	if r.Mission {
		return httpapi.ScopeMissions
	}
	return httpapi.ScopeInstances
}

// StartOption configures a start.
type StartOption func(*startOptions)

type startOptions struct {
	id      string
	startAt time.Time
}

// WithID sets the instance id: 1-100 letters, digits, '.', '_', ':' or
// '-'. For a mission it is the mission id, which must then match
// req.MissionID when that is set.
func WithID(id string) StartOption { return func(o *startOptions) { o.id = id } }

// StartAt delays the start: until then the instance is Pending. A
// mission's start must come before its deadline.
func StartAt(t time.Time) StartOption { return func(o *startOptions) { o.startAt = t } }

// DescribeOption configures Describe.
type DescribeOption func(*describeOptions)

type describeOptions struct{ history bool }

// WithHistory adds the instance's history to Instance.History.
func WithHistory() DescribeOption { return func(o *describeOptions) { o.history = true } }

// ListOptions filters a listing. The zero value lists everything, a page of
// 100 at a time.
type ListOptions struct {
	// RuntimeStatus keeps instances in any of these statuses (in any case;
	// "Cancelled" means Canceled).
	RuntimeStatus []RuntimeStatus
	// CreatedFrom and CreatedTo bound the creation time: from inclusive, to
	// exclusive; a zero time leaves that side open.
	CreatedFrom, CreatedTo time.Time
	// IDPrefix keeps instances whose id starts with it.
	IDPrefix string
	// PageSize is 1 to 1000; 0 means 100.
	PageSize int
	// ContinuationToken resumes a listing after the page that returned it.
	ContinuationToken string
}

// query is the listing's query string, as GET /api/missions takes it. Both
// implementations hand it to the API's own parser.
func (o ListOptions) query() url.Values {
	v := url.Values{}
	if len(o.RuntimeStatus) > 0 {
		names := make([]string, len(o.RuntimeStatus))
		for i, s := range o.RuntimeStatus {
			names[i] = string(s)
		}
		v.Set("runtimeStatus", strings.Join(names, ","))
	}
	if !o.CreatedFrom.IsZero() {
		v.Set("createdTimeFrom", o.CreatedFrom.Format(time.RFC3339Nano))
	}
	if !o.CreatedTo.IsZero() {
		v.Set("createdTimeTo", o.CreatedTo.Format(time.RFC3339Nano))
	}
	if o.IDPrefix != "" {
		v.Set("instanceIdPrefix", o.IDPrefix)
	}
	if o.PageSize != 0 {
		v.Set("top", strconv.Itoa(o.PageSize))
	}
	if o.ContinuationToken != "" {
		v.Set("continuationToken", o.ContinuationToken)
	}
	return v
}

// Page is one page of a listing.
type Page[T any] struct {
	Items []T
	// ContinuationToken resumes the listing after this page
	// (ListOptions.ContinuationToken); "" on the last page.
	ContinuationToken string
}

// Items flattens a listing's pages into its items, fetching each page when
// the items before it have been consumed. An error ends the sequence.
func Items[T any](pages iter.Seq2[Page[T], error]) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		for page, err := range pages {
			if err != nil {
				var zero T
				yield(zero, err)
				return
			}
			for _, it := range page.Items {
				if !yield(it, nil) {
					return
				}
			}
		}
	}
}

// RuntimeStatus is an instance's runtime status, spelled as the HTTP API
// spells it.
type RuntimeStatus string

// Runtime statuses.
const (
	StatusRunning        RuntimeStatus = "Running"
	StatusCompleted      RuntimeStatus = "Completed"
	StatusContinuedAsNew RuntimeStatus = "ContinuedAsNew"
	StatusFailed         RuntimeStatus = "Failed"
	StatusCanceled       RuntimeStatus = "Canceled"
	StatusTerminated     RuntimeStatus = "Terminated"
	// StatusPending is an instance whose scheduled start has not come.
	StatusPending   RuntimeStatus = "Pending"
	StatusSuspended RuntimeStatus = "Suspended"
)

// Ended reports whether an instance in this status has ended: Completed,
// Failed, Terminated or Canceled.
func (s RuntimeStatus) Ended() bool {
	switch s {
	case StatusCompleted, StatusFailed, StatusTerminated, StatusCanceled:
		return true
	}
	return false
}

// Instance is an orchestration instance as the API shows it (its JSON is
// the body of GET /api/instances/{id}).
type Instance struct {
	Name          string        `json:"name"`
	InstanceID    string        `json:"instanceId"`
	RuntimeStatus RuntimeStatus `json:"runtimeStatus"`
	// Input is the instance's input; a mission's is its request, without
	// the worker's settings.
	Input json.RawMessage `json:"input"`
	// CustomStatus is what the orchestration publishes while it runs; a
	// mission's is its live domain.MissionStatus.
	CustomStatus json.RawMessage `json:"customStatus"`
	// Output is set once the instance ended: the orchestration's result,
	// or a terminate's reason.
	Output          json.RawMessage `json:"output"`
	CreatedTime     time.Time       `json:"createdTime"`
	LastUpdatedTime time.Time       `json:"lastUpdatedTime"`
	// FailureDetails says why the orchestration itself failed (runtime
	// status Failed). A failed delivery does not set it.
	FailureDetails *Failure `json:"failureDetails"`
	// History is the instance's history, with WithHistory only.
	History []HistoryEvent `json:"history,omitempty"`
}

// Ended reports whether the instance has ended.
func (i Instance) Ended() bool { return i.RuntimeStatus.Ended() }

// DecodeInput decodes the instance's input into v.
func (i Instance) DecodeInput(v any) error { return decodeRaw("input", i.InstanceID, i.Input, v) }

// DecodeOutput decodes the instance's output into v.
func (i Instance) DecodeOutput(v any) error { return decodeRaw("output", i.InstanceID, i.Output, v) }

// DecodeCustomStatus decodes the instance's custom status into v.
func (i Instance) DecodeCustomStatus(v any) error {
	return decodeRaw("custom status", i.InstanceID, i.CustomStatus, v)
}

// Mission is a delivery mission as the API shows it, with its request and
// status decoded. Its JSON is its Instance's.
type Mission struct {
	Instance
	// Request is what the mission was started with.
	Request domain.MissionRequest `json:"-"`
	// Status is where the mission stands: its output once it ended by
	// itself or by a cancel, else its live custom status (the last one
	// published, for a terminated mission); zero before its first turn.
	// Status.Phase is the delivery's outcome: Completed, Failed or
	// Cancelled.
	Status domain.MissionStatus `json:"-"`
}

// missionOf decodes a mission's request and status.
func missionOf(in Instance) Mission {
	m := Mission{Instance: in}
	_ = json.Unmarshal(in.Input, &m.Request)
	if json.Unmarshal(in.Output, &m.Status) == nil && m.Status.Phase != "" {
		return m
	}
	m.Status = domain.MissionStatus{}
	_ = json.Unmarshal(in.CustomStatus, &m.Status)
	return m
}

// Failure describes why an orchestration failed.
type Failure = httpapi.Failure

// HistoryEvent is one entry of an instance's history.
type HistoryEvent = httpapi.HistoryEvent

// Links are the management URLs the HTTP API answers a start with
// (statusQueryGetUri, sendEventPostUri, …), made absolute against the
// client's base URL. The in-process client sets only ID.
type Links = httpapi.Accepted

// FieldProblem is one invalid field of a request.
type FieldProblem = httpapi.FieldProblem

// IngestResult is a telemetry batch's outcome: counts and one verdict per
// frame.
type IngestResult = activities.IngestResult

// FrameVerdict is what happened to one frame of a batch.
type FrameVerdict = activities.FrameVerdict

// FleetSummary counts the fleet's drones by condition.
type FleetSummary = activities.FleetSummary

// DeadLetter is a work item set aside after failing too often.
type DeadLetter = taskhub.DeadLetter

// HubInfo describes a task hub.
type HubInfo = taskhub.HubInfo

// Drone is a drone of the fleet as the API shows it (its JSON is the body
// of GET /api/drones/{id}/status).
type Drone struct {
	DroneID string        `json:"droneId"`
	Home    domain.LatLon `json:"home"`
	// MissionID is set while a mission holds the drone, and Route from its
	// dispatch until the mission releases it.
	MissionID string        `json:"missionId,omitempty"`
	Route     *domain.Route `json:"route,omitempty"`
	// State is the drone's merged telemetry; nil before its first key
	// frame.
	State *domain.DroneState `json:"state"`
	// Health is "unknown" before the first key frame, then "ok" or
	// "fault: …".
	Health string `json:"health"`
	// Frames counts the accepted frames.
	Frames       int64      `json:"frames"`
	LastSignalAt *time.Time `json:"lastSignalAt,omitempty"`
}

// NextSeq is the sequence number that continues the drone's frames: one
// past its state's, or 1 before its first key frame. A real drone keeps
// counting across flights; a simulated one starts here (see
// simulator.FlightOptions.FirstSeq).
func (d Drone) NextSeq() int64 {
	if d.State == nil {
		return 1
	}
	return d.State.Seq + 1
}
