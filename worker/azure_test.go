package worker_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/internal/azurite"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/taskhub"
)

// TestWorkerOnAzureStorage checks what only the Azure Storage hub offers
// through the worker: telemetry dropped on the <hub>-telemetry queue is
// applied, storage requests appear in /metrics, and the hub and its dead
// letters are visible over HTTP.
func TestWorkerOnAzureStorage(t *testing.T) {
	t.Parallel()
	cfg := testkit.Config(t)
	cfg.Storage = azurite.Start(t, azurite.Options{}).ConnectionString()
	cfg.HubName = testkit.HubName()
	w := testkit.Start(t, cfg)
	ctx := context.Background()

	q, ok := w.Backend().(taskhub.TelemetryQueue)
	if !ok {
		t.Fatal("the Azure Storage backend has no telemetry queue")
	}
	batch := `{"frames":[{"deviceId":"drone-2","seq":7,"timestamp":"2026-11-22T10:00:00Z","battery":0.77,"flightMode":"ready",
		"position":{"lat":47.64,"lon":-122.13,"alt":0},"health":{"gyrometerOk":true,"accelerometerOk":true,"magnetometerOk":true},"isKeyFrame":true}]}`
	if err := q.SendTelemetry(ctx, []byte(batch)); err != nil {
		t.Fatal(err)
	}
	if err := q.SendTelemetry(ctx, []byte(`{"frames": "not a batch"}`)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, "the queued telemetry to be applied", func() bool {
		d, err := w.Fleet().Drone(ctx, "drone-2")
		return err == nil && d.Tracked.State != nil && d.Tracked.State.Seq == 7 && d.Tracked.State.Battery == 0.77
	})
	testkit.Eventually(t, 20*time.Second, "the telemetry queue to be drained, the malformed message included", func() bool {
		info, err := w.Backend().(taskhub.Inspector).HubInfo(ctx)
		return err == nil && info.QueueDepths[cfg.HubName+"-telemetry"] == 0
	})

	srv := httptest.NewServer(w.Handler())
	t.Cleanup(srv.Close)
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz: %d %s", code, body)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, `dronehub_storage_requests_total{kind="queue.dequeue",status_class="2xx"}`) {
		t.Errorf("/metrics: %d, no storage request counts in:\n%s", code, body)
	}
	code, body := get("/api/hub")
	var info taskhub.HubInfo
	if code != 200 || json.Unmarshal([]byte(body), &info) != nil || info.Kind != "azurestorage" || info.Partitions != 4 || len(info.Owners) != 4 {
		t.Errorf("/api/hub: %d %s: want the Azure hub with 4 owned partitions", code, body)
	}
	if code, body := get("/api/deadletters"); code != 200 || !strings.Contains(body, `"deadLetters"`) {
		t.Errorf("/api/deadletters: %d %s", code, body)
	}
}
