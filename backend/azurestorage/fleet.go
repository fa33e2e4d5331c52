package azurestorage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/internal/keyed"
)

// Fleet is the fleet.Store on Azure Tables.
//
// <Hub>Drones holds one row per drone (PartitionKey "drone", RowKey the
// escaped id) with the JSON record in Data; its ETag guards UpdateDrone.
// The same partition holds the watch index (Watched): up to three rows per
// drone, RowKey "%~q|" + the time of fleet.Watch.Quiet + "|" + escaped id,
// "%~d|" + DeadlineKey + "|" + escaped id and "%~a|" + escaped id
// (Attention), each with the drone's fleet.Watch in W. A drone row records
// its index rows and the Watch they hold (property Watch), and an update
// that changes them writes the drone row and its index rows in one
// entity-group transaction, so the index never disagrees with the records;
// it is left as it is while only LastFrameAt moves forward by less than
// fleet.WatchSlack. Escaped ids never start with "%~", so the two kinds of
// rows never meet.
// <Hub>Effects holds, per mission partition, one row per effect kind
// (RowKey "e|" + escaped kind) and a counter row (RowKey "seq") that numbers
// them; the effect and the counter change in one entity-group transaction,
// so an effect is recorded at most once and numbers never repeat.
type Fleet struct {
	drones  *aztables.Client
	effects *aztables.Client
	// locks queues the updates of one drone (UpdateDrone, UpdateDrones)
	// and the effects of one mission (RecordEffect) made through this Fleet.
	locks    keyed.Locks[struct{}]
	missions keyed.Locks[struct{}]
	// known holds the records this Fleet last wrote, with their ETags, so
	// that the next update of a drone skips its read. A record is used only
	// under the drone's lock and only as the base of a write guarded by its
	// ETag: if another process wrote the drone since, the write fails (412)
	// and the update reads the row, so a stale entry costs a round trip,
	// never a lost update.
	known knownMap[knownRecord]
	// effectSeqs holds the effect counters this Fleet last wrote, so that
	// recording a mission's next effect reads nothing (RecordEffect).
	effectSeqs knownMap[effectSeq]
	// backoff paces retries after lost races with other processes.
	backoff keyed.Backoff
	// slack is how far the index may keep LastFrameAt behind the record.
	slack time.Duration
	// legacy guards indexing the rows written before the index existed,
	// once per hub (the first Watched of a process checks the marker).
	legacy struct {
		sync.Mutex
		done bool
	}
}

var _ fleet.Store = (*Fleet)(nil)

const dronePartition = "drone"

func newFleet(ctx context.Context, svc *aztables.ServiceClient, n names) (*Fleet, error) {
	f := &Fleet{drones: svc.NewClient(n.dronesTable), effects: svc.NewClient(n.effectsTable), backoff: conflictBackoff, slack: fleet.WatchSlack}
	f.known.max = knownDrones
	f.effectSeqs.max = knownDrones
	switch _, err := svc.CreateTable(ctx, n.dronesTable, nil); {
	case err == nil:
		// A new hub has no rows of earlier versions to index.
		if _, err := f.drones.AddEntity(ctx, newEntity(dronePartition, watchMarker).marshal(), nil); err != nil && !isConflict(err) {
			return nil, fmt.Errorf("azurestorage: write the watch index marker: %w", err)
		}
		f.legacy.done = true
	case !isConflict(err):
		return nil, fmt.Errorf("azurestorage: create table %s: %w", n.dronesTable, err)
	}
	if err := createTable(ctx, svc, n.effectsTable); err != nil {
		return nil, err
	}
	return f, nil
}

func createTable(ctx context.Context, svc *aztables.ServiceClient, name string) error {
	if _, err := svc.CreateTable(ctx, name, nil); err != nil && !isConflict(err) {
		return fmt.Errorf("azurestorage: create table %s: %w", name, err)
	}
	return nil
}

func droneEntity(d fleet.Drone, st indexState) (entity, error) {
	data, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("azurestorage: encode drone %s: %w", d.ID, err)
	}
	idx, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("azurestorage: encode drone %s: %w", d.ID, err)
	}
	e := newEntity(dronePartition, escapeKey(d.ID))
	e["ID"] = d.ID
	e[watchProp] = string(idx)
	if len(data) > maxInlineProperty {
		gz, err := gzipBytes(data)
		if err != nil {
			return nil, err
		}
		if len(gz) > maxInlineProperty {
			return nil, fmt.Errorf("azurestorage: drone %s record is %d bytes, too large for a table row", d.ID, len(data))
		}
		e.setBinary("Data", gz)
		e["Gzip"] = true
		return e, nil
	}
	e.setBinary("Data", data)
	return e, nil
}

