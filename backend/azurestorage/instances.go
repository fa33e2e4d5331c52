package azurestorage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/google/uuid"
	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/proto"

	"github.com/dronehub/dronehub/taskhub"
)

// getSentinel reads an instance's status row; (nil, "", nil) if absent.
func (b *Backend) getSentinel(ctx context.Context, id string) (entity, azcore.ETag, error) {
	var resp aztables.GetEntityResponse
	err := b.storage(ctx, "read instance", func(ctx context.Context) error {
		var err error
		resp, err = b.history.GetEntity(ctx, escapeKey(id), sentinelRK, nil)
		return err
	})
	if err != nil {
		if isNotFound(err) {
			return nil, "", nil
		}
		return nil, "", fmt.Errorf("azurestorage: read instance %s: %w", id, err)
	}
	e, err := parseEntity(resp.Value)
	if err != nil {
		return nil, "", fmt.Errorf("azurestorage: read instance %s: %w", id, err)
	}
	return e, resp.ETag, nil
}

func sentinelStatus(e entity) api.OrchestrationStatus {
	s, err := taskhub.ParseStatus(e.str("Status"))
	if err != nil {
		return api.RUNTIME_STATUS_PENDING
	}
	return s
}

// setLarge stores a string property of a status row, moving it to a blob
// when it is too large for a property (64 KiB of UTF-16). A value equal to
// the one already in a blob keeps that blob. It returns the blob the row
// no longer refers to (to delete once the row is committed) and the blob
// it uploaded (to delete if the row is not).
func (b *Backend) setLarge(ctx context.Context, e entity, instance, name, value string) (replaced, fresh string, err error) {
	prev := e.str(name + "Blob")
	if len(value)*2 <= maxInlineProperty {
		e[name], e[name+"Blob"] = value, ""
		delete(e, name+"Hash")
		return prev, "", nil
	}
	sum := sha256.Sum256([]byte(value))
	hash := hex.EncodeToString(sum[:16])
	if prev != "" && e.str(name+"Hash") == hash {
		return "", "", nil
	}
	blob := blobPrefix(instance) + "prop-" + strings.ToLower(name) + "-" + uuid.NewString() + ".gz"
	if err := b.putBlob(ctx, blob, []byte(value)); err != nil {
		return "", "", err
	}
	e[name], e[name+"Blob"], e[name+"Hash"] = "", blob, hash
	return prev, blob, nil
}

// setLargeBinary is setLarge for a binary property (nil clears it).
func (b *Backend) setLargeBinary(ctx context.Context, e entity, instance, name string, value []byte, replaced, fresh *[]string) error {
	if prev := e.str(name + "Blob"); prev != "" {
		*replaced = append(*replaced, prev)
	}
	delete(e, name)
	delete(e, name+"@odata.type")
	e[name+"Blob"] = ""
	switch {
	case value == nil:
	case len(value) <= maxInlineProperty:
		e.setBinary(name, value)
	default:
		blob := blobPrefix(instance) + "prop-" + strings.ToLower(name) + "-" + uuid.NewString() + ".gz"
		if err := b.putBlob(ctx, blob, value); err != nil {
			return err
		}
		e[name+"Blob"] = blob
		*fresh = append(*fresh, blob)
	}
	return nil
}

func (b *Backend) getLarge(ctx context.Context, e entity, name string) (string, error) {
	if blob := e.str(name + "Blob"); blob != "" {
		data, err := b.getBlobCached(ctx, blob)
		return string(data), err
	}
	return e.str(name), nil
}

