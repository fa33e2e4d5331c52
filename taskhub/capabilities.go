package taskhub

import (
	"context"
	"errors"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// Optional backend capabilities. The worker, HTTP API and CLI check for them
// with a type assertion and report ErrNotSupported when a backend lacks one.

// ErrDeadLetterNotFound is returned for an unknown dead-letter id.
var ErrDeadLetterNotFound = errors.New("dead letter not found")

// DeadLetter is a message that was set aside: its deliveries failed too
// often, or it could not be read. Setting it aside also told its workflow
// (see deadletter.go): the activity's task failed, or the instance's
// execution ended Failed, with DeadLetterErrorType failure details.
type DeadLetter struct {
	ID         string `json:"id"`
	Queue      string `json:"queue"`
	InstanceID string `json:"instanceId"`
	EventType  string `json:"eventType"`
	Reason     string `json:"reason"`
	// DequeueCount is the number of deliveries that counted towards the
	// limit: those whose execution failed.
	DequeueCount int       `json:"dequeueCount"`
	DeadAt       time.Time `json:"deadAt"`
}

// DeadLetterer is a backend with a dead-letter queue for poison messages.
type DeadLetterer interface {
	// DeadLetters lists the dead letters, oldest first.
	DeadLetters(ctx context.Context) ([]DeadLetter, error)
	// ReplayDeadLetter puts a dead letter back on its queue with a fresh
	// count and removes it from the dead letters, if its message can still
	// reach the execution it belongs to. If it cannot (the instance is
	// gone or was recreated, the execution has ended, or the activity's
	// task was answered already, as it is when an activity is
	// dead-lettered), the dead letter is deleted without being delivered
	// and the error wraps ErrDeadLetterStale. An unknown id wraps
	// ErrDeadLetterNotFound.
	ReplayDeadLetter(ctx context.Context, id string) error
}

// ActivityDeadLetterer is a backend that can set aside an activity work
// item it handed out, as it does with an activity message it cannot run.
type ActivityDeadLetterer interface {
	// DeadLetterActivityWorkItem moves the activity work item, whose lock
	// must still be held, to the dead letters with reason, and answers its
	// task with a TaskFailed carrying ActivityDeadLetterFailure, in one
	// step. If the lock was lost it returns an error wrapping
	// backend.ErrWorkItemLockLost and changes nothing.
	DeadLetterActivityWorkItem(ctx context.Context, wi *dtbackend.ActivityWorkItem, reason string) error
}

// HubInfo describes a task hub for operators.
type HubInfo struct {
	Kind       string `json:"kind"`
	Name       string `json:"name"`
	Partitions int    `json:"partitions,omitempty"`
	// Owners maps partition number to the worker holding its lease.
	Owners map[int]string `json:"owners,omitempty"`
	// Workers describes the live workers of the hub by worker id (the
	// values of Owners): where an operator finds each.
	Workers map[string]WorkerInfo `json:"workers,omitempty"`
	// QueueDepths maps queue name to its approximate message count.
	QueueDepths map[string]int `json:"queueDepths,omitempty"`
	// Instances counts instances by runtime status name.
	Instances map[string]int `json:"instances"`
	// DeadLetters counts the dead letters (see DeadLetterer).
	DeadLetters int `json:"deadLetters"`
}

// WorkerInfo is what a worker publishes about itself in its heartbeat.
type WorkerInfo struct {
	// Host is the worker's host name.
	Host string `json:"host,omitempty"`
	// HTTPAddr is the address its HTTP API listens on ("" when it serves
	// none, as when embedded without one).
	HTTPAddr string `json:"httpAddr,omitempty"`
}

// Inspector is a backend that can describe its hub.
type Inspector interface {
	HubInfo(ctx context.Context) (HubInfo, error)
}

// TelemetryMessage is one batch received from a telemetry queue.
type TelemetryMessage struct {
	// Body is the JSON batch as sent ({"frames": [...]}).
	Body []byte
	// DequeueCount is how many times the message was received.
	DequeueCount int
	// Receipt identifies the message for DeleteTelemetry.
	Receipt string
}

// TelemetryQueue is a backend with a queue drones or IoT bridges can drop
// telemetry batches on (for Azure Storage, "<hub>-telemetry").
type TelemetryQueue interface {
	// SendTelemetry enqueues one JSON batch.
	SendTelemetry(ctx context.Context, body []byte) error
	// ReceiveTelemetry takes up to max messages, hidden from other receivers
	// for visibility; an empty result means the queue is empty.
	ReceiveTelemetry(ctx context.Context, max int, visibility time.Duration) ([]TelemetryMessage, error)
	// DeleteTelemetry removes a processed message.
	DeleteTelemetry(ctx context.Context, m TelemetryMessage) error
}

// RequestCounter is a backend that counts its storage requests by kind
// (e.g. "queue.dequeue", "table.batch").
type RequestCounter interface {
	RequestCounts() map[string]int64
}

// Pinger is a backend with a cheap reachability check, used for readiness
// probes instead of a listing.
type Pinger interface {
	Ping(ctx context.Context) error
}

// ErrTooManyChanges is returned by ChangeLister.InstancesChangedSince when
// more instances changed than its limit: list them in full instead.
var ErrTooManyChanges = errors.New("more instances changed than the limit")

// ChangeLister is a backend that lists only the instances that changed,
// so that a poller (the dashboard's live feed) costs what changed, not the
// number of instances in flight.
type ChangeLister interface {
	// InstancesChangedSince returns the instances whose status row was
	// written at or after since, any runtime status, in no particular
	// order, and next, the time to pass as since on the following call.
	// next is read from the store's own clock where it has one (Azure
	// Storage: the service's time; SQLite: the clock of the process that
	// writes the file), never from the caller's, so since must be a time
	// this method returned. A row is stamped before it becomes visible (a
	// commit in flight, the store's timestamp granularity), so the caller
	// must keep an overlap: pass next minus a few seconds, and expect to
	// see again instances it has seen. Purged instances are not reported:
	// a caller that keeps state lists in full from time to time. More than
	// limit changed instances (limit <= 0: MaxPageSize) is
	// ErrTooManyChanges.
	InstancesChangedSince(ctx context.Context, since time.Time, limit int) (changed []*api.OrchestrationMetadata, next time.Time, err error)
}

// RaisedEvent is one event for EventRaiser.
type RaisedEvent struct {
	Instance api.InstanceID
	Event    *dtbackend.HistoryEvent
}

// EventRaiser is a backend that adds many events at once for fewer storage
// requests than one AddNewOrchestrationEvent each. Telemetry ingestion
// raises a post's signals to their missions this way.
type EventRaiser interface {
	// AddNewOrchestrationEvents adds each event to its instance as
	// AddNewOrchestrationEvent would, each instance's events in the order
	// given. On error any of them may have been added, each instance's
	// as a prefix of its events: a caller that raises them again must
	// expect its consumers to see some twice.
	AddNewOrchestrationEvents(ctx context.Context, events []RaisedEvent) error
}
