package worker

import (
	"bytes"
	"context"
	"errors"
	"sort"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/taskhub"
)

// Telemetry queue polling: the idle back-off bounds an idle worker to at
// most 12 receive requests a minute.
const (
	telemetryBatch      = 32
	telemetryVisibility = time.Minute
	telemetryIdleMax    = 5 * time.Second
)

// drainTelemetry applies batches dropped on the backend's telemetry queue
// (for Azure Storage "<hub>-telemetry") through the same ingestion path as
// POST /api/telemetry. A message is deleted only once applied, so a storage
// failure leaves it for redelivery; dedupe makes redelivery harmless.
func (w *Worker) drainTelemetry(ctx context.Context) {
	q, ok := w.hub.Backend.(taskhub.TelemetryQueue)
	if !ok {
		return
	}
	idle := time.Duration(0)
	for ctx.Err() == nil {
		msgs, err := q.ReceiveTelemetry(ctx, telemetryBatch, telemetryVisibility)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				w.log.Warn("receive telemetry from the queue failed; retrying", "err", err)
			}
			idle = telemetryIdleMax
		case len(msgs) == 0:
			idle = min(max(idle*2, 100*time.Millisecond), telemetryIdleMax)
		default:
			idle = 0
			for _, m := range msgs {
				w.applyQueued(ctx, q, m)
			}
			continue
		}
		if !taskhub.Sleep(ctx, nil, idle) {
			return
		}
	}
}

func (w *Worker) applyQueued(ctx context.Context, q taskhub.TelemetryQueue, m taskhub.TelemetryMessage) {
	frames, err := domain.DecodeBatch(bytes.NewReader(m.Body))
	if errors.Is(err, domain.ErrBadBatch) {
		// It can never be applied: log it whole (bounded), then drop it so it
		// does not block the queue. Nothing is dropped silently.
		body := m.Body
		if len(body) > 4096 {
			body = body[:4096]
		}
		w.log.Error("dropped a malformed telemetry queue message", "err", err, "dequeueCount", m.DequeueCount, "body", string(body))
	} else {
		res, err := w.ingestor.Ingest(ctx, frames)
		if err != nil {
			w.log.Warn("apply queued telemetry failed; the message is retried", "err", err)
			return
		}
		if res.Rejected > 0 {
			w.log.Warn("queued telemetry had rejected frames", "accepted", res.Accepted, "rejected", res.Rejected)
		}
	}
	if err := q.DeleteTelemetry(ctx, m); err != nil && ctx.Err() == nil {
		w.log.Warn("delete applied telemetry message failed; it will be applied again (deduped)", "err", err)
	}
}

// logStorageRequests logs, once a minute, the storage requests made in that
// minute by kind: the cost of running, visible without a metrics stack.
func (w *Worker) logStorageRequests(ctx context.Context) {
	rc, ok := w.hub.Backend.(taskhub.RequestCounter)
	if !ok {
		return
	}
	prev := rc.RequestCounts()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur := rc.RequestCounts()
		kinds := make([]string, 0, len(cur))
		for k := range cur {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		var total int64
		attrs := []any{}
		for _, k := range kinds {
			if d := cur[k] - prev[k]; d > 0 {
				total += d
				attrs = append(attrs, k, d)
			}
		}
		prev = cur
		w.log.Info("storage requests in the last minute", append([]any{"total", total}, attrs...)...)
	}
}
