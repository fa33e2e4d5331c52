package azurestorage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
)

// Fleet is the fleet.Store on Azure Tables.
//
// <Hub>Drones holds one row per drone (PartitionKey "drone", RowKey the
// escaped id) with the JSON record in Data; its ETag guards UpdateDrone.
// <Hub>Effects holds, per mission partition, one row per effect kind
// (RowKey "e|" + escaped kind) and a counter row (RowKey "seq") that numbers
// them; the effect and the counter change in one entity-group transaction,
// so an effect is recorded at most once and numbers never repeat.
type Fleet struct {
	drones  *aztables.Client
	effects *aztables.Client
	// locks queues the updates of one drone (UpdateDrone) and the effects
	// of one mission (RecordEffect) made through this Fleet.
	locks, missions keyLocks
	// backoff paces retries after lost races with other processes.
	backoff backoffPolicy
}

var _ fleet.Store = (*Fleet)(nil)

const dronePartition = "drone"

func newFleet(ctx context.Context, svc *aztables.ServiceClient, n names) (*Fleet, error) {
	for _, t := range []string{n.dronesTable, n.effectsTable} {
		if err := createTable(ctx, svc, t); err != nil {
			return nil, err
		}
	}
	return &Fleet{drones: svc.NewClient(n.dronesTable), effects: svc.NewClient(n.effectsTable), backoff: conflictBackoff}, nil
}

func createTable(ctx context.Context, svc *aztables.ServiceClient, name string) error {
	if _, err := svc.CreateTable(ctx, name, nil); err != nil && !isConflict(err) {
		return fmt.Errorf("azurestorage: create table %s: %w", name, err)
	}
	return nil
}

func droneEntity(d fleet.Drone) (entity, error) {
	data, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("azurestorage: encode drone %s: %w", d.ID, err)
	}
	e := newEntity(dronePartition, escapeKey(d.ID))
	e["ID"] = d.ID
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
	e, err := droneEntity(d)
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

func (f *Fleet) get(ctx context.Context, id string) (fleet.Drone, azcore.ETag, error) {
	resp, err := f.drones.GetEntity(ctx, dronePartition, escapeKey(id), nil)
	if err != nil {
		if isNotFound(err) {
			return fleet.Drone{}, "", fmt.Errorf("%w: %s", fleet.ErrDroneNotFound, id)
		}
		return fleet.Drone{}, "", fmt.Errorf("azurestorage: read drone %s: %w", id, err)
	}
	e, err := parseEntity(resp.Value)
	if err != nil {
		return fleet.Drone{}, "", fmt.Errorf("azurestorage: read drone %s: %w", id, err)
	}
	d, err := decodeDrone(e)
	return d, resp.ETag, err
}

// Drone implements fleet.Store.
func (f *Fleet) Drone(ctx context.Context, id string) (fleet.Drone, error) {
	d, _, err := f.get(ctx, id)
	return d, err
}

