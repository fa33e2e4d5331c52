package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/worker"
)

const apiKey = "conformance-key-0123456789"

// TestConformance runs every client operation against both implementations,
// in process and over HTTP (the worker's own server on 127.0.0.1), on both
// backends. "agree" first asks both the same questions and wants the same
// answers, refusals included; then each implementation runs the whole
// suite on its own drones and instances, in parallel with the other.
func TestConformance(t *testing.T) {
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		register(&cfg)
		cfg.APIKeys = []string{apiKey}
		w := testkit.Start(t, cfg)
		remote, err := client.Dial(serve(t, w), client.Options{APIKey: apiKey})
		if err != nil {
			t.Fatal(err)
		}
		impls := []impl{{"local", client.Local(w)}, {"remote", remote}}
		t.Run("agree", func(t *testing.T) { agree(t, impls[0].c, impls[1].c) })
		for _, im := range impls {
			t.Run(im.name, func(t *testing.T) {
				t.Parallel()
				s := suite{c: im.c, p: im.name}
				t.Run("fleet", s.fleet)
				t.Run("mission flies", s.missionFlies)
				t.Run("mission cancelled", s.missionCancelled)
				t.Run("listing", s.listing)
				t.Run("orchestrations", s.orchestrations)
				t.Run("waiting ends with its context", s.waitContext)
				t.Run("operations", s.operations)
			})
		}
	})
}

type impl struct {
	name string
	c    client.Client
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// wantAPIError checks that err is an *APIError with status and matches
// sentinel.
func wantAPIError(t *testing.T, what string, err error, status int, sentinel error) *client.APIError {
	t.Helper()
	var ae *client.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("%s: error %v (%T), want an *APIError with status %d", what, err, err, status)
	}
	if ae.StatusCode != status || !errors.Is(err, sentinel) {
		t.Fatalf("%s: %v (status %d), want status %d matching %v", what, err, ae.StatusCode, status, sentinel)
	}
	return ae
}

