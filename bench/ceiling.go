package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"

	"github.com/dronehub/dronehub/backend/azurestorage"
)

// ceilingBatchSize is the number of upserts in one batch of Ceiling.
const ceilingBatchSize = 10

// ceilingPayload is the body of Ceiling's messages and the Data property
// of its rows: 64 bytes.
const ceilingPayload = "ceiling-ceiling-ceiling-ceiling-ceiling-ceiling-ceiling-ceiling-"

func isCeiling(w string) bool { return w == Ceiling }

// ceilingStorage describes, without secrets, the storage Ceiling uses.
func ceilingStorage(conn string) (string, error) {
	cfg, err := azurestorage.ParseConnectionString(conn)
	if err != nil {
		return "", fmt.Errorf("Options.AzureConnectionString: %w", err)
	}
	return cfg.String() + ", a scratch queue and table for " + Ceiling, nil
}

// ceilingClients builds queue and table service clients for cfg the way
// dronehub's Azure Storage backend does (same authentication, retries and
// the SDK's default transport), without its request counter.
func ceilingClients(cfg azurestorage.Config) (*azqueue.ServiceClient, *aztables.ServiceClient, error) {
	co := azcore.ClientOptions{Retry: policy.RetryOptions{
		MaxRetries: 6, TryTimeout: 30 * time.Second, RetryDelay: 100 * time.Millisecond, MaxRetryDelay: 4 * time.Second,
	}}
	qo := &azqueue.ClientOptions{ClientOptions: co}
	to := &aztables.ClientOptions{ClientOptions: co}
	var (
		qs  *azqueue.ServiceClient
		ts  *aztables.ServiceClient
		err error
	)
	switch {
	case cfg.AccountKey != "":
		qk, e1 := azqueue.NewSharedKeyCredential(cfg.AccountName, cfg.AccountKey)
		tk, e2 := aztables.NewSharedKeyCredential(cfg.AccountName, cfg.AccountKey)
		if e1 != nil || e2 != nil {
			return nil, nil, fmt.Errorf("the account key of %s is not usable", cfg.AccountName)
		}
		if qs, err = azqueue.NewServiceClientWithSharedKeyCredential(cfg.QueueEndpoint+"/", qk, qo); err != nil {
			return nil, nil, fmt.Errorf("queue client: %w", err)
		}
		if ts, err = aztables.NewServiceClientWithSharedKey(cfg.TableEndpoint, tk, to); err != nil {
			return nil, nil, fmt.Errorf("table client: %w", err)
		}
	case cfg.SAS != "":
		if qs, err = azqueue.NewServiceClientWithNoCredential(cfg.QueueEndpoint+"/?"+cfg.SAS, qo); err != nil {
			return nil, nil, fmt.Errorf("queue client: %w", err)
		}
		if ts, err = aztables.NewServiceClientWithNoCredential(cfg.TableEndpoint+"/?"+cfg.SAS, to); err != nil {
			return nil, nil, fmt.Errorf("table client: %w", err)
		}
	default:
		cred, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, nil, fmt.Errorf("DefaultAzureCredential: %w", err)
		}
		if qs, err = azqueue.NewServiceClient(cfg.QueueEndpoint+"/", cred, qo); err != nil {
			return nil, nil, fmt.Errorf("queue client: %w", err)
		}
		if ts, err = aztables.NewServiceClient(cfg.TableEndpoint, cred, to); err != nil {
			return nil, nil, fmt.Errorf("table client: %w", err)
		}
	}
	return qs, ts, nil
}

// ceilingEntity is a row of Ceiling's table.
type ceilingEntity struct {
	PartitionKey string
	RowKey       string
	N            int
	Data         string
}

func ceilingPartition(i int) string { return fmt.Sprintf("p%06d", i) }
func ceilingRow(j int) string       { return fmt.Sprintf("r%02d", j) }

