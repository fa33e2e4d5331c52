package azurestorage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/google/uuid"
	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// envelope is the body of every queue message: one history event for one
// instance. ID identifies the message across redeliveries and re-sends, so
// a commit can record what it consumed and drop a redelivered copy.
type envelope struct {
	ID       string `json:"id"`
	Instance string `json:"i"`
	// Event is the marshaled HistoryEvent, or empty when Blob holds it.
	Event []byte `json:"e,omitempty"`
	// Blob names the gzipped event in the large-messages container.
	Blob string `json:"b,omitempty"`
	// NotBefore (unix ms) is when the message may be processed; a message
	// seen earlier is sent again with the remaining delay (timers beyond the
	// queue's 7-day visibility limit, scheduled starts).
	NotBefore int64 `json:"nb,omitempty"`
	// Exec is the execution id of the orchestration that sent an activity
	// or timer (and, copied, of the activity's result), so an answer to an
	// earlier execution is told from one that arrived early (see early).
	Exec string `json:"x,omitempty"`
	// VisibleAt (unix ms) is when a delayed message becomes visible, so
	// its queue's lag is measured from then, not from when it was sent.
	VisibleAt int64 `json:"va,omitempty"`
	// From names the orchestration that sent the message from its outbox
	// (events, terminations, answers to a parent); such a message can be
	// re-sent after a crash, so its id is remembered longer (dedupe.go).
	From string `json:"f,omitempty"`
	// Wake marks a message that carries no event: it makes the instance's
	// owner load it again (to consume stashed events left over by an
	// episode that could not take them all).
	Wake bool `json:"w,omitempty"`
	// Benign counts the deliveries that ended in a release that was not
	// the message's fault; they do not count toward MaxDequeueCount.
	Benign int64 `json:"bn,omitempty"`
	// Hand is 1 for a message delivered by hand (see handDeliver): a
	// delivery the queue's DequeueCount does not count.
	Hand int64 `json:"hd,omitempty"`
	// Parts makes the message a bundle: the envelopes of events for any
	// instances, each with an id of its own (bundle.go). A bundle has an
	// ID, Hand and Benign, and nothing else.
	Parts []envelope `json:"ps,omitempty"`
}

// messageAge is how long a visible message has waited: since it became
// visible if it was sent delayed, else since it was inserted.
func messageAge(inserted *time.Time, text *string) time.Duration {
	if inserted == nil {
		return 0
	}
	since := *inserted
	if text != nil {
		var env envelope
		if json.Unmarshal([]byte(*text), &env) == nil && env.VisibleAt > 0 {
			if va := time.UnixMilli(env.VisibleAt); va.After(since) {
				since = va
			}
		}
	}
	return max(time.Since(since), 0)
}

// maxVisibility is kept below the service's 7-day limit; a longer delay
// is chained: the message carries NotBefore and is sent again on arrival.
const maxVisibility = 7*24*time.Hour - time.Hour

func (b *Backend) maxVisibility() time.Duration {
	if b.opts.maxVisibility > 0 {
		return b.opts.maxVisibility
	}
	return maxVisibility
}

// blobName places an instance's blobs under one prefix, so purge finds them.
func blobPrefix(instance string) string { return escapeKey(instance) + "/" }

// send enqueues env's event to q, visible at visibleAt (zero: now), moving a
// large event to a blob first.
func (b *Backend) send(ctx context.Context, q *azqueue.QueueClient, env envelope, e *dtbackend.HistoryEvent, visibleAt time.Time) error {
	env, _, err := b.prepare(ctx, env, e)
	if err != nil {
		return err
	}
	return b.enqueue(ctx, q, env, visibleAt)
}

// prepare puts e into env, or into a new blob (whose name it returns) when
// it is too large for a queue message. Blob names are fresh, never reused:
// a blob is deleted only after the message that names it was consumed.
func (b *Backend) prepare(ctx context.Context, env envelope, e *dtbackend.HistoryEvent) (envelope, string, error) {
	if e == nil {
		return env, "", nil
	}
	payload, err := dtbackend.MarshalHistoryEvent(e)
	if err != nil {
		return env, "", err
	}
	env.Event, env.Blob = payload, ""
	if len(payload)*4/3 > maxInlineMessage {
		name := blobPrefix(env.Instance) + "msg-" + uuid.NewString() + ".gz"
		if err := b.putBlob(ctx, name, payload); err != nil {
			return env, "", err
		}
		env.Event, env.Blob = nil, name
		return env, name, nil
	}
	return env, "", nil
}

