package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
)

// POST /api/drones/{id}/reset: put an idle drone back in service after a
// failure demo or a repair.

func (h *handler) resetDrone(w http.ResponseWriter, r *http.Request) {
	ds, err := h.svc.ResetDrone(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ds)
}

// heldError refuses the reset of a drone a mission holds.
type heldError struct{ drone, mission string }

func (e *heldError) Error() string {
	return fmt.Sprintf("drone %q is held by mission %q and cannot be reset while a mission holds it; reset it once the mission has ended (cancel the mission to end it now)",
		e.drone, e.mission)
}

// ResetDrone puts an idle drone back in service as if it had just reported
// from its home base, fully charged and healthy: its telemetry state says
// health ok, battery 1, flight mode ready, at home on the ground, and
// whatever a past mission or failure left on its record (route, alarm and
// signal bookkeeping) is cleared. Its sequence numbers (boot, epoch, seq
// and dedupe window) are kept, so the drone's next frames continue them
// (client.Drone.NextSeq). A drone a mission holds is refused with 409: the
// check and the reset are one atomic update, so a reservation cannot slip
// in between. 404 for an unknown drone.
func (s *Service) ResetDrone(ctx context.Context, id string) (DroneStatus, error) {
	now := s.opts.Now().UTC()
	d, err := s.opts.Fleet.UpdateDrone(ctx, id, func(d *fleet.Drone) error {
		if d.MissionID != "" {
			return &heldError{drone: d.ID, mission: d.MissionID}
		}
		resetDrone(d, now)
		return nil
	})
	var held *heldError
	switch {
	case errors.As(err, &held):
		return DroneStatus{}, refuse(http.StatusConflict, held.Error())
	case errors.Is(err, fleet.ErrDroneNotFound):
		return DroneStatus{}, refuse(http.StatusNotFound, fmt.Sprintf("no drone with id %q", id))
	case err != nil:
		return DroneStatus{}, storageFailed("reset drone", err)
	}
	return droneStatus(d), nil
}

// resetDrone clears d's telemetry and mission state; see ResetDrone. The
// state keeps the time of the drone's last report (now for a drone that
// never reported): no telemetry arrived, and a frame that starts a new
// epoch is judged by its timestamp against it (domain.Tracked.Apply).
func resetDrone(d *fleet.Drone, now time.Time) {
	st := &domain.DroneState{
		DeviceID:   d.ID,
		Timestamp:  now,
		Battery:    1,
		FlightMode: domain.ModeReady,
		Position:   domain.Position{Lat: d.Home.Lat, Lon: d.Home.Lon},
		Health:     domain.HealthState{GyrometerOK: true, AccelerometerOK: true, MagnetometerOK: true},
	}
	if old := d.Tracked.State; old != nil {
		st.Boot, st.Epoch, st.Seq, st.Timestamp = old.Boot, old.Epoch, old.Seq, old.Timestamp
	}
	d.Tracked.State = st
	d.ClearMission() // a drone on a mission is refused before this
	d.LastSignalKey, d.LastSignalAt, d.SignalPending = "", time.Time{}, false
	d.LastAlarmAt = time.Time{}
}
