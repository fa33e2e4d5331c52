package azurestorage

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// Outage handling. The SDK retries each request a few times over about six
// seconds (clients.go). Storage can be away for longer (a failover, a
// restart, a network partition), so the work-item path retries again on
// top of that, for as long as the messages it holds stay locked: a commit
// that waits out an outage is better than one that fails and leaves its
// messages invisible until their lock expires. Background loops (polling,
// partition leases) never exit on errors; they log and try again.

// transient reports whether a storage error may go away by itself: a
// transport failure (connection refused or reset, a try that timed out) or
// a throttling or server error. Other responses (404, 409, 412, 400, ...)
// are answers, not failures to get one. A failed entity-group transaction
// is judged by the status of its failed operation (see httpStatus): the
// SDK reports it with the outer status 202, which alone says nothing.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		switch httpStatus(err) {
		case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
			http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	var ne net.Error // *url.Error, *net.OpError: the request did not get an answer
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

// batchStatus returns the status of the failed operation in a $batch
// response (multipart/mixed, one part per operation, each an HTTP
// response), the first status of 400 or more; 0 when there is none.
func batchStatus(resp *http.Response) int {
	if resp == nil || resp.Body == nil ||
		!strings.HasPrefix(strings.ToLower(resp.Header.Get("Content-Type")), "multipart/mixed") {
		return 0
	}
	var body []byte
	if buf, ok := resp.Body.(interface{ Bytes() []byte }); ok {
		body = buf.Bytes() // the SDK's in-memory body, read without changing it
	} else {
		var err error
		if body, err = runtime.Payload(resp); err != nil {
			return 0
		}
	}
	for line := range strings.Lines(string(body)) {
		// An operation's status line: "HTTP/1.1 412 Precondition Failed".
		if !strings.HasPrefix(line, "HTTP/") {
			continue
		}
		if f := strings.Fields(line); len(f) >= 2 {
			if code, err := strconv.Atoi(f[1]); err == nil && code >= 400 && code <= 599 {
				return code
			}
		}
	}
	return 0
}

// failedOperation is the 0-based index of the operation a failed
// entity-group transaction names (the Content-ID, 1-based, of the failed
// operation's response), or -1.
func failedOperation(err error) int {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.RawResponse == nil || re.RawResponse.Body == nil {
		return -1
	}
	var body []byte
	if buf, ok := re.RawResponse.Body.(interface{ Bytes() []byte }); ok {
		body = buf.Bytes()
	} else if b, err := runtime.Payload(re.RawResponse); err == nil {
		body = b
	}
	for _, op := range batchResponses(re.RawResponse.Header.Get("Content-Type"), body) {
		if op.StatusCode >= 400 {
			if n, err := strconv.Atoi(strings.TrimSpace(op.Header.Get("Content-ID"))); err == nil && n > 0 {
				return n - 1
			}
			return -1
		}
	}
	return -1
}

type retryKey struct{}

// retryUntil returns ctx carrying a retry deadline for the storage calls
// made with it (see Backend.storage).
func retryUntil(ctx context.Context, until time.Time) context.Context {
	return context.WithValue(ctx, retryKey{}, until)
}

// storage runs one storage call, retrying transient failures until the
// deadline ctx carries (retryUntil); without one it runs f once.
func (b *Backend) storage(ctx context.Context, what string, f func(context.Context) error) error {
	until, _ := ctx.Value(retryKey{}).(time.Time)
	return b.persist(ctx, until, what, f)
}

// Retry back-off bounds of persist.
const (
	persistFirstDelay = 250 * time.Millisecond
	persistMaxDelay   = 5 * time.Second
)

// persist runs f, a storage call, and retries it with exponential back-off
// and jitter while it fails transiently, until until (typically when the
// messages of the work item stop being locked), ctx ends or the backend
// closes. It returns f's last error.
func (b *Backend) persist(ctx context.Context, until time.Time, what string, f func(context.Context) error) error {
	delay := persistFirstDelay
	warned := false
	for {
		err := f(ctx)
		if err == nil || !transient(err) || ctx.Err() != nil || b.bg.Err() != nil {
			if err == nil && warned {
				b.log.Info("azurestorage: storage reachable again", "op", what)
			}
			return err
		}
		wait := delay/2 + rand.N(delay/2+1)
		if time.Now().Add(wait).After(until) {
			return err
		}
		if !warned {
			b.log.Warn("azurestorage: storage unavailable; retrying", "op", what, "err", err)
			warned = true
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		case <-b.bg.Done():
			t.Stop()
			return err
		}
		delay = min(delay*2, persistMaxDelay)
	}
}

// lockDeadline is how long storage calls on behalf of msgs may be retried:
// until the first of their locks has a tenth of LockTimeout left.
func (b *Backend) lockDeadline(msgs []*inMsg) time.Time {
	d := time.Now().Add(b.opts.LockTimeout)
	for _, m := range msgs {
		if t := m.lockedAt().Add(b.opts.LockTimeout); t.Before(d) {
			d = t
		}
	}
	return d.Add(-b.opts.LockTimeout / 10)
}
