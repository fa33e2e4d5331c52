package azurestorage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/taskhub"
)

// poll calls cond every 20 ms until it holds or timeout passes.
func poll(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

// TestHubInfo checks the Inspector and RequestCounter capabilities: owners,
// queue depths, instance counts by status, dead-letter count.
func TestHubInfo(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 2, WorkerID: "w-info", HTTPAddr: "127.0.0.1:8080"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Hello", func(c *task.OrchestrationContext) (any, error) { return "hi", nil })
	startWorker(t, b, r)
	client := dtbackend.NewTaskHubClient(b)
	id, err := client.ScheduleNewOrchestration(ctx, "Hello", api.WithInstanceID("done"))
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	waitDone(t, ctx, b, id)
	if _, err := client.ScheduleNewOrchestration(ctx, "Hello", api.WithInstanceID("later"), api.WithStartTime(time.Now().Add(time.Hour))); err != nil {
		t.Fatalf("schedule: %v", err)
	}

	var in taskhub.Inspector = b
	info, err := in.HubInfo(ctx)
	if err != nil {
		t.Fatalf("HubInfo: %v", err)
	}
	t.Logf("hub info: %+v", info)
	if info.Kind != "azurestorage" || info.Name != b.opts.HubName || info.Partitions != 2 {
		t.Fatalf("kind/name/partitions = %q %q %d", info.Kind, info.Name, info.Partitions)
	}
	if len(info.Owners) != 2 || info.Owners[0] != "w-info" || info.Owners[1] != "w-info" {
		t.Fatalf("owners = %v", info.Owners)
	}
	// Issue #10: each owner is named by where an operator finds it, as its
	// heartbeat publishes: its host name and HTTP listen address.
	if want := (taskhub.WorkerInfo{Host: hostName(), HTTPAddr: "127.0.0.1:8080"}); len(info.Workers) != 1 || info.Workers["w-info"] != want || want.Host == "" {
		t.Fatalf("workers = %+v, want w-info at %+v", info.Workers, want)
	}
	if _, hbs, err := b.Leases(ctx); err != nil || len(hbs) != 1 || hbs[0].Host != hostName() || hbs[0].HTTP != "127.0.0.1:8080" {
		t.Fatalf("heartbeats = %+v, %v: want w-info's host and HTTP address", hbs, err)
	}
	if len(info.QueueDepths) != 4 {
		t.Fatalf("queue depths = %v, want 2 control queues, work items and telemetry", info.QueueDepths)
	}
	later := b.names.controlQueue(partitionOf("later", 2))
	if info.QueueDepths[later] < 1 || info.QueueDepths[b.names.telemetry] != 0 {
		t.Fatalf("queue depths = %v; want the delayed start on %s", info.QueueDepths, later)
	}
	if info.Instances["Completed"] != 1 || info.Instances["Pending"] != 1 || len(info.Instances) != 2 {
		t.Fatalf("instances = %v", info.Instances)
	}
	if info.DeadLetters != 0 {
		t.Fatalf("dead letters = %d", info.DeadLetters)
	}

	var rc taskhub.RequestCounter = b
	counts := rc.RequestCounts()
	if counts["queue.dequeue"] == 0 || counts["table.batch"] == 0 || counts["queue.enqueue"] == 0 {
		t.Fatalf("request counts = %v", counts)
	}
}

// TestTelemetryQueue sends small, non-JSON and large batches, receives and
// deletes them, rejects oversize ones, and dead-letters and replays a batch
// that is never deleted (through taskhub.DeadLetterer).
func TestTelemetryQueue(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1, MaxDequeueCount: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var tq taskhub.TelemetryQueue = b

	small := []byte(`{"frames":[{"drone":"d1","alt":12.5,"note":"<&>"}]}`)
	binary := []byte("\x00\x01not json\xff")
	var big bytes.Buffer
	big.WriteString(`{"frames":[`)
	for i := 0; i < 4000; i++ {
		if i > 0 {
			big.WriteByte(',')
		}
		fmt.Fprintf(&big, `{"drone":"d%d","lat":47.6,"lon":-122.3,"alt":%d}`, i, i)
	}
	big.WriteString(`]}`)
	if big.Len() <= maxInlineMessage {
		t.Fatalf("big batch is only %d bytes", big.Len())
	}
	for _, body := range [][]byte{small, binary, big.Bytes()} {
		if err := tq.SendTelemetry(ctx, body); err != nil {
			t.Fatalf("SendTelemetry(%d bytes): %v", len(body), err)
		}
	}
	if err := tq.SendTelemetry(ctx, make([]byte, MaxTelemetryBytes+1)); !errors.Is(err, ErrTelemetryTooLarge) {
		t.Fatalf("oversize batch: %v, want ErrTelemetryTooLarge", err)
	}
	if err := tq.SendTelemetry(ctx, nil); err == nil {
		t.Fatal("empty batch accepted")
	}
	if n := b.blobCount(ctx, t, telemetryBlobPre); n != 1 {
		t.Fatalf("%d telemetry blobs, want 1 for the large batch", n)
	}

	var got []taskhub.TelemetryMessage
	poll(t, 10*time.Second, "receive 3 batches", func() bool {
		ms, err := tq.ReceiveTelemetry(ctx, 32, 30*time.Second)
		if err != nil {
			t.Fatalf("ReceiveTelemetry: %v", err)
		}
		got = append(got, ms...)
		return len(got) >= 3
	})
	var bodies []string
	for _, m := range got {
		if m.DequeueCount != 1 || m.Receipt == "" {
			t.Fatalf("message %+v", m)
		}
		bodies = append(bodies, string(m.Body))
	}
	want := []string{string(small), string(binary), big.String()}
	sort.Strings(bodies)
	sort.Strings(want)
	for i := range want {
		if bodies[i] != want[i] {
			t.Fatalf("body %d: got %.60q (%d bytes), want %.60q (%d bytes)", i, bodies[i], len(bodies[i]), want[i], len(want[i]))
		}
	}
	for _, m := range got {
		if err := tq.DeleteTelemetry(ctx, m); err != nil {
			t.Fatalf("DeleteTelemetry: %v", err)
		}
	}
	if n := b.blobCount(ctx, t, telemetryBlobPre); n != 0 {
		t.Fatalf("%d telemetry blobs left after delete", n)
	}
	if ms, err := tq.ReceiveTelemetry(ctx, 32, time.Second); err != nil || len(ms) != 0 {
		t.Fatalf("after delete: %d messages, %v", len(ms), err)
	}
	if err := tq.DeleteTelemetry(ctx, taskhub.TelemetryMessage{Receipt: "bogus"}); err == nil {
		t.Fatal("bogus receipt accepted")
	}

	// Poison: received once (MaxDequeueCount 1) and never deleted.
	poison := []byte(`{"frames":[{"drone":"poison"}]}`)
	if err := tq.SendTelemetry(ctx, poison); err != nil {
		t.Fatalf("SendTelemetry: %v", err)
	}
	poll(t, 10*time.Second, "receive the poison batch", func() bool {
		ms, err := tq.ReceiveTelemetry(ctx, 1, time.Second)
		return err == nil && len(ms) == 1
	})
	var dl taskhub.DeadLetterer = b
	var dls []taskhub.DeadLetter
	poll(t, 15*time.Second, "poison batch dead-lettered", func() bool {
		if ms, err := tq.ReceiveTelemetry(ctx, 1, time.Second); err != nil || len(ms) != 0 {
			t.Fatalf("poison batch returned again: %v %v", ms, err)
		}
		var err error
		dls, err = dl.DeadLetters(ctx)
		return err == nil && len(dls) == 1
	})
	d := dls[0]
	if d.Queue != b.names.telemetry || d.DequeueCount != 2 || !strings.Contains(d.Reason, "MaxDequeueCount 1") || d.DeadAt.IsZero() || d.ID == "" {
		t.Fatalf("dead letter = %+v", d)
	}
	if info, err := b.HubInfo(ctx); err != nil || info.DeadLetters != 1 {
		t.Fatalf("HubInfo dead letters = %d, %v", info.DeadLetters, err)
	}
	if err := dl.ReplayDeadLetter(ctx, "no-such-id"); !errors.Is(err, taskhub.ErrDeadLetterNotFound) {
		t.Fatalf("replay unknown id: %v, want taskhub.ErrDeadLetterNotFound", err)
	}
	if err := dl.ReplayDeadLetter(ctx, d.ID); err != nil {
		t.Fatalf("replay: %v", err)
	}
	poll(t, 10*time.Second, "replayed batch received", func() bool {
		ms, err := tq.ReceiveTelemetry(ctx, 1, 30*time.Second)
		if err != nil || len(ms) == 0 {
			return false
		}
		if string(ms[0].Body) != string(poison) || ms[0].DequeueCount != 1 {
			t.Fatalf("replayed message %q, dequeue count %d", ms[0].Body, ms[0].DequeueCount)
		}
		return tq.DeleteTelemetry(ctx, ms[0]) == nil
	})
	if dls, err := dl.DeadLetters(ctx); err != nil || len(dls) != 0 {
		t.Fatalf("dead letters after replay: %v, %v", dls, err)
	}
}
