package taskhub

import (
	"context"
	"errors"
	"time"

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
	// QueueDepths maps queue name to its approximate message count.
	QueueDepths map[string]int `json:"queueDepths,omitempty"`
	// Instances counts instances by runtime status name.
	Instances map[string]int `json:"instances"`
	// DeadLetters counts the dead letters (see DeadLetterer).
	DeadLetters int `json:"deadLetters"`
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