// metadata converts a sentinel row to api metadata.
func (b *Backend) metadata(ctx context.Context, e entity) (*api.OrchestrationMetadata, error) {
	id := e.str("InstanceID")
	input, err := b.getLarge(ctx, e, "Input")
	if err != nil {
		return nil, err
	}
	output, err := b.getLarge(ctx, e, "Output")
	if err != nil {
		return nil, err
	}
	custom, err := b.getLarge(ctx, e, "CustomStatus")
	if err != nil {
		return nil, err
	}
	name, err := b.getLarge(ctx, e, "Name")
	if err != nil {
		return nil, err
	}
	var fd *dtbackend.TaskFailureDetails
	raw, err := e.binary("FailureDetails")
	if blob := e.str("FailureDetailsBlob"); blob != "" && err == nil {
		raw, err = b.getBlobCached(ctx, blob)
	}
	if err != nil {
		return nil, err
	} else if len(raw) > 0 {
		fd = &dtbackend.TaskFailureDetails{}
		if err := proto.Unmarshal(raw, fd); err != nil {
			return nil, fmt.Errorf("azurestorage: instance %s failure details: %w", id, err)
		}
	}
	return api.NewOrchestrationMetadata(api.InstanceID(id), name, sentinelStatus(e),
		parseTime(e.str("CreatedTime")), parseTime(e.str("LastUpdatedTime")), input, output, custom, fd), nil
}

// GetOrchestrationMetadata implements backend.Backend.
func (b *Backend) GetOrchestrationMetadata(ctx context.Context, id api.InstanceID) (*api.OrchestrationMetadata, error) {
	e, _, err := b.getSentinel(ctx, string(id))
	if err != nil {
		return nil, err
	}
	if e == nil {
		return nil, api.ErrInstanceNotFound
	}
	return b.metadata(ctx, e)
}

// newSentinel is the status row of an instance that has not run yet.
// A start delayed to its scheduled time is recorded in it (unstarted.go).
func (b *Backend) newSentinel(ctx context.Context, start *dtbackend.HistoryEvent, delayed bool) (entity, error) {
	es := start.GetExecutionStarted()
	id := es.GetOrchestrationInstance().GetInstanceId()
	e := newEntity(escapeKey(id), sentinelRK)
	e["InstanceID"] = id
	e["Status"] = taskhub.StorageName(api.RUNTIME_STATUS_PENDING)
	e["ExecutionID"] = es.GetOrchestrationInstance().GetExecutionId().GetValue()
	e["CreatedTime"] = formatTime(start.GetTimestamp().AsTime())
	e["LastUpdatedTime"] = formatTime(time.Now())
	e["HistoryCount"] = 0
	if delayed {
		if err := recordStart(e, start); err != nil {
			return nil, err
		}
	}
	var blobs []string
	for _, p := range [][2]string{{"Name", es.GetName()}, {"Input", es.GetInput().GetValue()}} {
		_, blob, err := b.setLarge(ctx, e, id, p[0], p[1])
		if blob != "" {
			blobs = append(blobs, blob)
		}
		if err != nil {
			b.deleteBlobs(ctx, blobs)
			return nil, err
		}
	}
	return e, nil
}

// CreateOrchestrationInstance implements backend.Backend. The start message
// is enqueued before the status row is written: if the process dies in
// between, the worker that receives the message writes the row itself, so
// an instance can never be left Pending without a message to start it.
func (b *Backend) CreateOrchestrationInstance(ctx context.Context, e *dtbackend.HistoryEvent, opts ...dtbackend.OrchestrationIdReusePolicyOptions) error {
	if e == nil || e.GetExecutionStarted() == nil {
		return errors.New("azurestorage: CreateOrchestrationInstance needs an ExecutionStarted event")
	}
	if e.Timestamp == nil {
		return errors.New("azurestorage: HistoryEvent must have a non-nil timestamp")
	}
	policy := &api.OrchestrationIdReusePolicy{}
	for _, o := range opts {
		if err := o(policy); err != nil {
			return err
		}
	}
	err := b.createInstance(ctx, e, policy, "")
	if errors.Is(err, api.ErrIgnoreInstance) {
		return nil
	}
	if err == nil {
		b.orchWake.Notify()
	}
	return err
}

