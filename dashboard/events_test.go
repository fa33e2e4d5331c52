package dashboard_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/dashboard"
	"github.com/dronehub/dronehub/httpapi"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/taskhub"
)

const testKey = "dashboard-test-key-0123456789"

func get(t *testing.T, url, key string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	// Redirects are for the test to see.
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestPagesArePublicFeedNeedsTheKey: with API keys, the embedded pages are
// served to anyone (they hold no data), "/" leads to them, and the live
// feed, under /api/, needs the key like every /api route.
func TestPagesArePublicFeedNeedsTheKey(t *testing.T) {
	t.Parallel()
	cfg := testkit.Config(t)
	cfg.APIKeys = []string{testKey}
	w := testkit.Start(t, cfg)
	base := serve(t, w)

	resp, _ := get(t, base+"/", "")
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "ui/" {
		t.Errorf("GET /: %d Location %q, want 302 to ui/", resp.StatusCode, resp.Header.Get("Location"))
	}
	for _, p := range []string{"/ui/", "/ui/js/app.js", "/ui/css/app.css", "/ui/js/pages/fleet.js"} {
		resp, body := get(t, base+p, "")
		if resp.StatusCode != http.StatusOK || len(body) == 0 {
			t.Errorf("GET %s without a key: %d, want 200 with the file", p, resp.StatusCode)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q, want only this origin", p, csp)
		}
	}
	if resp, _ := get(t, base+"/ui/js/app.js", ""); !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") {
		t.Errorf("app.js served as %q, want text/javascript (module scripts need it)", resp.Header.Get("Content-Type"))
	}
	if resp, body := get(t, base+"/ui/nothing.js", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /ui/nothing.js: %d %s, want 404", resp.StatusCode, body)
	}

	resp, body := get(t, base+"/api/events", "")
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "API key") {
		t.Errorf("feed without a key: %d %s, want 401 naming the key", resp.StatusCode, body)
	}
	resp, _ = get(t, base+"/api/events", "wrong-key-0123456789abc")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("feed with a wrong key: %d, want 401", resp.StatusCode)
	}
	resp, body = get(t, base+"/api/events?topics=fleet,nope", testKey)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `unknown topic \"nope\"`) {
		t.Errorf("unknown topic: %d %s, want 400 naming it", resp.StatusCode, body)
	}

	f := openFeed(t, base, testKey, "fleet")
	ev := f.next(t, 10*time.Second)
	u := ev.update(t)
	if ev.Type != "update" || !u.Snapshot || !slices.Equal(u.Topics, []string{"fleet"}) || len(u.Drones) != 3 || u.Instances != nil || u.Hub != nil {
		t.Fatalf("first event %s %s, want a snapshot of the fleet only (3 drones)", ev.Type, ev.Data)
	}
}

// TestFeedSendsSnapshotThenChanges: the first update is the state, the
// later ones hold only what changed, and a flight's progress reaches the
// page as it happens.
func TestFeedSendsSnapshotThenChanges(t *testing.T) {
	t.Parallel()
	cfg := testkit.Config(t)
	cfg.DashboardInterval = 50 * time.Millisecond
	w := testkit.Start(t, cfg)
	base := serve(t, w)
	c := client.Local(w)
	ctx := context.Background()

	f := openFeed(t, base, "", "instances,fleet")
	snap := f.next(t, 10*time.Second).update(t)
	if !snap.Snapshot || len(snap.Drones) != 3 || snap.Fleet == nil || len(snap.Instances) != 0 {
		t.Fatalf("snapshot %+v, want 3 drones, a fleet summary and no instances", snap)
	}
	if _, err := c.StartMission(ctx, testkit.Request("live-1")); err != nil {
		t.Fatal(err)
	}
	// The mission and its drone's reservation may come in one update or
	// in several: what every update showed is gathered.
	st := testkit.AwaitDispatched(t, w, "live-1")
	sawMission, sawDrone := false, false
	f.until(t, 15*time.Second, "the new mission and the drone it reserved", func(u feedUpdate) bool {
		if u.Snapshot {
			t.Error("a change came as a snapshot")
		}
		sawMission = sawMission || slices.Contains(u.instanceIDs(t), "live-1")
		sawDrone = sawDrone || slices.ContainsFunc(u.Drones, func(d struct {
			DroneID   string `json:"droneId"`
			Condition string `json:"condition"`
			MissionID string `json:"missionId"`
		}) bool {
			return d.DroneID == st.DroneID && d.MissionID == "live-1"
		})
		return sawMission && sawDrone
	})
	// Changes carry only what changed: the other drones are not repeated.
	flight := testkit.Flight(t, w, st, simulator.FaultNone, 0)
	if err := simulator.Fly(ctx, testkit.Sink(t, w), 0, flight); err != nil {
		t.Fatal(err)
	}
	f.until(t, 20*time.Second, "the flown drone, alone", func(u feedUpdate) bool {
		return len(u.Drones) == 1 && u.Drones[0].DroneID == st.DroneID
	})
	end := f.until(t, 20*time.Second, "the mission to complete", func(u feedUpdate) bool {
		for _, raw := range u.Instances {
			if strings.Contains(string(raw), `"instanceId":"live-1"`) && strings.Contains(string(raw), `"runtimeStatus":"Completed"`) {
				return true
			}
		}
		return false
	})
	if len(end.Instances) != 1 {
		t.Errorf("the update of the mission's end holds %d instances, want only that one", len(end.Instances))
	}

	// A page that connects now gets the ended mission in its snapshot (it
	// ended lately), from the feed's memory.
	g := openFeed(t, base, "", "instances")
	if ids := g.next(t, 10*time.Second).update(t).instanceIDs(t); !slices.Contains(ids, "live-1") {
		t.Errorf("snapshot after the end lists %v, want live-1", ids)
	}
}

