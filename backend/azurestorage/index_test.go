package azurestorage

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

// TestListingCostsWhatItReturns: with more instances than one table query
// page holds, a page of 10 costs one index query and ten point reads, and
// hub info counts every instance without reading history.
func TestListingCostsWhatItReturns(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const n = 1100
	client := dtbackend.NewTaskHubClient(b)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			_, err := client.ScheduleNewOrchestration(ctx, "Idle", api.WithInstanceID(api.InstanceID(fmt.Sprintf("i%04d", i))))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	b.Counter().Reset()
	page, err := b.ListInstances(ctx, taskhub.Query{PageSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Instances) != 10 || page.ContinuationToken == "" {
		t.Fatalf("page of %d, token %q", len(page.Instances), page.ContinuationToken)
	}
	got := b.Counter().Snapshot()
	if got["table.query"] != 1 || got["table.get"] != 10 || b.Counter().Total() != 11 {
		t.Fatalf("a page of 10 cost %s; want table.query=1 table.get=10", b.Counter())
	}
	next, err := b.ListInstances(ctx, taskhub.Query{PageSize: 10, ContinuationToken: page.ContinuationToken})
	if err != nil || len(next.Instances) != 10 || next.Instances[0].InstanceID <= page.Instances[9].InstanceID && next.Instances[0].CreatedAt.Equal(page.Instances[9].CreatedAt) {
		t.Fatalf("second page: %v, %v", next, err)
	}
	info, err := b.HubInfo(ctx)
	if err != nil || info.Instances["Pending"] != n {
		t.Fatalf("hub info: %+v, %v", info.Instances, err)
	}
}

// TestIndexCatchesUp: a worker that dies after its commit, before writing
// the index, leaves a stale index row; the redelivery of its messages
// brings it up to date.
func TestIndexCatchesUp(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1, LockTimeout: 3 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Wait", func(c *task.OrchestrationContext) (any, error) {
		return nil, c.WaitForSingleEvent("never", -1).Await(nil)
	})
	var crashed atomic.Bool
	b.hooks.afterSend = func(id string) bool { return crashed.CompareAndSwap(false, true) }
	startRunner(t, b, r, 2)
	if _, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Wait", api.WithInstanceID("idx")); err != nil {
		t.Fatal(err)
	}
	poll(t, 30*time.Second, "the index to list idx as running", func() bool {
		page, err := b.ListInstances(ctx, taskhub.Query{RuntimeStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_RUNNING}})
		return err == nil && len(page.Instances) == 1 && page.Instances[0].InstanceID == "idx"
	})
	if !crashed.Load() {
		t.Fatal("the crash did not happen")
	}
}