func decodeDrone(e entity) (fleet.Drone, error) {
	data, err := e.binary("Data")
	if err == nil && e.boolean("Gzip") {
		data, err = gunzipBytes(data)
	}
	var d fleet.Drone
	if err == nil {
		err = json.Unmarshal(data, &d)
	}
	if err != nil {
		return fleet.Drone{}, fmt.Errorf("azurestorage: drone %s has an unreadable record: %w", e.str("ID"), err)
	}
	return d, nil
}

// AddDrone implements fleet.Store.
func (f *Fleet) AddDrone(ctx context.Context, id string, home domain.LatLon) (fleet.Drone, error) {
	d := fleet.Drone{ID: id, Home: home}
	e, err := droneEntity(d, indexState{W: d.Watch()}) // no mission: nothing to index
	if err != nil {
		return fleet.Drone{}, err
	}
	if _, err := f.drones.AddEntity(ctx, e.marshal(), nil); err != nil {
		if isConflict(err) {
			return fleet.Drone{}, fmt.Errorf("%w: %s", fleet.ErrDroneExists, id)
		}
		return fleet.Drone{}, fmt.Errorf("azurestorage: add drone %s: %w", id, err)
	}
	return d, nil
}

// get reads a drone with its ETag and the index rows it records (nil for a
// row written before the index existed).
func (f *Fleet) get(ctx context.Context, id string) (fleet.Drone, azcore.ETag, *indexState, error) {
	resp, err := f.drones.GetEntity(ctx, dronePartition, escapeKey(id), nil)
	if err != nil {
		if isNotFound(err) {
			return fleet.Drone{}, "", nil, fmt.Errorf("%w: %s", fleet.ErrDroneNotFound, id)
		}
		return fleet.Drone{}, "", nil, fmt.Errorf("azurestorage: read drone %s: %w", id, err)
	}
	e, err := parseEntity(resp.Value)
	if err != nil {
		return fleet.Drone{}, "", nil, fmt.Errorf("azurestorage: read drone %s: %w", id, err)
	}
	d, err := decodeDrone(e)
	return d, resp.ETag, recordedIndex(e), err
}

// Drone implements fleet.Store.
func (f *Fleet) Drone(ctx context.Context, id string) (fleet.Drone, error) {
	d, _, _, err := f.get(ctx, id)
	return d, err
}

// droneRows is the filter of the drone rows, without the index rows.
var droneRows = fmt.Sprintf("PartitionKey eq %s and (RowKey lt %s or RowKey ge %s)", quote(dronePartition), quote(watchPrefix), quote(watchEnd))

