package azurestorage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/taskhub"
)

// Bundles: many events for many instances in one queue message.
//
// Telemetry ingestion raises a signal to each mission whose drone changed,
// a few for every post of a hundred frames. One message each cost an
// enqueue and a delete per signal, and the delete is the queue's dearest
// operation (Azurite spends most of its time on it, and every message
// resident in its queues makes each delete dearer). AddNewOrchestrationEvents
// sends the events as bundles instead: one message whose envelope holds
// the events' own envelopes (Parts), each with an id of its own.
//
//   - Sending. The events for partitions this process serves by hand
//     (handDeliverable: its lease, its poller running, no backlog) go in
//     one bundle, sent locked to this process and buffered at once like a
//     message delivered by hand; the others go in one visible bundle per
//     partition, to its control queue, and its owner is woken. An
//     instance's events stay together and in order in one bundle; an
//     instance whose events do not fit (a large payload) has them sent
//     alone, in order.
//   - Receiving. A dequeued bundle becomes one inMsg per part, each
//     carried by the bundle's message (carrier, as a carried activity
//     result is): the bundle's lock, renewed while any part is held, is
//     what keeps them all. Parts go to their instances' buffers; a part
//     for a partition this worker does not hold is released, i.e. sent
//     alone to its own control queue (materialize), like any message of a
//     lost partition.
//   - Settling. A part is settled when its episode consumed it (deleteMsg),
//     it was dead-lettered, or it was sent alone (materialize). The bundle
//     message is deleted when its last part settles, and only then are the
//     consumed parts' ids confirmed (dedupe.go): until the delete the
//     bundle can come back whole, and its consumed parts must still be
//     recognised as copies.
//   - Crash or failure. If this process dies, the bundle's lock expires
//     and it comes back whole: consumed parts are dropped as copies (their
//     ids are in Seen, unconfirmed), the others are delivered. A part that
//     cannot be sent alone is left unsettled and the bundle's lock is no
//     longer renewed, so it comes back whole the same way. Counting toward
//     MaxDequeueCount: a part has its bundle's deliveries; sent alone it
//     keeps them (Hand).
//
// Order: a bundle delivered by hand overtakes at most what a poll interval
// brought, as any message delivered by hand; events of one instance keep
// the order they were given in.

// bundle is the state of a bundle message shared by its parts.
type bundle struct {
	mu    sync.Mutex
	parts []*inMsg
	// left counts the parts not yet settled. A part that can be neither
	// sent alone nor dead-lettered is never settled, so its bundle is
	// never deleted here and comes back whole (abandon).
	left int
}

// bundleBudget is the most bytes of parts a bundle carries, below the
// inline limit with room for the outer envelope.
const bundleBudget = maxInlineMessage - 512

// AddNewOrchestrationEvents implements taskhub.EventRaiser with bundles.
func (b *Backend) AddNewOrchestrationEvents(ctx context.Context, events []taskhub.RaisedEvent) error {
	// Each instance's parts, in the order the instances first appear.
	var order []string
	parts := map[string][]envelope{}
	alone := map[string]bool{}
	for i, r := range events {
		if r.Event == nil || r.Event.Timestamp == nil {
			return fmt.Errorf("azurestorage: event %d for %q: HistoryEvent must be non-nil and have a timestamp", i, r.Instance)
		}
		id := string(r.Instance)
		if id == "" {
			return fmt.Errorf("azurestorage: event %d: no instance id", i)
		}
		payload, err := dtbackend.MarshalHistoryEvent(r.Event)
		if err != nil {
			return fmt.Errorf("azurestorage: encode event %d for %s: %w", i, id, err)
		}
		if _, ok := parts[id]; !ok {
			order = append(order, id)
		}
		parts[id] = append(parts[id], envelope{ID: uuid.NewString(), Instance: id, Event: payload})
		if len(payload)*4/3 > bundleBudget/4 {
			alone[id] = true
		}
	}
	// Where each instance's parts go: one bundle for every partition served
	// here by hand (-1), one per other partition.
	local := map[int]bool{}
	dest := func(id string) int {
		p := b.partition(id)
		hand, ok := local[p]
		if !ok {
			hand = b.carriable(b.control[p]) && b.poll.isDrained(p+1)
			local[p] = hand
		}
		if hand {
			return -1
		}
		return p
	}
	var dests []int
	groups := map[int][]string{}
	for _, id := range order {
		if alone[id] {
			continue
		}
		d := dest(id)
		if _, ok := groups[d]; !ok {
			dests = append(dests, d)
		}
		groups[d] = append(groups[d], id)
	}
	var errs []error
	for _, id := range order {
		if alone[id] {
			errs = append(errs, b.sendAlone(ctx, id, parts[id]))
		}
	}
	for _, d := range dests {
		var batch []envelope
		size := 0
		flush := func() {
			if len(batch) > 0 {
				if err := b.sendBundle(ctx, d, batch); err != nil {
					errs = append(errs, err)
				}
			}
			batch, size = nil, 0
		}
		for _, id := range groups[d] {
			n := 0
			for _, env := range parts[id] {
				body, _ := json.Marshal(env) // as it will be in the bundle
				n += len(body) + 1
			}
			if n > bundleBudget {
				// Too many for one bundle: alone, in order.
				errs = append(errs, b.sendAlone(ctx, id, parts[id]))
				continue
			}
			if size+n > bundleBudget {
				flush()
			}
			batch = append(batch, parts[id]...)
			size += n
		}
		flush()
	}
	b.orchWake.Notify()
	return errors.Join(errs...)
}

