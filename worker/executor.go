package worker

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// safeExecutor keeps an orchestrator's panic from killing the worker.
// durabletask-go re-panics anything an orchestrator panics with other than
// its own control-flow signal, which takes the whole process down, and every
// worker that picks the work item up again after it. Here the panic becomes
// an error: the work item is abandoned, retried, and after the backend's
// dequeue limit set aside as a dead letter, while the worker goes on.
// (Activities need no guard: durabletask-go turns their panics into task
// failures.)
type safeExecutor struct {
	dtbackend.Executor
	log *slog.Logger
}

func (e safeExecutor) ExecuteOrchestrator(ctx context.Context, id api.InstanceID, oldEvents, newEvents []*dtbackend.HistoryEvent) (res *dtbackend.ExecutionResults, err error) {
	defer func() {
		if v := recover(); v != nil {
			e.log.Error("orchestrator panicked; its work item will be retried and then dead-lettered", "instance", id, "panic", v, "stack", string(debug.Stack()))
			res, err = nil, fmt.Errorf("orchestrator of %s panicked: %v", id, v)
		}
	}()
	return e.Executor.ExecuteOrchestrator(ctx, id, oldEvents, newEvents)
}