// Drones implements fleet.Store.
func (f *Fleet) Drones(ctx context.Context) ([]fleet.Drone, error) {
	filter := droneRows
	pager := f.drones.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter})
	var out []fleet.Drone
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("azurestorage: list drones: %w", err)
		}
		for _, raw := range page.Entities {
			e, err := parseEntity(raw)
			if err != nil {
				return nil, fmt.Errorf("azurestorage: list drones: %w", err)
			}
			d, err := decodeDrone(e)
			if err != nil {
				return nil, err
			}
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// UpdateDrone implements fleet.Store with an ETag check.
//
// Updates of one drone through this Fleet queue on a per-drone lock, so the
// process never races itself through storage, and each starts from the
// record the last one wrote (known) when it has it, skipping the read. A
// write that loses to another process (412) is retried on a fresh read
// with exponential back-off and jitter, for as long as ctx allows: there is
// no attempt limit a busy drone could exhaust.
func (f *Fleet) UpdateDrone(ctx context.Context, id string, fn func(*fleet.Drone) error) (fleet.Drone, error) {
	l, err := f.locks.Lock(ctx, id)
	if err != nil {
		return fleet.Drone{}, fmt.Errorf("azurestorage: update drone %s: %w", id, err)
	}
	defer f.locks.Unlock(id, l)
	return f.updateLocked(ctx, id, fn)
}

// updateLocked is UpdateDrone once the drone's lock is held.
func (f *Fleet) updateLocked(ctx context.Context, id string, fn func(*fleet.Drone) error) (fleet.Drone, error) {
	bo := f.backoff
	conflicts := 0
	skipDeletes := false
	for {
		// Taken out: put back only once a write succeeds, so an update
		// whose outcome is unknown leaves the next one to read the row.
		base, cached := f.known.take(id)
		if !cached {
			var err error
			if base, err = f.read(ctx, id); err != nil {
				return fleet.Drone{}, err
			}
		}
		d, err := base.decode()
		if err != nil {
			if cached {
				continue
			}
			return fleet.Drone{}, err
		}
		if err := fn(&d); err != nil {
			if cached {
				continue // decide on the stored record, not on what this process last wrote
			}
			return fleet.Drone{}, err
		}
		d.ID = id
		w, err := f.plan(d, base, skipDeletes)
		if err != nil {
			return fleet.Drone{}, err
		}
		var newETag azcore.ETag
		if len(w.actions) == 1 {
			var resp aztables.UpdateEntityResponse
			resp, err = f.drones.UpdateEntity(ctx, w.actions[0].Entity, &aztables.UpdateEntityOptions{IfMatch: &base.etag, UpdateMode: aztables.UpdateModeReplace})
			newETag = resp.ETag
		} else {
			// The record and its index rows change together; the drone
			// row's new ETag is read from the transaction's answer.
			capture := &bodyCapture{}
			_, err = f.drones.SubmitTransaction(withCapture(ctx, capture), w.actions, nil)
			if err == nil {
				newETag = firstOperationETag(capture.get())
			}
		}
		switch {
		case err == nil:
			f.remember(id, w.written(newETag))
			return d, nil
		case isNotFound(err) && len(w.actions) > 1:
			// The drone row is gone, or an index row it records is (which
			// the transactions never leave): without the deletes, the
			// next attempt tells which.
			if skipDeletes {
				return fleet.Drone{}, fmt.Errorf("%w: %s", fleet.ErrDroneNotFound, id)
			}
			skipDeletes = true
		case isPrecondition(err):
			// Another process wrote the drone since it was read.
			if cached {
				continue // the known record was stale: read it now
			}
			conflicts++
			if err := bo.Wait(ctx); err != nil {
				return fleet.Drone{}, fmt.Errorf("%w: drone %s lost %d races to other writers: %w", fleet.ErrConflict, id, conflicts, err)
			}
		case isNotFound(err):
			return fleet.Drone{}, fmt.Errorf("%w: %s", fleet.ErrDroneNotFound, id)
		default:
			return fleet.Drone{}, fmt.Errorf("azurestorage: update drone %s: %w", id, err)
		}
	}
}

// Limits of one entity-group transaction of UpdateDrones: the service
// takes 100 operations and a 4 MiB body.
const (
	batchOps   = 100
	batchBytes = 3 << 20
	opOverhead = 512 // multipart headers of one operation, roughly
)

// UpdateDrones implements fleet.Store. All drone rows share one partition,
// so the drones' writes go in entity-group transactions of up to 100
// operations: telemetry for a hundred drones costs one transaction, and no
// read for a drone whose record this Fleet last wrote (known).
//
// Each drone's write is guarded by the ETag of the record fn was applied
// to. A transaction fails whole on its first failed operation, and its
// answer names that operation: that drone alone is then updated on its own
// (updateLocked: fresh read, back-off on lost races) if its record was
// read fresh, and otherwise its record and every other known record of the
// transaction are read again (a stale known record means another process
// writes these drones); the others go into the next round unchanged. Every
// round settles at least one drone or turns known records into fresh ones,
// so the loop ends.
func (f *Fleet) UpdateDrones(ctx context.Context, ids []string, fn func(*fleet.Drone) error) ([]fleet.DroneUpdate, error) {
	if err := fleet.CheckDistinct(ids); err != nil {
		return nil, err
	}
	out := make([]fleet.DroneUpdate, len(ids))
	// Locks in id order, so that two batches never wait on each other.
	order := make([]int, len(ids))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return ids[order[a]] < ids[order[b]] })
	held := make([]*keyed.Lock[struct{}], len(ids))
	defer func() {
		for i, l := range held {
			if l != nil {
				f.locks.Unlock(ids[i], l)
			}
		}
	}()
	for _, i := range order {
		l, err := f.locks.Lock(ctx, ids[i])
		if err != nil {
			for j := range out {
				out[j].Err = fmt.Errorf("azurestorage: update drone %s: %w", ids[j], err)
			}
			return out, nil
		}
		held[i] = l
	}

	bases := make([]knownRecord, len(ids))
	fresh := make([]bool, len(ids))
	var pending, unread []int
	for i, id := range ids {
		if k, ok := f.known.take(id); ok {
			bases[i] = k
			pending = append(pending, i)
		} else {
			unread = append(unread, i)
		}
	}
	for len(pending) > 0 || len(unread) > 0 {
		pending = append(pending, f.readAll(ctx, ids, unread, bases, fresh, out)...)
		unread = nil
		var writes []batchWrite
		for _, i := range pending {
			d, err := bases[i].decode()
			if err == nil {
				err = fn(&d)
			}
			if err != nil {
				if !fresh[i] {
					unread = append(unread, i) // decide on the stored record
				} else {
					out[i] = fleet.DroneUpdate{Err: err}
				}
				continue
			}
			d.ID = ids[i]
			w, err := f.plan(d, bases[i], false)
			if err != nil {
				out[i] = fleet.DroneUpdate{Err: err}
				continue
			}
			out[i].Drone = d
			writes = append(writes, batchWrite{i: i, droneWrite: w})
		}
		pending = nil
		for _, chunk := range chunkWrites(writes) {
			retry, reread := f.submitChunk(ctx, ids, chunk, fresh, fn, out)
			pending = append(pending, retry...)
			unread = append(unread, reread...)
		}
	}
	return out, nil
}