// createInstance creates the instance e starts, applying policy to an
// existing one. msgID names the start message ("" for a fresh id). An
// instance that already runs e's execution (a create sent again) is left
// as it is.
func (b *Backend) createInstance(ctx context.Context, e *dtbackend.HistoryEvent, policy *api.OrchestrationIdReusePolicy, msgID string) error {
	es := e.GetExecutionStarted()
	id := es.GetOrchestrationInstance().GetInstanceId()
	if id == "" {
		return errors.New("azurestorage: ExecutionStarted event has no instance id")
	}
	existing, _, err := b.getSentinel(ctx, id)
	if err != nil {
		return err
	}
	if existing != nil && existing.str("ExecutionID") == es.GetOrchestrationInstance().GetExecutionId().GetValue() && !existing.boolean("Purging") {
		return nil
	}
	if existing != nil {
		status := sentinelStatus(existing)
		matched := false
		for _, s := range policy.GetOperationStatus() {
			if s == status {
				matched = true
			}
		}
		if !matched {
			return api.ErrDuplicateInstance
		}
		switch policy.GetAction() {
		case api.REUSE_ID_ACTION_IGNORE:
			b.log.Warn("azurestorage: instance exists; dropping duplicate create request", "instance", id)
			return api.ErrIgnoreInstance
		case api.REUSE_ID_ACTION_TERMINATE:
			if err := b.purge(ctx, id, false); err != nil {
				return fmt.Errorf("azurestorage: replace instance %s: %w", id, err)
			}
		default:
			return api.ErrDuplicateInstance
		}
	}
	var at time.Time
	if t, ok := taskhub.ScheduledStart([]*dtbackend.HistoryEvent{e}, time.Now()); ok {
		at = t
	}
	if msgID == "" {
		msgID = uuid.NewString()
	}
	env := envelope{ID: msgID, Instance: id}
	// The start is handed over (this worker) or announced (a poller here,
	// the partition's owner elsewhere) only once its status row is
	// written: an episode run before would commit the row itself, racing
	// this Add, and one of the two would lose (see heldHandKey).
	held := &heldHand{}
	defer b.bufferHeld(held)
	if err := b.send(context.WithValue(ctx, heldHandKey{}, held), b.controlFor(id), env, e, at); err != nil {
		return err
	}
	row, err := b.newSentinel(ctx, e, !at.IsZero())
	if err != nil {
		return err
	}
	err = b.storage(ctx, "create instance", func(ctx context.Context) error {
		_, err := b.history.AddEntity(ctx, row.marshal(), nil)
		return err
	})
	if err == nil {
		b.writeIndex(ctx, nil, row)
	}
	if err != nil {
		if !isConflict(err) {
			return fmt.Errorf("azurestorage: create instance %s: %w", id, err)
		}
		// A worker got the start message first and wrote the row, or a
		// concurrent create won.
		cur, _, err := b.getSentinel(ctx, id)
		if err != nil {
			return err
		}
		if cur == nil || cur.str("ExecutionID") != row.str("ExecutionID") {
			return api.ErrDuplicateInstance
		}
	}
	return nil
}

func (b *Backend) controlFor(id string) *azqueue.QueueClient {
	return b.control[partitionOf(id, b.names.partitions)]
}

// AddNewOrchestrationEvent implements backend.Backend. Events for an
// instance that does not exist yet are kept (stashed in its partition) and
// delivered once it starts.
func (b *Backend) AddNewOrchestrationEvent(ctx context.Context, id api.InstanceID, e *dtbackend.HistoryEvent) error {
	if e == nil {
		return errors.New("azurestorage: HistoryEvent must be non-nil")
	}
	if e.Timestamp == nil {
		return errors.New("azurestorage: HistoryEvent must have a non-nil timestamp")
	}
	if err := b.send(ctx, b.controlFor(string(id)), envelope{ID: uuid.NewString(), Instance: string(id)}, e, time.Time{}); err != nil {
		return err
	}
	b.orchWake.Notify()
	return nil
}

// PurgeOrchestrationState implements backend.Backend: it deletes the
// instance's rows and blobs. Only completed, failed or terminated instances
// can be purged.
func (b *Backend) PurgeOrchestrationState(ctx context.Context, id api.InstanceID) error {
	return b.purge(ctx, string(id), true)
}

