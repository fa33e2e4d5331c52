package backendtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

// queryCases exercise taskhub.Backend.ListInstances.
func queryCases() []testCase {
	return []testCase{
		{"ListInstances_FiltersAndPaging", testListInstances},
		{"ListInstances_InvalidQuery", testListInvalidQuery},
	}
}

// listAll follows continuation tokens from q to the last page and returns
// every instance and the size of each page.
func listAll(t *testing.T, ctx context.Context, be taskhub.Backend, q taskhub.Query) ([]*api.OrchestrationMetadata, []int) {
	t.Helper()
	var all []*api.OrchestrationMetadata
	var sizes []int
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatalf("listing %+v never ends", q)
		}
		page, err := be.ListInstances(ctx, q)
		if err != nil {
			t.Fatalf("ListInstances(%+v): %v", q, err)
		}
		all = append(all, page.Instances...)
		sizes = append(sizes, len(page.Instances))
		if page.ContinuationToken == "" {
			return all, sizes
		}
		q.ContinuationToken = page.ContinuationToken
	}
}

// requireIDs asserts that got holds exactly want, each once, oldest first.
func requireIDs(t *testing.T, what string, got []*api.OrchestrationMetadata, want []api.InstanceID) {
	t.Helper()
	ids := make([]api.InstanceID, len(got))
	seen := map[api.InstanceID]bool{}
	for i, md := range got {
		ids[i] = md.InstanceID
		if seen[md.InstanceID] {
			t.Errorf("%s: %s listed twice", what, md.InstanceID)
		}
		seen[md.InstanceID] = true
		if i > 0 && md.CreatedAt.Before(got[i-1].CreatedAt) {
			t.Errorf("%s: %s (created %s) listed after %s (created %s): want oldest first",
				what, md.InstanceID, md.CreatedAt, got[i-1].InstanceID, got[i-1].CreatedAt)
		}
	}
	sortedGot := slices.Sorted(slices.Values(ids))
	sortedWant := slices.Sorted(slices.Values(want))
	if !slices.Equal(sortedGot, sortedWant) {
		t.Errorf("%s: listed %v, want %v", what, sortedGot, sortedWant)
	}
}

