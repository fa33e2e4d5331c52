package httpapi_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/testkit"
)

// Issue #10: POST /api/drones/{id}/reset puts a drone a failure demo left
// faulted and drained back in service, continuing its sequence numbers,
// and refuses a drone a mission holds.
func TestResetDrone(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog)

	// drone-2 reports a gyrometer fault at 10% charge, mid-route.
	broken := keyFrame("drone-2", 7)
	broken["battery"], broken["flightMode"] = 0.1, "inflight"
	broken["position"] = map[string]float64{"lat": 47.65, "lon": -122.14, "alt": 120}
	broken["health"] = map[string]bool{"gyrometerOk": false, "accelerometerOk": true, "magnetometerOk": true}
	var res ingestBody
	e.do("POST", "/api/telemetry", batch(broken)).wantJSON(t, http.StatusOK, &res)
	if res.Accepted != 1 {
		t.Fatalf("faulted key frame: %+v", res)
	}

	var d droneBody
	e.do("POST", "/api/drones/drone-2/reset", nil).wantJSON(t, http.StatusOK, &d)
	s := d.State
	if d.DroneID != "drone-2" || d.Health != "ok" || s == nil {
		t.Fatalf("reset drone %+v: want health ok and a state", d)
	}
	home := domain.Position{Lat: d.Home.Lat, Lon: d.Home.Lon}
	if s.Battery != 1 || s.FlightMode != domain.ModeReady || s.Position != home || s.Health.Fault() != "" || s.Seq != 7 {
		t.Errorf("reset state %+v: want battery 1, ready at home %+v, no fault, seq 7 kept", s, home)
	}
	e.do("GET", "/api/drones/drone-2/status", nil).wantJSON(t, http.StatusOK, &d)
	if d.Health != "ok" || d.State == nil || d.State.Battery != 1 {
		t.Errorf("status after reset %+v", d)
	}
	var sum struct {
		Faulted    int `json:"faulted"`
		LowBattery int `json:"lowBattery"`
	}
	e.do("GET", "/api/fleet", nil).wantJSON(t, http.StatusOK, &sum)
	if sum.Faulted != 0 || sum.LowBattery != 0 {
		t.Errorf("fleet after reset %+v: want no faulted or low drone", sum)
	}
	// Its next frame continues its sequence.
	e.do("POST", "/api/telemetry", batch(keyFrame("drone-2", 8))).wantJSON(t, http.StatusOK, &res)
	if res.Accepted != 1 {
		t.Errorf("the frame after the reset: %+v, want accepted", res)
	}
	// Resetting again is harmless, and a drone that never reported gets a
	// state too.
	e.do("POST", "/api/drones/drone-2/reset", nil).wantJSON(t, http.StatusOK, &d)
	e.do("POST", "/api/drones/drone-3/reset", nil).wantJSON(t, http.StatusOK, &d)
	if d.Health != "ok" || d.State == nil || d.State.Seq != 0 || d.State.Battery != 1 {
		t.Errorf("reset of a drone without telemetry %+v", d)
	}

	// A drone a mission holds is refused, naming the mission.
	e.startMission(testkit.Request("m-held"))
	testkit.Eventually(t, 15*time.Second, "the mission to reserve drone-1", func() bool {
		e.do("GET", "/api/drones/drone-1/status", nil).wantJSON(t, http.StatusOK, &d)
		return d.MissionID == "m-held"
	})
	p := e.do("POST", "/api/drones/drone-1/reset", nil).wantProblem(t, http.StatusConflict)
	if !strings.Contains(p.Detail, `held by mission "m-held"`) {
		t.Errorf("409 detail %q: want the mission named", p.Detail)
	}
	e.do("GET", "/api/drones/drone-1/status", nil).wantJSON(t, http.StatusOK, &d)
	if d.MissionID != "m-held" {
		t.Errorf("refused reset changed the drone: %+v", d)
	}

	e.do("POST", "/api/drones/nope/reset", nil).wantProblem(t, http.StatusNotFound)
	if r := e.do("GET", "/api/drones/drone-2/reset", nil); r.Code != http.StatusMethodNotAllowed || r.Header.Get("Allow") != "POST" {
		t.Errorf("GET on the reset route: %d, Allow %q", r.Code, r.Header.Get("Allow"))
	}
}