// batchWrite is the write of drone i of an UpdateDrones call.
type batchWrite struct {
	i int
	droneWrite
}

// chunkWrites packs writes into transactions, keeping each drone's
// operations together.
func chunkWrites(writes []batchWrite) [][]batchWrite {
	var chunks [][]batchWrite
	var cur []batchWrite
	ops, size := 0, 0
	for _, w := range writes {
		n, b := len(w.actions), w.size+len(w.actions)*opOverhead
		if len(cur) > 0 && (ops+n > batchOps || size+b > batchBytes) {
			chunks = append(chunks, cur)
			cur, ops, size = nil, 0, 0
		}
		cur = append(cur, w)
		ops, size = ops+n, size+b
	}
	if len(cur) > 0 {
		chunks = append(chunks, cur)
	}
	return chunks
}

// submitChunk writes one transaction of UpdateDrones and settles what it
// can: it returns the drones to try again on the records they have
// (retry) and those whose records are to be read again (reread).
func (f *Fleet) submitChunk(ctx context.Context, ids []string, chunk []batchWrite, fresh []bool, fn func(*fleet.Drone) error, out []fleet.DroneUpdate) (retry, reread []int) {
	var actions []aztables.TransactionAction
	for _, w := range chunk {
		actions = append(actions, w.actions...)
	}
	capture := &bodyCapture{}
	_, err := f.drones.SubmitTransaction(withCapture(ctx, capture), actions, nil)
	if err == nil {
		etags := operationETags(capture.get())
		op := 0
		for _, w := range chunk {
			if op < len(etags) {
				f.remember(ids[w.i], w.written(etags[op]))
			}
			op += len(w.actions)
		}
		return nil, nil
	}
	failed, op := -1, failedOperation(err)
	if op >= 0 && (isPrecondition(err) || isNotFound(err)) {
		for k, w := range chunk {
			if op < len(w.actions) {
				failed = k
				break
			}
			op -= len(w.actions)
		}
	}
	if failed < 0 {
		// A storage error, or an answer that does not say which drone:
		// nothing of the transaction was written.
		for _, w := range chunk {
			out[w.i] = fleet.DroneUpdate{Err: fmt.Errorf("azurestorage: update drone %s: %w", ids[w.i], err)}
		}
		return nil, nil
	}
	for k, w := range chunk {
		switch {
		case k == failed && fresh[w.i]:
			// Lost a race on a fresh record, or a row is gone: settled on
			// its own, with back-off and the not-found rules.
			d, err := f.updateLocked(ctx, ids[w.i], fn)
			out[w.i] = fleet.DroneUpdate{Drone: d, Err: err}
		case k == failed || (isPrecondition(err) && !fresh[w.i]):
			reread = append(reread, w.i)
		default:
			retry = append(retry, w.i)
		}
	}
	return retry, reread
}

// readAll reads the rows of the drones ids[i] for i in which, a few at a
// time, into bases (marking them fresh), and returns the indexes read; a
// drone not found or not read gets its error in out.
func (f *Fleet) readAll(ctx context.Context, ids []string, which []int, bases []knownRecord, fresh []bool, out []fleet.DroneUpdate) []int {
	if len(which) == 0 {
		return nil
	}
	errs := make([]error, len(which))
	sem := make(chan struct{}, readAhead)
	var wg sync.WaitGroup
	for n, i := range which {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			bases[i], errs[n] = f.read(ctx, ids[i])
		}()
	}
	wg.Wait()
	var ok []int
	for n, i := range which {
		if errs[n] != nil {
			out[i] = fleet.DroneUpdate{Err: errs[n]}
			continue
		}
		fresh[i] = true
		ok = append(ok, i)
	}
	return ok
}

