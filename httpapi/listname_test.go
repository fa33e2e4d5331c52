package httpapi_test

import (
	"net/http"
	"slices"
	"testing"

	"github.com/dronehub/dronehub/worker"
)

// TestInstancesListByName: GET /api/instances takes name, the
// orchestrator's name, so a dashboard can list one kind of orchestration;
// GET /api/missions lists missions whatever it says.
func TestInstancesListByName(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog, func(c *worker.Config) { c.Register = registerApproval })
	e.do("POST", "/api/orchestrations/Echo?instanceId=by-name-echo", raw(`"x"`)).wantJSON(t, http.StatusAccepted, nil)
	e.do("POST", "/api/orchestrations/Approval?instanceId=by-name-appr", nil).wantJSON(t, http.StatusAccepted, nil)

	var l listBody
	e.do("GET", "/api/instances?name=Approval", nil).wantJSON(t, http.StatusOK, &l)
	if ids := l.ids(); !slices.Equal(ids, []string{"by-name-appr"}) {
		t.Errorf("name=Approval lists %v, want [by-name-appr]", ids)
	}
	e.do("GET", "/api/instances?name=Nothing", nil).wantJSON(t, http.StatusOK, &l)
	if len(l.Instances) != 0 {
		t.Errorf("an unknown name lists %v, want none", l.ids())
	}
	e.do("GET", "/api/instances", nil).wantJSON(t, http.StatusOK, &l)
	if ids := l.ids(); !slices.Contains(ids, "by-name-echo") || !slices.Contains(ids, "by-name-appr") {
		t.Errorf("no name lists %v, want both", ids)
	}
	e.do("GET", "/api/missions?name=Echo", nil).wantJSON(t, http.StatusOK, &l)
	if len(l.Instances) != 0 {
		t.Errorf("/api/missions?name=Echo lists %v, want no missions (name does not apply there)", l.ids())
	}
}
