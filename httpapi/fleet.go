package httpapi

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
)

func (h *handler) telemetry(w http.ResponseWriter, r *http.Request) {
	if h.opts.Ingestor == nil {
		problem(w, http.StatusNotFound, "telemetry ingestion is not enabled on this server")
		return
	}
	body, ok := readBody(w, r, MaxTelemetryBody, true)
	if !ok {
		return
	}
	frames, err := domain.DecodeBatch(bytes.NewReader(body))
	if err != nil {
		problem(w, http.StatusBadRequest, err.Error())
		return
	}
	res, err := h.opts.Ingestor.Ingest(r.Context(), frames)
	h.metrics.countFrames(res)
	if err != nil {
		h.log.Error("telemetry ingestion failed", "err", err)
		w.Header().Set("Retry-After", "5")
		problem(w, http.StatusServiceUnavailable, "storage failed while applying the batch; send the whole batch again (frames already applied come back as duplicates)")
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// DroneStatus is the body of GET /api/drones/{id}/status: the drone's
// latest merged state (null before its first key frame).
type DroneStatus struct {
	DroneID      string             `json:"droneId"`
	Home         domain.LatLon      `json:"home"`
	MissionID    string             `json:"missionId,omitempty"`
	Route        *domain.Route      `json:"route,omitempty"`
	State        *domain.DroneState `json:"state"`
	Health       string             `json:"health"`
	Frames       int64              `json:"frames"`
	LastSignalAt *time.Time         `json:"lastSignalAt,omitempty"`
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

func (h *handler) droneStatus(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	d, err := h.opts.Fleet.Drone(r.Context(), id)
	if errors.Is(err, fleet.ErrDroneNotFound) {
		problem(w, http.StatusNotFound, fmt.Sprintf("no drone with id %q", id))
		return
	}
	if err != nil {
		h.storageError(w, r, "read drone", err)
		return
	}
	writeJSON(w, http.StatusOK, droneStatus(d))
}

func (h *handler) listDrones(w http.ResponseWriter, r *http.Request) {
	drones, err := h.opts.Fleet.Drones(r.Context())
	if err != nil {
		h.storageError(w, r, "list drones", err)
		return
	}
	out := struct {
		Drones []DroneStatus `json:"drones"`
	}{Drones: make([]DroneStatus, 0, len(drones))}
	for _, d := range drones {
		out.Drones = append(out.Drones, droneStatus(d))
	}
	writeJSON(w, http.StatusOK, out)
}

// NewDrone is the body of POST /api/drones.
type NewDrone struct {
	ID   string         `json:"id"`
	Home *domain.LatLon `json:"home"`
}

func (h *handler) addDrone(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, MaxMissionBody, true)
	if !ok {
		return
	}
	var nd NewDrone
	if err := domain.DecodeStrict(bytes.NewReader(body), &nd); err != nil {
		problem(w, http.StatusBadRequest, "drone: "+err.Error())
		return
	}
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
		problem(w, http.StatusBadRequest, "invalid drone", fields...)
		return
	}
	d, err := h.opts.Fleet.AddDrone(r.Context(), nd.ID, *nd.Home)
	if errors.Is(err, fleet.ErrDroneExists) {
		problem(w, http.StatusConflict, fmt.Sprintf("drone %q already exists", nd.ID))
		return
	}
	if err != nil {
		h.storageError(w, r, "add drone", err)
		return
	}
	w.Header().Set("Location", baseURL(r)+"/api/drones/"+url.PathEscape(d.ID)+"/status")
	writeJSON(w, http.StatusCreated, droneStatus(d))
}

func (h *handler) fleetSummary(w http.ResponseWriter, r *http.Request) {
	s, err := activities.Summarize(r.Context(), h.opts.Fleet, h.opts.Mission.BatteryFloor)
	if err != nil {
		h.storageError(w, r, "summarize fleet", err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}
