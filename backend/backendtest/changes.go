package backendtest

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

// RunChangeLister checks a backend's taskhub.ChangeLister: an instance
// written at or after since is listed, with its current custom status, one
// not written since is not, and more changes than the limit is
// ErrTooManyChanges. f's backends must be ChangeListers.
func RunChangeLister(t *testing.T, f Factory) {
	t.Helper()
	t.Parallel()
	be := f(t)
	cl, ok := be.(taskhub.ChangeLister)
	if !ok {
		t.Fatalf("%T is not a taskhub.ChangeLister", be)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*caseTimeout)
	t.Cleanup(cancel)

	// Waiter says "waiting", then "poked" after its event, and waits on.
	r := task.NewTaskRegistry()
	if err := r.AddOrchestratorN("Waiter", func(ctx *task.OrchestrationContext) (any, error) {
		ctx.SetCustomStatus("waiting")
		if err := ctx.WaitForSingleEvent("poke", -1).Await(nil); err != nil {
			return nil, err
		}
		ctx.SetCustomStatus("poked")
		return nil, ctx.WaitForSingleEvent("never", -1).Await(nil)
	}); err != nil {
		t.Fatal(err)
	}
	startWorker(t, be, r)
	c := backend.NewTaskHubClient(be)
	waiting := func(id api.InstanceID, status string) {
		t.Helper()
		eventually(t, settleTimeout, func() bool {
			md, err := be.GetOrchestrationMetadata(ctx, id)
			return err == nil && md.RuntimeStatus == api.RUNTIME_STATUS_RUNNING && md.SerializedCustomStatus == status
		}, id, " to be Running with custom status ", status)
	}
	changed := func(since time.Time) (map[api.InstanceID]*api.OrchestrationMetadata, time.Time) {
		t.Helper()
		mds, next, err := cl.InstancesChangedSince(ctx, since, 0)
		if err != nil {
			t.Fatalf("InstancesChangedSince(%s): %v", since.Format(time.RFC3339Nano), err)
		}
		if next.IsZero() {
			t.Fatalf("InstancesChangedSince(%s) returned no next time", since.Format(time.RFC3339Nano))
		}
		out := map[api.InstanceID]*api.OrchestrationMetadata{}
		for _, md := range mds {
			out[md.InstanceID] = md
		}
		return out, next
	}

	idle := schedule(t, ctx, c, "Waiter", api.WithInstanceID("idle"))
	poked := schedule(t, ctx, c, "Waiter", api.WithInstanceID("poked"))
	waiting(idle, "waiting")
	waiting(poked, "waiting")

	all, next := changed(time.Now().Add(-time.Hour))
	for _, id := range []api.InstanceID{idle, poked} {
		if all[id] == nil {
			t.Fatalf("changes since an hour ago list %v, want %s among them", slices.Collect(maps.Keys(all)), id)
		}
	}
	if _, _, err := cl.InstancesChangedSince(ctx, time.Now().Add(-time.Hour), 1); !errors.Is(err, taskhub.ErrTooManyChanges) {
		t.Errorf("2 changes with a limit of 1: %v, want ErrTooManyChanges", err)
	}

	// A since after both were last written (stores compare to the second):
	// the next time returned, once neither is listed any more.
	var since time.Time
	eventually(t, 10*time.Second, func() bool {
		got, n := changed(next)
		since, next = next, n
		return got[idle] == nil && got[poked] == nil
	}, "the idle instances to leave the changes")

	fresh := schedule(t, ctx, c, "Waiter", api.WithInstanceID("fresh"))
	waiting(fresh, "waiting")
	if err := c.RaiseEvent(ctx, poked, "poke"); err != nil {
		t.Fatal(err)
	}
	waiting(poked, "poked")

	got, after := changed(since)
	if got[idle] != nil {
		t.Errorf("the idle instance, not written since %s, is listed: %s", since.Format(time.RFC3339Nano), describe(got[idle]))
	}
	if md := got[fresh]; md == nil || md.RuntimeStatus != api.RUNTIME_STATUS_RUNNING || md.Name != "Waiter" {
		t.Errorf("the instance started since: %s, want it Running", describe(md))
	}
	if md := got[poked]; md == nil || md.SerializedCustomStatus != "poked" {
		t.Errorf("the instance whose custom status changed: %s, want it with custom status \"poked\"", describe(md))
	}
	if after.Before(since) {
		t.Errorf("next time %s is before since %s", after.Format(time.RFC3339Nano), since.Format(time.RFC3339Nano))
	}
}
