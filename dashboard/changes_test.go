package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/dashboard"
	"github.com/dronehub/dronehub/httpapi"
	"github.com/dronehub/dronehub/internal/azurite"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/taskhub"
	"github.com/dronehub/dronehub/worker"
)

// registerWaiter adds "Waiter": custom status "waiting", then "poked"
// once its event "poke" is raised; it waits on after that.
func registerWaiter(r *task.TaskRegistry) error {
	return r.AddOrchestratorN("Waiter", func(ctx *task.OrchestrationContext) (any, error) {
		ctx.SetCustomStatus("waiting")
		if err := ctx.WaitForSingleEvent("poke", -1).Await(nil); err != nil {
			return nil, err
		}
		ctx.SetCustomStatus("poked")
		return nil, ctx.WaitForSingleEvent("never", -1).Await(nil)
	})
}

// TestFeedCostOnAzureIsTheChanges: on an Azure Storage hub (Azurite), the
// storage requests of a poll between resyncs are the same with 3 idle
// instances in flight and with 30 (the feed asks for what changed, not for
// every instance's status row), and a change to one instance still reaches
// an open feed. One worker runs the instances; the dashboard reads through
// a second one, created but not started, whose request counter then counts
// the feed's requests alone.
func TestFeedCostOnAzureIsTheChanges(t *testing.T) {
	t.Parallel()
	conn := azurite.Start(t, azurite.Options{}).ConnectionString()
	hub := testkit.HubName()
	ctx := context.Background()
	cfg := testkit.Config(t)
	cfg.Storage, cfg.HubName, cfg.Register = conn, hub, registerWaiter
	runner := testkit.Start(t, cfg)

	cfg = testkit.Config(t)
	cfg.Storage, cfg.HubName, cfg.Register = conn, hub, registerWaiter
	reader, err := worker.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testkit.Stop(t, reader) })
	rc, ok := reader.Backend().(taskhub.RequestCounter)
	if !ok {
		t.Fatal("the Azure Storage backend does not count its requests")
	}
	total := func() (n int64) {
		for _, v := range rc.RequestCounts() {
			n += v
		}
		return n
	}
	d := dashboard.New(dashboard.Options{Source: reader.API(), Interval: 50 * time.Millisecond, HubInterval: time.Hour, Logger: testkit.Logger()})
	mux := http.NewServeMux()
	for p, h := range d.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		d.Close()
		srv.Close()
	})

	started := 0
	startWaiters := func(n int) {
		t.Helper()
		var ids []string
		for ; started < n; started++ {
			id := fmt.Sprintf("wait-%02d", started)
			if _, err := runner.Client().ScheduleNewOrchestration(ctx, "Waiter", api.WithInstanceID(api.InstanceID(id))); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		for _, id := range ids {
			testkit.Eventually(t, 60*time.Second, id+" waiting", func() bool {
				md, err := runner.Client().FetchOrchestrationMetadata(ctx, api.InstanceID(id))
				return err == nil && md.RuntimeStatus == api.RUNTIME_STATUS_RUNNING && md.SerializedCustomStatus == "waiting"
			})
		}
	}

	// measure opens a feed (the poller starts afresh: a full listing, then
	// changes for a minute) and counts the requests per poll after the
	// first, leaving the feed open.
	const polls = 20
	measure := func(instances int) (*feedClient, float64, int64) {
		t.Helper()
		awaitStats(t, d, 10*time.Second, "the poller to stop", func(s dashboard.Stats) bool { return !s.Polling })
		n0 := total()
		f := openFeed(t, srv.URL, "", "instances,fleet")
		if u := f.next(t, 30*time.Second).update(t); !u.Snapshot || len(u.Instances) != instances {
			t.Fatalf("snapshot with %d instances, want %d", len(u.Instances), instances)
		}
		full := total() - n0 // the first poll: a full listing (and perhaps part of the next)
		s0 := d.Stats()
		awaitStats(t, d, 20*time.Second, "a poll", func(s dashboard.Stats) bool { return s.Ticks > s0.Ticks })
		s1 := d.Stats()
		n1 := total()
		s2 := awaitStats(t, d, 60*time.Second, "polls", func(s dashboard.Stats) bool { return s.Ticks >= s1.Ticks+polls })
		n2 := total()
		return f, float64(n2-n1) / float64(s2.Ticks-s1.Ticks), full
	}

	startWaiters(3)
	f3, three, full3 := measure(3)
	f3.close()
	startWaiters(30)
	f30, thirty, full30 := measure(30)
	t.Logf("storage requests per poll between resyncs: %.2f with 3 instances in flight, %.2f with 30; the first (full) poll: %d and %d", three, thirty, full3, full30)
	// Two queries a poll (the changed instances, the drones), whatever the
	// number of instances in flight; a poll may land between two reads of
	// the counter.
	if thirty > three+0.5 {
		t.Errorf("storage requests per poll: %.2f with 3 instances in flight, %.2f with 30: the feed's cost grew with the instances", three, thirty)
	}
	if three > 2.5 || thirty > 2.5 {
		t.Errorf("storage requests per poll: %.2f and %.2f, want 2 (the changed instances, the drones)", three, thirty)
	}

	// A change to one instance reaches the open feed, read as a change.
	if err := runner.Client().RaiseEvent(ctx, "wait-07", "poke"); err != nil {
		t.Fatal(err)
	}
	u := f30.until(t, 30*time.Second, "the poked instance's custom status", func(u feedUpdate) bool {
		for _, raw := range u.Instances {
			if strings.Contains(string(raw), `"instanceId":"wait-07"`) && strings.Contains(string(raw), `"customStatus":"poked"`) {
				return true
			}
		}
		return false
	})
	if len(u.Instances) != 1 {
		t.Errorf("the update holds %d instances, want only the poked one: the others did not change", len(u.Instances))
	}
}

