package azurestorage

import (
	"context"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
)

// TestFailedOperationNamesTheMissingRow: a transaction that deletes a row
// already gone fails as a whole, and failedOperation names that delete, so
// a commit can drop it and go again (submitCommit).
func TestFailedOperationNamesTheMissingRow(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pk := "spent"
	actions := []aztables.TransactionAction{
		{ActionType: aztables.TransactionTypeInsertReplace, Entity: newEntity(pk, "a").marshal()},
		{ActionType: aztables.TransactionTypeInsertReplace, Entity: newEntity(pk, "b").marshal()},
		{ActionType: aztables.TransactionTypeDelete, Entity: newEntity(pk, outboxRK(7)).marshal()},
	}
	err := b.submit(ctx, actions)
	if err == nil || !isNotFound(err) {
		t.Fatalf("a transaction deleting a missing row: %v, want a 404", err)
	}
	if i := failedOperation(err); i != 2 {
		t.Fatalf("failedOperation %d, want 2 (the delete)", i)
	}
	plan := &commitPlan{actions: actions}
	if !plan.dropSpentDelete(2) || len(plan.actions) != 2 {
		t.Fatalf("the outbox row's delete was not dropped: %d actions", len(plan.actions))
	}
	if err := b.submit(ctx, plan.actions); err != nil {
		t.Fatalf("the transaction without the spent delete: %v", err)
	}
	stash := &commitPlan{actions: []aztables.TransactionAction{{ActionType: aztables.TransactionTypeDelete, Entity: newEntity(pk, stashRKPre+"x").marshal()}}}
	if stash.dropSpentDelete(0) {
		t.Fatal("a stashed event's delete was dropped: it records the event's consumption")
	}
}
