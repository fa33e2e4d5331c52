package azurestorage

import (
	"context"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
)

// TestLeaseRenewalsInOneTransaction: a worker renews all its leases in one
// entity-group transaction per round, keeps each row's new ETag (read from
// the transaction's answer), and, when another worker has taken one of the
// rows, loses exactly that one and keeps the others.
func TestLeaseRenewalsInOneTransaction(t *testing.T) {
	t.Parallel()
	b1, _ := leasePair(t)
	runRound(t, b1) // claims all four
	if got := len(b1.lm.partitions()); got != 4 {
		t.Fatalf("w1 holds %d partitions after its first round, want 4", got)
	}
	before := b1.Counter().Snapshot()
	runRound(t, b1)
	after := b1.Counter().Snapshot()
	// The one replace is the heartbeat.
	if batches, replaces := after["table.batch"]-before["table.batch"], after["table.replace"]-before["table.replace"]; batches != 1 || replaces != 1 {
		t.Fatalf("a round renewing 4 leases made %d transactions and %d single replaces, want 1 and 1 (the heartbeat)", batches, replaces)
	}
	rows := leaseRows(t, b1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b1.lm.mu.Lock()
	for p, l := range b1.lm.owned {
		resp, err := b1.leases.GetEntity(ctx, leasePK, leaseRK(p), nil)
		if err != nil {
			b1.lm.mu.Unlock()
			t.Fatal(err)
		}
		if l.etag != resp.ETag {
			b1.lm.mu.Unlock()
			t.Fatalf("partition %d: w1 kept ETag %q, the row has %q (owner %s)", p, l.etag, resp.ETag, rows[p].Owner)
		}
	}
	b1.lm.mu.Unlock()

	// Another worker takes partition 2 behind w1's back: the transaction
	// fails as a whole, the rows are renewed one by one, and only
	// partition 2 is lost.
	row := newEntity(leasePK, leaseRK(2))
	row["Owner"], row["Expires"] = "w2", formatTime(time.Now().Add(time.Hour))
	anyTag := azcore.ETagAny
	if _, err := b1.leases.UpdateEntity(ctx, row.marshal(), &aztables.UpdateEntityOptions{IfMatch: &anyTag, UpdateMode: aztables.UpdateModeReplace}); err != nil {
		t.Fatal(err)
	}
	runRound(t, b1)
	if got := b1.lm.partitions(); len(got) != 3 || b1.lm.isActive(2) {
		t.Fatalf("w1 holds %v after partition 2 was taken, want 0, 1, 3", got)
	}
	for _, p := range []int{0, 1, 3} {
		if !b1.lm.isActive(p) {
			t.Fatalf("w1 may not poll partition %d after the round", p)
		}
	}
}