// countingSource counts the calls the feed makes to its source, each one
// storage query or more.
type countingSource struct {
	dashboard.Source
	calls atomic.Int64
}

func (c *countingSource) List(ctx context.Context, sc httpapi.Scope, q url.Values) (httpapi.ListPage, error) {
	c.calls.Add(1)
	return c.Source.List(ctx, sc, q)
}

func (c *countingSource) Status(ctx context.Context, sc httpapi.Scope, id string, h bool) (httpapi.Status, error) {
	c.calls.Add(1)
	return c.Source.Status(ctx, sc, id, h)
}

func (c *countingSource) Drones(ctx context.Context) ([]httpapi.DroneStatus, error) {
	c.calls.Add(1)
	return c.Source.Drones(ctx)
}

func (c *countingSource) HubInfo(ctx context.Context) (taskhub.HubInfo, error) {
	c.calls.Add(1)
	return c.Source.HubInfo(ctx)
}

func (c *countingSource) DeadLetters(ctx context.Context) ([]taskhub.DeadLetter, error) {
	c.calls.Add(1)
	return c.Source.DeadLetters(ctx)
}

// TestFeedCostDoesNotGrowWithClients is the cost model's test: the storage
// reads per poll are the same for one open dashboard and for fifty, and
// there are none while no dashboard is open. It counts polls, not time.
func TestFeedCostDoesNotGrowWithClients(t *testing.T) {
	t.Parallel()
	w := testkit.Start(t, testkit.Config(t))
	ctx := context.Background()
	for _, id := range []string{"cost-1", "cost-2", "cost-3"} {
		if _, err := w.StartMission(ctx, testkit.Request(id)); err != nil {
			t.Fatal(err)
		}
		testkit.AwaitDispatched(t, w, id) // then they wait for telemetry: nothing changes
	}
	src := &countingSource{Source: w.API()}
	d := dashboard.New(dashboard.Options{Source: src, Interval: 20 * time.Millisecond, HubInterval: time.Hour, Logger: testkit.Logger()})
	mux := http.NewServeMux()
	for p, h := range d.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		d.Close()
		srv.Close()
	})

	const polls = 25
	measure := func(clients int) (perPoll float64, bytesPerClient int64) {
		feeds := make([]*feedClient, clients)
		for i := range feeds {
			feeds[i] = openFeed(t, srv.URL, "", "instances,fleet,hub")
		}
		for _, f := range feeds {
			if u := f.next(t, 10*time.Second).update(t); !u.Snapshot || len(u.Instances) != 3 || len(u.Drones) != 3 {
				t.Fatalf("snapshot %+v, want 3 missions and 3 drones", u)
			}
		}
		s0, c0 := d.Stats(), src.calls.Load()
		s1 := awaitStats(t, d, 30*time.Second, "polls", func(s dashboard.Stats) bool { return s.Ticks >= s0.Ticks+polls })
		c1 := src.calls.Load()
		if s1.Clients != clients {
			t.Errorf("%d clients connected, want %d", s1.Clients, clients)
		}
		// The two counts can differ by the poll in flight at either end.
		if got, want := c1-c0, s1.Reads-s0.Reads; got < want-4 || got > want+4 {
			t.Errorf("source calls %d, stats count %d", got, want)
		}
		var total int64
		for _, f := range feeds {
			total += f.bytes.Load()
			f.close()
		}
		awaitStats(t, d, 10*time.Second, "the poller to stop", func(s dashboard.Stats) bool { return !s.Polling && s.Clients == 0 })
		return float64(s1.Reads-s0.Reads) / float64(s1.Ticks-s0.Ticks), total / int64(clients)
	}
	one, bytesOne := measure(1)
	fifty, bytesFifty := measure(50)
	t.Logf("storage reads per poll: %.2f with 1 dashboard, %.2f with 50; bytes per dashboard %d and %d", one, fifty, bytesOne, bytesFifty)
	// Three reads a poll (the not-ended instances, the recently created
	// ones, the drones), whatever the number of dashboards.
	if one != 3 || fifty != 3 {
		t.Errorf("storage reads per poll: %.2f with 1 dashboard, %.2f with 50; want 3 for both", one, fifty)
	}
	// Nothing changed, so the feeds carried their snapshot and little else.
	if bytesFifty > 2*bytesOne+1024 {
		t.Errorf("each of 50 dashboards got %d bytes, one alone %d: changes are sent, not listings", bytesFifty, bytesOne)
	}
	before := d.Stats()
	if before.Polling {
		t.Fatal("the poller runs with no dashboard open")
	}
	if after := d.Stats(); after.Reads != before.Reads {
		t.Errorf("reads went from %d to %d with no dashboard open", before.Reads, after.Reads)
	}
}

