package azurestorage

import (
	"bufio"
	"bytes"
	"container/list"
	"context"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/microsoft/durabletask-go/api"
)

// The instance cache: an episode on an instance this worker committed last
// needs no read of its partition.
//
// A worker that owns a partition is the only one that commits its
// instances, and every commit is conditional on the status row's ETag. So
// after a commit the worker knows the partition as well as a read would:
// the status row it wrote (with the ETag the transaction answered), the
// history (what it loaded plus the episode's new events), the rows it
// wrote, and the rows it deleted. The next episode starts from that.
//
// Invariants, and why they hold:
//   - A cached state is only ever trusted through the fence. Any other
//     writer of the partition (a client creating, replacing or purging the
//     instance, or another worker that owned the partition meanwhile)
//     changes the status row, so a commit built on a stale cached state
//     fails its If-Match with ErrWorkItemLockLost and sends nothing; the
//     episode runs again from a fresh read, because fetching takes the
//     entry out of the cache and only a successful commit puts one back.
//   - Decisions that no commit confirms are never made on a cached state:
//     when an episode built from one would consume messages without
//     committing (every message a copy or stale, nothing to record), the
//     partition is read again and the episode rebuilt (see buildWorkItem).
//     A message dropped as a copy or stale inside a committed episode was
//     judged on the state the fence proved current.
//   - Outbox rows of commits this worker has sent are not deleted at once:
//     the instance's next commit deletes them in its own transaction
//     (loadedState.sent). If the worker dies first, the next owner finds
//     them and sends them again, which receivers drop as copies (an
//     activity may run once more: activities are at-least-once). Rows of
//     entries that leave the cache (evicted, their partition released, the
//     backend closed, the instance ended) are deleted then.
//   - Entries of a partition this worker stops owning are dropped, so a
//     partition that comes back is read afresh.

// defaultInstanceCache is Options.InstanceCache's default.
const defaultInstanceCache = 1000

// maxCachedHistory is the longest history an entry keeps; longer ones are
// read each episode (their memory is better spent elsewhere).
const maxCachedHistory = 5000

type instanceCache struct {
	mu      sync.Mutex
	max     int
	entries map[string]*list.Element // of *cacheEntry, most recent at the front
	lru     list.List
	// flushing holds, per instance, a channel closed once the sent outbox
	// rows of its entry that left the cache are deleted: its next read
	// waits for it, or would send them again.
	flushing map[string]chan struct{}
}

type cacheEntry struct {
	id string
	st *loadedState
}

func newInstanceCache(max int) *instanceCache {
	return &instanceCache{max: max, entries: map[string]*list.Element{}, flushing: map[string]chan struct{}{}}
}

// take removes and returns id's entry: the episode that fetched it owns it
// until its commit puts a new one.
func (c *instanceCache) take(id string) *loadedState {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[id]
	if !ok {
		return nil
	}
	c.lru.Remove(el)
	delete(c.entries, id)
	return el.Value.(*cacheEntry).st
}

// put stores st for id and returns the states it evicted (their sent
// outbox rows still to delete).
func (c *instanceCache) put(id string, st *loadedState) []*loadedState {
	c.mu.Lock()
	defer c.mu.Unlock()
	var evicted []*loadedState
	if el, ok := c.entries[id]; ok {
		c.lru.Remove(el)
		evicted = append(evicted, el.Value.(*cacheEntry).st)
	}
	c.entries[id] = c.lru.PushFront(&cacheEntry{id: id, st: st})
	for c.lru.Len() > c.max {
		el := c.lru.Back()
		c.lru.Remove(el)
		e := el.Value.(*cacheEntry)
		delete(c.entries, e.id)
		evicted = append(evicted, e.st)
	}
	return evicted
}

// takeWhere removes and returns the entries whose instance id matches.
func (c *instanceCache) takeWhere(match func(id string) bool) map[string]*loadedState {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]*loadedState{}
	for id, el := range c.entries {
		if match(id) {
			c.lru.Remove(el)
			delete(c.entries, id)
			out[id] = el.Value.(*cacheEntry).st
		}
	}
	return out
}

// cachedLoad returns the cached state of id, or reads the partition.
func (b *Backend) cachedLoad(ctx context.Context, id string) (st *loadedState, cached bool, err error) {
	if b.cache != nil {
		if st := b.cache.take(id); st != nil {
			return st, true, nil
		}
		b.cache.mu.Lock()
		done := b.cache.flushing[id]
		b.cache.mu.Unlock()
		if done != nil {
			select {
			case <-done:
			case <-ctx.Done():
			case <-time.After(30 * time.Second):
			}
		}
	}
	st, err = b.load(ctx, id)
	return st, false, err
}

