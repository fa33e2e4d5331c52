package tracing_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/worker"
)

// TestMissionTrace flies a mission started over HTTP, with a worker restart
// between the dispatch and the flight, and checks the structure of its
// trace on each backend (docs/tracing.md):
//
//	POST /api/missions                              (httpapi, server)
//	└─ create_orchestration||DeliveryMission        (durabletask-go)
//	   └─ orchestration||DeliveryMission            (durabletask-go, one per execution)
//	      ├─ orchestration_turn||DeliveryMission    (one per committed turn; its commit's storage calls below it)
//	      └─ activity||NAME                         (durabletask-go; the activity's storage calls below it)
//	         └─ activity_result||NAME               (the result's commit)
//
// and the ingestion spans of the flight link to the mission's trace.
func TestMissionTrace(t *testing.T) {
	testkit.EachBackend(t, &azr, func(t *testing.T, cfg worker.Config) {
		azure := strings.Contains(cfg.Storage, "BlobEndpoint=")
		id := "m-trace-" + strings.TrimPrefix(t.Name(), "TestMissionTrace/")
		cfg.TracerProvider = tp
		ctx := context.Background()

		first, err := worker.New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		stopped := false
		t.Cleanup(func() {
			if !stopped {
				testkit.Stop(t, first)
			}
		})
		if err := first.Start(ctx); err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(first.Handler())
		body, _ := json.Marshal(testkit.Request(id))
		resp, err := http.Post(srv.URL+"/api/missions", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("start mission: %d", resp.StatusCode)
		}
		st := testkit.AwaitDispatched(t, first, id)
		// The rest of the mission runs on a new worker: its turns must
		// continue the trace from what storage kept.
		srv.Close()
		testkit.Stop(t, first)
		stopped = true
		second := testkit.Start(t, cfg)
		if err := simulator.Fly(ctx, testkit.Sink(t, second), 0, testkit.Flight(t, second, st, simulator.FaultNone, 0)); err != nil {
			t.Fatal(err)
		}
		testkit.AwaitEnd(t, second, id, 30*time.Second)

		// The orchestration's span is exported when it completes, and the
		// last turn's just after its commit.
		var tr []tracetest.SpanStub
		var create tracetest.SpanStub
		testkit.Eventually(t, 10*time.Second, "the mission's trace to be complete", func() bool {
			all := spans.GetSpans()
			var ok bool
			if create, ok = find(all, "create_orchestration||DeliveryMission", id); !ok {
				return false
			}
			tr = inTrace(all, create.SpanContext.TraceID())
			_, orch := find(tr, "orchestration||DeliveryMission", id)
			for _, s := range named(tr, "orchestration_turn||DeliveryMission") {
				if attr(s, "dronehub.turn.completed") == "true" && orch {
					return true
				}
			}
			return false
		})

		root, ok := find(tr, "POST /api/missions", "")
		if !ok || root.Parent.IsValid() {
			t.Fatalf("no root span POST /api/missions in the trace: %s", names(tr))
		}
		if attr(root, "http.response.status_code") != "202" {
			t.Errorf("root span status code %s, want 202", attr(root, "http.response.status_code"))
		}
		parentIs(t, create, root)
		orchs := named(tr, "orchestration||DeliveryMission")
		if len(orchs) != 1 {
			t.Fatalf("%d orchestration spans, want 1: %s", len(orchs), names(tr))
		}
		orch := orchs[0]
		parentIs(t, orch, create)
		if got := attr(orch, "durabletask.runtime_status"); got != "COMPLETED" {
			t.Errorf("orchestration span runtime status %q", got)
		}
		turns := named(tr, "orchestration_turn||DeliveryMission")
		if len(turns) < 4 {
			t.Errorf("%d turn spans, want one per turn (at least 4)", len(turns))
		}
		for _, s := range turns {
			parentIs(t, s, orch)
		}
		// Every step, before the restart and after it, under the one
		// orchestration span: its id was kept in storage.
		var dispatch tracetest.SpanStub
		for _, name := range []string{activities.AcceptMission, activities.ReserveDrone, activities.DispatchDrone,
			activities.ConfirmPickup, activities.ConfirmDelivery, activities.CompleteMission} {
			acts := named(tr, "activity||"+name)
			if len(acts) != 1 {
				t.Errorf("%d spans activity||%s, want 1", len(acts), name)
				continue
			}
			parentIs(t, acts[0], orch)
			results := named(tr, "activity_result||"+name)
			if len(results) != 1 {
				t.Errorf("%d spans activity_result||%s, want 1", len(results), name)
			} else {
				parentIs(t, results[0], acts[0])
			}
			if name == activities.DispatchDrone {
				dispatch = acts[0]
			}
			if azure && len(children(tr, acts[0])) == 0 {
				t.Errorf("activity %s has no storage spans on Azure Storage", name)
			}
		}
		if azure {
			commits := 0
			for _, s := range turns {
				commits += len(children(tr, s))
			}
			if commits == 0 {
				t.Error("no turn has storage spans on Azure Storage")
			}
			if len(children(tr, create)) == 0 {
				t.Error("creating the instance made no storage spans on Azure Storage")
			}
		}

		// Telemetry that advanced the mission links to its trace: to the
		// dispatch, which the drone's record remembers.
		links := 0
		for _, s := range named(spans.GetSpans(), "ingest_telemetry") {
			for _, l := range s.Links {
				if l.SpanContext.TraceID() == create.SpanContext.TraceID() {
					links++
					if l.SpanContext.SpanID() != dispatch.SpanContext.SpanID() {
						t.Errorf("ingestion links to span %s, want the dispatch %s", l.SpanContext.SpanID(), dispatch.SpanContext.SpanID())
					}
				}
			}
		}
		if links < 4 {
			t.Errorf("%d ingestion spans link to the mission's trace, want one per batch that raised signals (at least 4)", links)
		}
	})
}