// sendAlone sends an instance's parts one message each, in order, large
// events through blobs; it stops at the first that fails, which its later
// events must not overtake. None is delivered by hand: a message with a
// blob never is, and one after it must not overtake it.
func (b *Backend) sendAlone(ctx context.Context, id string, parts []envelope) error {
	for _, pe := range parts {
		e, err := dtbackend.UnmarshalHistoryEvent(pe.Event)
		if err != nil {
			return err
		}
		env, _, err := b.prepare(ctx, envelope{ID: pe.ID, Instance: id}, e)
		if err == nil {
			err = b.enqueueVisible(ctx, b.controlFor(id), env, time.Time{})
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// sendBundle sends parts as one message: to partition d's control queue
// (visible), or for d == -1 locked to this process, delivered by hand. One
// part is sent as a plain message.
func (b *Backend) sendBundle(ctx context.Context, d int, parts []envelope) error {
	hand := d < 0
	if hand {
		d = b.partition(parts[0].Instance)
	}
	q := b.control[d]
	if len(parts) == 1 {
		return b.enqueue(ctx, q, parts[0], time.Time{})
	}
	env := envelope{ID: uuid.NewString(), Parts: parts}
	var vis int32
	if hand {
		vis = int32(b.opts.LockTimeout / time.Second)
		env.Hand = 1
	}
	body, err := json.Marshal(env)
	if err != nil {
		return fmt.Errorf("azurestorage: encode bundle: %w", err)
	}
	resp, err := b.put(ctx, q, body, vis)
	if err != nil {
		return fmt.Errorf("azurestorage: enqueue a bundle of %d events to %s: %w", len(parts), queueName(q), err)
	}
	if !hand {
		b.announce(q)
		return nil
	}
	if len(resp.Messages) == 0 || resp.Messages[0].MessageID == nil || resp.Messages[0].PopReceipt == nil {
		return nil // no receipt: it shows up when its lock runs out
	}
	now := time.Now()
	m := newInMsg(q, d, *resp.Messages[0].MessageID, *resp.Messages[0].PopReceipt, now)
	m.content, m.env, m.inserted, m.dequeueCount = string(body), env, now, 1
	ps, bad := b.unbundle(m)
	if len(bad) > 0 {
		return nil // unreachable (we encoded them); they come back with the bundle
	}
	b.hold(m)
	b.buffer(ps)
	b.orchWake.Notify()
	return nil
}

// badPart is a part to dead-letter, and why.
type badPart struct {
	m   *inMsg
	why string
}

// unbundle makes the parts of bundle message m, carried by it. Parts that
// cannot be read are returned in bad, settled by whoever dead-letters them.
func (b *Backend) unbundle(m *inMsg) (parts []*inMsg, bad []badPart) {
	bs := &bundle{left: len(m.env.Parts)}
	m.bundle = bs
	for i, pe := range m.env.Parts {
		p := &inMsg{msgID: m.msgID + "." + strconv.Itoa(i), env: pe, carrier: m,
			dequeueCount: m.dequeueCount, inserted: m.inserted, partition: -1, queue: m.queue}
		p.env.Benign, p.env.Hand = m.env.Benign, 0
		bs.parts = append(bs.parts, p)
		err := partError(pe)
		if err == nil {
			p.partition = b.partition(pe.Instance)
			p.queue = b.control[p.partition]
			if p.event, err = dtbackend.UnmarshalHistoryEvent(pe.Event); err == nil && p.event.GetEventType() == nil {
				err = errors.New("part has no event")
			}
		}
		if err != nil {
			bad = append(bad, badPart{p, fmt.Sprintf("unreadable bundle part %d: %v", i, err)})
			continue
		}
		parts = append(parts, p)
	}
	return parts, bad
}

// receiveBundle turns a dequeued bundle into its parts, held by the
// bundle's message; a part that cannot be read, or whose deliveries failed
// MaxDequeueCount times, is dead-lettered on its own.
func (b *Backend) receiveBundle(ctx context.Context, m *inMsg) []*inMsg {
	if m.partition < 0 {
		b.poison(ctx, m, "a bundle in the work-item queue: bundles carry only orchestration events", m.dequeueCount)
		return nil
	}
	parts, bad := b.unbundle(m)
	b.hold(m) // before any part settles: the last one deletes it
	if failed := m.failures(); failed >= int64(b.opts.MaxDequeueCount) {
		why := fmt.Sprintf("%d deliveries failed (MaxDequeueCount %d): its worker died or stalled holding it", failed, b.opts.MaxDequeueCount)
		for _, p := range parts {
			bad = append(bad, badPart{p, why})
		}
		parts = nil
	}
	for _, bp := range bad {
		b.poison(ctx, bp.m, bp.why, bp.m.failures())
		bp.m.lk.Lock()
		gone := bp.m.gone
		bp.m.lk.Unlock()
		if !gone {
			// Not dead-lettered (storage failed): the bundle comes back
			// whole for another try.
			b.abandon(m)
		}
	}
	return parts
}

// partError says what makes a bundle's part unusable, or nil.
func partError(pe envelope) error {
	switch {
	case pe.ID == "" || pe.Instance == "":
		return errors.New("no id or instance")
	case len(pe.Parts) > 0 || pe.Blob != "" || pe.Wake || pe.NotBefore != 0:
		return errors.New("a part carries only an event")
	case len(pe.Event) == 0:
		return errors.New("no event")
	}
	return nil
}

// isPart reports whether m is a part of a bundle.
func (m *inMsg) isPart() bool { return m.carrier != nil && m.carrier.bundle != nil }

// settle records that part m is done with; consumed says its episode
// committed it. The last part to settle deletes the bundle's message and
// then confirms the consumed parts' ids.
func (b *Backend) settle(ctx context.Context, m *inMsg, consumed bool) error {
	bm := m.carrier
	bs := bm.bundle
	bs.mu.Lock()
	m.consumed = consumed
	bs.left--
	last := bs.left == 0
	bs.mu.Unlock()
	if !last {
		return nil
	}
	if err := b.deleteMsg(ctx, bm); err != nil {
		return err
	}
	byInstance := map[string][]*inMsg{}
	for _, p := range bs.parts {
		if p.consumed {
			byInstance[p.env.Instance] = append(byInstance[p.env.Instance], p)
		}
	}
	for id, ps := range byInstance {
		b.confirmIDs(id, ps)
	}
	return nil
}

// abandon gives bundle message bm up without deleting it, for a part that
// stays unsettled: its lock is no longer renewed, so it comes back whole
// (its consumed parts as copies).
func (b *Backend) abandon(bm *inMsg) { b.unhold(bm) }

// partContent is the text of part m as a message of its own, for a dead
// letter (a replay sends it alone).
func partContent(m *inMsg) string {
	body, _ := json.Marshal(m.env)
	return string(body)
}

// queueMessages counts the queue messages msgs came in: a bundle's parts
// are one.
func queueMessages(msgs []*inMsg) int {
	n := 0
	var last *inMsg
	for _, m := range msgs {
		if !m.isPart() {
			n++
		} else if m.carrier != last {
			n++
			last = m.carrier
		}
	}
	return n
}
