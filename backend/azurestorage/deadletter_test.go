package azurestorage

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// randomText returns n bytes of printable ASCII that does not compress to
// nothing, so size limits are really met.
func randomText(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 {}[]:,.-_"
	var sb strings.Builder
	sb.Grow(n)
	for range n {
		sb.WriteByte(alphabet[rand.N(len(alphabet))])
	}
	return sb.String()
}

// maxQueueMessage is the largest message text the queue service (and
// Azurite) accepts: 64 KiB. A message cannot be larger than that.
const maxQueueMessage = 64 * 1024

// deadLetterFor returns the one dead letter from queue, failing otherwise.
func deadLetterFor(t *testing.T, ctx context.Context, b *Backend, queue string) DeadLetter {
	t.Helper()
	dls, err := b.ListDeadLetters(ctx)
	if err != nil {
		t.Fatalf("ListDeadLetters: %v", err)
	}
	var found []DeadLetter
	for _, d := range dls {
		if d.Queue == queue {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		t.Fatalf("dead letters from %s: %+v (all: %+v); want one", queue, found, dls)
	}
	return found[0]
}

// takeRaw dequeues the one message on q and returns its text.
func takeRaw(t *testing.T, ctx context.Context, q *azqueue.QueueClient) string {
	t.Helper()
	n := int32(32)
	resp, err := q.DequeueMessages(ctx, &azqueue.DequeueMessagesOptions{NumberOfMessages: &n})
	if err != nil {
		t.Fatalf("dequeue from %s: %v", queueName(q), err)
	}
	if len(resp.Messages) != 1 || resp.Messages[0].MessageText == nil {
		t.Fatalf("%d messages on %s, want 1", len(resp.Messages), queueName(q))
	}
	m := resp.Messages[0]
	if *m.DequeueCount != 1 {
		t.Errorf("replayed message has dequeue count %d, want 1", *m.DequeueCount)
	}
	return *m.MessageText
}

// checkListAndReplay lists the dead letter of queue without reading any
// blob, replays it and checks that the queue then holds text, byte for
// byte, and that no dead letter or dead-letter blob is left.
func checkListAndReplay(t *testing.T, ctx context.Context, b *Backend, counter *Counter, q *azqueue.QueueClient, text string) {
	t.Helper()
	queue := queueName(q)
	before := counter.Snapshot()
	dl := deadLetterFor(t, ctx, b, queue)
	for kind, n := range counter.Snapshot() {
		if strings.HasPrefix(kind, "blob.") && n != before[kind] {
			t.Errorf("ListDeadLetters made %d %s requests; it must not read message bodies", n-before[kind], kind)
		}
	}
	if dl.Size != int64(len(text)) || dl.ID == "" || dl.At.IsZero() {
		t.Errorf("dead letter %+v; want Size %d", dl, len(text))
	}
	if n := b.blobCount(ctx, t, deadLetterBlobPre); len(text) > maxInlineDeadLetter && n != 1 {
		t.Errorf("%d dead-letter blobs for a %d-byte message, want 1", n, len(text))
	}
	if err := b.ReplayDeadLetter(ctx, dl.ID); err != nil {
		t.Fatalf("ReplayDeadLetter: %v", err)
	}
	if got := takeRaw(t, ctx, q); got != text {
		t.Errorf("replayed %d bytes to %s, not the %d bytes dead-lettered (first difference at %d)", len(got), queue, len(text), firstDiff(got, text))
	}
	if err := b.ReplayDeadLetter(ctx, dl.ID); !errors.Is(err, ErrDeadLetterNotFound) {
		t.Errorf("second replay: %v, want ErrDeadLetterNotFound", err)
	}
	if n := b.blobCount(ctx, t, deadLetterBlobPre); n != 0 {
		t.Errorf("%d dead-letter blobs left after the replay", n)
	}
}

func firstDiff(a, b string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestDeadLetterLargestMessages: a poison message as large as a queue
// accepts (64 KiB, over twice what a table string property holds), on the
// work-item queue, a control queue and the telemetry queue, is
// dead-lettered, listed without its body being read, and replayed byte for
// byte; its blob is deleted after the replay.
func TestDeadLetterLargestMessages(t *testing.T) {
	t.Parallel()
	var counter Counter
	b := openTest(t, Options{Partitions: 1, MaxDequeueCount: 1, Counter: &counter})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	enqueue := func(q *azqueue.QueueClient, text string) {
		t.Helper()
		if _, err := q.EnqueueMessage(ctx, text, nil); err != nil {
			t.Fatalf("enqueue %d bytes to %s: %v", len(text), queueName(q), err)
		}
	}

	t.Run("work-item queue", func(t *testing.T) {
		text := randomText(maxQueueMessage)
		enqueue(b.work, text)
		fctx, fcancel := context.WithTimeout(ctx, 2*time.Second)
		defer fcancel()
		if wi, err := b.GetActivityWorkItem(fctx); !errors.Is(err, dtbackend.ErrNoWorkItems) {
			t.Fatalf("GetActivityWorkItem: %v, %v; want the message dead-lettered", wi, err)
		}
		checkListAndReplay(t, ctx, b, &counter, b.work, text)
	})

	t.Run("control queue", func(t *testing.T) {
		text := randomText(maxQueueMessage)
		enqueue(b.control[0], text)
		if msgs, err := b.dequeue(ctx, b.control[0], 0, 32); err != nil || len(msgs) != 0 {
			t.Fatalf("dequeue: %v, %v; want the message dead-lettered", msgs, err)
		}
		checkListAndReplay(t, ctx, b, &counter, b.control[0], text)
	})

	t.Run("telemetry queue", func(t *testing.T) {
		// A raw JSON text, delivered once and never deleted: dead-lettered
		// when it comes a second time (MaxDequeueCount 1).
		text := `{"frames":"` + randomText(maxQueueMessage-13) + `"}`
		enqueue(b.tele, text)
		ms, err := b.ReceiveTelemetry(ctx, 1, time.Second)
		if err != nil || len(ms) != 1 || string(ms[0].Body) != text {
			t.Fatalf("first receive: %d messages, %v", len(ms), err)
		}
		poll(t, 15*time.Second, "the poison batch dead-lettered", func() bool {
			ms, err := b.ReceiveTelemetry(ctx, 1, time.Second)
			if err != nil || len(ms) != 0 {
				t.Fatalf("poison batch returned again: %d messages, %v", len(ms), err)
			}
			dls, err := b.ListDeadLetters(ctx)
			return err == nil && len(dls) == 1
		})
		checkListAndReplay(t, ctx, b, &counter, b.tele, text)
	})
}

// TestDeadLetterOneMiB: a 1 MiB message text (more than any queue holds,
// as a message that grew past the limits would be) is dead-lettered,
// listed without its body being read and kept byte for byte. Replaying it
// to a queue is refused by the queue, and the refusal loses nothing.
func TestDeadLetterOneMiB(t *testing.T) {
	t.Parallel()
	var counter Counter
	b := openTest(t, Options{Partitions: 1, MaxDequeueCount: 1, Counter: &counter})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// A real message to dead-letter, standing for a 1 MiB one.
	if _, err := b.work.EnqueueMessage(ctx, "x", nil); err != nil {
		t.Fatal(err)
	}
	n := int32(1)
	resp, err := b.work.DequeueMessages(ctx, &azqueue.DequeueMessagesOptions{NumberOfMessages: &n})
	if err != nil || len(resp.Messages) != 1 {
		t.Fatalf("dequeue: %v", err)
	}
	text := randomText(1 << 20)
	m := newInMsg(b.work, -1, *resp.Messages[0].MessageID, *resp.Messages[0].PopReceipt, time.Now())
	m.content, m.dequeueCount = text, 2
	if err := b.deadLetter(ctx, m, "test", 2, ""); err != nil {
		t.Fatalf("deadLetter of 1 MiB: %v", err)
	}
	before := counter.Snapshot()
	dl := deadLetterFor(t, ctx, b, b.names.workItems)
	for kind, n := range counter.Snapshot() {
		if strings.HasPrefix(kind, "blob.") && n != before[kind] {
			t.Errorf("ListDeadLetters made %d %s requests; it must not read message bodies", n-before[kind], kind)
		}
	}
	if dl.Size != 1<<20 || dl.Reason != "test" || dl.DequeueCount != 2 {
		t.Errorf("dead letter %+v", dl)
	}
	stored := func() string {
		t.Helper()
		resp, err := b.dead.GetEntity(ctx, deadPK, dl.ID, nil)
		if err != nil {
			t.Fatalf("read dead letter row: %v", err)
		}
		e, _ := parseEntity(resp.Value)
		if e.str("Content") != "" || !strings.HasPrefix(e.str("Blob"), deadLetterBlobPre) {
			t.Fatalf("dead letter row has Content of %d bytes and Blob %q", len(e.str("Content")), e.str("Blob"))
		}
		body, err := b.getBlob(ctx, e.str("Blob"))
		if err != nil {
			t.Fatalf("read dead letter blob: %v", err)
		}
		return string(body)
	}
	if got := stored(); got != text {
		t.Fatalf("stored %d bytes, not the %d dead-lettered (first difference at %d)", len(got), len(text), firstDiff(got, text))
	}
	if err := b.ReplayDeadLetter(ctx, dl.ID); err == nil {
		t.Fatal("a 1 MiB message was replayed to a queue")
	}
	if got := stored(); got != text {
		t.Fatalf("after the refused replay: stored %d bytes, not the %d dead-lettered", len(got), len(text))
	}
	if d := deadLetterFor(t, ctx, b, b.names.workItems); d.ID != dl.ID {
		t.Fatalf("after the refused replay the dead letter is %+v, want %+v", d, dl)
	}
}

// TestDeadLetterOneMiBTelemetry: a 1 MiB telemetry batch (the queue holds
// it as a reference to a blob) that is never deleted is dead-lettered,
// listed without any body being read, and replayed byte for byte.
func TestDeadLetterOneMiBTelemetry(t *testing.T) {
	t.Parallel()
	var counter Counter
	b := openTest(t, Options{Partitions: 1, MaxDequeueCount: 1, Counter: &counter})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	body := []byte(randomText(1 << 20))
	if err := b.SendTelemetry(ctx, body); err != nil {
		t.Fatalf("SendTelemetry: %v", err)
	}
	if ms, err := b.ReceiveTelemetry(ctx, 1, time.Second); err != nil || len(ms) != 1 {
		t.Fatalf("first receive: %d messages, %v", len(ms), err)
	}
	poll(t, 15*time.Second, "the poison batch dead-lettered", func() bool {
		ms, err := b.ReceiveTelemetry(ctx, 1, time.Second)
		if err != nil || len(ms) != 0 {
			t.Fatalf("poison batch returned again: %d messages, %v", len(ms), err)
		}
		dls, err := b.ListDeadLetters(ctx)
		return err == nil && len(dls) == 1
	})
	before := counter.Snapshot()
	dl := deadLetterFor(t, ctx, b, b.names.telemetry)
	for kind, n := range counter.Snapshot() {
		if strings.HasPrefix(kind, "blob.") && n != before[kind] {
			t.Errorf("ListDeadLetters made %d %s requests; it must not read message bodies", n-before[kind], kind)
		}
	}
	if err := b.ReplayDeadLetter(ctx, dl.ID); err != nil {
		t.Fatalf("ReplayDeadLetter: %v", err)
	}
	ms, err := b.ReceiveTelemetry(ctx, 1, 30*time.Second)
	if err != nil || len(ms) != 1 {
		t.Fatalf("receive after replay: %d messages, %v", len(ms), err)
	}
	if string(ms[0].Body) != string(body) || ms[0].DequeueCount != 1 {
		t.Fatalf("replayed batch of %d bytes (dequeue count %d), want the %d bytes sent (first difference at %d)",
			len(ms[0].Body), ms[0].DequeueCount, len(body), firstDiff(string(ms[0].Body), string(body)))
	}
	if err := b.DeleteTelemetry(ctx, ms[0]); err != nil {
		t.Fatalf("DeleteTelemetry: %v", err)
	}
	if n := b.blobCount(ctx, t, telemetryBlobPre) + b.blobCount(ctx, t, deadLetterBlobPre); n != 0 {
		t.Errorf("%d blobs left after the replayed batch was deleted", n)
	}
}