// readAhead bounds the reads UpdateDrones makes at once.
const readAhead = 8

// knownRecord is a drone row as read or written: the JSON record, its
// ETag and the index state it records (nil for a row written before the
// index existed).
type knownRecord struct {
	data []byte
	etag azcore.ETag
	idx  *indexState
}

func (k knownRecord) decode() (fleet.Drone, error) {
	var d fleet.Drone
	if err := json.Unmarshal(k.data, &d); err != nil {
		return fleet.Drone{}, fmt.Errorf("azurestorage: drone record: %w", err)
	}
	return d, nil
}

// read reads a drone row.
func (f *Fleet) read(ctx context.Context, id string) (knownRecord, error) {
	d, etag, idx, err := f.get(ctx, id)
	if err != nil {
		return knownRecord{}, err
	}
	data, err := json.Marshal(d)
	if err != nil {
		return knownRecord{}, fmt.Errorf("azurestorage: encode drone %s: %w", id, err)
	}
	return knownRecord{data: data, etag: etag, idx: idx}, nil
}

// droneWrite is one drone's part of a write: the replace of its row,
// guarded by the ETag it was read with, then its index rows' changes.
type droneWrite struct {
	actions []aztables.TransactionAction
	data    []byte
	st      indexState
	size    int // the actions' encoded size, roughly
}

// plan returns the write of record d over base.
func (f *Fleet) plan(d fleet.Drone, base knownRecord, skipDeletes bool) (droneWrite, error) {
	st, ops := f.indexPlan(base.idx, d.Watch(), skipDeletes)
	e, err := droneEntity(d, st)
	if err != nil {
		return droneWrite{}, err
	}
	data, err := json.Marshal(d)
	if err != nil {
		return droneWrite{}, fmt.Errorf("azurestorage: encode drone %s: %w", d.ID, err)
	}
	row := e.marshal()
	etag := base.etag
	w := droneWrite{
		actions: append([]aztables.TransactionAction{{ActionType: aztables.TransactionTypeUpdateReplace, Entity: row, IfMatch: &etag}}, ops...),
		data:    data, st: st, size: len(row),
	}
	for _, op := range ops {
		w.size += len(op.Entity)
	}
	return w, nil
}

// written is the known record after w was written with the row's new ETag
// (none is kept if the ETag is unknown).
func (w droneWrite) written(etag azcore.ETag) knownRecord {
	st := w.st
	return knownRecord{data: w.data, etag: etag, idx: &st}
}

// knownDrones bounds Fleet.known: records of about a kilobyte each.
const knownDrones = 20000

// knownMap is a bounded map of what this Fleet last wrote, by key; when
// full, an arbitrary entry makes room (any entry is only a read saved).
// take removes the entry: it is put back only after a write succeeds.
type knownMap[V any] struct {
	mu  sync.Mutex
	m   map[string]V
	max int
}

func (c *knownMap[V]) take(key string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[key]
	delete(c.m, key)
	return v, ok
}

func (c *knownMap[V]) put(key string, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]V{}
	}
	if _, has := c.m[key]; !has && len(c.m) >= c.max {
		for other := range c.m {
			delete(c.m, other)
			break
		}
	}
	c.m[key] = v
}

// remember keeps the record written to drone id, if its ETag is known.
func (f *Fleet) remember(id string, k knownRecord) {
	if k.etag != "" {
		f.known.put(id, k)
	}
}

// The watch index (see Fleet).
const (
	watchProp      = "Watch" // on a drone row: its indexState
	watchPrefix    = "%~"    // every index RowKey starts so
	watchEnd       = "%~~"   // and sorts before this
	watchQuiet     = "%~q|"
	watchDeadline  = "%~d|"
	watchAttention = "%~a|"
	// watchMarker is the row whose presence says the rows written before
	// the index existed have been indexed.
	watchMarker = "%~m|indexed"
)

// indexState is what a drone row records of its index rows: their RowKeys
// and the Watch they hold.
type indexState struct {
	Rows []string    `json:"rows,omitempty"`
	W    fleet.Watch `json:"w"`
}

