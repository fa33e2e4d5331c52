package azurestorage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
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
}

var _ fleet.Store = (*Fleet)(nil)

const dronePartition = "drone"

func newFleet(ctx context.Context, svc *aztables.ServiceClient, n names) (*Fleet, error) {
	for _, t := range []string{n.dronesTable, n.effectsTable} {
		if err := createTable(ctx, svc, t); err != nil {
			return nil, err
		}
	}
	return &Fleet{drones: svc.NewClient(n.dronesTable), effects: svc.NewClient(n.effectsTable)}, nil
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

// maxUpdateAttempts bounds optimistic-concurrency retries.
const maxUpdateAttempts = 50

// UpdateDrone implements fleet.Store with an ETag check, retrying when a
// concurrent writer wins.
func (f *Fleet) UpdateDrone(ctx context.Context, id string, fn func(*fleet.Drone) error) (fleet.Drone, error) {
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		d, etag, err := f.get(ctx, id)
		if err != nil {
			return fleet.Drone{}, err
		}
		if err := fn(&d); err != nil {
			return fleet.Drone{}, err
		}
		d.ID = id
		e, err := droneEntity(d)
		if err != nil {
			return fleet.Drone{}, err
		}
		_, err = f.drones.UpdateEntity(ctx, e.marshal(), &aztables.UpdateEntityOptions{IfMatch: &etag, UpdateMode: aztables.UpdateModeReplace})
		switch {
		case err == nil:
			return d, nil
		case isPrecondition(err):
			continue
		case isNotFound(err):
			return fleet.Drone{}, fmt.Errorf("%w: %s", fleet.ErrDroneNotFound, id)
		default:
			return fleet.Drone{}, fmt.Errorf("azurestorage: update drone %s: %w", id, err)
		}
	}
	return fleet.Drone{}, fmt.Errorf("%w: drone %s", fleet.ErrConflict, id)
}

const effectSeqRow = "seq"

// RecordEffect implements fleet.Store.
func (f *Fleet) RecordEffect(ctx context.Context, e fleet.Effect) (bool, error) {
	if e.MissionID == "" || e.Kind == "" {
		return false, errors.New("azurestorage: an effect needs a mission id and a kind")
	}
	pk, rk := escapeKey(e.MissionID), "e|"+escapeKey(e.Kind)
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
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
			// A failed batch reports no reliable code; the loop re-reads
			// the rows and either finds the effect or retries.
			if httpStatus(err) >= 500 || httpStatus(err) == 0 {
				return false, fmt.Errorf("azurestorage: record effect %s/%s: %w", e.MissionID, e.Kind, err)
			}
			continue
		}
		return true, nil
	}
	return false, fmt.Errorf("%w: effect %s/%s", fleet.ErrConflict, e.MissionID, e.Kind)
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
