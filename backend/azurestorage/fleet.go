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
	// locks queues the updates of one drone (UpdateDrone) and the effects
	// of one mission (RecordEffect) made through this Fleet.
	locks    keyed.Locks[handover]
	missions keyed.Locks[struct{}]
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
// process never races itself through storage; while updates are queued,
// each hands the record it wrote and its ETag to the next, which then skips
// the read. A write that loses to another process (412) is retried on a
// fresh read with exponential back-off and jitter, for as long as ctx
// allows: there is no attempt limit a busy drone could exhaust.
func (f *Fleet) UpdateDrone(ctx context.Context, id string, fn func(*fleet.Drone) error) (fleet.Drone, error) {
	l, err := f.locks.Lock(ctx, id)
	if err != nil {
		return fleet.Drone{}, fmt.Errorf("azurestorage: update drone %s: %w", id, err)
	}
	defer f.locks.Unlock(id, l)
	bo := f.backoff
	conflicts := 0
	skipDeletes := false
	for {
		var d fleet.Drone
		var etag azcore.ETag
		var idx *indexState
		cached := l.Value.data != nil
		if cached {
			data := l.Value.data
			l.Value.data = nil // used once: kept only if the write succeeds
			if json.Unmarshal(data, &d) != nil {
				continue
			}
			etag, idx = l.Value.etag, l.Value.idx
		} else if d, etag, idx, err = f.get(ctx, id); err != nil {
			return fleet.Drone{}, err
		}
		if err := fn(&d); err != nil {
			if cached {
				continue // decide on the stored record, not on what this process last wrote
			}
			return fleet.Drone{}, err
		}
		d.ID = id
		st, ops := f.indexPlan(idx, d.Watch(), skipDeletes)
		e, err := droneEntity(d, st)
		if err != nil {
			return fleet.Drone{}, err
		}
		var newETag azcore.ETag
		if len(ops) == 0 {
			var resp aztables.UpdateEntityResponse
			resp, err = f.drones.UpdateEntity(ctx, e.marshal(), &aztables.UpdateEntityOptions{IfMatch: &etag, UpdateMode: aztables.UpdateModeReplace})
			newETag = resp.ETag
		} else {
			// The record and its index rows change together. (The batch's
			// answer carries no ETag: the next update reads the row.)
			actions := append([]aztables.TransactionAction{{ActionType: aztables.TransactionTypeUpdateReplace, Entity: e.marshal(), IfMatch: &etag}}, ops...)
			_, err = f.drones.SubmitTransaction(ctx, actions, nil)
		}
		switch {
		case err == nil:
			if data, err := json.Marshal(d); err == nil && newETag != "" {
				l.Value.data, l.Value.etag, l.Value.idx = data, newETag, &st
			}
			return d, nil
		case isNotFound(err) && len(ops) > 0:
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
				continue // the handed-over record was stale: read it now
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

// handover is the drone record the last holder of a drone's lock wrote,
// its ETag and its index state, handed to the next holder; data is nil
// when there is none.
type handover struct {
	data []byte
	etag azcore.ETag
	idx  *indexState
}

// conflictBackoff paces retries after losing a race to another process.
var conflictBackoff = keyed.Backoff{First: 2 * time.Millisecond, Max: 200 * time.Millisecond}

const effectSeqRow = "seq"

// RecordEffect implements fleet.Store.
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
	for {
		var seq int64
		var counterETag *azcore.ETag
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
		if _, err := f.effects.SubmitTransaction(ctx, actions, nil); err != nil {
			// Lost to another writer (the effect or the counter was added,
			// or the counter changed or went): the loop re-reads the rows
			// and either finds the effect or tries again. Anything else,
			// including storage errors the SDK already retried, is final.
			if !isConflict(err) && !isPrecondition(err) && !isNotFound(err) {
				return false, fmt.Errorf("azurestorage: record effect %s/%s: %w", e.MissionID, e.Kind, err)
			}
			if err := bo.Wait(ctx); err != nil {
				return false, fmt.Errorf("%w: effect %s/%s: %w", fleet.ErrConflict, e.MissionID, e.Kind, err)
			}
			continue
		}
		return true, nil
	}
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
