package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dronehub/dronehub/internal/testkit"
)

// TestRun flies the example's mission on a worker serving its API on a
// loopback port, as `dronehub worker` does, with an API key.
func TestRun(t *testing.T) {
	const key = "example-key-0123456789"
	cfg := testkit.Config(t)
	cfg.APIKeys = []string{key}
	w := testkit.Start(t, cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := w.Server()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	url := "http://" + ln.Addr().String()
	if err := run(ctx, &out, url, key); err != nil {
		t.Fatalf("run: %v\noutput so far:\n%s", err, out.String())
	}
	got := strings.TrimSpace(out.String())
	if !strings.HasSuffix(got, "runtime status Completed, phase Completed") || !strings.Contains(got, "started: "+url+"/api/missions/") {
		t.Fatalf("output:\n%s", got)
	}
	for _, phase := range []string{"Created", "DroneReserved", "HeadedToPickup", "PickedUp", "HeadedToDropoff", "Delivered", "Returning"} {
		if !strings.Contains(got, ". "+phase+"\n") {
			t.Errorf("timeline lacks phase %s:\n%s", phase, got)
		}
	}
	if err := run(ctx, &out, url, "wrong-key-0123456789"); err == nil || !strings.Contains(err.Error(), "HTTP 401") {
		t.Errorf("with a wrong key: %v, want HTTP 401", err)
	}
}