// cacheCommitted keeps the partition as the commit of plan left it. sent
// is the commit's outbox row, its messages sent (nil when it had none): a
// cached state keeps it for the next commit to delete; otherwise it is
// deleted now.
func (b *Backend) cacheCommitted(ctx context.Context, id string, it *orchItem, plan *commitPlan, sent entity) {
	ns := b.committedState(id, it, plan, sent)
	if ns == nil {
		if sent != nil {
			b.deleteRow(ctx, id, sent.str("RowKey"))
		}
		return
	}
	b.flushSent(b.cache.put(id, ns)...)
	if !b.lm.isActive(b.partition(id)) {
		// The partition went while the entry was built: dropCached may
		// have run before the put.
		b.dropCached(b.partition(id))
	}
}

// committedState is the partition after plan's commit over it.state, or
// nil when it is not to be cached.
func (b *Backend) committedState(id string, it *orchItem, plan *commitPlan, sent entity) *loadedState {
	if b.cache == nil || plan.etag == "" || !b.lm.isActive(b.partition(id)) {
		return nil
	}
	switch sentinelStatus(plan.sentinel) {
	case api.RUNTIME_STATUS_COMPLETED, api.RUNTIME_STATUS_FAILED, api.RUNTIME_STATUS_TERMINATED, api.RUNTIME_STATUS_CANCELED:
		return nil // an ended instance rarely has another episode
	}
	st := it.state
	sentinel, err := parseEntity(plan.sentinelJSON) // the types a read returns
	if err != nil {
		return nil
	}
	sentinel["odata.etag"] = string(plan.etag)
	ns := &loadedState{sentinel: sentinel, etag: plan.etag}
	kept := func(rows []entity) []entity {
		var out []entity
		for _, e := range rows {
			if !plan.deleted[e.str("RowKey")] {
				out = append(out, rowRef(e))
			}
		}
		return out
	}
	if plan.continued {
		ns.history = slices.Clone(plan.events)
		ns.garbage = append(kept(st.garbage), kept(st.current)...)
	} else {
		ns.history = slices.Concat(st.history, plan.events)
		ns.current = kept(st.current)
		ns.garbage = kept(st.garbage)
	}
	if len(ns.history) > maxCachedHistory {
		return nil
	}
	if plan.historyRow != nil {
		ns.current = append(ns.current, rowRef(plan.historyRow))
	}
	ns.stash = slices.Clone(st.stash[len(it.stashUsed):])
	if sent != nil {
		ns.sent = []entity{rowRef(sent)}
	}
	return ns
}

// rowRef is what a cached state keeps of a row: its key and the blob it
// refers to, which is all a later commit needs to delete it.
func rowRef(e entity) entity {
	r := entity{"RowKey": e.str("RowKey")}
	if blob := e.str("Blob"); blob != "" {
		r["Blob"] = blob
	}
	return r
}

// flushSent deletes, in the background, the sent outbox rows of states
// leaving the cache, eight at a time in one goroutine however many states
// leave at once (a partition of a thousand cached instances released). A
// row not deleted (the worker dies, storage fails) is sent again by the
// instance's next load, harmlessly.
func (b *Backend) flushSent(states ...*loadedState) {
	type row struct{ id, rk string }
	var rows []row
	done := map[string]chan struct{}{}
	for _, st := range states {
		if st == nil || len(st.sent) == 0 {
			continue
		}
		id := st.sentinel.str("InstanceID")
		for _, e := range st.sent {
			rows = append(rows, row{id, e.str("RowKey")})
		}
		if b.cache != nil && done[id] == nil {
			ch := make(chan struct{})
			done[id] = ch
			b.cache.mu.Lock()
			b.cache.flushing[id] = ch
			b.cache.mu.Unlock()
		}
	}
	if len(rows) == 0 {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer func() {
			if b.cache == nil {
				return
			}
			b.cache.mu.Lock()
			for id, ch := range done {
				if b.cache.flushing[id] == ch {
					delete(b.cache.flushing, id)
				}
				close(ch)
			}
			b.cache.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(b.bg), 30*time.Second)
		defer cancel()
		sem := make(chan struct{}, 8)
		var wg sync.WaitGroup
		for _, r := range rows {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				b.deleteRow(ctx, r.id, r.rk)
			}()
		}
		wg.Wait()
	}()
}

// dropCached forgets the cached instances of partition p (released or
// lost), deleting their sent outbox rows.
func (b *Backend) dropCached(p int) {
	if b.cache == nil {
		return
	}
	var states []*loadedState
	for _, st := range b.cache.takeWhere(func(id string) bool { return b.partition(id) == p }) {
		states = append(states, st)
	}
	b.flushSent(states...)
}

