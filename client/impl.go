package client

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"net/url"
	"time"

	"github.com/google/uuid"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/httpapi"
)

// transport carries the API's operations: in process (local) or over HTTP
// (remote). It takes and returns the API's own types (package httpapi), and
// its errors are *APIError; everything above it, from the checks of what
// cannot be sent to the handles, waiting and paging, is shared by both.
type transport interface {
	startMission(ctx context.Context, req domain.MissionRequest, startAt time.Time) (Links, error)
	startOrchestration(ctx context.Context, name, id string, input []byte, startAt time.Time) (Links, error)
	status(ctx context.Context, sc httpapi.Scope, id string, history bool) (httpapi.Status, error)
	list(ctx context.Context, sc httpapi.Scope, query url.Values) (httpapi.ListPage, error)
	raise(ctx context.Context, sc httpapi.Scope, id, event string, payload []byte) error
	operate(ctx context.Context, op operation, sc httpapi.Scope, id, reason string) error
	purge(ctx context.Context, sc httpapi.Scope, id string) error
	// ingest gets the frames, and body, the batch as JSON.
	ingest(ctx context.Context, frames []domain.Frame, body []byte) (IngestResult, error)
	drone(ctx context.Context, id string) (httpapi.DroneStatus, error)
	drones(ctx context.Context) ([]httpapi.DroneStatus, error)
	resetDrone(ctx context.Context, id string) (httpapi.DroneStatus, error)
	addDrone(ctx context.Context, nd httpapi.NewDrone) (httpapi.DroneStatus, error)
	fleet(ctx context.Context) (FleetSummary, error)
	hubInfo(ctx context.Context) (HubInfo, error)
	deadLetters(ctx context.Context) ([]DeadLetter, error)
	replay(ctx context.Context, id string) error
}

// operation is a management operation that takes a reason; its value is
// its route's last segment.
type operation string

const (
	opTerminate operation = "terminate"
	opSuspend   operation = "suspend"
	opResume    operation = "resume"
	opCancel    operation = "cancel"
)

// pollPolicy paces waiting: status reads start min apart, the gap doubling
// up to max while nothing changes.
type pollPolicy struct{ min, max time.Duration }

// client is the Client of both implementations.
type client struct {
	t    transport
	poll pollPolicy
}

var _ Client = (*client)(nil)

func (c *client) handle(ref Ref, links Links) Handle {
	if links.ID == "" {
		links.ID = ref.ID
	}
	return Handle{c: c, ref: ref, links: links, poll: c.poll}
}

func (c *client) Mission(id string) *MissionHandle {
	return &MissionHandle{Handle: c.handle(MissionRef(id), Links{})}
}

func (c *client) Instance(id string) *Handle {
	h := c.handle(InstanceRef(id), Links{})
	return &h
}

func (c *client) StartMission(ctx context.Context, req domain.MissionRequest, opts ...StartOption) (*MissionHandle, error) {
	o := startOpts(opts)
	if o.id != "" {
		if req.MissionID != "" && req.MissionID != o.id {
			return nil, invalid(fmt.Sprintf("WithID(%q) names another mission than the request's missionId %q", o.id, req.MissionID),
				FieldProblem{Field: "missionId", Message: "differs from WithID"})
		}
		req.MissionID = o.id
	}
	if req.MissionID == "" {
		// Chosen here rather than by the worker, so that a start repeated
		// after an answer was lost cannot start a second mission.
		req.MissionID = uuid.NewString()
	}
	if _, err := json.Marshal(req); err != nil {
		return nil, invalid("mission request: " + err.Error())
	}
	links, err := c.t.startMission(ctx, req, o.startAt)
	if err != nil {
		return nil, err
	}
	return &MissionHandle{Handle: c.handle(MissionRef(links.ID), links)}, nil
}

func (c *client) StartOrchestration(ctx context.Context, name string, input any, opts ...StartOption) (*Handle, error) {
	o := startOpts(opts)
	if err := checkSegment("orchestrator name", name); err != nil {
		return nil, err
	}
	raw, err := encode("orchestration input", input)
	if err != nil {
		return nil, err
	}
	links, err := c.t.startOrchestration(ctx, name, o.id, raw, o.startAt)
	if err != nil {
		return nil, err
	}
	h := c.handle(InstanceRef(links.ID), links)
	return &h, nil
}