// enqueue sends a prepared envelope to q, visible at visibleAt (zero: now).
func (b *Backend) enqueue(ctx context.Context, q *azqueue.QueueClient, env envelope, visibleAt time.Time) error {
	return b.enqueueMsg(ctx, q, env, visibleAt, true)
}

// enqueueVisible is enqueue without hand delivery.
func (b *Backend) enqueueVisible(ctx context.Context, q *azqueue.QueueClient, env envelope, visibleAt time.Time) error {
	return b.enqueueMsg(ctx, q, env, visibleAt, false)
}

func (b *Backend) enqueueMsg(ctx context.Context, q *azqueue.QueueClient, env envelope, visibleAt time.Time, mayHand bool) error {
	var vis int32
	env.NotBefore, env.VisibleAt = 0, 0
	if !visibleAt.IsZero() {
		d := time.Until(visibleAt)
		if limit := b.maxVisibility(); d > limit {
			d = limit
			env.NotBefore = visibleAt.UnixMilli()
		}
		if d > 0 {
			vis = int32(math.Ceil(d.Seconds()))
			at := time.Now().Add(time.Duration(vis) * time.Second)
			env.VisibleAt = at.UnixMilli()
			b.noteTimer(at)
		}
	}
	hand := mayHand && vis == 0 && b.handDeliverable(q, env)
	if mayHand {
		env.Hand = 0 // a new message (enqueueVisible keeps the caller's count)
	}
	if hand {
		// Sent locked to this process (see handDeliver).
		vis = int32(b.opts.LockTimeout / time.Second)
		env.Hand = 1
	}
	body, err := json.Marshal(env)
	if err != nil {
		return fmt.Errorf("azurestorage: encode message: %w", err)
	}
	resp, err := b.put(ctx, q, body, vis)
	if err != nil {
		return fmt.Errorf("azurestorage: enqueue to %s: %w", queueName(q), err)
	}
	switch {
	case hand:
		b.handDeliver(ctx, q, env, string(body), resp)
	case vis == 0:
		if h, ok := ctx.Value(heldHandKey{}).(*heldHand); ok {
			h.visible = append(h.visible, q) // the caller announces it later
		} else {
			b.announce(q)
		}
	}
	return nil
}

// put enqueues body to q, invisible for vis seconds, never expiring.
func (b *Backend) put(ctx context.Context, q *azqueue.QueueClient, body []byte, vis int32) (azqueue.EnqueueMessagesResponse, error) {
	var resp azqueue.EnqueueMessagesResponse
	err := b.storage(ctx, "enqueue", func(ctx context.Context) error {
		var err error
		resp, err = q.EnqueueMessage(ctx, string(body), &azqueue.EnqueueMessageOptions{TimeToLive: to.Ptr[int32](-1), VisibilityTimeout: &vis})
		return err
	})
	if err == nil && b.hooks.enqueued != nil {
		b.hooks.enqueued(q, string(body), resp)
	}
	return resp, err
}

func queueName(q *azqueue.QueueClient) string {
	u := strings.TrimRight(q.URL(), "/")
	return u[strings.LastIndex(u, "/")+1:]
}

// inMsg is one dequeued message.
type inMsg struct {
	queue        *azqueue.QueueClient
	partition    int // control queue index, -1 for the work-item queue
	msgID        string
	dequeueCount int64
	env          envelope
	event        *dtbackend.HistoryEvent
	// inserted is when the queue message was sent (zero: unknown); see
	// unstarted.go, which waits a while for the status row of an instance
	// whose start or terminate was sent only moments ago.
	inserted time.Time

	// lk serialises the storage calls on the message (renew, release,
	// delete: each changes or needs the pop receipt) and guards the
	// fields below.
	lk      sync.Mutex
	pop     string
	content string
	gone    bool // deleted or released: no longer ours to renew

	// carrier, for an activity result handed to the instance's episode in
	// this process without a queue message (see carry), is the activity's
	// own message: deleted once the episode that consumes the result
	// commits, it is what makes the result durable until then.
	carrier *inMsg
	// bundle is set on a bundle's own message, the carrier of its parts.
	bundle *bundle
	// consumed marks a bundle's part whose episode committed it (guarded
	// by its bundle's mu).
	consumed bool

	// lockNs is when the current lock began (dequeue or renewal), unix
	// nanoseconds. Atomic, not under lk: lk is held across storage calls,
	// and keepLocks reads every held message's time under the backend's
	// mutex, which must never wait for a request.
	lockNs atomic.Int64
}

