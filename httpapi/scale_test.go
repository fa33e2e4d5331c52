package httpapi_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/scale"
	"github.com/dronehub/dronehub/worker"
)

// scaleBody is GET /api/hub/scale's answer, written from the contract
// deployment manifests rely on (docs/deploy.md).
type scaleBody struct {
	RecommendedWorkers             *int     `json:"recommendedWorkers"`
	Reason                         string   `json:"reason"`
	Partitions                     *int     `json:"partitions"`
	ControlQueueDepth              *int     `json:"controlQueueDepth"`
	WorkItemQueueDepth             *int     `json:"workItemQueueDepth"`
	OldestControlMessageAgeSeconds *float64 `json:"oldestControlMessageAgeSeconds"`
	OldestWorkItemAgeSeconds       *float64 `json:"oldestWorkItemAgeSeconds"`
	IdleSeconds                    *float64 `json:"idleSeconds"`
	CurrentWorkers                 *int     `json:"currentWorkers"`
}

// TestHubScale: the scale signal needs the API key like every /api route,
// answers every field of its contract, and its figures are on /metrics. A
// SQLite hub is served by one process: 1 worker while anything is going
// on, 0 once idle for the configured time.
func TestHubScale(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *worker.Config) {
		c.APIKeys = []string{apiKey}
		c.Scale = scale.Options{Interval: 50 * time.Millisecond, IdleAfter: 200 * time.Millisecond}
	})
	e.do("GET", "/api/hub/scale", nil).wantProblem(t, http.StatusUnauthorized)
	e.key = apiKey

	var b scaleBody
	e.do("GET", "/api/hub/scale", nil).wantJSON(t, http.StatusOK, &b)
	if b.RecommendedWorkers == nil || b.Partitions == nil || b.ControlQueueDepth == nil || b.WorkItemQueueDepth == nil ||
		b.OldestControlMessageAgeSeconds == nil || b.OldestWorkItemAgeSeconds == nil || b.IdleSeconds == nil || b.CurrentWorkers == nil || b.Reason == "" {
		t.Fatalf("fields missing: %+v", b)
	}
	if *b.RecommendedWorkers != 1 || *b.CurrentWorkers != 1 || *b.Partitions != 1 {
		t.Errorf("a fresh SQLite hub: %+v, want 1 worker of 1, 1 partition", b)
	}

	// Idle for IdleAfter: none.
	deadline := time.Now().Add(10 * time.Second)
	for *b.RecommendedWorkers != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("an idle SQLite hub still recommends %d workers: %s", *b.RecommendedWorkers, b.Reason)
		}
		time.Sleep(50 * time.Millisecond) // the poll interval; the deadline bounds the wait
		e.do("GET", "/api/hub/scale", nil).wantJSON(t, http.StatusOK, &b)
	}
	if !strings.Contains(b.Reason, "idle") || *b.IdleSeconds < 0.2 {
		t.Errorf("idle: %+v (%s)", b, b.Reason)
	}

	// A mission running (a drone bound to it): one worker again.
	e.do("POST", "/api/missions", testkit.Request("scale-1")).wantJSON(t, http.StatusAccepted, nil)
	deadline = time.Now().Add(10 * time.Second)
	for *b.RecommendedWorkers != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("a running mission still recommends %d workers: %s", *b.RecommendedWorkers, b.Reason)
		}
		time.Sleep(50 * time.Millisecond) // the poll interval; the deadline bounds the wait
		e.do("GET", "/api/hub/scale", nil).wantJSON(t, http.StatusOK, &b)
	}

	r := e.do("GET", "/metrics", nil)
	for _, series := range []string{"dronehub_scale_recommended_workers 1", "dronehub_scale_current_workers 1", "dronehub_scale_partitions 1",
		"dronehub_scale_control_queue_depth", "dronehub_scale_work_item_queue_depth", "dronehub_scale_oldest_control_message_age_seconds",
		"dronehub_scale_oldest_work_item_age_seconds", "dronehub_scale_idle_seconds", `dronehub_scale_rule{rule="single_process"} 1`} {
		if !bytes.Contains(r.Body, []byte(series)) {
			t.Errorf("/metrics has no %q", series)
		}
	}
}