// Drones implements fleet.Store.
func (f *Fleet) Drones(ctx context.Context) ([]fleet.Drone, error) {
	filter := "PartitionKey eq " + quote(dronePartition)
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
	l, err := f.locks.lock(ctx, id)
	if err != nil {
		return fleet.Drone{}, fmt.Errorf("azurestorage: update drone %s: %w", id, err)
	}
	defer f.locks.unlock(id, l)
	bo := backoff{p: f.backoff}
	conflicts := 0
	for {
		var d fleet.Drone
		var etag azcore.ETag
		cached := l.data != nil
		if cached {
			data := l.data
			l.data = nil // used once: kept only if the write succeeds
			if json.Unmarshal(data, &d) != nil {
				continue
			}
			etag = l.etag
		} else if d, etag, err = f.get(ctx, id); err != nil {
			return fleet.Drone{}, err
		}
		if err := fn(&d); err != nil {
			if cached {
				continue // decide on the stored record, not on what this process last wrote
			}
			return fleet.Drone{}, err
		}
		d.ID = id
		e, err := droneEntity(d)
		if err != nil {
			return fleet.Drone{}, err
		}
		resp, err := f.drones.UpdateEntity(ctx, e.marshal(), &aztables.UpdateEntityOptions{IfMatch: &etag, UpdateMode: aztables.UpdateModeReplace})
		switch {
		case err == nil:
			if data, err := json.Marshal(d); err == nil && resp.ETag != "" {
				l.data, l.etag = data, resp.ETag
			}
			return d, nil
		case isPrecondition(err):
			// Another process wrote the drone since it was read.
			if cached {
				continue // the handed-over record was stale: read it now
			}
			conflicts++
			if err := bo.wait(ctx); err != nil {
				return fleet.Drone{}, fmt.Errorf("%w: drone %s lost %d races to other writers: %w", fleet.ErrConflict, id, conflicts, err)
			}
		case isNotFound(err):
			return fleet.Drone{}, fmt.Errorf("%w: %s", fleet.ErrDroneNotFound, id)
		default:
			return fleet.Drone{}, fmt.Errorf("azurestorage: update drone %s: %w", id, err)
		}
	}
}

// backoffPolicy bounds the delays between optimistic-concurrency retries.
type backoffPolicy struct{ first, max time.Duration }

var conflictBackoff = backoffPolicy{first: 2 * time.Millisecond, max: 200 * time.Millisecond}

// backoff paces retries after lost optimistic-concurrency races:
// exponentially growing delays with full jitter, so that writers that
// collided spread out instead of colliding again.
type backoff struct {
	p     backoffPolicy
	delay time.Duration
}

// wait sleeps before the next retry, or returns ctx's error if ctx ends first.
func (b *backoff) wait(ctx context.Context) error {
	if b.delay == 0 {
		b.delay = b.p.first
	}
	t := time.NewTimer(rand.N(b.delay + 1))
	defer t.Stop()
	b.delay = min(2*b.delay, b.p.max)
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// keyLocks is a set of per-key locks that are acquired in arrival order and
// give up when the caller's context ends. A key's lock exists only while
// someone holds or waits for it.
type keyLocks struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	sem  chan struct{} // holds a token while the lock is held
	refs int           // holders and waiters
	// data and etag are the drone record the last holder wrote and its
	// ETag, handed to the next holder; data is nil when there is none.
	data []byte
	etag azcore.ETag
}

func (k *keyLocks) lock(ctx context.Context, key string) (*keyLock, error) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyLock{}
	}
	l := k.locks[key]
	if l == nil {
		l = &keyLock{sem: make(chan struct{}, 1)}
		k.locks[key] = l
	}
	l.refs++
	k.mu.Unlock()
	select {
	case l.sem <- struct{}{}:
		return l, nil
	case <-ctx.Done():
		k.release(key, l)
		return nil, ctx.Err()
	}
}

func (k *keyLocks) unlock(key string, l *keyLock) {
	<-l.sem
	k.release(key, l)
}

func (k *keyLocks) release(key string, l *keyLock) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l.refs--; l.refs == 0 {
		delete(k.locks, key)
	}
}

const effectSeqRow = "seq"

// RecordEffect implements fleet.Store.
func (f *Fleet) RecordEffect(ctx context.Context, e fleet.Effect) (bool, error) {
	if e.MissionID == "" || e.Kind == "" {
		return false, errors.New("azurestorage: an effect needs a mission id and a kind")
	}
	// One mission's effects queue in the process, as drone updates do; a
	// batch that loses to another process is retried with back-off for as
	// long as ctx allows.
	l, err := f.missions.lock(ctx, e.MissionID)
	if err != nil {
		return false, fmt.Errorf("azurestorage: record effect %s/%s: %w", e.MissionID, e.Kind, err)
	}
	defer f.missions.unlock(e.MissionID, l)
	pk, rk := escapeKey(e.MissionID), "e|"+escapeKey(e.Kind)
	bo := backoff{p: f.backoff}
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
			if err := bo.wait(ctx); err != nil {
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
