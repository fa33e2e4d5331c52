// Package orchestrations holds dronehub's durable orchestrations —
// DeliveryMission — and the Saga helper any orchestration can use to undo
// completed steps when a later one fails.
package orchestrations

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/domain"
)

// SagaStep is one registered undo: the activity to call and its input.
// Steps are plain data so a saga survives continue-as-new (see Saga.Steps).
type SagaStep struct {
	Name     string          `json:"name"`
	Activity string          `json:"activity"`
	Input    json.RawMessage `json:"input,omitempty"`
}

// SagaOptions configures a Saga. The zero value is ready to use.
type SagaOptions struct {
	// Retry is the retry policy of each undo activity. Default: 5 attempts,
	// 1 s first interval, doubling, at most 30 s apart. A policy without an
	// InitialRetryInterval gets 1 s.
	Retry *task.RetryPolicy
}

// Saga records the undo of each completed step and, on failure, runs the
// undos in reverse order.
//
// Register an undo right after its step succeeds, never before: a step that
// failed did nothing to undo. Each undo activity must be idempotent, because
// it is retried and durable execution is at-least-once.
//
// Orchestrator functions must not use defer to compensate: durabletask-go
// unwinds orchestrators with a panic every time they wait, which would run
// deferred calls at the wrong moments. Call Compensate explicitly.
type Saga struct {
	ctx   *task.OrchestrationContext
	steps []SagaStep
	opts  SagaOptions
}

// NewSaga returns an empty saga for the orchestration.
func NewSaga(ctx *task.OrchestrationContext, opts SagaOptions) *Saga {
	return &Saga{ctx: ctx, opts: opts}
}

// RestoreSaga returns a saga holding steps taken from Steps, typically
// carried across continue-as-new in the orchestration's input.
func RestoreSaga(ctx *task.OrchestrationContext, steps []SagaStep, opts SagaOptions) *Saga {
	return &Saga{ctx: ctx, steps: append([]SagaStep(nil), steps...), opts: opts}
}

// Add registers the undo of a step that just completed. name identifies the
// step in the compensation record and for Remove.
func (s *Saga) Add(name, activity string, input any) error {
	raw, err := json.Marshal(input)
	if err != nil {
		return fmt.Errorf("saga step %s: encode input: %w", name, err)
	}
	s.steps = append(s.steps, SagaStep{Name: name, Activity: activity, Input: raw})
	return nil
}

// Update replaces the input of a registered undo, keeping its place in the
// order; e.g. to tell a notification why the saga is compensating. It
// reports an error if no step has that name.
func (s *Saga) Update(name string, input any) error {
	raw, err := json.Marshal(input)
	if err != nil {
		return fmt.Errorf("saga step %s: encode input: %w", name, err)
	}
	for i := len(s.steps) - 1; i >= 0; i-- {
		if s.steps[i].Name == name {
			s.steps[i].Input = raw
			return nil
		}
	}
	return fmt.Errorf("saga has no step %q", name)
}

// Remove forgets a step's undo, for a step whose effect became final (a
// delivered package is not rescheduled). It reports whether the step was
// registered.
func (s *Saga) Remove(name string) bool {
	for i := len(s.steps) - 1; i >= 0; i-- {
		if s.steps[i].Name == name {
			s.steps = append(s.steps[:i], s.steps[i+1:]...)
			return true
		}
	}
	return false
}

// Steps returns the registered undos, oldest first.
func (s *Saga) Steps() []SagaStep { return append([]SagaStep(nil), s.steps...) }

func (s *Saga) retry() *task.RetryPolicy {
	if s.opts.Retry != nil {
		// A copy: durabletask-go writes defaults into the policy it is given.
		p := *s.opts.Retry
		// durabletask-go rejects a policy without a first interval, which
		// would fail every undo without running it.
		if p.InitialRetryInterval <= 0 {
			p.InitialRetryInterval = time.Second
		}
		return &p
	}
	return &task.RetryPolicy{
		MaxAttempts:          5,
		InitialRetryInterval: time.Second,
		BackoffCoefficient:   2,
		MaxRetryInterval:     30 * time.Second,
	}
}

// Compensate runs every registered undo, newest first, each with retries.
// An undo that still fails is recorded and the rest still run: one stuck
// undo must not strand the others. The saga is empty afterwards.
func (s *Saga) Compensate() []domain.CompensationResult {
	results := make([]domain.CompensationResult, 0, len(s.steps))
	for i := len(s.steps) - 1; i >= 0; i-- {
		step := s.steps[i]
		r := domain.CompensationResult{Step: step.Name, Activity: step.Activity, Status: "compensated"}
		err := s.ctx.CallActivity(step.Activity,
			task.WithRawActivityInput(string(step.Input)),
			task.WithActivityRetryPolicy(s.retry()),
		).Await(nil)
		if err != nil {
			r.Status, r.Error = "failed", err.Error()
		}
		results = append(results, r)
	}
	s.steps = nil
	return results
}
