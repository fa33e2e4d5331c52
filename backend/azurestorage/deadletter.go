package azurestorage

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/taskhub"
)

// DeadLetter is a message taken out of circulation: it was dequeued more
// than MaxDequeueCount times, or could not be read.
type DeadLetter struct {
	// ID identifies the dead letter for ReplayDeadLetter.
	ID string
	// Queue is the queue the message came from.
	Queue string
	// InstanceID is the instance the message was for, if readable.
	InstanceID string
	// EventType names the history event ("TaskScheduled", "EventRaised", ...).
	EventType string
	// DequeueCount is how many times it had been dequeued.
	DequeueCount int64
	// Reason says why it was dead-lettered.
	Reason string
	// At is when it was dead-lettered.
	At time.Time
	// Size is the length of the message text in bytes (0 for dead letters
	// stored before it was recorded).
	Size int64
}

const deadPK = "dl"

// A dead letter's message text is stored in its row's Content property
// when it is small. A string property holds at most 32K UTF-16 code units
// and a queue message up to 64 KiB, so a larger text goes to a gzipped blob
// in the large-messages container, named in the row's Blob property, under
// deadLetterBlobPre: a prefix no escaped instance id has ('%' is escaped),
// so purging an instance never touches it. Listing reads neither.
const (
	// maxInlineDeadLetter bounds Content in bytes; UTF-8 never has fewer
	// bytes than UTF-16 has code units, so it is below the property limit.
	maxInlineDeadLetter = 30 * 1024
	deadLetterBlobPre   = "%deadletters/"
)

// ErrDeadLetterNotFound is returned by ReplayDeadLetter for an unknown id.
// It is taskhub.ErrDeadLetterNotFound, so errors.Is works with either name.
var ErrDeadLetterNotFound = taskhub.ErrDeadLetterNotFound

// deadLetter moves a message to the dead-letter table (its text to a blob
// if large), then deletes it.
//
// failed is how many of its deliveries failed (recorded as DequeueCount);
// exec names the execution it was sent to, if known, so that a replay can
// tell whether it still can reach it.
func (b *Backend) deadLetter(ctx context.Context, m *inMsg, reason string, failed int64, exec string) error {
	if m.isPart() && m.content == "" {
		m.content = partContent(m)
	}
	_ = b.decode(ctx, m) // best effort: describe the event if we can
	rk := fmt.Sprintf("%020d-%s", time.Now().UnixNano(), m.msgID)
	e := newEntity(deadPK, rk)
	e["Queue"] = queueName(m.queue)
	e["InstanceID"] = m.env.Instance
	e["Reason"] = reason
	e.setInt64("DequeueCount", failed)
	e["ExecutionID"] = exec
	e.setInt64("Size", int64(len(m.content)))
	if m.event != nil {
		e["EventType"] = eventType(m.event)
	}
	blob := ""
	if len(m.content) > maxInlineDeadLetter {
		blob = deadLetterBlobPre + escapeKey(rk) + ".gz"
		if err := b.putBlob(ctx, blob, []byte(m.content)); err != nil {
			return fmt.Errorf("azurestorage: dead-letter message from %s: %w", e["Queue"], err)
		}
		e["Blob"] = blob
	} else {
		e["Content"] = m.content
	}
	if _, err := b.dead.AddEntity(ctx, e.marshal(), nil); err != nil {
		if blob != "" {
			b.deleteBlob(ctx, blob)
		}
		return fmt.Errorf("azurestorage: dead-letter message from %s: %w", e["Queue"], err)
	}
	b.log.Warn("azurestorage: message dead-lettered", "queue", e["Queue"], "instance", m.env.Instance, "reason", reason, "id", rk, "bytes", len(m.content))
	return b.deleteMsg(ctx, m)
}

func eventType(e *dtbackend.HistoryEvent) string {
	name := fmt.Sprintf("%T", e.GetEventType())
	// *protos.HistoryEvent_TaskScheduled -> TaskScheduled
	for i := len(name) - 1; i >= 0; i-- {
		if name[i] == '_' {
			return name[i+1:]
		}
	}
	return name
}

// ListDeadLetters returns every dead letter, oldest first.
func (b *Backend) ListDeadLetters(ctx context.Context) ([]DeadLetter, error) {
	filter := "PartitionKey eq " + quote(deadPK)
	// Never Content or Blob: listing does not read message bodies.
	sel := "RowKey,Queue,InstanceID,EventType,DequeueCount,Reason,Size,Timestamp"
	pager := b.dead.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter, Select: &sel})
	var out []DeadLetter
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("azurestorage: list dead letters: %w", err)
		}
		for _, raw := range page.Entities {
			e, err := parseEntity(raw)
			if err != nil {
				return nil, err
			}
			at, _ := time.Parse(time.RFC3339Nano, e.str("Timestamp"))
			out = append(out, DeadLetter{ID: e.str("RowKey"), Queue: e.str("Queue"), InstanceID: e.str("InstanceID"),
				EventType: e.str("EventType"), DequeueCount: e.int64("DequeueCount"), Reason: e.str("Reason"), At: at, Size: e.int64("Size")})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// ReplayDeadLetter puts a dead letter back on its queue (with a fresh
// dequeue count) and removes it from the dead-letter table, and then its
// blob. A replay that fails leaves the dead letter as it was.
func (b *Backend) ReplayDeadLetter(ctx context.Context, id string) error {
	resp, err := b.dead.GetEntity(ctx, deadPK, id, nil)
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("azurestorage: dead letter %q: %w", id, ErrDeadLetterNotFound)
		}
		return fmt.Errorf("azurestorage: read dead letter %s: %w", id, err)
	}
	e, err := parseEntity(resp.Value)
	if err != nil {
		return err
	}
	e["odata.etag"] = string(resp.ETag)
	content, blob := e.str("Content"), e.str("Blob")
	if blob != "" {
		data, err := b.getBlob(ctx, blob)
		if err != nil {
			return fmt.Errorf("azurestorage: read dead letter %s: %w", id, err)
		}
		content = string(data)
	}
	why, err := b.staleDeadLetter(ctx, e, content)
	if err != nil {
		return fmt.Errorf("azurestorage: replay dead letter %s: %w", id, err)
	}
	if why != "" {
		if err := b.dropDeadLetter(ctx, id, e); err != nil {
			return err
		}
		b.log.Info("azurestorage: dropped a stale dead letter instead of replaying it", "id", id, "instance", e.str("InstanceID"), "why", why)
		return fmt.Errorf("azurestorage: dead letter %s for instance %q: %s: %w", id, e.str("InstanceID"), why, taskhub.ErrDeadLetterStale)
	}
	q := b.cl.queue.NewQueueClient(e.str("Queue"))
	ttl := int32(-1)
	if _, err := q.EnqueueMessage(ctx, content, &azqueue.EnqueueMessageOptions{TimeToLive: &ttl}); err != nil {
		return fmt.Errorf("azurestorage: replay dead letter %s to %s: %w", id, e.str("Queue"), err)
	}
	etag := resp.ETag
	if _, err := b.dead.DeleteEntity(ctx, deadPK, id, &aztables.DeleteEntityOptions{IfMatch: &etag}); err != nil && !isNotFound(err) {
		return fmt.Errorf("azurestorage: remove replayed dead letter %s: %w", id, err)
	}
	if blob != "" {
		b.deleteBlob(ctx, blob)
	}
	if e.str("Queue") == b.names.workItems {
		b.actWake.Notify()
	} else {
		b.orchWake.Notify()
	}
	return nil
}
