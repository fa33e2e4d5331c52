package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dronehub/dronehub/httpapi"
	"github.com/dronehub/dronehub/internal/cli"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/worker"
)

// Issue #7, item 3: information exposure.

// send is env.do with full control of the request (Host, RemoteAddr-facing
// headers, raw bodies).
func (e *env) send(method, path string, body []byte, edit func(*http.Request)) response {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if e.key != "" {
		req.Header.Set("Authorization", "Bearer "+e.key)
	}
	if edit != nil {
		edit(req)
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{Code: res.StatusCode, Header: res.Header, Body: b}
}

func missionJSON(t *testing.T, id string) []byte {
	t.Helper()
	b, err := json.Marshal(testkit.Request(id))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// urls returns every URL an answer carries: Location and the 202 body's.
func urls(t *testing.T, r response) []string {
	t.Helper()
	out := []string{r.Header.Get("Location")}
	if r.Code == http.StatusAccepted && len(r.Body) > 0 {
		var a acceptedBody
		if err := json.Unmarshal(r.Body, &a); err == nil && a.ID != "" {
			out = append(out, a.StatusQueryGetURI, a.SendEventPostURI, a.TerminatePostURI, a.SuspendPostURI, a.ResumePostURI, a.PurgeHistoryDeleteURI)
		}
	}
	return out
}

func TestHardeningHostHeaderIsNeverCopiedIntoURLs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog)
	evil := func(r *http.Request) {
		r.Host = "evil.example"
		r.Header.Set("X-Forwarded-Host", "evil2.example")
		r.Header.Set("X-Forwarded-Proto", "https")
		r.Header.Set("Forwarded", `proto=https;host="evil3.example"`)
	}
	start := e.send("POST", "/api/missions", missionJSON(t, "m-host"), evil)
	if start.Code != http.StatusAccepted {
		t.Fatalf("start: %d %s", start.Code, start.Body)
	}
	status := e.send("GET", "/api/missions/m-host", nil, evil)
	if status.Code != http.StatusAccepted {
		t.Fatalf("status: %d %s", status.Code, status.Body)
	}
	drone := e.send("POST", "/api/drones", []byte(`{"id":"drone-host","home":{"lat":47.64,"lon":-122.13}}`), evil)
	if drone.Code != http.StatusCreated {
		t.Fatalf("add drone: %d %s", drone.Code, drone.Body)
	}
	for _, r := range []response{start, status, drone} {
		if bytes.Contains(r.Body, []byte("evil")) {
			t.Errorf("the answer names the client's Host or forwarded headers: %s", r.Body)
		}
		for _, u := range urls(t, r) {
			if !strings.HasPrefix(u, "/api/") || strings.Contains(u, "evil") {
				t.Errorf("URL %q: want a relative URL without a trusted proxy or a public URL", u)
			}
		}
	}
	if got := start.Header.Get("Location"); got != "/api/missions/m-host" {
		t.Errorf("Location %q, want /api/missions/m-host", got)
	}
	if got := drone.Header.Get("Location"); got != "/api/drones/drone-host/status" {
		t.Errorf("Location %q, want /api/drones/drone-host/status", got)
	}
	// The requests did what they said and nothing more: one mission, one drone.
	var list listBody
	e.do("GET", "/api/missions", nil).wantJSON(t, http.StatusOK, &list)
	if ids := list.ids(); len(ids) != 1 || ids[0] != "m-host" {
		t.Errorf("missions %v, want [m-host]", ids)
	}
	var d droneBody
	e.do("GET", "/api/drones/drone-host/status", nil).wantJSON(t, http.StatusOK, &d)

	// A client that addressed the server by the very address it connected
	// to still gets absolute URLs: nobody can point those elsewhere.
	self := e.send("GET", "/api/missions/m-host", nil, nil)
	if want := e.srv.URL + "/api/missions/m-host"; self.Header.Get("Location") != want {
		t.Errorf("Location %q for Host %s, want %q", self.Header.Get("Location"), strings.TrimPrefix(e.srv.URL, "http://"), want)
	}
	// So does "localhost" on a loopback connection (curl localhost:8080),
	// but only with the port the connection reached.
	_, port, _ := strings.Cut(strings.TrimPrefix(e.srv.URL, "http://"), ":")
	local := e.send("GET", "/api/missions/m-host", nil, func(r *http.Request) { r.Host = "localhost:" + port })
	if want := "http://localhost:" + port + "/api/missions/m-host"; local.Header.Get("Location") != want {
		t.Errorf("Location %q for Host localhost:%s, want %q", local.Header.Get("Location"), port, want)
	}
	other := e.send("GET", "/api/missions/m-host", nil, func(r *http.Request) { r.Host = "localhost:1" })
	if got := other.Header.Get("Location"); got != "/api/missions/m-host" {
		t.Errorf("Location %q for Host localhost:1, want a relative URL", got)
	}
}

