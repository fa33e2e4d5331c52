package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out); err != nil {
		t.Fatalf("run: %v\noutput so far:\n%s", err, out.String())
	}
	got := strings.TrimSpace(out.String())
	if !strings.HasSuffix(got, "Completed") {
		t.Fatalf("output does not end with Completed:\n%s", got)
	}
	for _, phase := range []string{"Created", "DroneReserved", "HeadedToPickup", "PickedUp", "HeadedToDropoff", "Delivered", "Returning"} {
		if !strings.Contains(got, ". "+phase+"\n") {
			t.Errorf("timeline lacks phase %s:\n%s", phase, got)
		}
	}
}