// ceiling measures the raw rate of the engine's Azure Storage through the
// SDK: CeilingOps enqueues, dequeue+deletes, 10-entity batches and point
// reads, Concurrency at a time, on a scratch queue and table deleted after.
// When only the deletion fails, the figures are returned with the error.
func (e *Engine) ceiling(ctx context.Context) (_ *Result, err error) {
	cfg, err := azurestorage.ParseConnectionString(e.opts.AzureConnectionString)
	if err != nil {
		return nil, fmt.Errorf("Options.AzureConnectionString: %w", err)
	}
	qs, ts, err := ceilingClients(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg, err)
	}
	// Valid as a queue name (lower-case letters, digits) and a table name
	// (letters and digits, a letter first).
	name := "benchceil" + e.runID + randomHex(3)
	cleanup := func(what string, del func(context.Context) error) {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
		defer cancel()
		if derr := del(dctx); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete the scratch %s %s: %w", what, name, derr))
		}
	}

	qc := qs.NewQueueClient(name)
	if _, err := qc.Create(ctx, nil); err != nil {
		return nil, fmt.Errorf("create the scratch queue %s: %w", name, err)
	}
	defer cleanup("queue", func(ctx context.Context) error { _, err := qc.Delete(ctx, nil); return err })
	if _, err := ts.CreateTable(ctx, name, nil); err != nil {
		return nil, fmt.Errorf("create the scratch table %s: %w", name, err)
	}
	defer cleanup("table", func(ctx context.Context) error { _, err := ts.DeleteTable(ctx, name, nil); return err })
	tc := ts.NewClient(name)

	n := e.opts.CeilingOps
	c := &CeilingFigures{
		Storage:    fmt.Sprintf("queue and table %s in %s", name, cfg),
		OpsPerKind: n, Concurrency: e.opts.Concurrency,
	}
	prog := &ceilingProgress{e: e, began: time.Now(), total: 4 * n}

	c.Enqueue, err = e.ceilingKind(ctx, prog, "enqueue", n, 1, func(ctx context.Context, _ int) error {
		if _, err := qc.EnqueueMessage(ctx, ceilingPayload, nil); err != nil {
			return fmt.Errorf("enqueue: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	// Each dequeue takes a message Enqueue put: there are as many as
	// dequeues. One that finds none (a message hidden by a dequeue retried
	// by the SDK) is tried again, and counted.
	var empty atomic.Int64
	visibility := int32(60)
	c.DequeueDelete, err = e.ceilingKind(ctx, prog, "dequeue+delete", n, 2, func(ctx context.Context, _ int) error {
		for {
			resp, err := qc.DequeueMessage(ctx, &azqueue.DequeueMessageOptions{VisibilityTimeout: &visibility})
			if err != nil {
				return fmt.Errorf("dequeue: %w", err)
			}
			if len(resp.Messages) == 0 || resp.Messages[0].MessageID == nil || resp.Messages[0].PopReceipt == nil {
				if empty.Add(1) > int64(n) {
					return fmt.Errorf("the queue stayed empty through %d dequeues", n)
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(10 * time.Millisecond):
				}
				continue
			}
			m := resp.Messages[0]
			if _, err := qc.DeleteMessage(ctx, *m.MessageID, *m.PopReceipt, nil); err != nil {
				return fmt.Errorf("delete message: %w", err)
			}
			return nil
		}
	})
	if err != nil {
		return nil, err
	}
	c.DequeueDelete.Empty = int(empty.Load())
	c.DequeueDelete.Requests += c.DequeueDelete.Empty

	c.Batch, err = e.ceilingKind(ctx, prog, "batch", n, 1, func(ctx context.Context, i int) error {
		actions := make([]aztables.TransactionAction, ceilingBatchSize)
		for j := range actions {
			b, err := json.Marshal(ceilingEntity{PartitionKey: ceilingPartition(i), RowKey: ceilingRow(j), N: i, Data: ceilingPayload})
			if err != nil {
				return fmt.Errorf("encode a row: %w", err)
			}
			actions[j] = aztables.TransactionAction{ActionType: aztables.TransactionTypeInsertReplace, Entity: b}
		}
		if _, err := tc.SubmitTransaction(ctx, actions, nil); err != nil {
			return fmt.Errorf("submit a batch of %d to partition %s: %w", ceilingBatchSize, ceilingPartition(i), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	c.PointRead, err = e.ceilingKind(ctx, prog, "point read", n, 1, func(ctx context.Context, i int) error {
		pk, rk := ceilingPartition(i), ceilingRow(i%ceilingBatchSize)
		if _, err := tc.GetEntity(ctx, pk, rk, nil); err != nil {
			return fmt.Errorf("get %s/%s: %w", pk, rk, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	var seconds float64
	var requests int
	for _, k := range c.kinds() {
		seconds += k.k.Seconds
		requests += k.k.Requests
	}
	if seconds > 0 {
		c.RequestsPerSecond = float64(requests) / seconds
	}
	return &Result{
		Engine:      e.name,
		Workload:    Ceiling,
		Concurrency: e.opts.Concurrency,
		Seconds:     seconds,
		Ceiling:     c,
	}, nil
}

// ceilingProgress reports Ceiling's progress, across its kinds.
type ceilingProgress struct {
	e     *Engine
	began time.Time
	total int
	done  atomic.Int64
}

// report calls Options.Progress; only on Run's goroutine.
func (p *ceilingProgress) report() {
	p.e.progress(Progress{Engine: p.e.name, Workload: Ceiling, Done: int(p.done.Load()), Total: p.total,
		Unit: "operations", Elapsed: time.Since(p.began)})
}

// ceilingKind runs op(i) for i from 0 to n-1, Concurrency at a time, and
// measures it; each op makes requestsPerOp storage requests.
func (e *Engine) ceilingKind(ctx context.Context, prog *ceilingProgress, kind string, n, requestsPerOp int,
	op func(ctx context.Context, i int) error) (CeilingKind, error) {
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	lat := make([]time.Duration, n)
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	began := time.Now()
	for range min(e.opts.Concurrency, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || octx.Err() != nil {
					return
				}
				start := time.Now()
				if err := op(octx, i); err != nil {
					errOnce.Do(func() { first = fmt.Errorf("%s %d of %d: %w", kind, i+1, n, err); cancel() })
					return
				}
				lat[i] = time.Since(start)
				prog.done.Add(1)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	ticker := time.NewTicker(250 * time.Millisecond)
	defer ticker.Stop()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-ticker.C:
			prog.report()
		}
	}
	elapsed := time.Since(began)
	if first != nil {
		return CeilingKind{}, first
	}
	if err := ctx.Err(); err != nil {
		return CeilingKind{}, fmt.Errorf("%s: %d of %d done: %w", kind, int(next.Load()), n, err)
	}
	k := CeilingKind{Ops: n, Requests: n * requestsPerOp, Seconds: elapsed.Seconds(), LatencyMs: percentiles(lat)}
	if elapsed > 0 {
		k.PerSecond = float64(n) / elapsed.Seconds()
	}
	return k, nil
}
