package azurestorage

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/google/uuid"
	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// Row keys inside an instance's partition of <Hub>History.
//
//	meta                          the status row ("sentinel"); its ETag fences every commit
//	h|<gen 8 hex>|<pos 16 hex>    history events [pos, pos+N) of execution generation gen
//	o|<seq 16 hex>                the outbox of commit seq: messages to send after it
//	s|<unix nanos>|<message id>   an event that arrived before the instance started
//
// Invariant (fencing): history and outbox rows are written only in the
// commit's entity-group transaction, which is conditional on the sentinel's
// ETag, so a row that committed history points to is never overwritten or
// deleted by anyone but the next fenced commit. Rows of an earlier
// generation (before a continue-as-new) are garbage; fenced commits delete
// them a few at a time.
const (
	sentinelRK   = "meta"
	historyRKPre = "h|"
	outboxRKPre  = "o|"
	stashRKPre   = "s|"
)

func historyRK(gen int64, pos int) string { return fmt.Sprintf("%s%08x|%016x", historyRKPre, gen, pos) }

func outboxRK(seq int64) string { return fmt.Sprintf("%s%016x", outboxRKPre, seq) }

// parseHistoryRK splits a history row key; ok is false for other keys.
func parseHistoryRK(rk string) (gen int64, pos int, ok bool) {
	rest, found := strings.CutPrefix(rk, historyRKPre)
	if !found {
		return 0, 0, false
	}
	g, p, found := strings.Cut(rest, "|")
	if !found {
		return 0, 0, false
	}
	gn, err1 := strconv.ParseInt(g, 16, 64)
	pn, err2 := strconv.ParseInt(p, 16, 64)
	return gn, int(pn), err1 == nil && err2 == nil
}

// Packed rows. One commit writes its new history events as one row (and
// its outbox as one more), whatever their number, so any episode fits in
// one entity-group transaction (at most 100 operations, under 4 MB): the
// payload is split over binary properties D00, D01, ... of packChunk bytes
// each, or, above maxPackedInline, gzipped to a blob named in "Blob".
const (
	packChunk       = 48 << 10  // under the 64 KiB binary property limit
	maxPackedInline = 480 << 10 // 10 chunks: the row stays well under 1 MiB
)

// pack stores data in row e, inline or in a new blob under the instance's
// prefix. It returns the blob's name, or "".
func (b *Backend) pack(ctx context.Context, e entity, instance, kind string, data []byte) (string, error) {
	e["Len"] = len(data)
	if len(data) > maxPackedInline {
		name := blobPrefix(instance) + kind + "-" + uuid.NewString() + ".gz"
		if err := b.putBlob(ctx, name, data); err != nil {
			return "", err
		}
		e["Blob"] = name
		return name, nil
	}
	for i := 0; len(data) > 0; i++ {
		n := min(len(data), packChunk)
		e.setBinary(fmt.Sprintf("D%02d", i), data[:n])
		data = data[n:]
	}
	return "", nil
}

// unpack reads what pack stored.
func (b *Backend) unpack(ctx context.Context, e entity) ([]byte, error) {
	if blob := e.str("Blob"); blob != "" {
		return b.getBlobCached(ctx, blob)
	}
	var out []byte
	for i := 0; ; i++ {
		name := fmt.Sprintf("D%02d", i)
		if _, ok := e[name]; !ok {
			break
		}
		d, err := e.binary(name)
		if err != nil {
			return nil, err
		}
		out = append(out, d...)
	}
	if n := int(e.int64("Len")); n != len(out) {
		return nil, fmt.Errorf("row %s holds %d bytes, expected %d", e.str("RowKey"), len(out), n)
	}
	return out, nil
}

// encodeEvents concatenates length-prefixed marshaled events.
func encodeEvents(events []*dtbackend.HistoryEvent) ([]byte, error) {
	var out []byte
	for _, ev := range events {
		p, err := dtbackend.MarshalHistoryEvent(ev)
		if err != nil {
			return nil, err
		}
		out = binary.AppendUvarint(out, uint64(len(p)))
		out = append(out, p...)
	}
	return out, nil
}