// lockedAt is when the message's current lock began.
func (m *inMsg) lockedAt() time.Time {
	if m.carrier != nil {
		return m.carrier.lockedAt()
	}
	return time.Unix(0, m.lockNs.Load())
}

// newInMsg is a message just dequeued: its lock began at now.
func newInMsg(q *azqueue.QueueClient, partition int, msgID, pop string, now time.Time) *inMsg {
	m := &inMsg{queue: q, partition: partition, msgID: msgID, pop: pop}
	m.lockNs.Store(now.UnixNano())
	return m
}

// decode parses a dequeued message and loads its event (from a blob if needed).
func (b *Backend) decode(ctx context.Context, m *inMsg) error {
	if err := json.Unmarshal([]byte(m.content), &m.env); err != nil {
		return fmt.Errorf("message is not a task hub envelope: %w", err)
	}
	if len(m.env.Parts) > 0 {
		if m.env.ID == "" || m.env.Instance != "" || m.env.Event != nil || m.env.Blob != "" {
			return errors.New("message is not a task hub bundle: a bundle has an id and parts only")
		}
		return nil // its parts are read by unbundle
	}
	if m.env.ID == "" || m.env.Instance == "" {
		return errors.New("message is not a task hub envelope: no id or instance")
	}
	if m.env.Wake {
		return nil
	}
	payload := m.env.Event
	if m.env.Blob != "" {
		var err error
		if payload, err = b.getBlob(ctx, m.env.Blob); err != nil {
			return err
		}
	}
	e, err := dtbackend.UnmarshalHistoryEvent(payload)
	if err != nil {
		return err
	}
	if e.GetEventType() == nil {
		return errors.New("message has no event")
	}
	m.event = e
	return nil
}

// dequeue receives up to n messages from q.
func (b *Backend) dequeue(ctx context.Context, q *azqueue.QueueClient, partition int, n int32) ([]*inMsg, error) {
	vis := int32(b.opts.LockTimeout / time.Second)
	resp, err := q.DequeueMessages(ctx, &azqueue.DequeueMessagesOptions{NumberOfMessages: &n, VisibilityTimeout: &vis})
	if err != nil {
		return nil, fmt.Errorf("azurestorage: dequeue from %s: %w", queueName(q), err)
	}
	now := time.Now()
	var out, held []*inMsg
	for _, m := range resp.Messages {
		im := newInMsg(q, partition, *m.MessageID, *m.PopReceipt, now)
		if m.MessageText != nil {
			im.content = *m.MessageText
		}
		if m.DequeueCount != nil {
			im.dequeueCount = *m.DequeueCount
		}
		if m.InsertionTime != nil {
			im.inserted = *m.InsertionTime
		}
		err := b.decode(ctx, im)
		im.dequeueCount += im.env.Hand // the hand delivery the queue did not count
		if err != nil {
			if isNotFound(err) {
				// A message's blob is deleted only after the message was
				// consumed: this is a copy of a consumed message.
				b.log.Debug("azurestorage: dropping a copy of a consumed message (its blob is gone)", "queue", queueName(q), "instance", im.env.Instance)
				b.deleteMsg(ctx, im)
				continue
			}
			b.poison(ctx, im, "unreadable: "+err.Error(), im.dequeueCount)
			continue
		}
		if len(im.env.Parts) > 0 {
			out = append(out, b.receiveBundle(ctx, im)...)
			continue
		}
		// Deliveries that ended in a benign release (see release) do not
		// count: a message is poison when it failed MaxDequeueCount times
		// — its episode failed, or its worker died holding it.
		if failed := im.failures(); failed >= int64(b.opts.MaxDequeueCount) {
			b.poison(ctx, im, fmt.Sprintf("%d deliveries failed (MaxDequeueCount %d): its worker died or stalled holding it", failed, b.opts.MaxDequeueCount), failed)
			continue
		}
		if im.env.NotBefore > 0 && time.UnixMilli(im.env.NotBefore).After(time.Now()) {
			// A chained delay: send again for the rest of it. Any remainder
			// counts: visibility is rounded up to whole seconds, so this
			// makes a timer at most a second late, never early.
			if err := b.enqueue(ctx, q, im.env, time.UnixMilli(im.env.NotBefore)); err != nil {
				b.hold(held...)
				return out, err
			}
			b.deleteMsg(ctx, im)
			continue
		}
		held = append(held, im)
		out = append(out, im)
	}
	b.hold(held...)
	return out, nil
}

