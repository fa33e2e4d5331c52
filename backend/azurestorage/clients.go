package azurestorage

import (
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"go.opentelemetry.io/otel/trace"
)

// clients are the three service clients built from one Config.
type clients struct {
	queue *azqueue.ServiceClient
	table *aztables.ServiceClient
	blob  *azblob.Client
}

// retryOptions retry transient failures (timeouts, 408/429/5xx) with
// exponential backoff and jitter.
func retryOptions() policy.RetryOptions {
	return policy.RetryOptions{MaxRetries: 6, TryTimeout: 30 * time.Second, RetryDelay: 100 * time.Millisecond, MaxRetryDelay: 4 * time.Second}
}

func clientOptions(counter *Counter, service string, tp trace.TracerProvider) azcore.ClientOptions {
	o := azcore.ClientOptions{Retry: retryOptions()}
	if counter != nil {
		o.PerRetryPolicies = []policy.Policy{counter.Policy(service)}
	}
	if tp != nil { // storage calls in traces: see tracing.go
		o.TracingProvider = inTraceProvider(tp)
		if service != "table" {
			o.PerRetryPolicies = append(o.PerRetryPolicies, spanPolicy{tracer: tp.Tracer(tracerName), service: service})
		}
	}
	if service == "table" {
		o.PerRetryPolicies = append(o.PerRetryPolicies, capturePolicy{})
	}
	return o
}

func withSAS(endpoint, sas string) string { return endpoint + "/?" + sas }

func newClients(cfg Config, counter *Counter, tp trace.TracerProvider) (*clients, error) {
	qo := &azqueue.ClientOptions{ClientOptions: clientOptions(counter, "queue", tp)}
	to := &aztables.ClientOptions{ClientOptions: clientOptions(counter, "table", tp)}
	bo := &azblob.ClientOptions{ClientOptions: clientOptions(counter, "blob", tp)}
	var c clients
	var err error
	switch {
	case cfg.AccountKey != "":
		qk, e1 := azqueue.NewSharedKeyCredential(cfg.AccountName, cfg.AccountKey)
		tk, e2 := aztables.NewSharedKeyCredential(cfg.AccountName, cfg.AccountKey)
		bk, e3 := azblob.NewSharedKeyCredential(cfg.AccountName, cfg.AccountKey)
		if e1 != nil || e2 != nil || e3 != nil {
			return nil, fmt.Errorf("azurestorage: account key for %s is not usable", cfg.AccountName)
		}
		if c.queue, err = azqueue.NewServiceClientWithSharedKeyCredential(cfg.QueueEndpoint+"/", qk, qo); err != nil {
			return nil, fmt.Errorf("azurestorage: queue client: %w", err)
		}
		if c.table, err = aztables.NewServiceClientWithSharedKey(cfg.TableEndpoint, tk, to); err != nil {
			return nil, fmt.Errorf("azurestorage: table client: %w", err)
		}
		if c.blob, err = azblob.NewClientWithSharedKeyCredential(cfg.BlobEndpoint+"/", bk, bo); err != nil {
			return nil, fmt.Errorf("azurestorage: blob client: %w", err)
		}
	case cfg.SAS != "":
		if c.queue, err = azqueue.NewServiceClientWithNoCredential(withSAS(cfg.QueueEndpoint, cfg.SAS), qo); err != nil {
			return nil, fmt.Errorf("azurestorage: queue client: %w", err)
		}
		if c.table, err = aztables.NewServiceClientWithNoCredential(withSAS(cfg.TableEndpoint, cfg.SAS), to); err != nil {
			return nil, fmt.Errorf("azurestorage: table client: %w", err)
		}
		if c.blob, err = azblob.NewClientWithNoCredential(withSAS(cfg.BlobEndpoint, cfg.SAS), bo); err != nil {
			return nil, fmt.Errorf("azurestorage: blob client: %w", err)
		}
	default:
		cred, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, fmt.Errorf("azurestorage: DefaultAzureCredential: %w", err)
		}
		if c.queue, err = azqueue.NewServiceClient(cfg.QueueEndpoint+"/", cred, qo); err != nil {
			return nil, fmt.Errorf("azurestorage: queue client: %w", err)
		}
		if c.table, err = aztables.NewServiceClient(cfg.TableEndpoint, cred, to); err != nil {
			return nil, fmt.Errorf("azurestorage: table client: %w", err)
		}
		if c.blob, err = azblob.NewClient(cfg.BlobEndpoint+"/", cred, bo); err != nil {
			return nil, fmt.Errorf("azurestorage: blob client: %w", err)
		}
	}
	return &c, nil
}
