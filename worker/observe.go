package worker

import (
	"context"
	"sync"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/dronehub/dronehub/metrics"
	"github.com/dronehub/dronehub/taskhub"
	"github.com/dronehub/dronehub/tracing"
)

// observer reports what the task workers do: the orchestration and activity
// series of package metrics, and the spans dronehub adds to durabletask-go's
// own (docs/tracing.md). It wraps the backend under the Gate and the
// executor, and keeps per work item what it needs from fetch to commit.
type observer struct {
	m      *metrics.Metrics
	tracer trace.Tracer // nil when tracing is off: no span work at all

	mu      sync.Mutex
	fetched map[*dtbackend.OrchestrationWorkItem]time.Time
	// actSpans holds, per activity being run (its TaskScheduled event), the
	// span durabletask-go ran it in, the parent of the span of its result.
	actSpans map[*dtbackend.HistoryEvent]trace.SpanContext
}

func newObserver(m *metrics.Metrics, tp trace.TracerProvider) *observer {
	o := &observer{m: m, fetched: map[*dtbackend.OrchestrationWorkItem]time.Time{}, actSpans: map[*dtbackend.HistoryEvent]trace.SpanContext{}}
	if tp != nil {
		o.tracer = tp.Tracer(tracing.ScopeName)
	}
	return o
}

// backend wraps be, the backend under the task workers' Gate.
func (o *observer) backend(be dtbackend.Backend) dtbackend.Backend {
	return observedBackend{Backend: be, o: o}
}

// executor wraps e.
func (o *observer) executor(e dtbackend.Executor) dtbackend.Executor {
	return observedExecutor{Executor: e, o: o}
}

type observedBackend struct {
	dtbackend.Backend
	o *observer
}

// GetOrchestrationWorkItem implements backend.Backend: it notes the fetch
// time and the work item's queue wait.
func (b observedBackend) GetOrchestrationWorkItem(ctx context.Context) (*dtbackend.OrchestrationWorkItem, error) {
	wi, err := b.Backend.GetOrchestrationWorkItem(ctx)
	if wi == nil {
		return wi, err
	}
	now := time.Now()
	if due, ok := dueTime(wi.NewEvents); ok {
		b.o.m.ObserveQueueWait(metrics.WorkOrchestration, now.Sub(due))
	}
	b.o.mu.Lock()
	b.o.fetched[wi] = now
	b.o.mu.Unlock()
	return wi, err
}

// CompleteOrchestrationWorkItem implements backend.Backend: the commit runs
// in the turn's span, and a committed turn is counted.
func (b observedBackend) CompleteOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	o := b.o
	o.mu.Lock()
	fetched, ok := o.fetched[wi]
	o.mu.Unlock()
	if !ok {
		fetched = time.Now()
	}
	name := workItemName(wi)
	var span trace.Span
	if o.tracer != nil {
		ctx, span = o.turnSpan(ctx, wi, name, fetched)
	}
	err := b.Backend.CompleteOrchestrationWorkItem(ctx, wi)
	if span != nil {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "commit failed")
		}
		span.End()
	}
	if err != nil {
		return err // durabletask-go abandons it next
	}
	o.mu.Lock()
	delete(o.fetched, wi)
	o.mu.Unlock()
	o.m.ObserveTurn(name, metrics.TurnCommitted, time.Since(fetched))
	for _, e := range wi.NewEvents {
		if e.GetExecutionStarted() != nil {
			o.m.OrchestrationStarted(name)
			break
		}
	}
	if wi.State != nil {
		if wi.State.ContinuedAsNew() {
			o.m.OrchestrationCompleted(name, taskhub.StatusName(api.RUNTIME_STATUS_CONTINUED_AS_NEW))
		}
		for _, e := range wi.State.NewEvents() {
			if ec := e.GetExecutionCompleted(); ec != nil {
				o.m.OrchestrationCompleted(name, taskhub.StatusName(ec.OrchestrationStatus))
			}
		}
	}
	return nil
}