func startOpts(opts []StartOption) startOptions {
	var o startOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

func (c *client) Describe(ctx context.Context, ref Ref, opts ...DescribeOption) (Instance, error) {
	var o describeOptions
	for _, f := range opts {
		f(&o)
	}
	if err := checkRef(ref); err != nil {
		return Instance{}, err
	}
	st, err := c.t.status(ctx, ref.scope(), ref.ID, o.history)
	if err != nil {
		return Instance{}, err
	}
	return instanceOf(st), nil
}

func (c *client) Missions(ctx context.Context, opts ListOptions) iter.Seq2[Page[Mission], error] {
	return pages(ctx, c, httpapi.ScopeMissions, opts, func(st httpapi.Status) Mission { return missionOf(instanceOf(st)) })
}

func (c *client) Instances(ctx context.Context, opts ListOptions) iter.Seq2[Page[Instance], error] {
	return pages(ctx, c, httpapi.ScopeInstances, opts, instanceOf)
}

// pages lists instances in scope page by page, following continuation
// tokens.
func pages[T any](ctx context.Context, c *client, sc httpapi.Scope, opts ListOptions, conv func(httpapi.Status) T) iter.Seq2[Page[T], error] {
	return func(yield func(Page[T], error) bool) {
		q := opts.query()
		for {
			lp, err := c.t.list(ctx, sc, q)
			if err != nil {
				yield(Page[T]{}, err)
				return
			}
			p := Page[T]{Items: make([]T, len(lp.Instances)), ContinuationToken: lp.ContinuationToken}
			for i, st := range lp.Instances {
				p.Items[i] = conv(st)
			}
			if !yield(p, nil) || lp.ContinuationToken == "" {
				return
			}
			q.Set("continuationToken", lp.ContinuationToken)
		}
	}
}

func (c *client) RaiseEvent(ctx context.Context, ref Ref, event string, payload any) error {
	if err := checkRef(ref); err != nil {
		return err
	}
	if err := checkSegment("event name", event); err != nil {
		return err
	}
	raw, err := encode("event payload", payload)
	if err != nil {
		return err
	}
	return c.t.raise(ctx, ref.scope(), ref.ID, event, raw)
}

func (c *client) Terminate(ctx context.Context, ref Ref, reason string) error {
	return c.operate(ctx, opTerminate, ref, reason)
}

func (c *client) Suspend(ctx context.Context, ref Ref, reason string) error {
	return c.operate(ctx, opSuspend, ref, reason)
}

func (c *client) Resume(ctx context.Context, ref Ref, reason string) error {
	return c.operate(ctx, opResume, ref, reason)
}

func (c *client) CancelMission(ctx context.Context, id, reason string) error {
	return c.operate(ctx, opCancel, MissionRef(id), reason)
}

func (c *client) operate(ctx context.Context, op operation, ref Ref, reason string) error {
	if err := checkRef(ref); err != nil {
		return err
	}
	return c.t.operate(ctx, op, ref.scope(), ref.ID, reason)
}

func (c *client) Purge(ctx context.Context, ref Ref) error {
	if err := checkRef(ref); err != nil {
		return err
	}
	return c.t.purge(ctx, ref.scope(), ref.ID)
}

// batch is the body of POST /api/telemetry.
type batch struct {
	Frames []domain.Frame `json:"frames"`
}

func (c *client) Ingest(ctx context.Context, frames []domain.Frame) (IngestResult, error) {
	if frames == nil {
		frames = []domain.Frame{} // an empty batch, not a missing one
	}
	body, err := json.Marshal(batch{Frames: frames})
	if err != nil {
		// Name the frame JSON cannot carry (a NaN battery, say).
		for i, f := range frames {
			if _, ferr := json.Marshal(f); ferr != nil {
				field := fmt.Sprintf("frames[%d]", i)
				return IngestResult{}, invalid(fmt.Sprintf("telemetry batch: %s: %v", field, ferr), FieldProblem{Field: field, Message: ferr.Error()})
			}
		}
		return IngestResult{}, invalid("telemetry batch: " + err.Error())
	}
	return c.t.ingest(ctx, frames, body)
}

func (c *client) AddDrone(ctx context.Context, id string, home domain.LatLon) (Drone, error) {
	if _, err := json.Marshal(home); err != nil {
		return Drone{}, invalid("drone: "+err.Error(), FieldProblem{Field: "home", Message: err.Error()})
	}
	ds, err := c.t.addDrone(ctx, httpapi.NewDrone{ID: id, Home: &home})
	return Drone(ds), err
}

func (c *client) Drone(ctx context.Context, id string) (Drone, error) {
	if err := checkSegment("drone id", id); err != nil {
		return Drone{}, err
	}
	ds, err := c.t.drone(ctx, id)
	return Drone(ds), err
}

func (c *client) ResetDrone(ctx context.Context, id string) (Drone, error) {
	if err := checkSegment("drone id", id); err != nil {
		return Drone{}, err
	}
	ds, err := c.t.resetDrone(ctx, id)
	return Drone(ds), err
}

func (c *client) Drones(ctx context.Context) ([]Drone, error) {
	list, err := c.t.drones(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Drone, len(list))
	for i, ds := range list {
		out[i] = Drone(ds)
	}
	return out, nil
}

func (c *client) Fleet(ctx context.Context) (FleetSummary, error) { return c.t.fleet(ctx) }

func (c *client) HubInfo(ctx context.Context) (HubInfo, error) { return c.t.hubInfo(ctx) }

func (c *client) DeadLetters(ctx context.Context) ([]DeadLetter, error) { return c.t.deadLetters(ctx) }

func (c *client) ReplayDeadLetter(ctx context.Context, id string) error {
	if err := checkSegment("dead letter id", id); err != nil {
		return err
	}
	return c.t.replay(ctx, id)
}

// instanceOf is an instance as the API shows it.
func instanceOf(st httpapi.Status) Instance {
	return Instance{
		Name:            st.Name,
		InstanceID:      st.InstanceID,
		RuntimeStatus:   RuntimeStatus(st.RuntimeStatus),
		Input:           st.Input,
		CustomStatus:    st.CustomStatus,
		Output:          st.Output,
		CreatedTime:     st.CreatedTime,
		LastUpdatedTime: st.LastUpdatedTime,
		FailureDetails:  st.FailureDetails,
		History:         st.History,
	}
}

// encode is v as JSON, or nil for a nil v.
func encode(what string, v any) ([]byte, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, invalid(what + ": " + err.Error())
	}
	return b, nil
}

// checkRef refuses an id no route can carry.
func checkRef(ref Ref) error {
	what := "instance id"
	if ref.Mission {
		what = "mission id"
	}
	return checkSegment(what, ref.ID)
}

// checkSegment refuses a value that cannot be one segment of a URL path:
// the same for both implementations, though only HTTP needs it.
func checkSegment(what, s string) error {
	switch s {
	case "":
		return invalid(what + " is empty")
	case ".", "..":
		return invalid(fmt.Sprintf("%s %q is not a valid name", what, s))
	}
	return nil
}
