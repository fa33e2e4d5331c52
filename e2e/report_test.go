package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/backend/azurestorage"
	"github.com/dronehub/dronehub/internal/testkit/artifacts"
	"github.com/dronehub/dronehub/taskhub"
)

// What a failure message says about the cluster: the task hub as storage
// sees it (hubReport), and the workers' logs, copied where they survive the
// test (internal/testkit/artifacts: $DRONEHUB_TEST_ARTIFACTS or the system
// temp directory) with the tail of each.

// logTailLines is how much of each worker's log a failure message shows.
const logTailLines = 30

// failureReport describes the hub, with the history of the stuck missions,
// and keeps the workers' logs as they are now.
func (c *cluster) failureReport(stuck []string) string {
	return hubReport(c, stuck) + artifacts.Report(c.t, logTailLines, c.logFiles()...)
}

// logFiles lists every worker's log, in start order.
func (c *cluster) logFiles() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.all))
	for _, w := range c.all {
		out = append(out, w.logPath)
	}
	return out
}

// hubReport reads the task hub straight from storage: lease rows (owner,
// expiry, hand-off, published load) and worker heartbeats, the depth of
// every queue, instance counts by status, dead letters, and the status and
// last history events of the stuck instances. It uses its own context, so
// it works after the test's has run out, and says how long storage took:
// a stalled storage shows as a slow or failed report.
func hubReport(c *cluster, stuck []string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	began := time.Now()
	var sb strings.Builder
	fmt.Fprintf(&sb, "=== task hub %s at %s ===\n", c.hub, began.UTC().Format("15:04:05.000"))
	b, err := azurestorage.Open(ctx, azurestorage.Options{
		ConnectionString: c.storage, HubName: c.hub,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		fmt.Fprintf(&sb, "(open the task hub: %v, after %s)\n", err, time.Since(began).Round(time.Millisecond))
		return sb.String()
	}
	defer b.Close()
	t0 := time.Now()
	leases, hbs, err := b.Leases(ctx)
	if err != nil {
		fmt.Fprintf(&sb, "lease rows: %v (after %s)\n", err, time.Since(t0).Round(time.Millisecond))
	} else {
		fmt.Fprintf(&sb, "lease rows (read in %s):\n%s", time.Since(t0).Round(time.Millisecond), azurestorage.FormatLeases(leases, hbs, time.Now()))
	}
	for _, w := range c.liveWorkers() {
		fmt.Fprintf(&sb, "  %s is pid %d (%s)\n", w.name, w.cmd.Process.Pid, w.url)
	}
	partitions := len(leases)
	t0 = time.Now()
	info, err := b.HubInfo(ctx)
	if err != nil {
		fmt.Fprintf(&sb, "hub info: %v (after %s)\n", err, time.Since(t0).Round(time.Millisecond))
	} else {
		partitions = info.Partitions
		names := make([]string, 0, len(info.QueueDepths))
		for q := range info.QueueDepths {
			names = append(names, q)
		}
		sort.Strings(names)
		fmt.Fprintf(&sb, "queue depths (read in %s, invisible messages included):", time.Since(t0).Round(time.Millisecond))
		for _, q := range names {
			fmt.Fprintf(&sb, " %s=%d", strings.TrimPrefix(q, strings.ToLower(c.hub)+"-"), info.QueueDepths[q])
		}
		fmt.Fprintf(&sb, "\ninstances by status: %v; dead letters: %d\n", info.Instances, info.DeadLetters)
	}
	for i, id := range stuck {
		if i == 5 {
			fmt.Fprintf(&sb, "… and %d more\n", len(stuck)-i)
			break
		}
		fmt.Fprintf(&sb, "instance %s (partition %d): %s\n", id, missionPartition(id, partitions), historyTail(ctx, b, id, 8))
	}
	fmt.Fprintf(&sb, "(report took %s)\n", time.Since(began).Round(time.Millisecond))
	return sb.String()
}

// missionPartition is the control queue of an instance: 32-bit FNV-1a of
// its id modulo the partition count (docs/storage-layout.md).
func missionPartition(id string, partitions int) int {
	if partitions <= 0 {
		return -1
	}
	h := fnv.New32a()
	h.Write([]byte(id))
	return int(h.Sum32() % uint32(partitions))
}

// historyTail is an instance's status, custom status and its last n
// history events.
func historyTail(ctx context.Context, b *azurestorage.Backend, id string, n int) string {
	md, err := b.GetOrchestrationMetadata(ctx, api.InstanceID(id))
	if err != nil {
		return fmt.Sprintf("status: %v", err)
	}
	out := fmt.Sprintf("%s, last updated %s", taskhub.StatusName(md.RuntimeStatus), md.LastUpdatedAt.UTC().Format("15:04:05.000"))
	var cs struct {
		Phase   string `json:"phase"`
		DroneID string `json:"droneId"`
	}
	if json.Unmarshal([]byte(md.SerializedCustomStatus), &cs) == nil && cs.Phase != "" {
		out += fmt.Sprintf(", phase %s, drone %s", cs.Phase, orDash(cs.DroneID))
	}
	st, err := b.GetOrchestrationRuntimeState(ctx, &dtbackend.OrchestrationWorkItem{InstanceID: api.InstanceID(id)})
	if err != nil {
		return out + fmt.Sprintf("; history: %v", err)
	}
	h := st.OldEvents()
	parts := make([]string, 0, n)
	for _, e := range h[max(0, len(h)-n):] {
		kind := fmt.Sprintf("%T", e.GetEventType())
		if i := strings.LastIndex(kind, "HistoryEvent_"); i >= 0 {
			kind = kind[i+len("HistoryEvent_"):]
		}
		if ts := e.GetTaskScheduled(); ts != nil {
			kind += " " + ts.GetName()
		}
		if er := e.GetEventRaised(); er != nil {
			kind += " " + er.GetName()
		}
		parts = append(parts, fmt.Sprintf("#%d %s@%s", e.GetEventId(), kind, e.GetTimestamp().AsTime().UTC().Format("15:04:05.000")))
	}
	return fmt.Sprintf("%s; %d events, last: %s", out, len(h), strings.Join(parts, ", "))
}
