package backend

import (
	"context"
	"fmt"
)

// openAzure is replaced by the Azure Storage task hub (backend/azurestorage).
func openAzure(ctx context.Context, conn string, opts Options) (*Hub, error) {
	return nil, fmt.Errorf("azure storage task hub for %q: %w", redact(conn), ErrUnsupportedConnectionString)
}
