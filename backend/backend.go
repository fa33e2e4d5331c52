// Package backend opens a dronehub task hub, and the domain store beside it,
// from one connection string.
//
// Supported connection strings:
//
//	""                                  the embedded default: SQLite file dronehub.db
//	sqlite:PATH | PATH.db               a SQLite file
//	UseDevelopmentStorage=true          Azure Storage on Azurite (see backend/azurestorage)
//	DefaultEndpointsProtocol=...;...    an Azure Storage account connection string
//	https://ACCOUNT.blob.core.windows.net  an account URL, signed in with DefaultAzureCredential
package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/dronehub/dronehub/backend/sqlite"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/taskhub"
)

// DefaultSQLitePath is the database file used when no connection string is given.
const DefaultSQLitePath = "dronehub.db"

// DefaultHubName is the task hub name used when none is given.
const DefaultHubName = "dronehub"

// ErrUnsupportedConnectionString is wrapped by Open's error for a connection
// string of no supported kind.
var ErrUnsupportedConnectionString = errors.New("unsupported connection string")

// Options configures Open. The zero value is ready to use.
type Options struct {
	// HubName names the task hub inside shared storage (Azure Storage);
	// default DefaultHubName. It is ignored by SQLite, where the file is the hub.
	HubName string
	// LockTimeout is how long a fetched work item stays locked to its worker.
	LockTimeout time.Duration
	// Partitions is the number of control-queue partitions of an Azure
	// Storage hub (1-16, default 4), fixed when the hub is created. Ignored
	// by SQLite.
	Partitions int
	// MaxDequeueCount is how many failed executions of a work item (its
	// episode failed, or its worker died holding it) set it aside as a dead
	// letter; hand-backs and storage errors do not count. Default 10.
	MaxDequeueCount int
	// Wake is the UDP address an Azure Storage worker listens on for
	// wake-ups from other processes ("host:port", default ":0"; "off"
	// disables them); IdlePollInterval is how often its idle queues are
	// polled while they are on (default 15s). See azurestorage.Options.
	// Ignored by SQLite.
	Wake             string
	IdlePollInterval time.Duration
	// HTTPAddr is the address the worker's HTTP API listens on; an Azure
	// Storage worker publishes it, with its host name, in its heartbeat
	// (HubInfo.Workers). Ignored by SQLite.
	HTTPAddr string
	// MustExist makes Open fail with ErrHubNotFound instead of creating a
	// hub that does not exist yet (for inspection and deletion).
	MustExist bool
	// Logger receives backend logs; default slog.Default().
	Logger *slog.Logger
	// TracerProvider, when set, puts the storage calls made inside a trace
	// in it (Azure Storage; see docs/tracing.md). Nil traces nothing.
	TracerProvider trace.TracerProvider
}

// ErrHubNotFound is returned by Open with MustExist for a missing hub.
var ErrHubNotFound = errors.New("task hub not found")

// Hub is an open task hub and the domain store that lives beside it.
type Hub struct {
	// Kind is "sqlite" or "azurestorage".
	Kind string
	// Backend is the task hub.
	Backend taskhub.Backend
	// Fleet is the domain store on the same storage.
	Fleet fleet.Store
	// Description names the storage without secrets, for logs.
	Description string

	close func() error
}

// Close releases the hub's storage clients. Stop any worker using it first.
func (h *Hub) Close() error {
	if h.close == nil {
		return nil
	}
	return h.close()
}

// Kind classifies a connection string: "sqlite" or "azurestorage".
func Kind(conn string) (string, error) {
	c := strings.TrimSpace(conn)
	lc := strings.ToLower(c)
	switch {
	case c == "":
		return "sqlite", nil
	case strings.HasPrefix(lc, "sqlite:"):
		return "sqlite", nil
	case strings.HasPrefix(lc, "usedevelopmentstorage="), strings.Contains(lc, "accountname="),
		strings.Contains(lc, "blobendpoint="), strings.Contains(lc, "queueendpoint="), strings.Contains(lc, "tableendpoint="):
		return "azurestorage", nil
	case strings.HasPrefix(lc, "https://") || strings.HasPrefix(lc, "http://"):
		return "azurestorage", nil
	case strings.HasSuffix(lc, ".db") || strings.HasSuffix(lc, ".sqlite") || strings.HasSuffix(lc, ".sqlite3"):
		return "sqlite", nil
	}
	return "", fmt.Errorf("%w %q: use one of: a SQLite file (\"sqlite:PATH\" or a path ending in .db), "+
		"\"UseDevelopmentStorage=true\" for Azurite, an Azure Storage connection string "+
		"(\"DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...\" or with a SharedAccessSignature), "+
		"or an account URL (\"https://ACCOUNT.blob.core.windows.net\")", ErrUnsupportedConnectionString, redact(conn))
}

// Open opens the task hub named by conn, creating its storage if needed.
func Open(ctx context.Context, conn string, opts Options) (*Hub, error) {
	kind, err := Kind(conn)
	if err != nil {
		return nil, err
	}
	if opts.HubName == "" {
		opts.HubName = DefaultHubName
	}
	switch kind {
	case "sqlite":
		path := strings.TrimSpace(conn)
		if len(path) >= 7 && strings.EqualFold(path[:7], "sqlite:") {
			path = strings.TrimPrefix(path[7:], "//")
		}
		if path == "" {
			path = DefaultSQLitePath
		}
		if opts.MustExist {
			if _, err := os.Stat(path); err != nil {
				return nil, fmt.Errorf("%w: no SQLite file %s", ErrHubNotFound, path)
			}
		}
		b, err := sqlite.Open(ctx, sqlite.Options{Path: path, LockTimeout: opts.LockTimeout, MaxDequeueCount: opts.MaxDequeueCount, Logger: opts.Logger})
		if err != nil {
			return nil, err
		}
		return &Hub{Kind: kind, Backend: b, Fleet: b.Fleet(), Description: "sqlite:" + path, close: b.Close}, nil
	default:
		return openAzure(ctx, conn, opts)
	}
}

// redact hides secrets in a connection string that is echoed in an error.
func redact(conn string) string {
	parts := strings.Split(conn, ";")
	for i, p := range parts {
		k, _, ok := strings.Cut(p, "=")
		if !ok {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "accountkey", "sharedaccesssignature":
			parts[i] = k + "=REDACTED"
		}
	}
	s := strings.Join(parts, ";")
	if i := strings.Index(s, "?"); i >= 0 && strings.Contains(strings.ToLower(s[i:]), "sig=") {
		s = s[:i] + "?REDACTED"
	}
	return s
}
