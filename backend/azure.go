package backend

import (
	"context"
	"fmt"

	"github.com/dronehub/dronehub/backend/azurestorage"
)

// openAzure opens the Azure Storage task hub (backend/azurestorage) named by
// an Azure Storage connection string or account URL.
func openAzure(ctx context.Context, conn string, opts Options) (*Hub, error) {
	cfg, err := azurestorage.ParseConnectionString(conn)
	if err != nil {
		return nil, err
	}
	if opts.MustExist {
		exists, err := azurestorage.HubExists(ctx, conn, opts.HubName)
		if err != nil {
			return nil, err
		}
		if !exists {
			return nil, fmt.Errorf("%w: no hub %q in %s", ErrHubNotFound, opts.HubName, cfg)
		}
	}
	b, err := azurestorage.Open(ctx, azurestorage.Options{
		ConnectionString: conn,
		HubName:          opts.HubName,
		LockTimeout:      opts.LockTimeout,
		Partitions:       opts.Partitions,
		MaxDequeueCount:  opts.MaxDequeueCount,
		Wake:             opts.Wake,
		IdlePollInterval: opts.IdlePollInterval,
		HTTPAddr:         opts.HTTPAddr,
		Logger:           opts.Logger,
		TracerProvider:   opts.TracerProvider,
	})
	if err != nil {
		return nil, err
	}
	return &Hub{
		Kind:        "azurestorage",
		Backend:     b,
		Fleet:       b.Fleet(),
		Description: cfg.String() + " hub " + opts.HubName,
		close:       b.Close,
	}, nil
}