// deleteMsg deletes a consumed message; a message already gone (its lock
// expired and another consumer took it) is not an error here.
func (b *Backend) deleteMsg(ctx context.Context, m *inMsg) error {
	if m.isPart() {
		m.lk.Lock()
		gone := m.gone
		m.gone = true
		m.lk.Unlock()
		if gone {
			return nil
		}
		return b.settle(ctx, m, true)
	}
	if m.carrier != nil {
		// A carried result is consumed: its activity's message goes.
		m.lk.Lock()
		m.gone = true
		m.lk.Unlock()
		if err := b.deleteMsg(ctx, m.carrier); err != nil {
			return err
		}
		if m.carrier.env.Blob != "" {
			b.deleteBlob(ctx, m.carrier.env.Blob)
		}
		return nil
	}
	b.unhold(m)
	m.lk.Lock()
	defer m.lk.Unlock()
	err := b.storage(ctx, "delete message", func(ctx context.Context) error {
		_, err := m.queue.DeleteMessage(ctx, m.msgID, m.pop, nil)
		return err
	})
	m.gone = true
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("azurestorage: delete message from %s: %w", queueName(m.queue), err)
	}
	return nil
}

// release makes a message visible again after delay. A benign release
// (the message was not processed, or processing failed for a reason that
// is not the message's: storage, shutdown, a lost lease) is recorded in the
// message, so it does not count toward MaxDequeueCount (see poison).
func (b *Backend) release(ctx context.Context, m *inMsg, delay time.Duration, benign bool) error {
	if m.carrier != nil {
		return b.materialize(ctx, m, delay, benign)
	}
	b.unhold(m)
	m.lk.Lock()
	defer m.lk.Unlock()
	vis := int32(delay / time.Second)
	content := m.content
	if benign {
		env := m.env
		env.Benign++
		if body, err := json.Marshal(env); err == nil {
			content = string(body)
		}
	}
	err := b.storage(ctx, "release message", func(ctx context.Context) error {
		_, err := m.queue.UpdateMessage(ctx, m.msgID, m.pop, content, &azqueue.UpdateMessageOptions{VisibilityTimeout: &vis})
		return err
	})
	m.gone = true
	if err != nil {
		if isNotFound(err) {
			return dtbackend.ErrWorkItemLockLost
		}
		return fmt.Errorf("azurestorage: release message in %s: %w", queueName(m.queue), err)
	}
	return nil
}

// renew extends a message's lock by LockTimeout from now. The message
// keeps its dequeue count; m gets the new pop receipt.
func (b *Backend) renew(ctx context.Context, m *inMsg) error {
	m.lk.Lock()
	defer m.lk.Unlock()
	if m.gone {
		return dtbackend.ErrWorkItemLockLost
	}
	vis := int32(b.opts.LockTimeout / time.Second)
	at := time.Now()
	err := b.storage(ctx, "renew message", func(ctx context.Context) error {
		resp, err := m.queue.UpdateMessage(ctx, m.msgID, m.pop, m.content, &azqueue.UpdateMessageOptions{VisibilityTimeout: &vis})
		if err == nil && resp.PopReceipt != nil {
			m.pop = *resp.PopReceipt
		}
		return err
	})
	if err != nil {
		if isNotFound(err) {
			m.gone = true
			return dtbackend.ErrWorkItemLockLost
		}
		return fmt.Errorf("azurestorage: renew message in %s: %w", queueName(m.queue), err)
	}
	m.lockNs.Store(at.UnixNano())
	return nil
}

// Lock renewal. Every message this worker holds — buffered, in a work item,
// an activity running for hours — has its lock renewed before it expires,
// so a healthy episode or activity of any length keeps its messages and
// runs once: a message reappears only if its worker died (or stalled for a
// whole LockTimeout). Renewal does not change the dequeue count.

// hold starts renewing msgs' locks; deleteMsg and release stop it.
func (b *Backend) hold(msgs ...*inMsg) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range msgs {
		b.held[m] = struct{}{}
	}
}