// TestNoStorageTraces checks that storage calls outside a trace (queue
// polling, lease rounds) make no spans: they would make a trace of one span
// every few hundred milliseconds.
func TestNoStorageTraces(t *testing.T) {
	t.Parallel()
	cfg := testkit.Config(t)
	cfg.Storage = azr.Get(t).ConnectionString()
	cfg.HubName = testkit.HubName()
	cfg.TracerProvider = tp
	w := testkit.Start(t, cfg)
	if _, err := w.StartMission(context.Background(), testkit.Request("m-quiet")); err != nil {
		t.Fatal(err)
	}
	testkit.AwaitDispatched(t, w, "m-quiet")
	for _, s := range spans.GetSpans() {
		if !s.Parent.IsValid() && (strings.HasPrefix(s.Name, "queue.") || strings.HasPrefix(s.Name, "blob.") ||
			strings.HasPrefix(s.Name, "Client.") || strings.HasPrefix(s.Name, "HTTP ")) {
			t.Errorf("a storage call made a trace of its own: %s", s.Name)
		}
	}
}

// find returns the first span named name whose instance id is id ("": any).
func find(all []tracetest.SpanStub, name, id string) (tracetest.SpanStub, bool) {
	for _, s := range all {
		if s.Name == name && (id == "" || attr(s, "durabletask.task.instance_id") == id) {
			return s, true
		}
	}
	return tracetest.SpanStub{}, false
}

func inTrace(all []tracetest.SpanStub, id trace.TraceID) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range all {
		if s.SpanContext.TraceID() == id {
			out = append(out, s)
		}
	}
	return out
}

func named(all []tracetest.SpanStub, name string) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range all {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

func children(all []tracetest.SpanStub, parent tracetest.SpanStub) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range all {
		if s.Parent.SpanID() == parent.SpanContext.SpanID() && s.Parent.TraceID() == parent.SpanContext.TraceID() {
			out = append(out, s)
		}
	}
	return out
}

func parentIs(t *testing.T, s, parent tracetest.SpanStub) {
	t.Helper()
	if s.Parent.TraceID() != parent.SpanContext.TraceID() || s.Parent.SpanID() != parent.SpanContext.SpanID() {
		t.Errorf("span %s has parent %s, want %s (%s)", s.Name, s.Parent.SpanID(), parent.Name, parent.SpanContext.SpanID())
	}
}

func attr(s tracetest.SpanStub, key string) string {
	for _, kv := range s.Attributes {
		if kv.Key == attribute.Key(key) {
			return kv.Value.Emit()
		}
	}
	return ""
}

func names(all []tracetest.SpanStub) string {
	var out []string
	for _, s := range all {
		out = append(out, s.Name)
	}
	return strings.Join(out, ", ")
}
