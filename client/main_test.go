package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/internal/azurite"
	"github.com/dronehub/dronehub/worker"
)

// azr is the Azurite server this package's tests share.
var azr azurite.Shared

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "client-azurite-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	azr.Options = azurite.Options{Location: dir}
	code := m.Run()
	azr.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

// The test orchestrations: Approval waits for a public "approve" event
// (and fails on a negative amount); Echo returns its input.
const (
	approvalName = "Approval"
	echoName     = "Echo"
)

type approvalIn struct {
	Item   string `json:"item"`
	Amount int    `json:"amount"`
}

type approvalOut struct {
	Item     string `json:"item"`
	Approved bool   `json:"approved"`
	By       string `json:"by"`
}

func approval(ctx *task.OrchestrationContext) (any, error) {
	var in approvalIn
	if err := ctx.GetInput(&in); err != nil {
		return nil, err
	}
	if in.Amount < 0 {
		return nil, errors.New("a negative amount cannot be approved")
	}
	ctx.SetCustomStatus(`{"state":"waiting"}`)
	var by string
	if err := ctx.WaitForSingleEvent("approve", -1).Await(&by); err != nil {
		return nil, err
	}
	return approvalOut{Item: in.Item, Approved: true, By: by}, nil
}

func echo(ctx *task.OrchestrationContext) (any, error) {
	var in any
	if err := ctx.GetInput(&in); err != nil {
		return nil, err
	}
	return in, nil
}

// register adds the test orchestrations, with Approval's public event.
func register(cfg *worker.Config) {
	cfg.Register = func(r *task.TaskRegistry) error {
		return errors.Join(r.AddOrchestratorN(approvalName, approval), r.AddOrchestratorN(echoName, echo))
	}
	cfg.PublicEvents = map[string][]string{approvalName: {"approve"}}
}

// serve runs w's HTTP server (worker.Server, with the worker's limits) on a
// loopback port until the test ends and returns its base URL.
func serve(t testing.TB, w *worker.Worker) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := w.Server()
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return "http://" + ln.Addr().String()
}
