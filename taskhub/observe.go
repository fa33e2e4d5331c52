package taskhub

import "context"

// Optional capabilities for metrics (package metrics reads them at scrape
// time; nothing here is on a hot path).

// LeaseStats counts what happened to this worker's partition leases since
// the backend was opened, and how many it holds now.
type LeaseStats struct {
	// Owned is the number of partitions this worker holds now.
	Owned int
	// Acquired counts claims of a partition (free, handed over, taken over
	// or taken back); TakenOver the claims of a partition whose previous
	// owner's lease had expired without being released (the owner died or
	// stalled).
	Acquired, TakenOver int64
	// Lost counts leases this worker lost: another worker took the lease, or
	// a renewal failed for good. Hand-offs it made itself are not losses.
	Lost int64
}

// PartitionObserver is a backend with partitioned control queues and leases
// (Azure Storage).
type PartitionObserver interface {
	// PartitionLoads measures every control queue, indexed by partition (a
	// few storage requests per partition).
	PartitionLoads(ctx context.Context) ([]QueueLoad, error)
	// LeaseStats reads the counters kept in memory (no request).
	LeaseStats() LeaseStats
}

// StatusCounter is a backend that counts its storage requests by kind and
// by the status class of the answer: "2xx", "3xx", "4xx", "5xx", or "error"
// when no answer came (a transport error or a timeout).
type StatusCounter interface {
	// RequestCountsByStatus maps kind to status class to count.
	RequestCountsByStatus() map[string]map[string]int64
}