func (b *Backend) unhold(msgs ...*inMsg) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range msgs {
		delete(b.held, m)
		if m.carrier != nil {
			delete(b.held, m.carrier) // a "dead" worker renews neither
		}
	}
}

// keepLocks renews, every LockTimeout/6, the held messages whose lock is
// past a third of LockTimeout, until Close.
func (b *Backend) keepLocks() {
	every := max(b.opts.LockTimeout/6, 100*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-b.bg.Done():
			return
		case <-t.C:
		}
		b.mu.Lock()
		var due []*inMsg
		for m := range b.held {
			if time.Since(m.lockedAt()) > b.opts.LockTimeout/3 {
				due = append(due, m)
			}
		}
		b.mu.Unlock()
		sem := make(chan struct{}, 8)
		var wg sync.WaitGroup
		for _, m := range due {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				ctx, cancel := context.WithTimeout(b.bg, b.opts.LockTimeout/3)
				defer cancel()
				if err := b.renew(ctx, m); err != nil {
					if errors.Is(err, dtbackend.ErrWorkItemLockLost) {
						b.unhold(m)
					}
					if b.bg.Err() == nil {
						b.log.Warn("azurestorage: renew message lock", "queue", queueName(m.queue), "instance", m.env.Instance, "err", err)
					}
				}
			}()
		}
		wg.Wait()
	}
}

func (b *Backend) putBlob(ctx context.Context, name string, data []byte) error {
	gz, err := gzipBytes(data)
	if err != nil {
		return err
	}
	if err := b.storage(ctx, "upload blob", func(ctx context.Context) error {
		_, err := b.cl.blob.UploadBuffer(ctx, b.names.largeMessages, name, gz, nil)
		return err
	}); err != nil {
		return fmt.Errorf("azurestorage: upload blob %s: %w", name, err)
	}
	return nil
}

func (b *Backend) getBlob(ctx context.Context, name string) ([]byte, error) {
	var data []byte
	err := b.storage(ctx, "download blob", func(ctx context.Context) error {
		resp, err := b.cl.blob.DownloadStream(ctx, b.names.largeMessages, name, nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		data, err = io.ReadAll(resp.Body)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("azurestorage: download blob %s: %w", name, err)
	}
	return gunzipBytes(data)
}

// deleteBlobsUnder removes every blob under prefix.
func (b *Backend) deleteBlobsUnder(ctx context.Context, prefix string) error {
	pager := b.cl.blob.NewListBlobsFlatPager(b.names.largeMessages, &azblob.ListBlobsFlatOptions{Prefix: &prefix})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("azurestorage: list blobs %s: %w", prefix, err)
		}
		for _, item := range page.Segment.BlobItems {
			if _, err := b.cl.blob.DeleteBlob(ctx, b.names.largeMessages, *item.Name, nil); err != nil && !isNotFound(err) {
				return fmt.Errorf("azurestorage: delete blob %s: %w", *item.Name, err)
			}
		}
	}
	return nil
}

// Hand delivery: a message this process sends to itself skips the queue's
// read.
//
// A message for a control queue whose partition this worker holds, or for
// the work-item queue while one of this process's activity slots is
// waiting, is sent already locked (invisible for LockTimeout, as a dequeue
// would leave it), and the answer's pop receipt makes it this process's
// dequeued message: it goes straight into the per-instance buffer or the
// activity buffer, its lock renewed like any other. Nothing else changes:
// it is deleted after its episode or activity, released when its partition
// goes, and if this process dies it becomes visible when its lock runs out
// and another worker takes it, exactly as a message the dead process had
// dequeued. So one dequeue per message is saved, and a poll round trip of
// latency. Work-item messages are taken only while this process's activity
// poller runs and fewer than activityBatch wait in its buffer, so a busy
// worker does not hoard activities that idle workers could run.
//
// Order: a message handed over overtakes the messages waiting in its queue.
// So a queue is served by hand only while it has no backlog (its last poll
// found less than a full batch; not before the first poll of a partition
// just taken over, whose queue holds what piled up while it had no owner):
// a message then overtakes at most what arrived within a poll interval. A
// watchdog alarm handed over right after a takeover would otherwise be
// handled before the telemetry signals queued during the takeover, and
// fail a mission whose drone reported all along.