// recordedIndex returns the index state a drone row records; nil if it
// records none (written before the index existed).
func recordedIndex(e entity) *indexState {
	raw, ok := e[watchProp].(string)
	if !ok {
		return nil
	}
	var st indexState
	if json.Unmarshal([]byte(raw), &st) != nil {
		return nil
	}
	return &st
}

// indexRows returns the index RowKeys of a drone whose Watch is w.
func indexRows(w fleet.Watch) []string {
	var rows []string
	id := escapeKey(w.ID)
	if q := w.Quiet(); !q.IsZero() {
		rows = append(rows, watchQuiet+indexTime(q)+"|"+id)
	}
	if dl := w.DeadlineKey(); !dl.IsZero() {
		rows = append(rows, watchDeadline+indexTime(dl)+"|"+id)
	}
	if w.Attention() {
		rows = append(rows, watchAttention+id)
	}
	return rows
}

// indexTime encodes t in 20 digits that sort as the times do (Unix
// nanoseconds, saturated, offset to be non-negative).
func indexTime(t time.Time) string { return indexNanos(unixNanos(t)) }

func indexNanos(n int64) string { return fmt.Sprintf("%020d", uint64(n)^(1<<63)) }

func unixNanos(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// indexPlan returns the index state a drone row whose record now has Watch
// w is to record, and the index rows to write with it; none if the index
// can stay as it is: old already holds w, but for LastFrameAt moved forward
// by less than the slack. old is nil for a row written before the index
// existed (no index rows to delete). skipDeletes leaves out deletes.
func (f *Fleet) indexPlan(old *indexState, w fleet.Watch, skipDeletes bool) (indexState, []aztables.TransactionAction) {
	if old != nil {
		lagged := w
		if l := old.W.LastFrameAt; !w.LastFrameAt.Before(l) && w.LastFrameAt.Sub(l) < f.slack {
			lagged.LastFrameAt = l
		}
		if sameWatch(lagged, old.W) {
			return *old, nil
		}
	}
	st := indexState{Rows: indexRows(w), W: w}
	var ops []aztables.TransactionAction
	if old != nil && !skipDeletes {
		for _, rk := range old.Rows {
			if !slices.Contains(st.Rows, rk) {
				e := newEntity(dronePartition, rk)
				anyTag := azcore.ETagAny
				ops = append(ops, aztables.TransactionAction{ActionType: aztables.TransactionTypeDelete, Entity: e.marshal(), IfMatch: &anyTag})
			}
		}
	}
	if len(st.Rows) > 0 {
		data, _ := json.Marshal(w)
		for _, rk := range st.Rows {
			e := newEntity(dronePartition, rk)
			e["ID"], e["W"] = w.ID, string(data)
			ops = append(ops, aztables.TransactionAction{ActionType: aztables.TransactionTypeInsertReplace, Entity: e.marshal()})
		}
	}
	return st, ops
}

func sameWatch(a, b fleet.Watch) bool {
	return a.ID == b.ID && a.MissionID == b.MissionID && a.Dispatched == b.Dispatched && a.SignalPending == b.SignalPending &&
		a.Delivered == b.Delivered && a.LastFrameAt.Equal(b.LastFrameAt) && a.DispatchedAt.Equal(b.DispatchedAt) &&
		a.LastAlarmAt.Equal(b.LastAlarmAt) && a.Deadline.Equal(b.Deadline)
}

// Watched implements fleet.Store: one range query on the index per
// condition of q (a page of up to 1000 rows each), after indexing, once per
// hub, the rows written before the index existed.
func (f *Fleet) Watched(ctx context.Context, q fleet.WatchQuery) ([]fleet.Watch, error) {
	if err := f.indexLegacy(ctx); err != nil {
		return nil, err
	}
	limit := q.Limited()
	type selection struct{ from, to string }
	var sels []selection
	if !q.QuietUntil.IsZero() {
		sels = append(sels, selection{watchQuiet, upTo(watchQuiet, q.QuietUntil)})
	}
	if !q.QuietAfter.IsZero() {
		if n := unixNanos(q.QuietAfter); n < math.MaxInt64 {
			sels = append(sels, selection{watchQuiet + indexNanos(n+1), watchQuiet[:len(watchQuiet)-1] + "}"})
		}
	}
	if !q.DeadlineUntil.IsZero() {
		sels = append(sels, selection{watchDeadline, upTo(watchDeadline, q.DeadlineUntil)})
	}
	if q.Attention {
		sels = append(sels, selection{watchAttention, watchAttention[:len(watchAttention)-1] + "}"})
	}
	var out []fleet.Watch
	seen := map[string]bool{}
	for _, sel := range sels {
		if err := f.watchRange(ctx, sel.from, sel.to, limit, seen, &out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// upTo is the RowKey bound below which the index rows of kind prefix have a
// time not after t.
func upTo(prefix string, t time.Time) string {
	if n := unixNanos(t); n < math.MaxInt64 {
		return prefix + indexNanos(n+1)
	}
	return prefix[:len(prefix)-1] + "}"
}

func (f *Fleet) watchRange(ctx context.Context, from, to string, limit int, seen map[string]bool, out *[]fleet.Watch) error {
	filter := fmt.Sprintf("PartitionKey eq %s and RowKey ge %s and RowKey lt %s", quote(dronePartition), quote(from), quote(to))
	top := int32(min(limit, 1000))
	sel := "W"
	pager := f.drones.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter, Top: &top, Select: &sel})
	for n := 0; n < limit && pager.More(); {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("azurestorage: watched drones: %w", err)
		}
		for _, raw := range page.Entities {
			if n == limit {
				break
			}
			n++
			e, err := parseEntity(raw)
			if err != nil {
				return fmt.Errorf("azurestorage: watched drones: %w", err)
			}
			var w fleet.Watch
			if err := json.Unmarshal([]byte(e.str("W")), &w); err != nil {
				return fmt.Errorf("azurestorage: watched drones: unreadable index row: %w", err)
			}
			if !seen[w.ID] {
				seen[w.ID] = true
				*out = append(*out, w)
			}
		}
	}
	return nil
}

// indexLegacy indexes the drone rows written before the index existed
// (by an update that changes nothing else), once per hub: the marker row
// says it was done. Run them no longer: a drone row they write loses its
// index state.
func (f *Fleet) indexLegacy(ctx context.Context) error {
	f.legacy.Lock()
	defer f.legacy.Unlock()
	if f.legacy.done {
		return nil
	}
	if _, err := f.drones.GetEntity(ctx, dronePartition, watchMarker, nil); err == nil {
		f.legacy.done = true
		return nil
	} else if !isNotFound(err) {
		return fmt.Errorf("azurestorage: read the watch index marker: %w", err)
	}
	filter := droneRows
	pager := f.drones.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter})
	var todo []string
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("azurestorage: index drones: %w", err)
		}
		for _, raw := range page.Entities {
			e, err := parseEntity(raw)
			if err != nil || recordedIndex(e) != nil {
				continue
			}
			if d, err := decodeDrone(e); err == nil && len(indexRows(d.Watch())) > 0 {
				todo = append(todo, d.ID)
			}
		}
	}
	for _, id := range todo {
		if _, err := f.UpdateDrone(ctx, id, func(*fleet.Drone) error { return nil }); err != nil && !errors.Is(err, fleet.ErrDroneNotFound) {
			return fmt.Errorf("azurestorage: index drone %s: %w", id, err)
		}
	}
	if _, err := f.drones.AddEntity(ctx, newEntity(dronePartition, watchMarker).marshal(), nil); err != nil && !isConflict(err) {
		return fmt.Errorf("azurestorage: write the watch index marker: %w", err)
	}
	f.legacy.done = true
	return nil
}

