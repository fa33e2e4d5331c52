package dashboard_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"

	"github.com/dronehub/dronehub/dashboard"
	"github.com/dronehub/dronehub/internal/azurite"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/taskhub"
	"github.com/dronehub/dronehub/worker"
)

// TestFeedStorageRequestsOnAzure measures the feed where storage requests
// are billed: on an Azure Storage hub (Azurite) it counts the requests the
// backend makes per poll with one dashboard open and with fifty, and finds
// them equal. The worker is created but not started, so that nothing but
// the feed touches storage while it is measured.
func TestFeedStorageRequestsOnAzure(t *testing.T) {
	t.Parallel()
	cfg := testkit.Config(t)
	cfg.Storage = azurite.Start(t, azurite.Options{}).ConnectionString()
	cfg.HubName = testkit.HubName()
	ctx := context.Background()
	w, err := worker.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testkit.Stop(t, w) })
	for i := range 3 { // instances that stay Pending: the worker does not run
		if _, err := w.Client().ScheduleNewOrchestration(ctx, "DeliveryMission", api.WithInstanceID(api.InstanceID(fmt.Sprintf("az-%d", i)))); err != nil {
			t.Fatal(err)
		}
	}
	rc, ok := w.Backend().(taskhub.RequestCounter)
	if !ok {
		t.Fatal("the Azure Storage backend does not count its requests")
	}
	d := dashboard.New(dashboard.Options{Source: w.API(), RequestCounts: rc.RequestCounts, Interval: 50 * time.Millisecond, HubInterval: time.Hour, Logger: testkit.Logger()})
	mux := http.NewServeMux()
	for p, h := range d.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		d.Close()
		srv.Close()
	})
	total := func() (n int64, byKind map[string]int64) {
		byKind = rc.RequestCounts()
		for _, v := range byKind {
			n += v
		}
		return n, byKind
	}

	const polls = 10
	measure := func(clients int) (perPoll float64, kinds string) {
		feeds := make([]*feedClient, clients)
		for i := range feeds {
			feeds[i] = openFeed(t, srv.URL, "", "instances,fleet")
		}
		for _, f := range feeds {
			if u := f.next(t, 20*time.Second).update(t); !u.Snapshot || len(u.Instances) != 3 {
				t.Fatalf("snapshot %+v, want the 3 instances", u)
			}
		}
		// Counted from one poll's end to another's: the stats move at the
		// end of a poll, after its requests.
		s0 := d.Stats()
		awaitStats(t, d, 20*time.Second, "a poll", func(s dashboard.Stats) bool { return s.Ticks > s0.Ticks })
		s1 := d.Stats()
		n1, k1 := total()
		s2 := awaitStats(t, d, 60*time.Second, "polls", func(s dashboard.Stats) bool { return s.Ticks >= s1.Ticks+polls })
		n2, k2 := total()
		for _, f := range feeds {
			f.close()
		}
		awaitStats(t, d, 10*time.Second, "the poller to stop", func(s dashboard.Stats) bool { return !s.Polling })
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(k2)) {
			if dk := k2[k] - k1[k]; dk > 0 {
				parts = append(parts, fmt.Sprintf("%s %.1f", k, float64(dk)/float64(s2.Ticks-s1.Ticks)))
			}
		}
		return float64(n2-n1) / float64(s2.Ticks-s1.Ticks), strings.Join(parts, ", ")
	}
	// What a read of the hub topic costs (every HubInterval while a task
	// hub page is open).
	n0, _ := total()
	if _, err := w.API().HubInfo(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.API().DeadLetters(ctx); err != nil {
		t.Fatal(err)
	}
	n1, _ := total()
	t.Logf("storage requests of a hub read (description and dead letters): %d", n1-n0)

	one, kindsOne := measure(1)
	fifty, kindsFifty := measure(50)
	t.Logf("storage requests per poll: %.2f with 1 dashboard (%s), %.2f with 50 (%s)", one, kindsOne, fifty, kindsFifty)
	// A poll lands between two reads of the counter now and then; allow a
	// request of slack per poll either way, not a request per dashboard.
	if fifty > one+1 || fifty < one-1 {
		t.Errorf("storage requests per poll: %.2f with 1 dashboard, %.2f with 50: the feed's cost grew with the dashboards", one, fifty)
	}
	// Between resyncs (a minute), two queries: the instances changed since
	// the last poll, and the drones (see TestFeedCostOnAzureIsTheChanges).
	if one < 2 || one > 3 {
		t.Errorf("%.2f storage requests per poll, want 2: the changed instances and the drones", one)
	}
	// With no dashboard open the poller stops, and so do its requests.
	if s := d.Stats(); s.Polling || s.Clients != 0 {
		t.Errorf("with every dashboard closed: %+v, want no poller", s)
	}
}
