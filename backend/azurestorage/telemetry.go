package azurestorage

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/google/uuid"

	"github.com/dronehub/dronehub/taskhub"
)

// The telemetry queue, <hub>-telemetry, carries batches from drones and IoT
// bridges. A message's text is one of:
//
//   - the JSON batch itself, when it is valid JSON that fits in a message;
//   - "b64:" + base64 of the body, for a body that is not JSON or holds
//     characters XML cannot carry;
//   - "blob:" + the name of a gzipped blob in <hub>-largemessages, for a
//     body over the inline limit (~45 KB), up to MaxTelemetryBytes.
//
// No JSON text starts with "b64:" or "blob:", so the forms cannot be
// confused. Blob names start with "%telemetry/", a prefix no escaped
// instance id can have ('%' is always escaped to "%25"), so purging an
// instance never touches them.

// MaxTelemetryBytes is the largest telemetry batch SendTelemetry accepts.
const MaxTelemetryBytes = 8 << 20

// ErrTelemetryTooLarge is returned by SendTelemetry for a batch over
// MaxTelemetryBytes.
var ErrTelemetryTooLarge = errors.New("azurestorage: telemetry batch too large")

const (
	telemetryB64      = "b64:"
	telemetryBlob     = "blob:"
	telemetryBlobPre  = "%telemetry/"
	maxTelemetryBatch = 32 // the queue service's dequeue limit
)

// SendTelemetry implements taskhub.TelemetryQueue.
func (b *Backend) SendTelemetry(ctx context.Context, body []byte) error {
	switch {
	case len(body) == 0:
		return errors.New("azurestorage: telemetry batch is empty")
	case len(body) > MaxTelemetryBytes:
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrTelemetryTooLarge, len(body), MaxTelemetryBytes)
	}
	text := string(body)
	if !json.Valid(body) || !xmlSafe(text) {
		text = telemetryB64 + base64.StdEncoding.EncodeToString(body)
	}
	if len(text) > maxInlineMessage {
		name := telemetryBlobPre + uuid.NewString() + ".gz"
		if err := b.putBlob(ctx, name, body); err != nil {
			return fmt.Errorf("azurestorage: telemetry batch of %d bytes: %w", len(body), err)
		}
		text = telemetryBlob + name
	}
	if _, err := b.tele.EnqueueMessage(ctx, text, &azqueue.EnqueueMessageOptions{TimeToLive: to.Ptr[int32](-1)}); err != nil {
		return fmt.Errorf("azurestorage: enqueue to %s: %w", b.names.telemetry, err)
	}
	return nil
}

// xmlSafe reports whether s holds only characters an XML document may carry
// (queue messages travel in XML).
func xmlSafe(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		switch {
		case r == '\t' || r == '\n' || r == '\r':
		case r < 0x20, r >= 0xD800 && r <= 0xDFFF, r == 0xFFFE, r == 0xFFFF:
			return false
		}
	}
	return true
}

// telemetryReceipt is what TelemetryMessage.Receipt encodes.
type telemetryReceipt struct {
	MsgID string `json:"m"`
	Pop   string `json:"p"`
	Blob  string `json:"b,omitempty"`
}

// ReceiveTelemetry implements taskhub.TelemetryQueue. limit is clamped to
// 1-32 and visibility to 1 s-7 days (0 means 30 s). A message dequeued more
// than MaxDequeueCount times, or whose body cannot be read, is moved to the
// dead letters instead of being returned.
func (b *Backend) ReceiveTelemetry(ctx context.Context, limit int, visibility time.Duration) ([]taskhub.TelemetryMessage, error) {
	n := int32(min(max(limit, 1), maxTelemetryBatch))
	if visibility == 0 {
		visibility = 30 * time.Second
	}
	vis := int32(min(max(visibility, time.Second), maxVisibility) / time.Second)
	resp, err := b.tele.DequeueMessages(ctx, &azqueue.DequeueMessagesOptions{NumberOfMessages: &n, VisibilityTimeout: &vis})
	if err != nil {
		return nil, fmt.Errorf("azurestorage: dequeue from %s: %w", b.names.telemetry, err)
	}
	var out []taskhub.TelemetryMessage
	for _, m := range resp.Messages {
		im := newInMsg(b.tele, -1, *m.MessageID, *m.PopReceipt, time.Now())
		if m.MessageText != nil {
			im.content = *m.MessageText
		}
		if m.DequeueCount != nil {
			im.dequeueCount = *m.DequeueCount
		}
		if im.dequeueCount > int64(b.opts.MaxDequeueCount) {
			reason := fmt.Sprintf("dequeued %d times (MaxDequeueCount %d) without being deleted", im.dequeueCount, b.opts.MaxDequeueCount)
			if err := b.deadLetter(ctx, im, reason, im.dequeueCount, ""); err != nil {
				b.log.Warn("azurestorage: dead-letter failed", "queue", b.names.telemetry, "err", err)
			}
			continue
		}
		body, blob, err := b.telemetryBody(ctx, im.content)
		if err != nil {
			if transient(err) {
				return out, err // left invisible; it reappears after visibility
			}
			if err := b.deadLetter(ctx, im, "unreadable telemetry: "+err.Error(), im.dequeueCount, ""); err != nil {
				b.log.Warn("azurestorage: dead-letter failed", "queue", b.names.telemetry, "err", err)
			}
			continue
		}
		receipt, _ := json.Marshal(telemetryReceipt{MsgID: im.msgID, Pop: im.pop, Blob: blob})
		out = append(out, taskhub.TelemetryMessage{Body: body, DequeueCount: int(im.dequeueCount),
			Receipt: base64.RawURLEncoding.EncodeToString(receipt)})
	}
	return out, nil
}

// telemetryBody decodes a telemetry message's text; blob is the name of the
// blob holding the body, if any.
func (b *Backend) telemetryBody(ctx context.Context, text string) (body []byte, blob string, err error) {
	switch {
	case strings.HasPrefix(text, telemetryBlob):
		blob = strings.TrimPrefix(text, telemetryBlob)
		if !strings.HasPrefix(blob, telemetryBlobPre) {
			return nil, "", fmt.Errorf("blob %q is not a telemetry blob", blob)
		}
		body, err = b.getBlob(ctx, blob)
		return body, blob, err
	case strings.HasPrefix(text, telemetryB64):
		body, err = base64.StdEncoding.DecodeString(strings.TrimPrefix(text, telemetryB64))
		return body, "", err
	}
	return []byte(text), "", nil
}

// DeleteTelemetry implements taskhub.TelemetryQueue. A message already gone
// (deleted, or received again by someone else after its visibility ran out)
// is not an error; its blob is then left to whoever holds it now.
func (b *Backend) DeleteTelemetry(ctx context.Context, m taskhub.TelemetryMessage) error {
	raw, err := base64.RawURLEncoding.DecodeString(m.Receipt)
	var r telemetryReceipt
	if err == nil {
		err = json.Unmarshal(raw, &r)
	}
	if err != nil || r.MsgID == "" || r.Pop == "" {
		return fmt.Errorf("azurestorage: telemetry receipt %q was not issued by ReceiveTelemetry", m.Receipt)
	}
	if _, err := b.tele.DeleteMessage(ctx, r.MsgID, r.Pop, nil); err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("azurestorage: delete message from %s: %w", b.names.telemetry, err)
	}
	if r.Blob != "" {
		if _, err := b.cl.blob.DeleteBlob(ctx, b.names.largeMessages, r.Blob, nil); err != nil && !isNotFound(err) {
			b.log.Warn("azurestorage: delete telemetry blob", "blob", r.Blob, "err", err)
		}
	}
	return nil
}
