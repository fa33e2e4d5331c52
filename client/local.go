package client

import (
	"context"
	"net/url"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/httpapi"
	"github.com/dronehub/dronehub/worker"
)

// Local returns a Client on the worker w, in process. It calls what the
// HTTP API's routes call (w.API()), so it validates, composes statuses and
// refuses exactly as the API does; its errors carry the status the API
// would have answered with. The worker must have been started for
// instances to make progress.
func Local(w *worker.Worker) Client {
	return &client{t: local{api: w.API()}, poll: pollPolicy{min: 10 * time.Millisecond, max: 250 * time.Millisecond}}
}

// local is the in-process transport.
type local struct {
	api *httpapi.Service
}

func (l local) startMission(ctx context.Context, req domain.MissionRequest, startAt time.Time) (Links, error) {
	id, _, err := l.api.StartMission(ctx, req, startAt)
	if err != nil {
		return Links{}, fromService(err)
	}
	return Links{ID: id}, nil
}

func (l local) startOrchestration(ctx context.Context, name, id string, input []byte, startAt time.Time) (Links, error) {
	id, err := l.api.StartOrchestration(ctx, name, id, input, startAt)
	if err != nil {
		return Links{}, fromService(err)
	}
	return Links{ID: id}, nil
}

func (l local) status(ctx context.Context, sc httpapi.Scope, id string, history bool) (httpapi.Status, error) {
	st, err := l.api.Status(ctx, sc, id, history)
	return st, fromService(err)
}

func (l local) list(ctx context.Context, sc httpapi.Scope, query url.Values) (httpapi.ListPage, error) {
	page, err := l.api.List(ctx, sc, query)
	return page, fromService(err)
}

func (l local) raise(ctx context.Context, sc httpapi.Scope, id, event string, payload []byte) error {
	return fromService(l.api.RaiseEvent(ctx, sc, id, event, payload))
}

func (l local) operate(ctx context.Context, op operation, sc httpapi.Scope, id, reason string) error {
	var err error
	switch op {
	case opTerminate:
		err = l.api.Terminate(ctx, sc, id, reason)
	case opSuspend:
		err = l.api.Suspend(ctx, sc, id, reason)
	case opResume:
		err = l.api.Resume(ctx, sc, id, reason)
	case opCancel:
		err = l.api.CancelMission(ctx, id, reason)
	}
	return fromService(err)
}

func (l local) purge(ctx context.Context, sc httpapi.Scope, id string) error {
	_, err := l.api.Purge(ctx, sc, id)
	return fromService(err)
}

func (l local) ingest(ctx context.Context, frames []domain.Frame, _ []byte) (IngestResult, error) {
	decoded := make([]domain.DecodedFrame, len(frames))
	for i, f := range frames {
		decoded[i] = domain.DecodedFrame{Frame: f}
	}
	res, err := l.api.Ingest(ctx, decoded)
	if err != nil {
		// Over HTTP a failed batch answers a problem, not verdicts.
		return IngestResult{}, fromService(err)
	}
	return res, nil
}

func (l local) drone(ctx context.Context, id string) (httpapi.DroneStatus, error) {
	ds, err := l.api.Drone(ctx, id)
	return ds, fromService(err)
}

func (l local) drones(ctx context.Context) ([]httpapi.DroneStatus, error) {
	list, err := l.api.Drones(ctx)
	return list, fromService(err)
}

func (l local) resetDrone(ctx context.Context, id string) (httpapi.DroneStatus, error) {
	ds, err := l.api.ResetDrone(ctx, id)
	return ds, fromService(err)
}

func (l local) addDrone(ctx context.Context, nd httpapi.NewDrone) (httpapi.DroneStatus, error) {
	ds, err := l.api.AddDrone(ctx, nd)
	return ds, fromService(err)
}

func (l local) fleet(ctx context.Context) (FleetSummary, error) {
	s, err := l.api.FleetSummary(ctx)
	return s, fromService(err)
}

func (l local) hubInfo(ctx context.Context) (HubInfo, error) {
	info, err := l.api.HubInfo(ctx)
	return info, fromService(err)
}

func (l local) deadLetters(ctx context.Context) ([]DeadLetter, error) {
	list, err := l.api.DeadLetters(ctx)
	return list, fromService(err)
}

func (l local) replay(ctx context.Context, id string) error {
	return fromService(l.api.ReplayDeadLetter(ctx, id))
}