func decodeEvents(data []byte) ([]*dtbackend.HistoryEvent, error) {
	var out []*dtbackend.HistoryEvent
	for len(data) > 0 {
		n, k := binary.Uvarint(data)
		if k <= 0 || uint64(len(data)-k) < n {
			return nil, errors.New("truncated event list")
		}
		ev, err := dtbackend.UnmarshalHistoryEvent(data[k : k+int(n)])
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
		data = data[k+int(n):]
	}
	return out, nil
}

// loadedState is one read of an instance partition.
type loadedState struct {
	sentinel entity      // nil if the instance has no status row
	etag     azcore.ETag // the sentinel's ETag
	history  []*dtbackend.HistoryEvent
	stash    []stashed
	current  []entity // the current generation's history rows
	outbox   []entity // rows of commits whose messages may not all be sent yet
	sent     []entity // outbox rows this worker sent (cached states only): deleted by the next commit, not sent again
	garbage  []entity // history rows of earlier generations
}

type stashed struct {
	rk, msgID, blob string
	// from is the sending orchestration of a message from an outbox,
	// which may be re-sent: its id is remembered as long (dedupe.go).
	from  string
	event *dtbackend.HistoryEvent
}

func (s *loadedState) historyCount() int {
	if s.sentinel == nil {
		return 0
	}
	return int(s.sentinel.int64("HistoryCount"))
}

func (s *loadedState) gen() int64 {
	if s.sentinel == nil {
		return 0
	}
	return s.sentinel.int64("Gen")
}

func (s *loadedState) seq() int64 {
	if s.sentinel == nil {
		return 0
	}
	return s.sentinel.int64("Seq")
}

// load reads an instance's whole partition (one range query): status row,
// the current generation's history (the committed prefix, HistoryCount
// events), pending outbox rows, stashed early events and garbage rows.
func (b *Backend) load(ctx context.Context, id string) (*loadedState, error) {
	rows, err := b.partitionRows(ctx, escapeKey(id), false)
	if err != nil {
		return nil, fmt.Errorf("azurestorage: load instance %s: %w", id, err)
	}
	st := &loadedState{}
	for _, e := range rows {
		if e.str("RowKey") == sentinelRK {
			st.sentinel, st.etag = e, e.etag()
		}
	}
	gen, n := st.gen(), st.historyCount()
	var hist, stash []entity
	for _, e := range rows {
		switch rk := e.str("RowKey"); {
		case strings.HasPrefix(rk, historyRKPre):
			g, _, ok := parseHistoryRK(rk)
			if ok && g == gen && st.sentinel != nil {
				hist = append(hist, e)
			} else {
				st.garbage = append(st.garbage, e)
			}
		case strings.HasPrefix(rk, outboxRKPre):
			st.outbox = append(st.outbox, e)
		case strings.HasPrefix(rk, stashRKPre):
			stash = append(stash, e)
		}
	}
	sort.Slice(hist, func(i, j int) bool { return hist[i].str("RowKey") < hist[j].str("RowKey") })
	for _, e := range hist {
		_, pos, _ := parseHistoryRK(e.str("RowKey"))
		if len(st.history) >= n {
			// Past the committed count: cannot be written by a fenced
			// commit, but if it exists it is not history.
			st.garbage = append(st.garbage, e)
			continue
		}
		st.current = append(st.current, e)
		if pos != len(st.history) {
			return nil, fmt.Errorf("azurestorage: instance %s: history row at %d missing (found one at %d)", id, len(st.history), pos)
		}
		data, err := b.unpack(ctx, e)
		if err != nil {
			return nil, fmt.Errorf("azurestorage: instance %s history at %d: %w", id, pos, err)
		}
		evs, err := decodeEvents(data)
		if err != nil {
			return nil, fmt.Errorf("azurestorage: instance %s history at %d: %w", id, pos, err)
		}
		st.history = append(st.history, evs...)
	}
	if len(st.history) != n {
		return nil, fmt.Errorf("azurestorage: instance %s: %d of %d history events found", id, len(st.history), n)
	}
	sort.Slice(st.outbox, func(i, j int) bool { return st.outbox[i].str("RowKey") < st.outbox[j].str("RowKey") })
	sort.Slice(stash, func(i, j int) bool { return stash[i].str("RowKey") < stash[j].str("RowKey") })
	for _, e := range stash {
		ev, err := b.rowEvent(ctx, e)
		if err != nil {
			return nil, fmt.Errorf("azurestorage: instance %s stashed event: %w", id, err)
		}
		st.stash = append(st.stash, stashed{rk: e.str("RowKey"), msgID: e.str("MsgID"), from: e.str("From"), blob: e.str("EventBlob"), event: ev})
	}
	return st, nil
}

