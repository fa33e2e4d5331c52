package azurestorage

import (
	"context"
	"net/http"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	aztracing "github.com/Azure/azure-sdk-for-go/sdk/azcore/tracing"
	"github.com/Azure/azure-sdk-for-go/sdk/tracing/azotel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Storage calls in traces (docs/tracing.md).
//
// The table client of the Azure SDK traces its methods ("Client.GetEntity",
// then "HTTP GET" per attempt) through azcore's tracing.Provider, which
// azotel adapts to OpenTelemetry. The queue and blob clients of the SDK
// versions in go.mod do not trace at all, so for them spanPolicy, in the
// same per-attempt place as the request counter, adds one client span per
// attempt named after the request's kind ("queue.dequeue").
//
// Either way a storage call makes a span only inside a trace (a context
// holding a valid span context): the background polling of the queues and
// the lease rounds, which run on contexts without one, would otherwise make
// a new trace of one span every few hundred milliseconds.

// tracerName is the instrumentation scope of the spans spanPolicy makes.
const tracerName = "github.com/dronehub/dronehub/backend/azurestorage"

// inTraceProvider adapts tp for azcore, keeping only the spans started
// inside a trace.
func inTraceProvider(tp trace.TracerProvider) aztracing.Provider {
	inner := azotel.NewTracingProvider(tp, nil)
	return aztracing.NewProvider(func(namespace, version string) aztracing.Tracer {
		t := inner.NewTracer(namespace, version)
		return aztracing.NewTracer(func(ctx context.Context, name string, opts *aztracing.SpanOptions) (context.Context, aztracing.Span) {
			if !trace.SpanContextFromContext(ctx).IsValid() {
				return ctx, aztracing.Span{} // the zero Span does nothing
			}
			return t.Start(ctx, name, opts)
		}, &aztracing.TracerOptions{SpanFromContext: t.SpanFromContext})
	}, nil)
}

// spanPolicy makes one client span per attempt of a queue or blob request.
type spanPolicy struct {
	tracer  trace.Tracer
	service string
}

func (p spanPolicy) Do(req *policy.Request) (*http.Response, error) {
	ctx := req.Raw().Context()
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return req.Next()
	}
	kind := OperationKind(p.service, req.Raw())
	ctx, span := p.tracer.Start(ctx, kind, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("http.request.method", req.Raw().Method),
		attribute.String("server.address", req.Raw().URL.Host),
		attribute.String("dronehub.storage.kind", kind),
	))
	defer span.End()
	resp, err := req.WithContext(ctx).Next()
	switch {
	case err != nil:
		span.SetStatus(codes.Error, err.Error())
	case resp != nil:
		span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))
		if resp.StatusCode >= 400 {
			span.SetStatus(codes.Error, resp.Status)
		}
	}
	return resp, err
}