// flushCache empties the cache, deleting the sent outbox rows (at Close).
func (b *Backend) flushCache(ctx context.Context) {
	if b.cache == nil {
		return
	}
	for id, st := range b.cache.takeWhere(func(string) bool { return true }) {
		for _, row := range st.sent {
			if ctx.Err() != nil {
				return
			}
			b.deleteRow(ctx, id, row.str("RowKey"))
		}
	}
}

// The ETag of a transaction's first operation.
//
// aztables (v1.4.1) answers SubmitTransaction with an empty
// TransactionResponse: the operations' own responses, and with them the
// new ETag of the status row, are read and dropped. captureBody keeps the
// raw answer of the requests whose context asks for it, so that the commit
// can read the status row's new ETag from it instead of reading the row.

type captureKey struct{}

// bodyCapture receives the raw answer of one request (the last attempt's).
type bodyCapture struct {
	mu     sync.Mutex
	header http.Header
	body   []byte
}

func withCapture(ctx context.Context, c *bodyCapture) context.Context {
	return context.WithValue(ctx, captureKey{}, c)
}

func (c *bodyCapture) get() (http.Header, []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.header, c.body
}

// capturePolicy is a per-retry pipeline policy of the table client.
type capturePolicy struct{}

func (capturePolicy) Do(req *policy.Request) (*http.Response, error) {
	resp, err := req.Next()
	c, _ := req.Raw().Context().Value(captureKey{}).(*bodyCapture)
	if c == nil || err != nil || resp == nil || resp.Body == nil {
		return resp, err
	}
	// The pipeline has downloaded the body already: Payload returns it
	// without consuming it, and leaves it as it is for aztables, which
	// drains it, and for batchStatus, which reads a failed transaction's
	// inner status from it afterwards (retry.go).
	body, err := runtime.Payload(resp)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.header, c.body = resp.Header.Clone(), body
	c.mu.Unlock()
	return resp, nil
}

// firstOperationETag reads the ETag header of the first operation's
// response in a successful entity-group transaction's multipart answer;
// "" if there is none.
func firstOperationETag(header http.Header, body []byte) azcore.ETag {
	ops := batchResponses(header.Get("Content-Type"), body)
	if len(ops) == 0 || ops[0].StatusCode >= 300 {
		return ""
	}
	return azcore.ETag(ops[0].Header.Get("ETag"))
}

// operationETags reads the ETag header of every operation's response in a
// successful entity-group transaction's multipart answer, in order ("" for
// an operation answered without one, such as a delete); nil if the answer
// cannot be read or an operation failed.
func operationETags(header http.Header, body []byte) []azcore.ETag {
	ops := batchResponses(header.Get("Content-Type"), body)
	if ops == nil {
		return nil
	}
	out := make([]azcore.ETag, 0, len(ops))
	for _, op := range ops {
		if op.StatusCode >= 300 {
			return nil
		}
		out = append(out, azcore.ETag(op.Header.Get("ETag")))
	}
	return out
}

// batchResponses reads the operations' responses (status and headers) out
// of an entity-group transaction's multipart answer, in order; nil if it
// cannot be read. The answer is a batch part holding a changeset, whose
// parts are the operations' HTTP responses.
func batchResponses(contentType string, body []byte) []*http.Response {
	outer, err := multipartReader(contentType, body).NextPart()
	if err != nil {
		return nil
	}
	changeset, err := io.ReadAll(outer)
	if err != nil && len(changeset) == 0 {
		return nil
	}
	r := multipartReader(outer.Header.Get("Content-Type"), changeset)
	var out []*http.Response
	for {
		part, err := r.NextPart()
		if err == io.EOF {
			return out
		}
		if err != nil {
			return nil
		}
		resp, err := http.ReadResponse(bufio.NewReader(part), nil)
		if err != nil {
			return nil
		}
		resp.Body.Close()
		out = append(out, resp)
	}
}

// multipartReader reads a multipart body, taking the boundary from
// contentType or else from the body's first line.
func multipartReader(contentType string, body []byte) *multipart.Reader {
	boundary := ""
	if _, params, err := mime.ParseMediaType(contentType); err == nil {
		boundary = params["boundary"]
	}
	if boundary == "" {
		line, _, _ := strings.Cut(strings.TrimLeft(string(body), "\r\n"), "\n")
		boundary = strings.TrimPrefix(strings.TrimSpace(line), "--")
	}
	return multipart.NewReader(bytes.NewReader(body), boundary)
}