// AbandonOrchestrationWorkItem implements backend.Backend.
func (b observedBackend) AbandonOrchestrationWorkItem(ctx context.Context, wi *dtbackend.OrchestrationWorkItem) error {
	o := b.o
	o.mu.Lock()
	fetched, ok := o.fetched[wi]
	delete(o.fetched, wi)
	o.mu.Unlock()
	if ok {
		o.m.ObserveTurn(workItemName(wi), metrics.TurnAbandoned, time.Since(fetched))
	}
	return b.Backend.AbandonOrchestrationWorkItem(ctx, wi)
}

// GetActivityWorkItem implements backend.Backend: it notes the queue wait.
func (b observedBackend) GetActivityWorkItem(ctx context.Context) (*dtbackend.ActivityWorkItem, error) {
	wi, err := b.Backend.GetActivityWorkItem(ctx)
	if wi != nil && wi.NewEvent != nil && wi.NewEvent.Timestamp != nil {
		b.o.m.ObserveQueueWait(metrics.WorkActivity, time.Since(wi.NewEvent.Timestamp.AsTime()))
	}
	return wi, err
}

// CompleteActivityWorkItem implements backend.Backend: the result is
// committed in a span under the activity's.
func (b observedBackend) CompleteActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem) error {
	o := b.o
	if o.tracer == nil {
		return b.Backend.CompleteActivityWorkItem(ctx, wi)
	}
	o.mu.Lock()
	parent := o.actSpans[wi.NewEvent]
	delete(o.actSpans, wi.NewEvent)
	o.mu.Unlock()
	if !parent.IsValid() {
		return b.Backend.CompleteActivityWorkItem(ctx, wi)
	}
	name := wi.NewEvent.GetTaskScheduled().GetName()
	ctx, span := o.tracer.Start(trace.ContextWithSpanContext(ctx, parent), "activity_result||"+name, trace.WithAttributes(
		attribute.String("durabletask.task.name", name),
		attribute.String("durabletask.task.instance_id", string(wi.InstanceID)),
		attribute.Int64("durabletask.task.task_id", int64(wi.NewEvent.GetEventId())),
		attribute.Bool("dronehub.activity.failed", wi.Result.GetTaskFailed() != nil),
	))
	err := b.Backend.CompleteActivityWorkItem(ctx, wi)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "commit failed")
	}
	span.End()
	return err
}

// AbandonActivityWorkItem implements backend.Backend.
func (b observedBackend) AbandonActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem) error {
	if b.o.tracer != nil {
		b.o.mu.Lock()
		delete(b.o.actSpans, wi.NewEvent)
		b.o.mu.Unlock()
	}
	return b.Backend.AbandonActivityWorkItem(ctx, wi)
}

// turnSpan starts the span of an orchestration turn, backdated to its
// fetch, as a child of the orchestration's span (durabletask-go keeps one
// span per execution, whose id the ExecutionStarted event holds). A turn of
// an instance started without tracing gets no span.
func (o *observer) turnSpan(ctx context.Context, wi *dtbackend.OrchestrationWorkItem, name string, fetched time.Time) (context.Context, trace.Span) {
	parent := orchestrationSpan(wi.State)
	if !parent.IsValid() {
		return ctx, nil
	}
	types := make([]string, 0, len(wi.NewEvents))
	for _, e := range wi.NewEvents {
		types = append(types, eventKind(e))
	}
	return o.tracer.Start(trace.ContextWithRemoteSpanContext(ctx, parent), "orchestration_turn||"+name,
		trace.WithTimestamp(fetched), trace.WithAttributes(
			attribute.String("durabletask.task.name", name),
			attribute.String("durabletask.task.instance_id", string(wi.InstanceID)),
			attribute.StringSlice("dronehub.turn.new_events", types),
			attribute.Bool("dronehub.turn.completed", wi.State != nil && wi.State.IsCompleted()),
		))
}