// handDeliverable reports whether a message to q can be delivered by hand.
func (b *Backend) handDeliverable(q *azqueue.QueueClient, env envelope) bool {
	if env.Blob != "" || (env.Event == nil && !env.Wake) || b.bg.Err() != nil {
		return false
	}
	if q == b.work {
		b.mu.Lock()
		buffered := len(b.actBuf)
		b.mu.Unlock()
		return buffered < activityBatch && b.poll.isDrained(0) &&
			time.Since(time.Unix(0, b.actPolling.Load())) < b.opts.MaxPollInterval+time.Second
	}
	// What a carried result needs (carriable), and a queue without a
	// backlog: a message handed over may not overtake one.
	return b.carriable(q) && b.poll.isDrained(b.queuePartition(q)+1)
}

// carriable reports whether an activity result for control queue q can be
// carried (see carry). Unlike a message handed over, a result may overtake
// the queue's backlog, so the queue need not be drained: nothing queued for
// an instance has to reach it before the result of an activity it
// scheduled. Messages from others (events, signals, terminate) are
// concurrent with the result, and any order of the two is one the senders
// could have produced; results of the instance's other activities may come
// in any order; and a message the instance sent itself before scheduling
// the activity (a timer) is not ordered with the activity either. The
// backlog bound and the poller check still apply: a carried result stands
// for its activity message, held and renewed by this process, and messages
// held here are invisible to everyone else and to the queue-lag measure
// that moves partitions off a worker that falls behind.
func (b *Backend) carriable(q *azqueue.QueueClient) bool {
	if b.bg.Err() != nil {
		return false
	}
	p := b.queuePartition(q)
	if p < 0 {
		return false
	}
	b.mu.Lock()
	backlog := len(b.ready)
	b.mu.Unlock()
	return b.lm.isActive(p) && backlog < maxHandBacklog &&
		time.Since(time.Unix(0, b.orchPolling.Load())) < b.opts.MaxPollInterval+time.Second
}

// queuePartition is the partition of control queue q, or -1 for any other
// queue (the work-item and telemetry queues).
func (b *Backend) queuePartition(q *azqueue.QueueClient) int {
	for p, c := range b.control {
		if c == q {
			return p
		}
	}
	return -1
}

// maxHandBacklog is the most instances waiting for an episode in this
// process for which control messages are still delivered by hand.
const maxHandBacklog = 256

// handDeliver buffers a message sent locked to this process.
func (b *Backend) handDeliver(ctx context.Context, q *azqueue.QueueClient, env envelope, body string, resp azqueue.EnqueueMessagesResponse) {
	if len(resp.Messages) == 0 || resp.Messages[0].MessageID == nil || resp.Messages[0].PopReceipt == nil {
		return // no receipt: the message shows up when its lock runs out
	}
	partition := b.queuePartition(q)
	m := newInMsg(q, partition, *resp.Messages[0].MessageID, *resp.Messages[0].PopReceipt, time.Now())
	m.content, m.env = body, env
	m.inserted = time.Now()
	m.dequeueCount = 1 // this delivery (env.Hand records it for the queue's later deliveries)
	if !env.Wake {
		e, err := dtbackend.UnmarshalHistoryEvent(env.Event)
		if err != nil {
			return // unreachable: we encoded it; it is read when its lock runs out
		}
		m.event = e
	}
	b.hold(m)
	if h, ok := ctx.Value(heldHandKey{}).(*heldHand); ok && partition >= 0 {
		h.msgs = append(h.msgs, m) // buffered by the caller, later
		return
	}
	if partition < 0 {
		b.mu.Lock()
		b.actBuf = append(b.actBuf, m)
		b.mu.Unlock()
		b.actWake.Notify()
		return
	}
	b.buffer([]*inMsg{m})
	b.orchWake.Notify()
}

// Carried results: an activity result handed to its instance's episode in
// this process, with no queue message at all.
//
// When the instance's partition is one this worker serves by hand (see
// handDeliverable), CompleteActivityWorkItem neither sends the result nor
// deletes the activity message: the result goes straight into the
// instance's buffer, and the activity message, still locked and renewed,
// stands for it. The episode that consumes the result deletes the activity
// message after its commit (deleteMsg), so the result is never lost: until
// that commit, the activity message exists, and if this process dies it
// reappears when its lock runs out and the activity runs again elsewhere
// (activities are at-least-once; its second result is dropped as a copy if
// the first was committed). Anything else that would hand the result back
// to the queue (an abandoned or failed episode, a lost partition, Close)
// sends it to the control queue for real first, then deletes the activity
// message (materialize). Two requests per activity are saved: the result's
// enqueue and its delete.

