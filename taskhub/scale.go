package taskhub

import (
	"context"
	"time"
)

// QueueLoad is one queue as the scale signal sees it.
type QueueLoad struct {
	// Messages is the queue's approximate message count, invisible
	// messages included: pending timers, delayed starts and messages a
	// worker holds while it processes them.
	Messages int64
	// OldestAge is how long the oldest visible message has waited (since
	// it became visible), 0 when none is visible.
	OldestAge time.Duration
}

// ScaleSample is one look at a partitioned task hub's queues and workers,
// the input of the scale signal (package scale).
type ScaleSample struct {
	// Control is each control-queue partition, in partition order.
	Control []QueueLoad
	// WorkItems is the activity queue.
	WorkItems QueueLoad
	// Other counts the messages of the hub's other queues that a worker
	// drains (e.g. telemetry batches): they keep the hub from being idle.
	Other int64
	// Workers is the number of live workers (their heartbeats).
	Workers int
}

// ScaleSampler is a backend shared by many workers that can be sampled for
// the scale signal: a few cheap storage requests (Azure Storage: the
// approximate count of each queue, a peek of the front message of each
// non-empty one, and one listing of the worker heartbeats).
type ScaleSampler interface {
	ScaleSample(ctx context.Context) (ScaleSample, error)
}

// ScaleStatus is the scale signal (package scale): the body of GET
// /api/hub/scale. The JSON names are a contract: deployment manifests
// (KEDA's metrics-api scaler) read them.
type ScaleStatus struct {
	// RecommendedWorkers is how many workers the hub needs now.
	RecommendedWorkers int `json:"recommendedWorkers"`
	// Reason says which rule decided, with its figures.
	Reason string `json:"reason"`
	// Partitions is the number of control-queue partitions (1 for SQLite).
	Partitions int `json:"partitions"`
	// ControlQueueDepth sums the control queues' approximate message
	// counts, invisible messages (timers, work in flight) included.
	ControlQueueDepth int `json:"controlQueueDepth"`
	// WorkItemQueueDepth is the work-item queue's approximate count.
	WorkItemQueueDepth int `json:"workItemQueueDepth"`
	// OldestControlMessageAgeSeconds is the age of the oldest visible
	// message at the front of any control queue (0 when none is visible).
	OldestControlMessageAgeSeconds float64 `json:"oldestControlMessageAgeSeconds"`
	// OldestWorkItemAgeSeconds is the same for the work-item queue.
	OldestWorkItemAgeSeconds float64 `json:"oldestWorkItemAgeSeconds"`
	// IdleSeconds is how long the hub has been idle: nothing queued and no
	// drone on a mission in every sample since; 0 when it is not idle.
	IdleSeconds float64 `json:"idleSeconds"`
	// CurrentWorkers is the number of live workers (heartbeats; 1 for
	// SQLite).
	CurrentWorkers int `json:"currentWorkers"`

	// Rule names the rule that decided (scale.Rules lists them), for
	// metrics and logs.
	Rule string `json:"-"`
	// SampledAt is when the sample behind the signal was taken.
	SampledAt time.Time `json:"-"`
}