// rowEvent reads a one-event row (stashed events).
func (b *Backend) rowEvent(ctx context.Context, e entity) (*dtbackend.HistoryEvent, error) {
	var payload []byte
	var err error
	if blob := e.str("EventBlob"); blob != "" {
		payload, err = b.getBlobCached(ctx, blob)
	} else {
		payload, err = e.binary("Event")
	}
	if err != nil {
		return nil, err
	}
	return dtbackend.UnmarshalHistoryEvent(payload)
}

// eventRow builds a row holding one event, moving a large one to a blob.
func (b *Backend) eventRow(ctx context.Context, instance, rk string, ev *dtbackend.HistoryEvent) (entity, error) {
	payload, err := dtbackend.MarshalHistoryEvent(ev)
	if err != nil {
		return nil, err
	}
	row := newEntity(escapeKey(instance), rk)
	if len(payload) > maxInlineProperty {
		blob := blobPrefix(instance) + "event-" + uuid.NewString() + ".gz"
		if err := b.putBlob(ctx, blob, payload); err != nil {
			return nil, err
		}
		row["EventBlob"] = blob
		return row, nil
	}
	row.setBinary("Event", payload)
	return row, nil
}

// blobCache keeps recently read blobs. Every blob this backend writes for
// history, outboxes and properties has a unique name and is never
// rewritten, so a cached copy can't be stale; an episode then does not
// download the same large events again on every load.
type blobCache struct {
	mu    sync.Mutex
	max   int
	size  int
	order *list.List // of *cached, most recent first
	byKey map[string]*list.Element
}

type cached struct {
	name string
	data []byte
}

func newBlobCache(max int) *blobCache {
	return &blobCache{max: max, order: list.New(), byKey: map[string]*list.Element{}}
}

func (c *blobCache) get(name string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[name]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*cached).data, true
}

func (c *blobCache) put(name string, data []byte) {
	if len(data) > c.max/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byKey[name]; ok {
		return
	}
	c.byKey[name] = c.order.PushFront(&cached{name, data})
	c.size += len(data)
	for c.size > c.max {
		last := c.order.Back()
		v := last.Value.(*cached)
		c.order.Remove(last)
		delete(c.byKey, v.name)
		c.size -= len(v.data)
	}
}

func (c *blobCache) drop(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[name]; ok {
		c.size -= len(el.Value.(*cached).data)
		c.order.Remove(el)
		delete(c.byKey, name)
	}
}

// getBlobCached reads a blob through the cache.
func (b *Backend) getBlobCached(ctx context.Context, name string) ([]byte, error) {
	if data, ok := b.blobs.get(name); ok {
		return data, nil
	}
	data, err := b.getBlob(ctx, name)
	if err != nil {
		return nil, err
	}
	b.blobs.put(name, data)
	return data, nil
}

// deleteBlob removes one blob, best effort (a leftover costs storage only;
// purge removes every blob of an instance).
func (b *Backend) deleteBlob(ctx context.Context, name string) {
	b.blobs.drop(name)
	err := b.storage(ctx, "delete blob", func(ctx context.Context) error {
		_, err := b.cl.blob.DeleteBlob(ctx, b.names.largeMessages, name, nil)
		return err
	})
	if err != nil && !isNotFound(err) {
		b.log.Debug("azurestorage: delete blob", "blob", name, "err", err)
	}
}
