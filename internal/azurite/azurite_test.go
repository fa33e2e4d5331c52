package azurite_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"

	"github.com/dronehub/dronehub/internal/azurite"
)

var shared azurite.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	shared.Close()
	os.Exit(code)
}

func createContainer(t *testing.T, conn, name string) error {
	t.Helper()
	c, err := azblob.NewClientFromConnectionString(conn, &azblob.ClientOptions{ClientOptions: policy.ClientOptions{Retry: policy.RetryOptions{MaxRetries: -1}}})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.CreateContainer(ctx, name, nil)
	return err
}

func TestSharedServes(t *testing.T) {
	s := shared.Get(t)
	if err := createContainer(t, s.ConnectionString(), "shared"); err != nil {
		t.Fatalf("create container: %v", err)
	}
	if s2 := shared.Get(t); s2 != s {
		t.Fatal("Shared.Get started a second server")
	}
}

func TestRestartOnDisk(t *testing.T) {
	s := azurite.Start(t, azurite.Options{Location: t.TempDir()})
	if err := createContainer(t, s.ConnectionString(), "kept"); err != nil {
		t.Fatalf("create container: %v", err)
	}
	s.Stop()
	if err := createContainer(t, s.ConnectionString(), "down"); err == nil {
		t.Fatal("request succeeded while azurite was stopped")
	}
	if err := s.Restart(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	// The container survived: creating it again conflicts.
	if err := createContainer(t, s.ConnectionString(), "kept"); err == nil {
		t.Fatal("container did not survive an on-disk restart")
	}
}
