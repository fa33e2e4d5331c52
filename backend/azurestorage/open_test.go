package azurestorage_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/backend"
	"github.com/dronehub/dronehub/backend/azurestorage"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/internal/azurite"
)

// TestBackendOpenRoutesAzure checks that backend.Open hands an Azure
// connection string to this package.
func TestBackendOpenRoutesAzure(t *testing.T) {
	srv := azurestorage.SharedAzurite(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hub, err := backend.Open(ctx, srv.ConnectionString(), backend.Options{HubName: azurestorage.FreshHubName(t)})
	if err != nil {
		t.Fatalf("backend.Open: %v", err)
	}
	defer hub.Close()
	if hub.Kind != "azurestorage" {
		t.Fatalf("Kind = %q", hub.Kind)
	}
	if strings.Contains(hub.Description, azurite.AccountKey) || !strings.Contains(hub.Description, "azurestorage:") {
		t.Fatalf("Description = %q", hub.Description)
	}
	if _, err := hub.Fleet.AddDrone(ctx, "d1", domain.LatLon{}); err != nil {
		t.Fatalf("AddDrone: %v", err)
	}
	if err := hub.Backend.DeleteTaskHub(ctx); err != nil {
		t.Fatalf("DeleteTaskHub: %v", err)
	}
}