// carry hands an activity's result to its instance's buffer, carried by the
// activity message m, and reports whether it did.
func (b *Backend) carry(m *inMsg, env envelope, result *dtbackend.HistoryEvent) bool {
	q := b.controlFor(env.Instance)
	payload, err := dtbackend.MarshalHistoryEvent(result)
	if err != nil || len(payload)*4/3 > maxInlineMessage {
		return false
	}
	env.Event = payload
	if !b.carriable(q) {
		return false
	}
	body, err := json.Marshal(env)
	if err != nil {
		return false
	}
	r := &inMsg{queue: q, partition: partitionOf(env.Instance, b.names.partitions), msgID: "carried:" + m.msgID,
		env: env, event: result, content: string(body), carrier: m, dequeueCount: 1}
	b.buffer([]*inMsg{r})
	b.orchWake.Notify()
	return true
}

// materialize sends a carried result to its control queue (visible after
// delay) and then deletes the activity message that carried it. If the send
// fails, the activity message is released instead: the activity runs again
// and its result takes the usual way.
func (b *Backend) materialize(ctx context.Context, m *inMsg, delay time.Duration, benign bool) error {
	m.lk.Lock()
	if m.gone {
		m.lk.Unlock()
		return dtbackend.ErrWorkItemLockLost
	}
	m.gone = true
	m.lk.Unlock()
	carrier := m.carrier
	at := time.Time{}
	if delay > 0 {
		at = time.Now().Add(delay)
	}
	// Its carried delivery counts toward MaxDequeueCount like any other
	// (Hand), unless it ended in a benign release (Benign).
	env := m.env
	env.Hand = m.dequeueCount
	if benign {
		env.Benign++
	}
	// Visible, never handed over again: whoever releases a message wants
	// the queue to have it.
	if err := b.enqueueVisible(ctx, m.queue, env, at); err != nil {
		if m.isPart() {
			// Unsettled, its bundle must come back whole.
			b.abandon(carrier)
			return fmt.Errorf("azurestorage: send a bundled event alone: %w", err)
		}
		if rerr := b.release(ctx, carrier, 0, true); rerr != nil && !errors.Is(rerr, dtbackend.ErrWorkItemLockLost) {
			b.log.Debug("azurestorage: release an activity message after its result could not be sent (its lock will expire)", "err", rerr)
		}
		return fmt.Errorf("azurestorage: send a carried activity result: %w", err)
	}
	if m.isPart() {
		if err := b.settle(ctx, m, false); err != nil {
			b.log.Debug("azurestorage: delete a bundle whose last event was sent alone (its events come again as copies)", "err", err)
		}
		return nil
	}
	if err := b.deleteMsg(ctx, carrier); err != nil {
		b.log.Debug("azurestorage: delete an activity message whose result was sent (the activity may run again)", "err", err)
	}
	if carrier.env.Blob != "" {
		b.deleteBlob(ctx, carrier.env.Blob)
	}
	return nil
}

// announce makes the consumers of q look at it soon: this process's
// poller, and the owner of its partition elsewhere (wake.go).
func (b *Backend) announce(q *azqueue.QueueClient) {
	b.markDirty(q)
	b.wakeups.sent(q)
}

// heldHandKey marks a context whose enqueues the caller makes known
// itself (bufferHeld), once what must precede their episode is written:
// a start is neither handed over, nor announced to a poller here or
// elsewhere, before its status row exists, or its first episode would
// commit the row itself, racing the creator's Add, and one would lose.
// (A consumer that polls the queue on its own may still find the start
// first; the creator's Add then conflicts and adopts the row.)
type heldHandKey struct{}

type heldHand struct {
	msgs    []*inMsg               // delivered by hand, to buffer
	visible []*azqueue.QueueClient // enqueued visible, to announce
}

// bufferHeld buffers and announces what a heldHand held back.
func (b *Backend) bufferHeld(h *heldHand) {
	for _, q := range h.visible {
		b.announce(q)
	}
	if len(h.msgs) == 0 {
		return
	}
	b.buffer(h.msgs)
	b.orchWake.Notify()
}
