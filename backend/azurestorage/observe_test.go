package azurestorage

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// fakeTransport answers each request with the next status (0: a transport
// error).
type fakeTransport struct{ statuses []int }

func (f *fakeTransport) Do(r *http.Request) (*http.Response, error) {
	code := f.statuses[0]
	f.statuses = f.statuses[1:]
	if code == 0 {
		return nil, errors.New("connection refused")
	}
	return &http.Response{StatusCode: code, Status: http.StatusText(code), Header: http.Header{}, Body: http.NoBody, Request: r}, nil
}

// TestStatusCountsAndSpans sends queue requests through the backend's
// client pipeline: each attempt is counted by kind and status class, and
// gets a client span only inside a trace.
func TestStatusCountsAndSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	c := &Counter{}
	o := clientOptions(c, "queue", tp)
	o.Retry = policy.RetryOptions{MaxRetries: -1}
	o.Transport = &fakeTransport{statuses: []int{201, 404, 503, 0, 201}}
	pl := runtime.NewPipeline("test", "v0", runtime.PipelineOptions{}, &o)

	send := func(ctx context.Context) {
		req, err := runtime.NewRequest(ctx, http.MethodPost, "http://127.0.0.1:1/acct/q/messages")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = pl.Do(req)
	}
	for range 4 {
		send(context.Background())
	}
	if got := rec.Ended(); len(got) != 0 {
		t.Errorf("%d spans for requests outside a trace", len(got))
	}
	ctx, parent := tp.Tracer("test").Start(context.Background(), "parent")
	send(ctx)
	parent.End()

	want := map[string]int64{"2xx": 2, "4xx": 1, "5xx": 1, "error": 1}
	got := c.StatusSnapshot()["queue.enqueue"]
	for class, n := range want {
		if got[class] != n {
			t.Errorf("queue.enqueue %s: %d, want %d (all: %v)", class, got[class], n, got)
		}
	}
	if c.Snapshot()["queue.enqueue"] != 5 {
		t.Errorf("Snapshot %v, want 5 enqueues", c.Snapshot())
	}
	var spans []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "queue.enqueue" {
			spans = append(spans, s)
		}
	}
	if len(spans) != 1 || spans[0].Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Fatalf("spans %v: want one queue.enqueue under the parent", spans)
	}
	c.Reset()
	if len(c.StatusSnapshot()) != 0 {
		t.Error("Reset kept the status counts")
	}
}
