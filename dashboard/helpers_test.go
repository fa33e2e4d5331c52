package dashboard_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dronehub/dronehub/dashboard"
	"github.com/dronehub/dronehub/worker"
)

// serve serves the worker's HTTP API on a real http.Server with the
// worker's limits (worker.Server), and shuts it down when the test ends,
// which ends the dashboard's feeds (RegisterOnShutdown).
func serve(t testing.TB, w *worker.Worker) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := w.Server()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("http server shutdown: %v (a live feed kept it open?)", err)
		}
		<-done
	})
	return "http://" + ln.Addr().String()
}

// event is one server-sent event.
type event struct {
	Type string
	Data []byte
}

// update decodes an "update" event.
func (e event) update(t testing.TB) feedUpdate {
	t.Helper()
	var u feedUpdate
	if err := json.Unmarshal(e.Data, &u); err != nil {
		t.Fatalf("decode update %s: %v", e.Data, err)
	}
	return u
}

// feedUpdate is an update as the page reads it (written from the
// documented shape, not borrowed from package dashboard).
type feedUpdate struct {
	Snapshot  bool              `json:"snapshot"`
	Topics    []string          `json:"topics"`
	Instances []json.RawMessage `json:"instances"`
	Removed   []string          `json:"removed"`
	Drones    []struct {
		DroneID   string `json:"droneId"`
		Condition string `json:"condition"`
		MissionID string `json:"missionId"`
	} `json:"drones"`
	Fleet   json.RawMessage `json:"fleet"`
	Hub     json.RawMessage `json:"hub"`
	Problem *string         `json:"problem"`
}

func (u feedUpdate) instanceIDs(t testing.TB) []string {
	t.Helper()
	var ids []string
	for _, raw := range u.Instances {
		var st struct {
			InstanceID string `json:"instanceId"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, st.InstanceID)
	}
	return ids
}

// feedClient reads GET /api/events.
type feedClient struct {
	resp   *http.Response
	events chan event
	cancel context.CancelFunc
	bytes  atomic.Int64
}

// openFeed opens the live feed; it is closed when the test ends.
func openFeed(t testing.TB, base, key, topics string) *feedClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/events?topics="+topics, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("open the feed: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		t.Fatalf("open the feed: HTTP %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("feed Content-Type %q, want text/event-stream", ct)
	}
	c := &feedClient{resp: resp, events: make(chan event, 1024), cancel: cancel}
	go c.read()
	t.Cleanup(c.close)
	return c
}

func (c *feedClient) close() {
	c.cancel()
	c.resp.Body.Close()
}

func (c *feedClient) read() {
	defer close(c.events)
	r := bufio.NewReader(c.resp.Body)
	var ev event
	for {
		line, err := r.ReadString('\n')
		c.bytes.Add(int64(len(line)))
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if ev.Type != "" || ev.Data != nil {
				if ev.Type == "" {
					ev.Type = "message"
				}
				c.events <- ev
			}
			ev = event{}
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "event: "):
			ev.Type = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.Data = append(ev.Data, strings.TrimPrefix(line, "data: ")...)
		}
	}
}

// next returns the next event, failing the test after timeout.
func (c *feedClient) next(t testing.TB, timeout time.Duration) event {
	t.Helper()
	select {
	case ev, ok := <-c.events:
		if !ok {
			t.Fatal("the feed ended")
		}
		return ev
	case <-time.After(timeout):
		t.Fatalf("no event within %s", timeout)
	}
	return event{}
}

// until reads updates until cond holds for one, failing after timeout.
func (c *feedClient) until(t testing.TB, timeout time.Duration, what string, cond func(feedUpdate) bool) feedUpdate {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case ev, ok := <-c.events:
			if !ok {
				t.Fatalf("the feed ended while waiting for %s", what)
			}
			if ev.Type != "update" {
				continue
			}
			if u := ev.update(t); cond(u) {
				return u
			}
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
	}
}

// stats polls the dashboard's stats until cond holds.
func awaitStats(t testing.TB, d *dashboard.Dashboard, timeout time.Duration, what string, cond func(dashboard.Stats) bool) dashboard.Stats {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := d.Stats()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (stats %+v)", timeout, what, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