// purge deletes an instance. It first fences the instance: it marks the
// sentinel Purging, conditional on the ETag it read, which fails every
// commit prepared before (their ETag no longer matches), and no episode
// starts on a Purging instance (buildWorkItem holds its messages back).
// Only then are the rows deleted, the sentinel last and only if still
// unchanged, then the blobs. A purge that dies half way leaves a Purging
// instance that a later purge (or replacement) finishes.
func (b *Backend) purge(ctx context.Context, id string, requireCompleted bool) error {
	e, etag, err := b.getSentinel(ctx, id)
	if err != nil {
		return err
	}
	if e == nil {
		return api.ErrInstanceNotFound
	}
	pk := escapeKey(id)
	if !e.boolean("Purging") {
		if requireCompleted {
			switch sentinelStatus(e) {
			case api.RUNTIME_STATUS_COMPLETED, api.RUNTIME_STATUS_FAILED, api.RUNTIME_STATUS_TERMINATED:
			default:
				return api.ErrNotCompleted
			}
		}
		mark := newEntity(pk, sentinelRK)
		mark["Purging"] = true
		err := b.storage(ctx, "purge instance", func(ctx context.Context) error {
			resp, err := b.history.UpdateEntity(ctx, mark.marshal(), &aztables.UpdateEntityOptions{IfMatch: &etag, UpdateMode: aztables.UpdateModeMerge})
			if err == nil {
				etag = resp.ETag
			}
			return err
		})
		switch {
		case isPrecondition(err):
			return fmt.Errorf("azurestorage: purge %s: the instance changed during the purge: %w", id, api.ErrNotCompleted)
		case isNotFound(err):
			return api.ErrInstanceNotFound
		case err != nil:
			return fmt.Errorf("azurestorage: purge %s: %w", id, err)
		}
	}
	rows, err := b.partitionRows(ctx, pk, true)
	if err != nil {
		return err
	}
	var actions []aztables.TransactionAction
	flush := func() error {
		if len(actions) == 0 {
			return nil
		}
		err := b.submit(ctx, actions)
		actions = actions[:0]
		if err != nil {
			return fmt.Errorf("azurestorage: purge %s: %w", id, err)
		}
		return nil
	}
	for _, r := range rows {
		if r.str("RowKey") == sentinelRK {
			continue
		}
		actions = append(actions, aztables.TransactionAction{ActionType: aztables.TransactionTypeDelete, Entity: newEntity(pk, r.str("RowKey")).marshal()})
		if len(actions) == 100 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	err = b.storage(ctx, "purge instance", func(ctx context.Context) error {
		_, err := b.history.DeleteEntity(ctx, pk, sentinelRK, &aztables.DeleteEntityOptions{IfMatch: &etag})
		return err
	})
	if err != nil && !isNotFound(err) {
		if isPrecondition(err) {
			return fmt.Errorf("azurestorage: purge %s: the instance changed during the purge: %w", id, api.ErrNotCompleted)
		}
		return fmt.Errorf("azurestorage: purge %s: %w", id, err)
	}
	ipk, irk := indexKey(e.str("CreatedTime"), id)
	b.deleteIndex(ctx, ipk, irk)
	return b.deleteBlobsUnder(ctx, blobPrefix(id))
}

// partitionRows reads every row of an instance partition (one range query).
func (b *Backend) partitionRows(ctx context.Context, pk string, keysOnly bool) ([]entity, error) {
	filter := "PartitionKey eq " + quote(pk)
	o := &aztables.ListEntitiesOptions{Filter: &filter}
	if keysOnly {
		sel := "PartitionKey,RowKey"
		o.Select = &sel
	}
	var out []entity
	err := b.storage(ctx, "read partition", func(ctx context.Context) error {
		out = out[:0]
		pager := b.history.NewListEntitiesPager(o)
		for pager.More() {
			page, err := pager.NextPage(ctx)
			if err != nil {
				return err
			}
			for _, raw := range page.Entities {
				e, err := parseEntity(raw)
				if err != nil {
					return err
				}
				out = append(out, e)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("azurestorage: read partition %s: %w", pk, err)
	}
	return out, nil
}
