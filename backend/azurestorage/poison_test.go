package azurestorage

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
)

// TestDeadLetteredActivityFailsTheTask: an activity message whose workers
// keep dying is dead-lettered, and its orchestration sees the task fail
// with a reason, so its own error handling runs.
func TestDeadLetteredActivityFailsTheTask(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1, LockTimeout: 2 * time.Second, MaxDequeueCount: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var deaths atomic.Int32
	b.hooks.dropActivity = func(m *inMsg) bool {
		if m.event.GetTaskScheduled().GetName() != "Doomed" {
			return false
		}
		deaths.Add(1)
		return true
	}
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Careful", func(c *task.OrchestrationContext) (any, error) {
		if err := c.CallActivity("Doomed").Await(nil); err != nil {
			return "caught: " + err.Error(), nil
		}
		return "not expected", nil
	})
	r.AddActivityN("Doomed", func(task.ActivityContext) (any, error) { return nil, nil })
	startRunner(t, b, r, 2)
	if _, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Careful", api.WithInstanceID("careful")); err != nil {
		t.Fatal(err)
	}
	md := awaitDone(t, ctx, b, "careful", 60*time.Second)
	if !strings.Contains(md.SerializedOutput, "dead-lettered") || md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("status %v output %s", md.RuntimeStatus, md.SerializedOutput)
	}
	if n := deaths.Load(); n != 2 {
		t.Fatalf("the activity's worker died %d times before it was dead-lettered, want 2 (MaxDequeueCount)", n)
	}
	if dls, err := b.ListDeadLetters(ctx); err != nil || len(dls) != 1 {
		t.Fatalf("dead letters: %+v, %v", dls, err)
	}
}

// TestDeadLetteredOrchestrationFails: an instance whose episodes keep
// dying is marked Failed with the reason once its message is
// dead-lettered, and its parent is told.
func TestDeadLetteredOrchestrationFails(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1, LockTimeout: 2 * time.Second, MaxDequeueCount: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	b.hooks.beforeCommit = func(id string) bool { return id == "kid" }
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Parent", func(c *task.OrchestrationContext) (any, error) {
		if err := c.CallSubOrchestrator("Kid", task.WithSubOrchestrationInstanceID("kid")).Await(nil); err != nil {
			return "child failed: " + err.Error(), nil
		}
		return "child ok", nil
	})
	r.AddOrchestratorN("Kid", func(c *task.OrchestrationContext) (any, error) { return "never committed", nil })
	startRunner(t, b, r, 2)
	if _, err := dtbackend.NewTaskHubClient(b).ScheduleNewOrchestration(ctx, "Parent", api.WithInstanceID("parent")); err != nil {
		t.Fatal(err)
	}
	kid := awaitDone(t, ctx, b, "kid", 60*time.Second)
	if kid.RuntimeStatus != api.RUNTIME_STATUS_FAILED || kid.FailureDetails.GetErrorType() != DeadLetterErrorType {
		t.Fatalf("kid: status %v, failure %v", kid.RuntimeStatus, kid.FailureDetails)
	}
	parent := awaitDone(t, ctx, b, "parent", 30*time.Second)
	if !strings.HasPrefix(parent.SerializedOutput, `"child failed`) {
		t.Fatalf("parent output %s", parent.SerializedOutput)
	}
	if _, err := b.GetOrchestrationMetadata(ctx, "kid"); err != nil && !errors.Is(err, api.ErrInstanceNotFound) {
		t.Fatal(err)
	}
}

// TestBenignReleasesDoNotCount: releases that are not the message's fault
// (a worker handing back unstarted work, a failed commit) do not count
// toward MaxDequeueCount.
func TestBenignReleasesDoNotCount(t *testing.T) {
	t.Parallel()
	b := openTest(t, Options{Partitions: 1, LockTimeout: time.Minute, MaxDequeueCount: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := dtbackend.NewTaskHubClient(b)
	if _, err := client.ScheduleNewOrchestration(ctx, "Echo", api.WithInstanceID("echo"), api.WithInput("x")); err != nil {
		t.Fatal(err)
	}
	// Five fetches handed back unprocessed, as a shutting-down worker does.
	for range 5 {
		wi, err := b.GetOrchestrationWorkItem(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.AbandonOrchestrationWorkItem(ctx, wi); err != nil {
			t.Fatal(err)
		}
	}
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("Echo", func(c *task.OrchestrationContext) (any, error) {
		var in string
		err := c.GetInput(&in)
		return in, err
	})
	startRunner(t, b, r, 2)
	if md := awaitDone(t, ctx, b, "echo", 30*time.Second); md.SerializedOutput != `"x"` {
		t.Fatalf("output %s (failure %v)", md.SerializedOutput, md.FailureDetails)
	}
	noDeadLetters(ctx, t, b)
}