// TestFeedEndsWhenTheServerShutsDown: http.Server.Shutdown waits for
// connections to go idle; the worker's server ends the feeds so that a
// shutdown is not held up for its whole grace period.
func TestFeedEndsWhenTheServerShutsDown(t *testing.T) {
	t.Parallel()
	w := testkit.Start(t, testkit.Config(t))
	srv := w.Server()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	f := openFeed(t, "http://"+ln.Addr().String(), "", "")
	if !f.next(t, 10*time.Second).update(t).Snapshot {
		t.Fatal("no snapshot")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with a feed open: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %s", d)
	}
	for ev := range f.events {
		if ev.Type == "bye" {
			if !strings.Contains(string(ev.Data), "shutting down") {
				t.Errorf("bye %s, want the reason", ev.Data)
			}
			return
		}
	}
	t.Error("the feed ended without a bye event")
}

// failingSource fails every read while down is set, as storage that does
// not answer.
type failingSource struct {
	dashboard.Source
	down atomic.Bool
}

func (f *failingSource) fail(op string) error {
	if f.down.Load() {
		return &httpapi.Error{Status: http.StatusServiceUnavailable, Detail: "storage is unavailable: " + op + " failed: the task hub storage did not answer; retry later"}
	}
	return nil
}

func (f *failingSource) List(ctx context.Context, sc httpapi.Scope, q url.Values) (httpapi.ListPage, error) {
	if err := f.fail("list instances"); err != nil {
		return httpapi.ListPage{}, err
	}
	return f.Source.List(ctx, sc, q)
}

func (f *failingSource) Drones(ctx context.Context) ([]httpapi.DroneStatus, error) {
	if err := f.fail("list drones"); err != nil {
		return nil, err
	}
	return f.Source.Drones(ctx)
}

// TestFeedReportsStorageProblems: when reads fail the feed says so, with
// the API's problem detail, keeps what it had, and says when it is over; a
// page that connects meanwhile is told at once.
func TestFeedReportsStorageProblems(t *testing.T) {
	t.Parallel()
	w := testkit.Start(t, testkit.Config(t))
	src := &failingSource{Source: w.API()}
	d := dashboard.New(dashboard.Options{Source: src, Interval: 20 * time.Millisecond, Logger: testkit.Logger()})
	mux := http.NewServeMux()
	for p, h := range d.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		d.Close()
		srv.Close()
	})

	f := openFeed(t, srv.URL, "", "instances,fleet")
	if u := f.next(t, 10*time.Second).update(t); !u.Snapshot || u.Problem == nil || *u.Problem != "" {
		t.Fatalf("first update %+v, want a snapshot saying reads work", u)
	}
	src.down.Store(true)
	u := f.until(t, 10*time.Second, "the problem", func(u feedUpdate) bool { return u.Problem != nil })
	if !strings.HasPrefix(*u.Problem, "storage is unavailable: ") || u.Drones != nil {
		t.Errorf("problem update %+v, want the API's detail and no change to the drones", u)
	}
	late := openFeed(t, srv.URL, "", "instances,fleet")
	if u := late.next(t, 10*time.Second).update(t); !u.Snapshot || u.Problem == nil || !strings.HasPrefix(*u.Problem, "storage is unavailable") || len(u.Drones) != 3 {
		t.Errorf("snapshot during the outage %+v, want the drones held and the problem", u)
	}
	src.down.Store(false)
	f.until(t, 10*time.Second, "the problem to be over", func(u feedUpdate) bool { return u.Problem != nil && *u.Problem == "" })
}
