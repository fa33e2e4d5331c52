package azurestorage

import (
	"context"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/taskhub"
)

// TestScaleSample: the scale signal's sample counts each queue's messages,
// invisible ones included, measures the age of the visible ones only, and
// counts the live workers.
func TestScaleSample(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := b.ScaleSample(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Control) != 2 || s.Workers != 0 || s.WorkItems.Messages != 0 || s.Control[0].Messages+s.Control[1].Messages != 0 {
		t.Fatalf("empty hub, no worker: %+v", s)
	}
	// No worker runs: a start waits in its control queue, visible; a
	// scheduled one waits invisible.
	client := dtbackend.NewTaskHubClient(b)
	if _, err := client.ScheduleNewOrchestration(ctx, "Hello", api.WithInstanceID("now")); err != nil {
		t.Fatal(err)
	}
	if _, err := client.ScheduleNewOrchestration(ctx, "Hello", api.WithInstanceID("later"), api.WithStartTime(time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if s, err = b.ScaleSample(ctx); err != nil {
		t.Fatal(err)
	}
	var msgs int64
	for _, q := range s.Control {
		msgs += q.Messages
		if q.OldestAge > time.Minute {
			t.Errorf("a control queue's oldest visible message is %s old: %+v", q.OldestAge, s.Control)
		}
	}
	if msgs != 2 {
		t.Errorf("%d control messages counted, want 2 (the start and the scheduled start): %+v", msgs, s.Control)
	}
	now, later := partitionOf("now", 2), partitionOf("later", 2)
	if now != later && (s.Control[later].Messages != 1 || s.Control[later].OldestAge != 0) {
		t.Errorf("partition %d holds only the scheduled start: it counts, but nothing waits there yet: %+v", later, s.Control[later])
	}
}

// TestScaleSampleSeesBufferedWork: work a worker dequeued ahead of its free
// slots is invisible in the queue; the sample sees its wait through the
// worker's own buffer and through the waits each worker publishes in its
// heartbeat.
func TestScaleSampleSeesBufferedWork(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 2, WorkerID: "w-buffered"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	now := time.Now()
	m := &inMsg{partition: 1, inserted: now.Add(-3 * time.Second)}
	m.env.Instance = "waiting"
	busy := &inMsg{partition: 0, inserted: now.Add(-time.Minute)} // its instance has an episode running: not a lack of capacity
	busy.env.Instance = "running"
	act := &inMsg{partition: -1, inserted: now.Add(-2 * time.Second)}
	b.mu.Lock()
	b.pending["waiting"] = []*inMsg{m}
	b.pending["running"] = []*inMsg{busy}
	b.inflight["running"] = true
	b.ready = append(b.ready, "waiting")
	b.actBuf = append(b.actBuf, act)
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.pending, "waiting")
		delete(b.pending, "running")
		delete(b.inflight, "running")
		b.ready, b.actBuf = nil, nil
		b.mu.Unlock()
	}()

	control, work := b.waits(now)
	if len(control) != 1 || control[1] != 3*time.Second || work != 2*time.Second {
		t.Fatalf("waits %v, work %s: want partition 1 waiting 3s (the running instance's message is not counted) and work 2s", control, work)
	}
	hb := newEntity(workerPK, "w")
	b.publishWaits(hb, now)
	if got, gotWork := publishedWaits(hb); got[1] != 3*time.Second || len(got) != 1 || gotWork != 2*time.Second {
		t.Fatalf("published %q / %v: read back %v, %s", hb.str("Waits"), hb["WorkWaitMs"], got, gotWork)
	}

	// As a worker: its heartbeat publishes the waits, the sample counts it.
	b.lm.waitReady(ctx)
	s, err := b.ScaleSample(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Workers != 1 || s.Control[1].OldestAge < 3*time.Second || s.WorkItems.OldestAge < 2*time.Second {
		t.Fatalf("sample %+v: want one worker, partition 1's buffered message at least 3s old and the buffered activity 2s", s)
	}
	_, hbs, err := b.Leases(ctx)
	if err != nil || len(hbs) != 1 {
		t.Fatalf("heartbeats %+v, %v", hbs, err)
	}
	rows, err := b.lm.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	published := false
	for _, e := range rows {
		if e.str("PartitionKey") == workerPK {
			c, w := publishedWaits(e)
			published = c[1] >= 3*time.Second && w >= 2*time.Second
		}
	}
	if !published {
		t.Errorf("the heartbeat row does not publish the buffered waits: %+v", rows)
	}
	var _ taskhub.ScaleSampler = b
}

// TestReleasedPartitionsClaimedAtOnce: a worker that closes tells the
// others, which claim its partitions at once instead of at their next
// round (LeaseDuration/3: 10 s here); a worker that joins tells them too,
// and is handed its share at once. Both must happen well within a round,
// so that only the wake-ups can have done it.
func TestReleasedPartitionsClaimedAtOnce(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	const lease = 30 * time.Second // rounds every 10 s; early rounds at most every 1 s
	within := lease / 6            // half a round
	b1 := openTest(t, Options{HubName: hub, Partitions: 4, WorkerID: "w-stays", LeaseDuration: lease})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b1.lm.waitReady(ctx)
	b2 := openTest(t, Options{HubName: hub, Partitions: 4, WorkerID: "w-leaves", LeaseDuration: lease})
	joined := time.Now()
	b2.lm.waitReady(ctx)
	owners := func(b *Backend) int { return len(b.lm.owners()) }
	deadline := time.Now().Add(within)
	for owners(b1) != 2 || owners(b2) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("not split 2/2 %s after the second worker joined: %d and %d", time.Since(joined).Round(time.Millisecond), owners(b1), owners(b2))
		}
		time.Sleep(20 * time.Millisecond) // polling interval; the deadline bounds the wait
	}
	t.Logf("split 2/2 %s after the join", time.Since(joined).Round(time.Millisecond))

	closed := time.Now()
	b2.Close()
	deadline = time.Now().Add(within)
	for owners(b1) != 4 {
		if time.Now().After(deadline) {
			t.Fatalf("the staying worker holds %d partitions %s after the other closed, want 4 long before its next round", owners(b1), time.Since(closed).Round(time.Millisecond))
		}
		time.Sleep(10 * time.Millisecond) // polling interval; the deadline bounds the wait
	}
	t.Logf("all 4 partitions claimed %s after the other worker's Close returned", time.Since(closed).Round(time.Millisecond))
}