// conflictBackoff paces retries after losing a race to another process.
var conflictBackoff = keyed.Backoff{First: 2 * time.Millisecond, Max: 200 * time.Millisecond}

const effectSeqRow = "seq"

// RecordEffect implements fleet.Store.
//
// The effect row and the mission's counter row change in one entity-group
// transaction. The first try reads nothing: it takes the counter this
// Fleet last wrote for the mission (effectSeqs), or, for a mission it has
// not seen, assumes a first effect (both rows added). Either guess is
// checked by the transaction itself (If-Match on the counter, or Add
// failing on rows that exist), and a wrong one falls back to reading both
// rows, so a mission's effects cost one request each in the common case.
func (f *Fleet) RecordEffect(ctx context.Context, e fleet.Effect) (bool, error) {
	if e.MissionID == "" || e.Kind == "" {
		return false, errors.New("azurestorage: an effect needs a mission id and a kind")
	}
	// One mission's effects queue in the process, as drone updates do; a
	// batch that loses to another process is retried with back-off for as
	// long as ctx allows.
	l, err := f.missions.Lock(ctx, e.MissionID)
	if err != nil {
		return false, fmt.Errorf("azurestorage: record effect %s/%s: %w", e.MissionID, e.Kind, err)
	}
	defer f.missions.Unlock(e.MissionID, l)
	pk, rk := escapeKey(e.MissionID), "e|"+escapeKey(e.Kind)
	bo := f.backoff
	// A mission this Fleet has not seen gets the zero counter: a guess
	// that it has no effects yet.
	guess, _ := f.effectSeqs.take(e.MissionID)
	guessed := true
	for {
		var seq int64
		var counterETag *azcore.ETag
		switch {
		case guessed && guess.etag != "":
			seq, counterETag = guess.seq, &guess.etag
		case guessed:
			// A mission this Fleet has not seen: most likely its first.
		default:
			resp, err := f.effects.GetEntity(ctx, pk, effectSeqRow, nil)
			switch {
			case err == nil:
				ce, perr := parseEntity(resp.Value)
				if perr != nil {
					return false, fmt.Errorf("azurestorage: effect counter of %s: %w", e.MissionID, perr)
				}
				seq = ce.int64("Seq")
				etag := resp.ETag
				counterETag = &etag
			case isNotFound(err):
			default:
				return false, fmt.Errorf("azurestorage: effect counter of %s: %w", e.MissionID, err)
			}
			// Already recorded? (Cheap check first; the batch below is the guard.)
			if _, err := f.effects.GetEntity(ctx, pk, rk, nil); err == nil {
				return false, nil
			} else if !isNotFound(err) {
				return false, fmt.Errorf("azurestorage: read effect %s/%s: %w", e.MissionID, e.Kind, err)
			}
		}
		seq++
		row := newEntity(pk, rk)
		row["MissionID"], row["Kind"], row["Detail"] = e.MissionID, e.Kind, e.Detail
		row["At"] = time.Now().UTC().Format(time.RFC3339Nano)
		row.setInt64("Seq", seq)
		counter := newEntity(pk, effectSeqRow)
		counter.setInt64("Seq", seq)
		actions := []aztables.TransactionAction{{ActionType: aztables.TransactionTypeAdd, Entity: row.marshal()}}
		if counterETag == nil {
			actions = append(actions, aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: counter.marshal()})
		} else {
			actions = append(actions, aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: counter.marshal(), IfMatch: counterETag})
		}
		capture := &bodyCapture{}
		if _, err := f.effects.SubmitTransaction(withCapture(ctx, capture), actions, nil); err != nil {
			// Lost to another writer, or a wrong guess (the effect or the
			// counter was added, or the counter changed or went): the loop
			// re-reads the rows and either finds the effect or tries
			// again. Anything else, including storage errors the SDK
			// already retried, is final.
			if !isConflict(err) && !isPrecondition(err) && !isNotFound(err) {
				return false, fmt.Errorf("azurestorage: record effect %s/%s: %w", e.MissionID, e.Kind, err)
			}
			if guessed {
				guessed = false // read, at once: a guess is not a race
				continue
			}
			if err := bo.Wait(ctx); err != nil {
				return false, fmt.Errorf("%w: effect %s/%s: %w", fleet.ErrConflict, e.MissionID, e.Kind, err)
			}
			continue
		}
		if etags := operationETags(capture.get()); len(etags) == 2 && etags[1] != "" {
			f.effectSeqs.put(e.MissionID, effectSeq{seq: seq, etag: etags[1]})
		}
		return true, nil
	}
}

// effectSeq is a mission's effect counter as this Fleet last wrote it.
type effectSeq struct {
	seq  int64
	etag azcore.ETag
}

// Effects implements fleet.Store.
func (f *Fleet) Effects(ctx context.Context, missionID string) ([]fleet.Effect, error) {
	filter := fmt.Sprintf("PartitionKey eq %s and RowKey gt 'e|' and RowKey lt 'e}'", quote(escapeKey(missionID)))
	pager := f.effects.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter})
	var out []fleet.Effect
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("azurestorage: list effects of %s: %w", missionID, err)
		}
		for _, raw := range page.Entities {
			e, err := parseEntity(raw)
			if err != nil {
				return nil, fmt.Errorf("azurestorage: list effects of %s: %w", missionID, err)
			}
			at, _ := time.Parse(time.RFC3339Nano, e.str("At"))
			out = append(out, fleet.Effect{MissionID: e.str("MissionID"), Kind: e.str("Kind"), Detail: e.str("Detail"), Seq: e.int64("Seq"), At: at})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out, nil
}
