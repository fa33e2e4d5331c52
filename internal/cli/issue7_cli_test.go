package cli

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/internal/testkit"
)

// Issue #7, item 8: a number JSON cannot carry is named on the command line
// instead of sending an empty body.
func TestMissionStartRejectsNonFiniteNumbers(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DRONEHUB_URL": "http://127.0.0.1:1"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--pickup", "NaN,0", "--dropoff", "1,1", "--package", "p"}, "--pickup"},
		{[]string{"--pickup", "0,0", "--dropoff", "1,+Inf", "--package", "p"}, "--dropoff"},
		{[]string{"--pickup", "0,0", "--dropoff", "1,1", "--package", "p", "--weight", "Inf"}, "--weight"},
	} {
		code, out, errOut := run(t, env, append([]string{"mission", "start"}, tc.args...)...)
		if code != 1 || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "finite") || strings.Contains(errOut, "empty") {
			t.Errorf("mission start %v: exit %d, stdout %q, stderr %q: want %s named as not finite", tc.args, code, out, errOut, tc.want)
		}
	}
}

// Issue #7, item 3: a worker without --public-url answers with relative
// URLs; the CLI prints them resolved against --url.
func TestMissionStartResolvesRelativeStatusURL(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/proxy/api/missions" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusTeapot)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", "/api/missions/m-rel")
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, `{"id":"m-rel","statusQueryGetUri":"/api/missions/m-rel"}`)
	}))
	t.Cleanup(srv.Close)
	code, out, errOut := run(t, map[string]string{"DRONEHUB_URL": srv.URL + "/proxy/"},
		"mission", "start", "--id", "m-rel", "--pickup", "47.6440,-122.1300", "--dropoff", "47.6480,-122.1370", "--package", "p")
	want := "status: " + srv.URL + "/proxy/api/missions/m-rel\n"
	if code != 0 || !strings.Contains(out, want) {
		t.Fatalf("exit %d, stdout %q, stderr %q: want %q", code, out, errOut, want)
	}
}

// Issue #7, item 10: missions declare no public events, so `mission raise`
// is refused; the CLI says why and what to do instead.
func TestMissionRaiseExplainsForbidden(t *testing.T) {
	t.Parallel()
	cfg := testkit.Config(t)
	cfg.Mission.Watchdog = 2 * time.Minute
	w := testkit.Start(t, cfg)
	srv := httptest.NewServer(w.Handler())
	t.Cleanup(srv.Close)
	env := map[string]string{"DRONEHUB_URL": srv.URL}
	if code, out, errOut := run(t, env, "mission", "start", "--id", "m-raise", "--pickup", "47.6440,-122.1300", "--dropoff", "47.6480,-122.1370", "--package", "p"); code != 0 {
		t.Fatalf("start: exit %d, %q, %q", code, out, errOut)
	}
	code, _, errOut := run(t, env, "mission", "raise", "m-raise", "signal", `{"x":1}`)
	if code != 1 || !strings.Contains(errOut, "HTTP 403") || !strings.Contains(errOut, "missions declare no public events") || !strings.Contains(errOut, "dronehub mission cancel m-raise") {
		t.Errorf("raise: exit %d, stderr %q: want the 403 explained", code, errOut)
	}
}