// agree asks local and remote the same questions and wants the same
// answers: statuses, details and field problems of refusals, and the
// values of what they read.
func agree(t *testing.T, local, remote client.Client) {
	ctx := testContext(t)
	// Something to refuse operations on: a waiting instance, an ended one
	// and a drone.
	waiting, err := local.StartOrchestration(ctx, approvalName, approvalIn{Item: "agree"}, client.WithID("agree-waiting"))
	if err != nil {
		t.Fatal(err)
	}
	ended, err := local.StartOrchestration(ctx, echoName, "done", client.WithID("agree-ended"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ended.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := local.AddDrone(ctx, "agree-drone", domain.LatLon{Lat: 47.6401, Lon: -122.1298}); err != nil {
		t.Fatal(err)
	}
	// Read it only once it waits, so that both see it the same.
	testkit.Eventually(t, 30*time.Second, "the approval to wait", func() bool {
		in, err := waiting.Status(ctx)
		return err == nil && string(in.CustomStatus) != "null"
	})
	p, d := testkit.Route()
	bad := domain.MissionRequest{Pickup: &domain.LatLon{Lat: 95, Lon: 0}, Dropoff: &d,
		Package: &domain.Package{ID: "p", WeightKg: 0, Size: "huge"}, Deadline: time.Now().Add(-time.Hour)}
	late := testkit.Request("agree-late")
	late.Pickup = &p
	tooMany := make([]domain.Frame, domain.MaxFramesPerBatch+1)

	refusals := []struct {
		name     string
		status   int
		sentinel error
		call     func(client.Client) error
	}{
		{"invalid mission", 400, client.ErrInvalid, func(c client.Client) error { _, err := c.StartMission(ctx, bad); return err }},
		{"startAt after the deadline", 400, client.ErrInvalid, func(c client.Client) error {
			_, err := c.StartMission(ctx, late, client.StartAt(late.Deadline.Add(time.Hour)))
			return err
		}},
		{"WithID against missionId", 400, client.ErrInvalid, func(c client.Client) error {
			_, err := c.StartMission(ctx, testkit.Request("agree-a"), client.WithID("agree-b"))
			return err
		}},
		{"unknown mission", 404, client.ErrNotFound, func(c client.Client) error { _, err := c.Mission("agree-nope").Status(ctx); return err }},
		{"not a mission", 404, client.ErrNotFound, func(c client.Client) error { _, err := c.Mission(waiting.ID()).Status(ctx); return err }},
		{"unregistered orchestrator", 404, client.ErrNotFound, func(c client.Client) error {
			_, err := c.StartOrchestration(ctx, "NoSuchThing", nil)
			return err
		}},
		{"missions start elsewhere", 400, client.ErrInvalid, func(c client.Client) error {
			_, err := c.StartOrchestration(ctx, orchestrations.DeliveryMissionName, testkit.Request("agree-x"))
			return err
		}},
		{"existing instance", 409, client.ErrConflict, func(c client.Client) error {
			_, err := c.StartOrchestration(ctx, echoName, 1, client.WithID(ended.ID()))
			return err
		}},
		{"bad instance id", 400, client.ErrInvalid, func(c client.Client) error {
			_, err := c.StartOrchestration(ctx, echoName, 1, client.WithID("no spaces"))
			return err
		}},
		{"private event", 403, client.ErrForbidden, func(c client.Client) error { return c.Instance(waiting.ID()).RaiseEvent(ctx, "reject", nil) }},
		{"event payload JSON cannot carry", 400, client.ErrInvalid, func(c client.Client) error {
			return c.Instance(waiting.ID()).RaiseEvent(ctx, "approve", make(chan int))
		}},
		{"reason with a control character", 400, client.ErrInvalid, func(c client.Client) error {
			return c.Instance(waiting.ID()).Suspend(ctx, "a\x07b")
		}},
		{"terminate an ended instance", 410, client.ErrGone, func(c client.Client) error { return c.Instance(ended.ID()).Terminate(ctx, "") }},
		{"purge a running instance", 409, client.ErrConflict, func(c client.Client) error { return c.Instance(waiting.ID()).Purge(ctx) }},
		{"unknown drone", 404, client.ErrNotFound, func(c client.Client) error { _, err := c.Drone(ctx, "agree-nope"); return err }},
		{"reset an unknown drone", 404, client.ErrNotFound, func(c client.Client) error { _, err := c.ResetDrone(ctx, "agree-nope"); return err }},
		{"existing drone", 409, client.ErrConflict, func(c client.Client) error {
			_, err := c.AddDrone(ctx, "agree-drone", domain.LatLon{})
			return err
		}},
		{"invalid drone", 400, client.ErrInvalid, func(c client.Client) error {
			_, err := c.AddDrone(ctx, "no spaces", domain.LatLon{Lat: 91})
			return err
		}},
		{"page too large", 400, client.ErrInvalid, func(c client.Client) error {
			for _, err := range c.Missions(ctx, client.ListOptions{PageSize: 5000}) {
				return err
			}
			return nil
		}},
		{"unknown status", 400, client.ErrInvalid, func(c client.Client) error {
			for _, err := range c.Instances(ctx, client.ListOptions{RuntimeStatus: []client.RuntimeStatus{"Flying"}}) {
				return err
			}
			return nil
		}},
		{"forged continuation token", 400, client.ErrInvalid, func(c client.Client) error {
			for _, err := range c.Instances(ctx, client.ListOptions{ContinuationToken: "eyJjIjoiMjAyNiJ9"}) {
				return err
			}
			return nil
		}},
		{"too many frames", 400, client.ErrInvalid, func(c client.Client) error { _, err := c.Ingest(ctx, tooMany); return err }},
		{"unknown dead letter", 404, client.ErrNotFound, func(c client.Client) error { return c.ReplayDeadLetter(ctx, "12345") }},
		{"empty id", 400, client.ErrInvalid, func(c client.Client) error { return c.Mission("").Cancel(ctx, "") }},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			l := wantAPIError(t, "local", tc.call(local), tc.status, tc.sentinel)
			r := wantAPIError(t, "remote", tc.call(remote), tc.status, tc.sentinel)
			if l.Detail != r.Detail || !reflect.DeepEqual(l.Fields, r.Fields) {
				t.Errorf("local and remote disagree:\nlocal  %q %v\nremote %q %v", l.Detail, l.Fields, r.Detail, r.Fields)
			}
		})
	}

	// Reads agree.
	same := func(what string, l, r any, lerr, rerr error) {
		t.Helper()
		if lerr != nil || rerr != nil {
			t.Fatalf("%s: local %v, remote %v", what, lerr, rerr)
		}
		lj, _ := json.Marshal(l)
		rj, _ := json.Marshal(r)
		if string(lj) != string(rj) {
			t.Errorf("%s: local and remote disagree:\nlocal  %s\nremote %s", what, lj, rj)
		}
	}
	li, lerr := local.Describe(ctx, client.InstanceRef(waiting.ID()), client.WithHistory())
	ri, rerr := remote.Describe(ctx, client.InstanceRef(waiting.ID()), client.WithHistory())
	same("describe", li, ri, lerr, rerr)
	ld, lerr := local.Drone(ctx, "agree-drone")
	rd, rerr := remote.Drone(ctx, "agree-drone")
	same("drone", ld, rd, lerr, rerr)
	lf, lerr := local.Fleet(ctx)
	rf, rerr := remote.Fleet(ctx)
	same("fleet", lf, rf, lerr, rerr)
	var lp, rp []client.Page[client.Instance]
	for page, err := range local.Instances(ctx, client.ListOptions{IDPrefix: "agree-", PageSize: 1}) {
		if err != nil {
			t.Fatal(err)
		}
		lp = append(lp, page)
	}
	for page, err := range remote.Instances(ctx, client.ListOptions{IDPrefix: "agree-", PageSize: 1}) {
		if err != nil {
			t.Fatal(err)
		}
		rp = append(rp, page)
	}
	same("instance pages", lp, rp, nil, nil)
	if len(lp) != 2 {
		t.Errorf("%d pages of one instance, want 2", len(lp))
	}

	// Verdicts agree: frames that change nothing, judged twice.
	at := time.Now().UTC()
	seq := int64(7)
	mode := domain.FlightMode("hovering")
	battery := 0.5
	rejects := []domain.Frame{
		{DeviceID: "agree-drone", Seq: &seq, Timestamp: &at, Battery: &battery}, // a delta before any key frame
		{DeviceID: "agree-drone", Seq: &seq, Timestamp: &at, FlightMode: &mode}, // an unknown flight mode
		{DeviceID: "agree-nope", Seq: &seq, Timestamp: &at, Battery: &battery},  // an unknown drone
		{DeviceID: "agree-drone", Timestamp: &at},                               // no seq
	}
	lv, lerr := local.Ingest(ctx, rejects)
	rv, rerr := remote.Ingest(ctx, rejects)
	same("verdicts", lv, rv, lerr, rerr)
	if lv.Rejected != len(rejects) {
		t.Errorf("verdicts %+v: want every frame rejected", lv)
	}
}

