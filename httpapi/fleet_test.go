package httpapi_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// keyFrame is a complete frame for drone at seq.
func keyFrame(drone string, seq int64) map[string]any {
	return map[string]any{
		"deviceId": drone, "seq": seq, "timestamp": time.Now().UTC().Format(time.RFC3339Nano),
		"battery": 0.9, "flightMode": "ready", "isKeyFrame": true,
		"position": map[string]float64{"lat": 47.6401, "lon": -122.1298, "alt": 0},
		"health":   map[string]bool{"gyrometerOk": true, "accelerometerOk": true, "magnetometerOk": true},
	}
}

func batch(frames ...map[string]any) map[string]any {
	return map[string]any{"frames": frames}
}

func TestTelemetry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ingest := func(body any) ingestBody {
		t.Helper()
		var res ingestBody
		e.do("POST", "/api/telemetry", body).wantJSON(t, http.StatusOK, &res)
		return res
	}
	verdicts := func(res ingestBody) []string {
		out := make([]string, len(res.Frames))
		for i, f := range res.Frames {
			out[i] = f.Verdict
		}
		return out
	}

	res := ingest(batch(keyFrame("drone-1", 10)))
	if len(res.Frames) != 1 || res.Frames[0].Verdict != "accepted" || res.Accepted != 1 {
		t.Fatalf("first key frame: %+v", res)
	}
	if f := res.Frames[0]; f.DeviceID != "drone-1" || f.Seq == nil || *f.Seq != 10 || f.Index != 0 {
		t.Errorf("verdict does not identify the frame: %+v", f)
	}
	res = ingest(batch(keyFrame("drone-1", 10)))
	if res.Frames[0].Verdict != "duplicate" || res.Duplicates != 1 || res.Accepted != 0 {
		t.Errorf("same frame again: %+v", res)
	}
	res = ingest(batch(keyFrame("drone-1", 5)))
	if res.Frames[0].Verdict != "stale" || res.Stale != 1 {
		t.Errorf("older seq: %+v", res)
	}
	res = ingest(batch(map[string]any{"deviceId": "drone-2", "seq": 1, "timestamp": time.Now().UTC(), "battery": 0.5}))
	if f := res.Frames[0]; f.Verdict != "rejected" || !strings.Contains(f.Reason, "key frame") || res.Rejected != 1 {
		t.Errorf("delta before any key frame: %+v", res)
	}
	res = ingest(batch(keyFrame("drone-99", 1)))
	if f := res.Frames[0]; f.Verdict != "rejected" || !strings.Contains(f.Reason, "drone-99") {
		t.Errorf("unknown drone: %+v", res)
	}

	// One bad frame does not reject its neighbours; verdicts keep batch order.
	bad := keyFrame("drone-1", 12)
	bad["battery"] = 2
	delta := map[string]any{"deviceId": "drone-1", "seq": 13, "timestamp": time.Now().UTC(), "battery": 0.8}
	res = ingest(batch(keyFrame("drone-3", 1), bad, delta, keyFrame("drone-1", 11)))
	if got, want := verdicts(res), []string{"accepted", "rejected", "accepted", "stale"}; !slices.Equal(got, want) {
		t.Errorf("mixed batch verdicts %v, want %v (%+v)", got, want, res)
	}
	if !strings.Contains(res.Frames[1].Reason, "battery") {
		t.Errorf("invalid frame reason %q does not name battery", res.Frames[1].Reason)
	}
	if res.Accepted != 2 || res.Rejected != 1 || res.Stale != 1 {
		t.Errorf("mixed batch counts %+v", res)
	}

	var d droneBody
	e.do("GET", "/api/drones/drone-1/status", nil).wantJSON(t, http.StatusOK, &d)
	if d.DroneID != "drone-1" || d.State == nil || d.State.Seq != 13 || d.State.Battery != 0.8 || d.Health != "ok" || d.Frames != 2 {
		t.Errorf("drone-1 status %+v (state %+v): want seq 13, battery 0.8, health ok, 2 frames", d, d.State)
	}
	e.do("GET", "/api/drones/drone-2/status", nil).wantJSON(t, http.StatusOK, &d)
	if d.State != nil || d.Health != "unknown" {
		t.Errorf("drone-2 without telemetry: %+v", d)
	}
	p := e.do("GET", "/api/drones/drone-99/status", nil).wantProblem(t, http.StatusNotFound)
	if !strings.Contains(p.Detail, "drone-99") {
		t.Errorf("404 detail %q does not name the drone", p.Detail)
	}

	t.Run("bad batches", func(t *testing.T) {
		e.do("POST", "/api/telemetry", raw(`{"frames": [`)).wantProblem(t, http.StatusBadRequest)
		e.do("POST", "/api/telemetry", raw(`[]`)).wantProblem(t, http.StatusBadRequest)
		e.do("POST", "/api/telemetry", raw(`{}`)).wantProblem(t, http.StatusBadRequest)
		e.do("POST", "/api/telemetry", raw(``)).wantProblem(t, http.StatusBadRequest)
		p := e.do("POST", "/api/telemetry", raw(`{"frames": [], "gateway": "g1"}`)).wantProblem(t, http.StatusBadRequest)
		if !strings.Contains(p.Detail, "gateway") {
			t.Errorf("unknown field detail %q does not name it", p.Detail)
		}
		many := make([]map[string]any, 1001)
		for i := range many {
			many[i] = map[string]any{}
		}
		p = e.do("POST", "/api/telemetry", batch(many...)).wantProblem(t, http.StatusBadRequest)
		if !strings.Contains(p.Detail, "1000") {
			t.Errorf("too many frames detail %q does not give the limit", p.Detail)
		}
		e.do("POST", "/api/telemetry", raw(`{"frames": [], "pad": "`+strings.Repeat("x", 4<<20)+`"}`)).wantProblem(t, http.StatusRequestEntityTooLarge)
		e.do("POST", "/api/telemetry", raw(`{"frames": []}`), "Content-Type", "text/csv").wantProblem(t, http.StatusUnsupportedMediaType)
		// Nothing was applied by any of them.
		var d droneBody
		e.do("GET", "/api/drones/drone-1/status", nil).wantJSON(t, http.StatusOK, &d)
		if d.Frames != 2 {
			t.Errorf("drone-1 frames %d after rejected batches, want 2", d.Frames)
		}
	})

	t.Run("empty batch", func(t *testing.T) {
		res := ingest(raw(`{"frames": []}`))
		if len(res.Frames) != 0 || res.Accepted != 0 {
			t.Errorf("empty batch: %+v", res)
		}
	})
}