func TestHardeningPublicURL(t *testing.T) {
	t.Parallel()
	e := newEnv(t, longWatchdog, func(c *worker.Config) {
		c.PublicURL = "https://drones.example.com/hub/"
		c.TrustedProxies = []string{"127.0.0.1", "::1"}
	})
	r := e.send("POST", "/api/missions", missionJSON(t, "m-public"), func(r *http.Request) {
		r.Host = "evil.example"
		r.Header.Set("X-Forwarded-Host", "evil2.example") // the public URL wins over any proxy
	})
	if r.Code != http.StatusAccepted {
		t.Fatalf("start: %d %s", r.Code, r.Body)
	}
	base := "https://drones.example.com/hub/api/missions/m-public"
	var a acceptedBody
	if err := json.Unmarshal(r.Body, &a); err != nil {
		t.Fatal(err)
	}
	if r.Header.Get("Location") != base || a.StatusQueryGetURI != base || a.SendEventPostURI != base+"/events/{eventName}" || a.PurgeHistoryDeleteURI != base {
		t.Errorf("Location %q, body %+v: want URLs under %s", r.Header.Get("Location"), a, base)
	}

	for _, bad := range []string{"ftp://x.example", "https://", "https://user:pw@x.example", "https://x.example/?q=1", "x.example", "https://x.example#f"} {
		cfg := testkit.Config(t)
		cfg.PublicURL = bad
		if _, err := worker.New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "public URL") {
			t.Errorf("PublicURL %q: New gave %v, want an error naming the public URL", bad, err)
		}
	}
}

func TestHardeningForwardedHeadersOnlyFromTrustedProxies(t *testing.T) {
	t.Parallel()
	trusted := newEnv(t, longWatchdog, func(c *worker.Config) { c.TrustedProxies = []string{"127.0.0.0/8", "::1"} })
	untrusted := newEnv(t, longWatchdog, func(c *worker.Config) { c.TrustedProxies = []string{"10.0.0.0/8"} })
	for _, tc := range []struct {
		name    string
		e       *env
		headers map[string]string
		want    string
	}{
		{"x-forwarded", trusted, map[string]string{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}, "https://api.example.com/api/missions/"},
		{"x-forwarded lists", trusted, map[string]string{"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "api.example.com:8443, inner"}, "https://api.example.com:8443/api/missions/"},
		{"forwarded", trusted, map[string]string{"Forwarded": `for=192.0.2.1;proto=https;host="fw.example.com", for=10.0.0.1`}, "https://fw.example.com/api/missions/"},
		{"bad host", trusted, map[string]string{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example/x?y"}, "/api/missions/"},
		{"bad proto", trusted, map[string]string{"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "api.example.com"}, "http://api.example.com/api/missions/"},
		{"untrusted peer", untrusted, map[string]string{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}, "/api/missions/"},
	} {
		id := "m-fwd-" + strings.ReplaceAll(tc.name, " ", "-")
		r := tc.e.send("POST", "/api/missions", missionJSON(t, id), func(r *http.Request) {
			r.Host = "evil.example"
			for k, v := range tc.headers {
				r.Header.Set(k, v)
			}
		})
		if r.Code != http.StatusAccepted {
			t.Fatalf("%s: start: %d %s", tc.name, r.Code, r.Body)
		}
		for _, u := range urls(t, r) {
			if !strings.HasPrefix(u, tc.want+id) {
				t.Errorf("%s: URL %q, want it under %s", tc.name, u, tc.want+id)
			}
		}
	}

	for _, bad := range []string{"10.0.0.0/33", "proxy.example", "1.2.3"} {
		cfg := testkit.Config(t)
		cfg.TrustedProxies = []string{bad}
		if _, err := worker.New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "trusted proxy") {
			t.Errorf("TrustedProxies %q: New gave %v, want an error naming it", bad, err)
		}
	}
}

func TestHardeningReadyzHidesErrorText(t *testing.T) {
	t.Parallel()
	secret := "open /srv/secret/dronehub.db: permission denied (AccountKey=abc)"
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("%w: %s", httpapi.ErrStorageUnavailable, secret), "not ready: storage is unavailable"},
		{httpapi.ErrNotStarted, "not ready: worker is not started"},
		{errors.New(secret), "not ready: see the worker log"},
	} {
		h := httpapi.NewHandler(httpapi.Options{Ready: func(context.Context) error { return tc.err }, Logger: testkit.Logger()})
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		r := response{Code: rec.Code, Header: rec.Header(), Body: rec.Body.Bytes()}
		p := r.wantProblem(t, http.StatusServiceUnavailable)
		if p.Detail != tc.want || strings.Contains(string(r.Body), "secret") || strings.Contains(string(r.Body), "AccountKey") {
			t.Errorf("/readyz for %q: %s; want detail %q and no error text", tc.err, r.Body, tc.want)
		}
		if r.Header.Get("Retry-After") == "" {
			t.Errorf("/readyz 503 without Retry-After")
		}
	}
}

func TestHardeningHubInfoHidesTheDatabasePath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "secret-dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *worker.Config) { c.Storage = filepath.Join(dir, "secret-dir", "hub.db") })
	r := e.do("GET", "/api/hub", nil)
	var info struct {
		Kind, Name string
	}
	r.wantJSON(t, http.StatusOK, &info)
	if info.Kind != "sqlite" || info.Name != "hub.db" {
		t.Errorf("hub kind %q name %q, want sqlite and the file name hub.db", info.Kind, info.Name)
	}
	if bytes.Contains(r.Body, []byte(dir)) || bytes.Contains(r.Body, []byte("secret-dir")) {
		t.Errorf("/api/hub shows where the database lives: %s", r.Body)
	}
}

func TestHardeningMetricsCanRequireTheKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *worker.Config) {
		c.APIKeys = []string{apiKey}
		c.MetricsRequireKey = true
	})
	r := e.do("GET", "/metrics", nil)
	r.wantProblem(t, http.StatusUnauthorized)
	if bytes.Contains(r.Body, []byte("dronehub_")) {
		t.Errorf("a 401 for /metrics shows metrics: %s", r.Body)
	}
	e.do("GET", "/metrics", nil, "Authorization", "Bearer wrong-key-0123456789").wantProblem(t, http.StatusUnauthorized)
	if r := e.do("GET", "/metrics", nil, "Authorization", "Bearer "+apiKey); r.Code != http.StatusOK || !bytes.Contains(r.Body, []byte("dronehub_missions_started_total")) {
		t.Errorf("/metrics with the key: %d %s", r.Code, r.Body)
	}
	// Probes stay open.
	e.do("GET", "/healthz", nil).wantJSON(t, http.StatusOK, nil)
	testkit.Eventually(t, 10*time.Second, "/readyz without a key to answer 200", func() bool {
		return e.do("GET", "/readyz", nil).Code == http.StatusOK
	})

	cfg := testkit.Config(t)
	cfg.MetricsRequireKey = true
	if _, err := worker.New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "API keys") {
		t.Errorf("MetricsRequireKey without keys: New gave %v, want an error", err)
	}
}