// changeCounter is a ChangeSource that counts full listings and reads of
// changes, or answers 501 to the latter when unsupported is set.
type changeCounter struct {
	dashboard.Source
	cs          dashboard.ChangeSource
	unsupported bool
	lists       atomic.Int64
	changes     atomic.Int64
}

func (c *changeCounter) List(ctx context.Context, sc httpapi.Scope, q url.Values) (httpapi.ListPage, error) {
	c.lists.Add(1)
	return c.Source.List(ctx, sc, q)
}

func (c *changeCounter) InstancesChangedSince(ctx context.Context, since time.Time, limit int) ([]httpapi.Status, time.Time, error) {
	c.changes.Add(1)
	if c.unsupported {
		return nil, time.Time{}, &httpapi.Error{Status: http.StatusNotImplemented, Detail: "the current task hub has no listing of changed instances"}
	}
	return c.cs.InstancesChangedSince(ctx, since, limit)
}

// TestFeedResyncs: over a ChangeSource the feed lists in full on its first
// read and again once a minute has passed, and reads changes in between;
// over one that answers 501 it lists in full every time, as before.
func TestFeedResyncs(t *testing.T) {
	t.Parallel()
	w := testkit.Start(t, testkit.Config(t))
	for _, unsupported := range []bool{false, true} {
		src := &changeCounter{Source: w.API(), cs: w.API(), unsupported: unsupported}
		var mu sync.Mutex
		now := time.Now()
		clock := func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			return now
		}
		d := dashboard.New(dashboard.Options{Source: src, Interval: 20 * time.Millisecond, HubInterval: time.Hour, Now: clock, Logger: testkit.Logger()})
		mux := http.NewServeMux()
		for p, h := range d.Routes() {
			mux.Handle(p, h)
		}
		srv := httptest.NewServer(mux)
		f := openFeed(t, srv.URL, "", "instances")
		if !f.next(t, 10*time.Second).update(t).Snapshot {
			t.Fatal("no snapshot")
		}
		s0 := d.Stats()
		l0 := src.lists.Load()
		awaitStats(t, d, 10*time.Second, "polls", func(s dashboard.Stats) bool { return s.Ticks >= s0.Ticks+5 })
		l1 := src.lists.Load()
		switch {
		case !unsupported && l1 != l0:
			t.Errorf("%d full listings between resyncs, want none", l1-l0)
		case unsupported && l1 < l0+5:
			t.Errorf("over a source without changes: %d listings in 5 polls, want one (or more) a poll", l1-l0)
		}
		if unsupported && src.changes.Load() != 1 {
			t.Errorf("asked a source that cannot for changes %d times, want once", src.changes.Load())
		}
		if !unsupported {
			mu.Lock()
			now = now.Add(61 * time.Second)
			mu.Unlock()
			testkit.Eventually(t, 10*time.Second, "a full listing after a minute", func() bool { return src.lists.Load() > l1 })
		}
		f.close()
		d.Close()
		srv.Close()
	}
}