func testListInstances(t *testing.T, ctx context.Context, be taskhub.Backend) {
	r := task.NewTaskRegistry()
	_ = r.AddOrchestratorN("Noop", func(ctx *task.OrchestrationContext) (any, error) { return "ok", nil })
	d := newDriver(t, be, r)
	c := backend.NewTaskHubClient(be)

	// 15 "alpha-" instances that run to completion, then 10 "beta-" instances
	// left Pending, with timestamps around each batch.
	t0 := time.Now()
	var alpha, beta []api.InstanceID
	for i := range 15 {
		alpha = append(alpha, schedule(t, ctx, c, "Noop", api.WithInstanceID(api.InstanceID(fmt.Sprintf("alpha-%02d", i)))))
	}
	d.runUntil(ctx, func() bool {
		for _, id := range alpha {
			if !metadata(t, ctx, be, id).IsComplete() {
				return false
			}
		}
		return true
	})
	t1 := time.Now()
	for i := range 10 {
		beta = append(beta, schedule(t, ctx, c, "Later", api.WithInstanceID(api.InstanceID(fmt.Sprintf("beta-%02d", i)))))
	}
	t2 := time.Now()
	everyone := slices.Concat(alpha, beta)

	// Everything, ten at a time.
	all, sizes := listAll(t, ctx, be, taskhub.Query{PageSize: 10})
	requireIDs(t, "all, pages of 10", all, everyone)
	if !slices.Equal(sizes, []int{10, 10, 5}) {
		t.Errorf("page sizes %v, want [10 10 5]", sizes)
	}
	for _, md := range all {
		want := "Noop"
		if slices.Contains(beta, md.InstanceID) {
			want = "Later"
		}
		if md.Name != want || md.CreatedAt.IsZero() {
			t.Errorf("listed %s: name %q created %s, want name %q", md.InstanceID, md.Name, md.CreatedAt, want)
		}
	}

	// Orchestrator name.
	named, _ := listAll(t, ctx, be, taskhub.Query{Name: "Later", PageSize: 3})
	requireIDs(t, "name Later", named, beta)
	named, _ = listAll(t, ctx, be, taskhub.Query{Name: "Noop", RuntimeStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_COMPLETED}})
	requireIDs(t, "name Noop, Completed", named, alpha)
	if all, _ := listAll(t, ctx, be, taskhub.Query{}); len(all) != len(everyone) {
		t.Errorf("default page size listed %d instances, want %d", len(all), len(everyone))
	}

	// Status.
	done, _ := listAll(t, ctx, be, taskhub.Query{RuntimeStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_COMPLETED}, PageSize: 4})
	requireIDs(t, "Completed", done, alpha)
	for _, md := range done {
		if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || md.SerializedOutput != `"ok"` {
			t.Errorf("listed %s as %s", md.InstanceID, describe(md))
		}
	}
	pending, _ := listAll(t, ctx, be, taskhub.Query{RuntimeStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_PENDING}})
	requireIDs(t, "Pending", pending, beta)
	both, _ := listAll(t, ctx, be, taskhub.Query{RuntimeStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_PENDING, api.RUNTIME_STATUS_COMPLETED}, PageSize: 7})
	requireIDs(t, "Pending or Completed", both, everyone)
	none, _ := listAll(t, ctx, be, taskhub.Query{RuntimeStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_FAILED}})
	requireIDs(t, "Failed", none, nil)

	// Prefix.
	b, sizes := listAll(t, ctx, be, taskhub.Query{InstanceIDPrefix: "beta-", PageSize: 4})
	requireIDs(t, "prefix beta-", b, beta)
	if !slices.Equal(sizes, []int{4, 4, 2}) {
		t.Errorf("prefix beta- page sizes %v, want [4 4 2]", sizes)
	}
	a, _ := listAll(t, ctx, be, taskhub.Query{InstanceIDPrefix: "alpha-", RuntimeStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_COMPLETED}})
	requireIDs(t, "prefix alpha- and Completed", a, alpha)
	ab, _ := listAll(t, ctx, be, taskhub.Query{InstanceIDPrefix: "alpha-", RuntimeStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_PENDING}})
	requireIDs(t, "prefix alpha- and Pending", ab, nil)
	one, _ := listAll(t, ctx, be, taskhub.Query{InstanceIDPrefix: "alpha-1"})
	requireIDs(t, "prefix alpha-1", one, alpha[10:])
	nobody, _ := listAll(t, ctx, be, taskhub.Query{InstanceIDPrefix: "gamma-"})
	requireIDs(t, "prefix gamma-", nobody, nil)

	// Creation time: from is inclusive, to exclusive.
	later, _ := listAll(t, ctx, be, taskhub.Query{CreatedFrom: t1, PageSize: 3})
	requireIDs(t, "created from t1", later, beta)
	earlier, _ := listAll(t, ctx, be, taskhub.Query{CreatedTo: t1, PageSize: 6})
	requireIDs(t, "created before t1", earlier, alpha)
	window, _ := listAll(t, ctx, be, taskhub.Query{CreatedFrom: t0, CreatedTo: t2, PageSize: 10})
	requireIDs(t, "created in [t0, t2)", window, everyone)
	future, _ := listAll(t, ctx, be, taskhub.Query{CreatedFrom: t2.Add(time.Hour)})
	requireIDs(t, "created an hour from now", future, nil)
	betaWindow, _ := listAll(t, ctx, be, taskhub.Query{CreatedFrom: t1, CreatedTo: t2, InstanceIDPrefix: "beta-", RuntimeStatus: []api.OrchestrationStatus{api.RUNTIME_STATUS_PENDING}, PageSize: 3})
	requireIDs(t, "every filter at once", betaWindow, beta)
}

func testListInvalidQuery(t *testing.T, ctx context.Context, be taskhub.Backend) {
	c := backend.NewTaskHubClient(be)
	schedule(t, ctx, c, "Noop", api.WithInstanceID("only"))
	now := time.Now()
	bad := map[string]taskhub.Query{
		"unknown continuation token": {ContinuationToken: "not-a-token"},
		"negative page size":         {PageSize: -1},
		"page size above the max":    {PageSize: taskhub.MaxPageSize + 1},
		"empty creation window":      {CreatedFrom: now, CreatedTo: now},
	}
	for name, q := range bad {
		page, err := be.ListInstances(ctx, q)
		if !errors.Is(err, taskhub.ErrInvalidQuery) {
			t.Errorf("%s: ListInstances = %v, %v; want an error wrapping taskhub.ErrInvalidQuery", name, page, err)
		}
	}
}