// lockedBuffer is a bytes.Buffer safe for a command's concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// runWorkerCommand runs `dronehub worker args...` in process until the test
// ends and returns its base URL.
func runWorkerCommand(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stderr lockedBuffer
	done := make(chan int, 1)
	args = append([]string{"worker", "--storage", filepath.Join(t.TempDir(), "hub.db"), "--seed-drones", "2"}, args...)
	go func() {
		done <- cli.Main(ctx, args, io.Discard, &stderr, func(k string) string { return env[k] })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("the worker command did not stop")
		}
	})
	var addr string
	testkit.Eventually(t, 30*time.Second, "the worker to listen", func() bool {
		select {
		case code := <-done:
			t.Fatalf("the worker command exited with %d: %s", code, stderr.String())
		default:
		}
		if m := listeningRE.FindStringSubmatch(stderr.String()); m != nil {
			addr = m[1]
		}
		return addr != ""
	})
	return "http://" + addr
}

func getStatus(t *testing.T, url, key string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

func TestHardeningAPIKeysFile(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "keys")
	const k1, k2 = "file-key-one-0123456789", "file-key-two-0123456789"
	if err := os.WriteFile(file, []byte("# dronehub keys\n"+k1+"\n\n"+k2+" # the second\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The file comes from the environment twin; the argv holds no key.
	base := runWorkerCommand(t, map[string]string{"DRONEHUB_API_KEYS_FILE": file}, "--listen", "localhost:0", "--metrics-require-key")
	for _, tc := range []struct {
		path, key string
		want      int
	}{
		{"/api/fleet", "", http.StatusUnauthorized},
		{"/api/fleet", "# dronehub keys", http.StatusUnauthorized},
		{"/api/fleet", k1, http.StatusOK},
		{"/api/fleet", k2, http.StatusOK},
		{"/metrics", "", http.StatusUnauthorized},
		{"/metrics", k2, http.StatusOK},
		{"/healthz", "", http.StatusOK},
	} {
		if got := getStatus(t, base+tc.path, tc.key); got != tc.want {
			t.Errorf("GET %s with key %q: %d, want %d", tc.path, tc.key, got, tc.want)
		}
	}

	// Refusals name the problem and start nothing.
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("# none yet\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--api-keys-file", filepath.Join(t.TempDir(), "missing")}, "--api-keys-file"},
		{[]string{"--api-keys-file", empty}, "holds no keys"},
		{[]string{"--metrics-require-key"}, "--metrics-require-key"},
	} {
		var stderr bytes.Buffer
		args := append([]string{"worker", "--listen", "127.0.0.1:0", "--storage", filepath.Join(t.TempDir(), "hub.db")}, tc.args...)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		code := cli.Main(ctx, args, io.Discard, &stderr, func(string) string { return "" })
		cancel()
		if code == 0 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("worker %v: exit %d, stderr %q; want a failure naming %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}
