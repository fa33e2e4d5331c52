package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/backend/azurestorage"
	"github.com/dronehub/dronehub/domain"
)

// signalTrace reads a mission's history straight from the task hub (the
// HTTP API does not show event payloads) and lists the signals it received,
// in history order, with what each said: for a mission that ended other
// than its flight decided, this shows whether the signal that should have
// moved it on was never raised, or arrived after a newer one and was
// dropped as stale.
func signalTrace(ctx context.Context, c *cluster, missionID string) string {
	b, err := azurestorage.Open(ctx, azurestorage.Options{
		ConnectionString: c.storage, HubName: c.hub,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return fmt.Sprintf("(open the task hub: %v)", err)
	}
	defer b.Close()
	st, err := b.GetOrchestrationRuntimeState(ctx, &dtbackend.OrchestrationWorkItem{InstanceID: api.InstanceID(missionID)})
	if err != nil {
		return fmt.Sprintf("(read the history: %v)", err)
	}
	var parts []string
	route := dispatchRoute(st.OldEvents())
	lastSeq := int64(0)
	for _, e := range st.OldEvents() {
		switch {
		case e.GetTaskScheduled() != nil:
			parts = append(parts, e.GetTaskScheduled().GetName())
		case e.GetEventRaised() != nil:
			var sig domain.Signal
			_ = json.Unmarshal([]byte(e.GetEventRaised().GetInput().GetValue()), &sig)
			p := sig.Kind
			if s := sig.State; s != nil {
				where := "-"
				if route != nil {
					where = nearest(*route, s.Position.LatLon())
				}
				p = fmt.Sprintf("seq %d %s@%s", s.Seq, s.FlightMode, where)
				if f := s.Health.Fault(); f != "" {
					p += " fault " + f
				}
				if s.Seq <= lastSeq {
					p += " (stale: dropped)"
				} else {
					lastSeq = s.Seq
				}
			}
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, ", ")
}

// dispatchRoute reads the route from the scheduled DispatchDrone's input.
func dispatchRoute(events []*dtbackend.HistoryEvent) *domain.Route {
	for _, e := range events {
		if ts := e.GetTaskScheduled(); ts != nil && ts.GetName() == "DispatchDrone" {
			var in struct {
				Route domain.Route `json:"route"`
			}
			if json.Unmarshal([]byte(ts.GetInput().GetValue()), &in) == nil {
				return &in.Route
			}
		}
	}
	return nil
}

// nearest names the route point within 25 m of p, or "en-route".
func nearest(r domain.Route, p domain.LatLon) string {
	switch {
	case domain.DistanceM(p, r.Pickup) <= 25:
		return "pickup"
	case domain.DistanceM(p, r.Dropoff) <= 25:
		return "dropoff"
	case domain.DistanceM(p, r.Home) <= 25:
		return "home"
	}
	return "en-route"
}
