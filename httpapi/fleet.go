package httpapi

import (
	"bytes"
	"net/http"
	"net/url"
	"time"

	"github.com/dronehub/dronehub/domain"
)

func (h *handler) telemetry(w http.ResponseWriter, r *http.Request) {
	if err := h.svc.checkIngest(); err != nil {
		h.fail(w, r, err)
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
	res, err := h.svc.Ingest(r.Context(), frames) // the Ingestor counts the frames (metrics)
	if err != nil {
		h.fail(w, r, err)
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

func (h *handler) droneStatus(w http.ResponseWriter, r *http.Request) {
	ds, err := h.svc.Drone(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ds)
}

func (h *handler) listDrones(w http.ResponseWriter, r *http.Request) {
	drones, err := h.svc.Drones(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, DroneList{Drones: drones})
}

// DroneList is the body of GET /api/drones.
type DroneList struct {
	Drones []DroneStatus `json:"drones"`
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
	ds, err := h.svc.AddDrone(r.Context(), nd)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Location", baseURL(r)+"/api/drones/"+url.PathEscape(ds.DroneID)+"/status")
	writeJSON(w, http.StatusCreated, ds)
}

func (h *handler) fleetSummary(w http.ResponseWriter, r *http.Request) {
	s, err := h.svc.FleetSummary(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}