func TestDrones(t *testing.T) {
	t.Parallel()
	e := newEnv(t)

	r := e.do("POST", "/api/drones", raw(`{"id": "drone-x", "home": {"lat": 47.61, "lon": -122.2}}`))
	var d droneBody
	r.wantJSON(t, http.StatusCreated, &d)
	if loc := r.Header.Get("Location"); loc != e.srv.URL+"/api/drones/drone-x/status" {
		t.Errorf("Location %q", loc)
	}
	if d.DroneID != "drone-x" || d.Home.Lat != 47.61 || d.Home.Lon != -122.2 || d.State != nil || d.Health != "unknown" {
		t.Errorf("created drone %+v", d)
	}
	e.do("GET", "/api/drones/drone-x/status", nil).wantJSON(t, http.StatusOK, &d)
	if d.DroneID != "drone-x" {
		t.Errorf("drone-x status %+v", d)
	}

	p := e.do("POST", "/api/drones", raw(`{"id": "drone-x", "home": {"lat": 1, "lon": 1}}`)).wantProblem(t, http.StatusConflict)
	if !strings.Contains(p.Detail, "drone-x") {
		t.Errorf("409 detail %q does not name the drone", p.Detail)
	}
	p = e.do("POST", "/api/drones", raw(`{"id": "", "home": {"lat": 91, "lon": 0}}`)).wantProblem(t, http.StatusBadRequest)
	if got := p.fields(); !slices.Equal(got, []string{"id", "home"}) {
		t.Errorf("invalid drone errors %+v, want id and home", p.Errors)
	}
	p = e.do("POST", "/api/drones", raw(`{"id": "drone-y"}`)).wantProblem(t, http.StatusBadRequest)
	if got := p.fields(); !slices.Equal(got, []string{"home"}) {
		t.Errorf("drone without home: errors %+v", p.Errors)
	}
	p = e.do("POST", "/api/drones", raw(`{"id": "drone-y", "home": {"lat": 1, "lon": 1}, "model": "X8"}`)).wantProblem(t, http.StatusBadRequest)
	if !strings.Contains(p.Detail, "model") {
		t.Errorf("unknown field detail %q", p.Detail)
	}
	e.do("POST", "/api/drones", raw(`{"id": `)).wantProblem(t, http.StatusBadRequest)
	e.do("POST", "/api/drones", raw(``)).wantProblem(t, http.StatusBadRequest)
	e.do("POST", "/api/drones", raw(`{"id": "drone-y", "home": {"lat": 1, "lon": 1}}`), "Content-Type", "text/plain").wantProblem(t, http.StatusUnsupportedMediaType)
	e.do("GET", "/api/drones/drone-y/status", nil).wantProblem(t, http.StatusNotFound)

	var list struct {
		Drones []droneBody `json:"drones"`
	}
	e.do("GET", "/api/drones", nil).wantJSON(t, http.StatusOK, &list)
	var ids []string
	for _, d := range list.Drones {
		ids = append(ids, d.DroneID)
	}
	slices.Sort(ids)
	if want := []string{"drone-1", "drone-2", "drone-3", "drone-x"}; !slices.Equal(ids, want) {
		t.Errorf("drones %v, want %v", ids, want)
	}

	var res ingestBody
	e.do("POST", "/api/telemetry", batch(keyFrame("drone-x", 1))).wantJSON(t, http.StatusOK, &res)
	if res.Accepted != 1 {
		t.Fatalf("key frame for the new drone: %+v", res)
	}
	var sum struct {
		Drones      *int `json:"drones"`
		Idle        int  `json:"idle"`
		OnMission   int  `json:"onMission"`
		Faulted     int  `json:"faulted"`
		LowBattery  int  `json:"lowBattery"`
		NoTelemetry int  `json:"noTelemetry"`
	}
	e.do("GET", "/api/fleet", nil).wantJSON(t, http.StatusOK, &sum)
	if sum.Drones == nil || *sum.Drones != 4 || sum.Idle != 4 || sum.OnMission != 0 || sum.NoTelemetry != 3 || sum.Faulted != 0 {
		t.Errorf("fleet summary %+v (drones %v): want 4 idle drones, 3 without telemetry", sum, sum.Drones)
	}
}
