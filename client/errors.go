package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/dronehub/dronehub/httpapi"
)

// Sentinel errors, matched with errors.Is whichever the implementation.
var (
	// ErrNotFound: no such mission, instance, drone, dead letter,
	// orchestrator or route (404).
	ErrNotFound = errors.New("not found")
	// ErrConflict: the id exists with a different request, or the instance
	// has not ended yet (409).
	ErrConflict = errors.New("conflict")
	// ErrGone: the instance already ended (410).
	ErrGone = errors.New("already ended")
	// ErrInvalid: invalid input (400, 413, 415); the *APIError's Fields
	// name each bad field.
	ErrInvalid = errors.New("invalid input")
	// ErrUnauthorized: a missing or wrong API key (401).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden: an event the instance's orchestrator does not declare
	// public (403).
	ErrForbidden = errors.New("forbidden")
	// ErrUnavailable: storage did not answer, the worker is busy (503,
	// 429, 502, 504), or it cannot be reached. Requests safe to repeat were
	// already retried.
	ErrUnavailable = errors.New("unavailable")
	// ErrFailed: the orchestration itself failed (runtime status Failed),
	// as opposed to a failed delivery, which completes.
	ErrFailed = errors.New("orchestration failed")
	// ErrTerminated: the instance was terminated (or canceled) instead of
	// completing.
	ErrTerminated = errors.New("orchestration terminated")
)

// APIError is a request the API refused or could not carry out. Remote, it
// is the HTTP answer's problem details; in process, the same status and
// detail, as the HTTP API would have answered. errors.Is matches it against
// the sentinel of its status (ErrNotFound for 404, …; errors.ErrUnsupported
// for 501).
type APIError struct {
	// StatusCode is the HTTP status.
	StatusCode int
	// Detail says what is wrong.
	Detail string
	// Fields names each invalid field of a 400 for invalid input.
	Fields []FieldProblem
	// RetryAfter is how long the API asks to wait before repeating the
	// request (Retry-After), or 0.
	RetryAfter time.Duration
	// Err is the storage error behind an in-process 503, nil otherwise.
	Err error
}

// Error reads "HTTP 404: no mission with id "m-9"", followed by the field
// problems the detail does not already name.
func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP %d: %s", e.StatusCode, e.Detail)
	for _, f := range e.Fields {
		if p := f.Field + ": " + f.Message; !strings.Contains(e.Detail, p) {
			b.WriteString("; " + p)
		}
	}
	return b.String()
}

// Is matches the sentinel of the error's status.
func (e *APIError) Is(target error) bool {
	switch e.StatusCode {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType:
		return target == ErrInvalid
	case http.StatusUnauthorized:
		return target == ErrUnauthorized
	case http.StatusForbidden:
		return target == ErrForbidden
	case http.StatusNotFound:
		return target == ErrNotFound
	case http.StatusConflict:
		return target == ErrConflict
	case http.StatusGone:
		return target == ErrGone
	case http.StatusNotImplemented:
		return target == errors.ErrUnsupported
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return target == ErrUnavailable
	}
	return false
}

// Unwrap returns the storage error behind an in-process 503.
func (e *APIError) Unwrap() error { return e.Err }

// invalid is the ErrInvalid for a request the client cannot send, refused
// before either implementation gets it.
func invalid(detail string, fields ...FieldProblem) *APIError {
	return &APIError{StatusCode: http.StatusBadRequest, Detail: detail, Fields: fields}
}

// fromService maps an error of httpapi.Service to an *APIError, as the
// handler would have answered it.
func fromService(err error) error {
	var se *httpapi.Error
	if !errors.As(err, &se) {
		return err
	}
	ae := &APIError{StatusCode: se.Status, Detail: se.Detail, Fields: se.Fields, Err: se.Err}
	if se.Status == http.StatusServiceUnavailable {
		ae.RetryAfter = 5 * time.Second // as the handler answers a storage failure
	}
	return ae
}

// InstanceError is an instance that ended other than Completed: it failed
// (ErrFailed, with FailureDetails), or was terminated or canceled
// (ErrTerminated, with the reason in Output).
type InstanceError struct {
	InstanceID    string
	RuntimeStatus RuntimeStatus
	// FailureDetails says why a Failed orchestration failed.
	FailureDetails *Failure
	// Output is a terminated instance's output: the reason, as JSON.
	Output json.RawMessage
}

func (e *InstanceError) Error() string {
	switch {
	case e.FailureDetails != nil:
		return fmt.Sprintf("instance %q ended %s: %s: %s", e.InstanceID, e.RuntimeStatus, e.FailureDetails.ErrorType, e.FailureDetails.ErrorMessage)
	case len(e.Output) > 0 && string(e.Output) != "null":
		return fmt.Sprintf("instance %q ended %s: %s", e.InstanceID, e.RuntimeStatus, e.Output)
	}
	return fmt.Sprintf("instance %q ended %s", e.InstanceID, e.RuntimeStatus)
}

// Is matches ErrFailed or ErrTerminated.
func (e *InstanceError) Is(target error) bool {
	switch e.RuntimeStatus {
	case StatusFailed:
		return target == ErrFailed
	case StatusTerminated, StatusCanceled:
		return target == ErrTerminated
	}
	return false
}

// endedError is nil for a Completed instance, else its *InstanceError.
func endedError(in Instance) error {
	if in.RuntimeStatus == StatusCompleted {
		return nil
	}
	return &InstanceError{InstanceID: in.InstanceID, RuntimeStatus: in.RuntimeStatus, FailureDetails: in.FailureDetails, Output: in.Output}
}

// UnreachableError is a request that got no answer: the worker is down or
// restarting, or the connection broke. It matches ErrUnavailable.
type UnreachableError struct {
	// URL is the worker's base URL.
	URL string
	Err error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach dronehub at %s: %v", e.URL, e.Err)
}

// Unwrap returns the transport's error.
func (e *UnreachableError) Unwrap() error { return e.Err }

// Is matches ErrUnavailable.
func (e *UnreachableError) Is(target error) bool { return target == ErrUnavailable }

// decodeRaw decodes one of an instance's JSON values into v.
func decodeRaw(what, id string, raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		raw = json.RawMessage("null")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("decode the %s of instance %q: %w", what, id, err)
	}
	return nil
}