// orchestrationSpan is the span durabletask-go runs the current execution
// of state in: the trace of its ExecutionStarted's ParentTraceContext, with
// the span id recorded in its OrchestrationSpanID. Invalid when the
// execution was started without a trace.
func orchestrationSpan(state *dtbackend.OrchestrationRuntimeState) trace.SpanContext {
	if state == nil {
		return trace.SpanContext{}
	}
	var es *dtbackend.HistoryEvent
	for _, list := range [][]*dtbackend.HistoryEvent{state.OldEvents(), state.NewEvents()} {
		for _, e := range list {
			if e.GetExecutionStarted() != nil {
				es = e
			}
		}
	}
	start := es.GetExecutionStarted()
	tc := start.GetParentTraceContext()
	if tc == nil || start.GetOrchestrationSpanID() == nil {
		return trace.SpanContext{}
	}
	parent := tracing.SpanContextOf(tc.GetTraceParent())
	sid, err := trace.SpanIDFromHex(start.GetOrchestrationSpanID().GetValue())
	if !parent.IsValid() || err != nil {
		return trace.SpanContext{}
	}
	return parent.WithSpanID(sid).WithRemote(true)
}

// eventKind names a new event of a turn for its span: its type, and the
// event name of a raised event.
func eventKind(e *dtbackend.HistoryEvent) string {
	if er := e.GetEventRaised(); er != nil {
		return "EventRaised:" + er.GetName()
	}
	switch {
	case e.GetExecutionStarted() != nil:
		return "ExecutionStarted"
	case e.GetTaskCompleted() != nil:
		return "TaskCompleted"
	case e.GetTaskFailed() != nil:
		return "TaskFailed"
	case e.GetTimerFired() != nil:
		return "TimerFired"
	case e.GetExecutionTerminated() != nil:
		return "ExecutionTerminated"
	case e.GetExecutionSuspended() != nil:
		return "ExecutionSuspended"
	case e.GetExecutionResumed() != nil:
		return "ExecutionResumed"
	case e.GetSubOrchestrationInstanceCompleted() != nil:
		return "SubOrchestrationInstanceCompleted"
	case e.GetSubOrchestrationInstanceFailed() != nil:
		return "SubOrchestrationInstanceFailed"
	}
	return "Other"
}

// workItemName is the orchestrator name of a work item, "unknown" when
// neither its state nor its events tell.
func workItemName(wi *dtbackend.OrchestrationWorkItem) string {
	if wi.State != nil {
		if n, err := wi.State.Name(); err == nil && n != "" {
			return n
		}
	}
	for _, e := range wi.NewEvents {
		if es := e.GetExecutionStarted(); es != nil && es.GetName() != "" {
			return es.GetName()
		}
	}
	return "unknown"
}

// dueTime is when the oldest of events became due: its enqueue time, or
// for a timer its fire time, for a scheduled start its start time.
func dueTime(events []*dtbackend.HistoryEvent) (time.Time, bool) {
	var oldest time.Time
	for _, e := range events {
		if e.GetTimestamp() == nil {
			continue
		}
		t := e.GetTimestamp().AsTime()
		if tf := e.GetTimerFired(); tf != nil && tf.GetFireAt() != nil && tf.GetFireAt().AsTime().After(t) {
			t = tf.GetFireAt().AsTime()
		}
		if es := e.GetExecutionStarted(); es != nil && es.GetScheduledStartTimestamp() != nil && es.GetScheduledStartTimestamp().AsTime().After(t) {
			t = es.GetScheduledStartTimestamp().AsTime()
		}
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	return oldest, !oldest.IsZero()
}

type observedExecutor struct {
	dtbackend.Executor
	o *observer
}

// ExecuteActivity implements backend.Executor: it times the activity and
// notes the span durabletask-go runs it in.
func (e observedExecutor) ExecuteActivity(ctx context.Context, id api.InstanceID, ev *dtbackend.HistoryEvent) (*dtbackend.HistoryEvent, error) {
	if e.o.tracer != nil {
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			e.o.mu.Lock()
			e.o.actSpans[ev] = sc
			e.o.mu.Unlock()
		}
	}
	start := time.Now()
	res, err := e.Executor.ExecuteActivity(ctx, id, ev)
	outcome := metrics.ActivityCompleted
	switch {
	case err != nil || res == nil:
		outcome = metrics.ActivityError
	case res.GetTaskFailed() != nil:
		outcome = metrics.ActivityFailed
	}
	e.o.m.ObserveActivity(ev.GetTaskScheduled().GetName(), outcome, time.Since(start))
	return res, err
}