// suite runs every operation through one client, on ids that start with
// its prefix p.
type suite struct {
	c client.Client
	p string
}

// base is the demo fleet's home base, where the suite's drones live.
var base = domain.LatLon{Lat: 47.6401, Lon: -122.1298}

func (s suite) fleet(t *testing.T) {
	ctx := testContext(t)
	for _, id := range []string{s.p + "-d1", s.p + "-d2"} {
		d, err := s.c.AddDrone(ctx, id, base)
		if err != nil {
			t.Fatal(err)
		}
		if d.DroneID != id || d.Home != base || d.Health != "unknown" || d.State != nil || d.NextSeq() != 1 {
			t.Errorf("new drone %+v", d)
		}
	}
	if _, err := s.c.AddDrone(ctx, s.p+"-d1", base); !errors.Is(err, client.ErrConflict) {
		t.Errorf("adding %s again: %v, want ErrConflict", s.p+"-d1", err)
	}
	var ae *client.APIError
	if _, err := s.c.AddDrone(ctx, "", base); !errors.As(err, &ae) || len(ae.Fields) != 1 || ae.Fields[0].Field != "id" {
		t.Errorf("a drone without an id: %v, want the field id named", err)
	}
	drones, err := s.c.Drones(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range drones {
		ids = append(ids, d.DroneID)
	}
	if !slices.Contains(ids, s.p+"-d1") || !slices.Contains(ids, s.p+"-d2") || !slices.IsSorted(ids) {
		t.Errorf("drones %v: want ours, in id order", ids)
	}
	// A reset drone is healthy, charged and at home, its sequence kept.
	if d, err := s.c.ResetDrone(ctx, s.p+"-d2"); err != nil || d.Health != "ok" || d.State == nil || d.State.Battery != 1 ||
		d.State.Position.LatLon() != base || d.NextSeq() != 1 {
		t.Errorf("reset %s: %+v, %v: want it healthy, charged, at home, NextSeq 1", s.p+"-d2", d, err)
	}
	sum, err := s.c.Fleet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Drones < 2 || sum.Idle+sum.OnMission != sum.Drones {
		t.Errorf("fleet summary %+v", sum)
	}
}

// sink ingests a flight's frames, wanting every frame accepted, and keeps
// the last batch.
func (s suite) sink(t *testing.T, last *[]domain.Frame) simulator.Sink {
	return simulator.SinkFunc(func(ctx context.Context, frames []domain.Frame) error {
		res, err := s.c.Ingest(ctx, frames)
		if err != nil {
			return err
		}
		if res.Accepted != len(frames) || len(res.Frames) != len(frames) {
			t.Errorf("batch of %d: %+v, want every frame accepted", len(frames), res)
		}
		*last = frames
		return nil
	})
}

func (s suite) missionFlies(t *testing.T) {
	ctx := testContext(t)
	req := testkit.Request(s.p + "-fly")
	req.DroneID = s.p + "-d1"
	m, err := s.c.StartMission(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID() != req.MissionID || m.Links().ID != req.MissionID {
		t.Errorf("handle %q, links %+v: want %s", m.ID(), m.Links(), req.MissionID)
	}
	if again, err := s.c.StartMission(ctx, req); err != nil || again.ID() != m.ID() {
		t.Errorf("repeating the start: %v, %v: want the same mission", again, err)
	}
	other := req
	other.Expedited = true
	if _, err := s.c.StartMission(ctx, other); !errors.Is(err, client.ErrConflict) {
		t.Errorf("another request under the same id: %v, want ErrConflict", err)
	}

	st, err := m.WaitPhase(ctx, domain.PhaseHeadedToPickup)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status.DroneID != req.DroneID || st.Status.Route == nil || st.RuntimeStatus != client.StatusRunning || st.Request.Package.ID != req.Package.ID {
		t.Fatalf("dispatched mission %+v", st)
	}
	d, err := s.c.Drone(ctx, req.DroneID)
	if err != nil {
		t.Fatal(err)
	}
	if d.MissionID != m.ID() {
		t.Errorf("drone %+v: want it held by %s", d, m.ID())
	}
	var last []domain.Frame
	flight := simulator.NewFlight(simulator.FlightOptions{DroneID: d.DroneID, Route: *st.Status.Route, SpeedMps: 40, FirstSeq: d.NextSeq()})
	if err := simulator.Fly(ctx, s.sink(t, &last), 0, flight); err != nil {
		t.Fatal(err)
	}
	if st, err := m.WaitPhase(ctx, domain.PhasePickedUp); err != nil || !domain.PhasePickedUp.Before(st.Status.Phase) && st.Status.Phase != domain.PhasePickedUp {
		t.Errorf("WaitPhase(PickedUp) after the flight: %s, %v", st.Status.Phase, err)
	}
	final, err := m.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []domain.Phase{domain.PhaseCreated, domain.PhaseDroneReserved, domain.PhaseHeadedToPickup, domain.PhasePickedUp,
		domain.PhaseHeadedToDropoff, domain.PhaseDelivered, domain.PhaseReturning, domain.PhaseCompleted}
	var got []domain.Phase
	for _, c := range final.Status.Timeline {
		got = append(got, c.Phase)
	}
	if final.RuntimeStatus != client.StatusCompleted || final.Status.Phase != domain.PhaseCompleted || !slices.Equal(got, want) || final.Status.ProgressPct != 100 {
		t.Errorf("final mission: runtime %s, phase %s, timeline %v, progress %g", final.RuntimeStatus, final.Status.Phase, got, final.Status.ProgressPct)
	}
	var out domain.MissionStatus
	if err := m.Get(ctx, &out); err != nil || out.Phase != domain.PhaseCompleted {
		t.Errorf("Get: %+v, %v", out, err)
	}

	res, err := s.c.Ingest(ctx, last)
	if err != nil {
		t.Fatal(err)
	}
	if res.Duplicates != len(last) || res.Frames[0].Verdict != domain.VerdictDuplicate || res.Frames[0].Reason == "" {
		t.Errorf("the last batch again: %+v, want duplicates", res)
	}
	if d, err := s.c.Drone(ctx, req.DroneID); err != nil || d.MissionID != "" || d.State == nil || d.Health != "ok" || d.NextSeq() != *last[len(last)-1].Seq+1 {
		t.Errorf("drone after the flight: %+v, %v: want it free, its state the last frame's", d, err)
	}
	if err := m.Cancel(ctx, ""); !errors.Is(err, client.ErrGone) {
		t.Errorf("cancel after the end: %v, want ErrGone", err)
	}
}

func (s suite) missionCancelled(t *testing.T) {
	ctx := testContext(t)
	req := testkit.Request(s.p + "-cancel")
	req.DroneID = s.p + "-d2"
	m, err := s.c.StartMission(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.WaitPhase(ctx, domain.PhaseHeadedToPickup); err != nil {
		t.Fatal(err)
	}
	if err := m.Purge(ctx); !errors.Is(err, client.ErrConflict) {
		t.Errorf("purging a running mission: %v, want ErrConflict", err)
	}
	if _, err := s.c.ResetDrone(ctx, req.DroneID); !errors.Is(err, client.ErrConflict) || !strings.Contains(err.Error(), req.MissionID) {
		t.Errorf("resetting the mission's drone: %v, want ErrConflict naming the mission", err)
	}
	if err := m.Suspend(ctx, "weather"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the mission to be suspended", func() bool {
		st, err := m.Status(ctx)
		return err == nil && st.RuntimeStatus == client.StatusSuspended
	})
	if err := m.Resume(ctx, "clear"); err != nil {
		t.Fatal(err)
	}
	if err := m.Cancel(ctx, "customer changed their mind"); err != nil {
		t.Fatal(err)
	}
	final, err := m.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if final.RuntimeStatus != client.StatusCompleted || final.Status.Phase != domain.PhaseCancelled ||
		final.Status.Failure != "customer changed their mind" || len(final.Status.Compensations) == 0 {
		t.Errorf("cancelled mission: runtime %s, phase %s, failure %q, compensations %v",
			final.RuntimeStatus, final.Status.Phase, final.Status.Failure, final.Status.Compensations)
	}
	if _, err := m.WaitPhase(ctx, domain.PhasePickedUp); !errors.Is(err, client.ErrGone) {
		t.Errorf("WaitPhase(PickedUp) on a cancelled mission: %v, want ErrGone", err)
	}
	if st, err := m.WaitPhase(ctx, domain.PhaseCancelled); err != nil || st.Status.Phase != domain.PhaseCancelled {
		t.Errorf("WaitPhase(Cancelled): %s, %v", st.Status.Phase, err)
	}
	if _, err := m.WaitPhase(ctx, "Flying"); !errors.Is(err, client.ErrInvalid) {
		t.Errorf("WaitPhase of no phase: %v, want ErrInvalid", err)
	}
	if err := m.Cancel(ctx, ""); !errors.Is(err, client.ErrGone) {
		t.Errorf("cancel again: %v, want ErrGone", err)
	}
}

func (s suite) listing(t *testing.T) {
	ctx := testContext(t)
	var ids []string
	pages := 0
	for page, err := range s.c.Missions(ctx, client.ListOptions{IDPrefix: s.p + "-", PageSize: 1}) {
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, m := range page.Items {
			ids = append(ids, m.InstanceID)
			if m.Status.Phase == "" || m.Request.MissionID != m.InstanceID {
				t.Errorf("listed mission %s without its status or request: %+v", m.InstanceID, m)
			}
		}
	}
	want := []string{s.p + "-fly", s.p + "-cancel"} // oldest first
	if !slices.Equal(ids, want) || pages != 2 {
		t.Errorf("missions %v in %d pages, want %v in 2", ids, pages, want)
	}
	// Items stops fetching when the caller stops.
	n := 0
	for m, err := range client.Items(s.c.Missions(ctx, client.ListOptions{IDPrefix: s.p + "-", PageSize: 1})) {
		if err != nil {
			t.Fatal(err)
		}
		n++
		if m.InstanceID != want[0] {
			t.Errorf("first item %s, want %s", m.InstanceID, want[0])
		}
		break
	}
	if n != 1 {
		t.Errorf("%d items before the break", n)
	}
	// Filters: status, creation time, a page resumed from its token.
	var completed []string
	for m, err := range client.Items(s.c.Missions(ctx, client.ListOptions{IDPrefix: s.p + "-", RuntimeStatus: []client.RuntimeStatus{"completed"}})) {
		if err != nil {
			t.Fatal(err)
		}
		completed = append(completed, m.InstanceID)
	}
	if !slices.Equal(completed, want) {
		t.Errorf("completed missions %v, want %v", completed, want)
	}
	for page, err := range s.c.Missions(ctx, client.ListOptions{IDPrefix: s.p + "-", CreatedFrom: time.Now().Add(time.Hour)}) {
		if err != nil || len(page.Items) != 0 || page.ContinuationToken != "" {
			t.Fatalf("missions created in an hour: %+v, %v: want none", page, err)
		}
	}
	var first client.Page[client.Mission]
	for page, err := range s.c.Missions(ctx, client.ListOptions{IDPrefix: s.p + "-", PageSize: 1}) {
		if err != nil {
			t.Fatal(err)
		}
		first = page
		break
	}
	resumed := 0
	for m, err := range client.Items(s.c.Missions(ctx, client.ListOptions{IDPrefix: s.p + "-", PageSize: 1, ContinuationToken: first.ContinuationToken})) {
		if err != nil {
			t.Fatal(err)
		}
		resumed++
		if m.InstanceID != want[1] {
			t.Errorf("resumed listing gives %s, want %s", m.InstanceID, want[1])
		}
	}
	if resumed != 1 {
		t.Errorf("resumed listing gave %d missions, want 1", resumed)
	}
	// Purged missions are gone.
	for _, id := range want {
		if err := s.c.Mission(id).Purge(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := s.c.Mission(id).Status(ctx); !errors.Is(err, client.ErrNotFound) {
			t.Errorf("status of purged %s: %v, want ErrNotFound", id, err)
		}
	}
}

var (
	approvals = client.Orchestration[approvalIn, approvalOut]{Name: approvalName}
	echoes    = client.Orchestration[approvalIn, approvalIn]{Name: echoName}
)

func (s suite) orchestrations(t *testing.T) {
	ctx := testContext(t)

	// Typed start, public event, typed result.
	h, err := approvals.Start(ctx, s.c, approvalIn{Item: "pad-1", Amount: 3}, client.WithID(s.p+"-approve"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.RaiseEvent(ctx, "approve", "ana"); err != nil {
		t.Fatal(err)
	}
	out, err := h.Result(ctx)
	if err != nil || out != (approvalOut{Item: "pad-1", Approved: true, By: "ana"}) {
		t.Errorf("approval result %+v, %v", out, err)
	}
	in, err := h.Status(ctx, client.WithHistory())
	if err != nil {
		t.Fatal(err)
	}
	var input approvalIn
	if err := in.DecodeInput(&input); err != nil || input.Item != "pad-1" || in.Name != approvalName || !in.Ended() || len(in.History) == 0 || in.History[0].EventType != "ExecutionStarted" {
		t.Errorf("approval instance %+v (input %+v, %v)", in, input, err)
	}
	if err := h.RaiseEvent(ctx, "approve", "bo"); !errors.Is(err, client.ErrGone) {
		t.Errorf("an event on an ended instance: %v, want ErrGone", err)
	}

	// Run: start and result in one call; an id of the server's choosing.
	got, err := echoes.Run(ctx, s.c, approvalIn{Item: "echo"})
	if err != nil || got.Item != "echo" {
		t.Errorf("echo %+v, %v", got, err)
	}

	// An orchestration that fails.
	h, err = approvals.Start(ctx, s.c, approvalIn{Item: "pad-2", Amount: -1}, client.WithID(s.p+"-fail"))
	if err != nil {
		t.Fatal(err)
	}
	var ie *client.InstanceError
	if _, err := h.Result(ctx); !errors.Is(err, client.ErrFailed) || !errors.As(err, &ie) || ie.FailureDetails == nil ||
		!strings.Contains(ie.FailureDetails.ErrorMessage, "negative amount") {
		t.Errorf("failing orchestration: %v, want ErrFailed with its failure details", err)
	}

	// Suspended, an event kept, resumed.
	h, err = approvals.Start(ctx, s.c, approvalIn{Item: "pad-3"}, client.WithID(s.p+"-suspend"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Suspend(ctx, "hold on"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the instance to be suspended", func() bool {
		st, err := h.Status(ctx)
		return err == nil && st.RuntimeStatus == client.StatusSuspended
	})
	if err := h.RaiseEvent(ctx, "approve", "cy"); err != nil {
		t.Fatal(err)
	}
	if err := h.Resume(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if out, err := h.Result(ctx); err != nil || out.By != "cy" {
		t.Errorf("resumed approval %+v, %v", out, err)
	}

	// A scheduled start: Pending until then. (It is left to start after the
	// test: a terminate ends such an instance at once on SQLite but only at
	// its start time on Azure Storage.)
	h, err = approvals.Start(ctx, s.c, approvalIn{Item: "pad-4"}, client.WithID(s.p+"-later"), client.StartAt(time.Now().Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := h.Status(ctx); err != nil || st.RuntimeStatus != client.StatusPending {
		t.Errorf("instance starting in an hour: %s, %v, want Pending", st.RuntimeStatus, err)
	}

	// Listing instances of any orchestrator.
	var ids []string
	for in, err := range client.Items(s.c.Instances(ctx, client.ListOptions{IDPrefix: s.p + "-", RuntimeStatus: []client.RuntimeStatus{client.StatusFailed}})) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, in.InstanceID)
	}
	if !slices.Equal(ids, []string{s.p + "-fail"}) {
		t.Errorf("failed instances %v, want [%s-fail]", ids, s.p)
	}
}

func (s suite) waitContext(t *testing.T) {
	ctx := testContext(t)
	h, err := s.c.StartOrchestration(ctx, approvalName, approvalIn{Item: "never"}, client.WithID(s.p+"-never"))
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	in, err := h.Wait(short)
	if !errors.Is(err, context.DeadlineExceeded) || in.Ended() || !strings.Contains(err.Error(), h.ID()) {
		t.Errorf("Wait past its deadline: %+v, %v: want the context's error, naming the instance", in, err)
	}
	if err := s.c.Terminate(ctx, client.InstanceRef(h.ID()), "not needed"); err != nil {
		t.Fatal(err)
	}
	in, err = h.Wait(ctx)
	var ie *client.InstanceError
	if !errors.Is(err, client.ErrTerminated) || !errors.As(err, &ie) || in.RuntimeStatus != client.StatusTerminated || string(ie.Output) != `"not needed"` {
		t.Errorf("terminated instance %s: %v (output %s), want ErrTerminated with the reason", in.RuntimeStatus, err, in.Output)
	}
	if err := h.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Status(ctx); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("status of a purged instance: %v, want ErrNotFound", err)
	}
}

func (s suite) operations(t *testing.T) {
	ctx := testContext(t)
	info, err := s.c.HubInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != "sqlite" && info.Kind != "azurestorage" {
		t.Errorf("hub info %+v", info)
	}
	if _, err := s.c.DeadLetters(ctx); err != nil {
		t.Errorf("dead letters: %v", err)
	}
	if err := s.c.ReplayDeadLetter(ctx, "12345"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("replay of an unknown dead letter: %v, want ErrNotFound", err)
	}
	var ae *client.APIError
	if err := s.c.ReplayDeadLetter(ctx, "12345"); !errors.As(err, &ae) || ae.StatusCode != http.StatusNotFound || !strings.HasPrefix(err.Error(), "HTTP 404: ") {
		t.Errorf("error text %q", err)
	}
}
