package azurestorage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// DefaultHubName is the task hub name used when Options.HubName is empty.
const DefaultHubName = "dronehub"

// Options configures the task hub. Every zero field means its default;
// ConnectionString is required.
type Options struct {
	// ConnectionString is an Azure Storage connection string or account URL
	// (see ParseConnectionString).
	ConnectionString string
	// HubName names the task hub: 3-45 letters and digits starting with a
	// letter. Default DefaultHubName.
	HubName string
	// Partitions is the number of control queues, 1-16. Zero means the
	// count an existing hub was created with, or 4 for a new hub. It is
	// recorded when the hub is created and must match on every later start.
	Partitions int
	// LockTimeout is how long a fetched message stays invisible to other
	// workers (the work item's lock). Default 2 minutes.
	LockTimeout time.Duration
	// MaxPollInterval bounds the idle polling back-off of each consumer:
	// after work it polls again at once, then backs off up to this interval.
	// Work this process enqueues and timers it set wake it sooner.
	// Default 1s.
	MaxPollInterval time.Duration
	// Wake is the UDP address this worker listens on for wake-ups from
	// other processes (see wake.go): "host:port", default ":0" (every
	// interface, a free port; the address other hosts reach is published
	// in the worker's heartbeat row). "off" disables wake-ups.
	Wake string
	// IdlePollInterval bounds the idle polling back-off while wake-ups are
	// on: other processes wake this worker when they enqueue for it, so a
	// poll is only the fallback for a lost wake-up or a timer that comes
	// due. Default 15s (an idle worker: about 56 requests a minute with 4
	// partitions). Without wake-ups MaxPollInterval bounds it.
	IdlePollInterval time.Duration
	// MaxDequeueCount is how many times a message may be dequeued before it
	// is moved to the dead-letter table. Default 10.
	MaxDequeueCount int
	// LeaseDuration is how long a partition lease lasts without renewal;
	// leases renew every third of it. Default 15s: a dead worker's
	// partitions are claimed 15-20 s after its last renewal. A round costs
	// three requests (heartbeat, listing, all renewals in one transaction)
	// whatever the partitions held.
	LeaseDuration time.Duration
	// InstanceCache is how many instances this worker keeps in memory as
	// its last commit left them, so that their next episode needs no read
	// of their partition (see cache.go); default 1000, negative disables.
	// An entry costs about the size of the instance's history.
	InstanceCache int
	// WorkerID names this worker in leases and locks; default host-pid-random.
	WorkerID string
	// HTTPAddr is the address this worker's HTTP API listens on, published
	// in its heartbeat row with its host name so that HubInfo names each
	// partition owner by where an operator finds it; "" for none.
	HTTPAddr string
	// Counter counts storage requests; default a new Counter (see Backend.Counter).
	Counter *Counter
	// TracerProvider, when set, puts storage calls made inside a trace in
	// it (see tracing.go); nil traces nothing, at no cost.
	TracerProvider trace.TracerProvider
	// Logger receives logs; default slog.Default().
	Logger *slog.Logger

	// maxVisibility replaces the 7-day visibility limit in tests, so that
	// chaining can be observed in seconds.
	maxVisibility time.Duration
	// createGrace replaces defaultCreateGrace in tests (see unstarted.go).
	createGrace time.Duration
}

func (o Options) withDefaults() Options {
	if o.HubName == "" {
		o.HubName = DefaultHubName
	}
	if o.Partitions == 0 {
		o.Partitions = 4
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = 2 * time.Minute
	}
	if o.MaxPollInterval == 0 {
		o.MaxPollInterval = time.Second
	}
	if o.Wake == "" {
		o.Wake = ":0"
	}
	if o.IdlePollInterval == 0 {
		o.IdlePollInterval = max(defaultIdlePoll, o.MaxPollInterval)
	}
	if o.MaxDequeueCount == 0 {
		o.MaxDequeueCount = 10
	}
	if o.LeaseDuration == 0 {
		o.LeaseDuration = 15 * time.Second
	}
	if o.InstanceCache == 0 {
		o.InstanceCache = defaultInstanceCache
	}
	if o.WorkerID == "" {
		o.WorkerID = defaultWorkerID()
	}
	if o.Counter == nil {
		o.Counter = &Counter{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

func (o Options) validate() error {
	if o.ConnectionString == "" {
		return errors.New("azurestorage: Options.ConnectionString is required (e.g. UseDevelopmentStorage=true)")
	}
	if err := validateHubName(o.HubName); err != nil {
		return err
	}
	switch {
	case o.Partitions < 1 || o.Partitions > 16:
		return fmt.Errorf("azurestorage: Options.Partitions %d is out of range 1-16", o.Partitions)
	case o.LockTimeout < time.Second || o.LockTimeout > 7*24*time.Hour:
		return fmt.Errorf("azurestorage: Options.LockTimeout %s is out of range 1s-7d", o.LockTimeout)
	case o.MaxPollInterval < time.Millisecond:
		return fmt.Errorf("azurestorage: Options.MaxPollInterval %s is below 1ms", o.MaxPollInterval)
	case o.IdlePollInterval < o.MaxPollInterval:
		return fmt.Errorf("azurestorage: Options.IdlePollInterval %s is below MaxPollInterval %s", o.IdlePollInterval, o.MaxPollInterval)
	case o.MaxDequeueCount < 1:
		return fmt.Errorf("azurestorage: Options.MaxDequeueCount %d must be at least 1", o.MaxDequeueCount)
	case o.LeaseDuration < time.Second:
		return fmt.Errorf("azurestorage: Options.LeaseDuration %s is below 1s", o.LeaseDuration)
	}
	return nil
}

// OpenFleet opens only the domain store of a hub (creating its tables).
func OpenFleet(ctx context.Context, opts Options) (*Fleet, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	cfg, err := ParseConnectionString(opts.ConnectionString)
	if err != nil {
		return nil, err
	}
	cl, err := newClients(cfg, opts.Counter, opts.TracerProvider)
	if err != nil {
		return nil, err
	}
	return newFleet(ctx, cl.table, newNames(opts.HubName, opts.Partitions))
}
