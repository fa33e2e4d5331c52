// Package tracing sets dronehub up for OpenTelemetry traces: a tracer
// provider configured from the standard OTEL_* environment variables (off,
// at no cost, when they are unset), and a slog handler that puts the trace
// and span ids in the logs. docs/tracing.md describes the spans of a
// mission's trace.
//
// The worker takes its provider from worker.Config.TracerProvider and puts
// its own spans there (HTTP requests, orchestration turns, activity results,
// telemetry ingestion, storage calls). durabletask-go v0.6.0 makes the
// orchestration and activity spans itself, with a tracer it takes from the
// global provider (otel.Tracer("durabletask"), bound to the first provider
// passed to otel.SetTracerProvider): a program that wants those spans must
// set the global provider too, once. The dronehub worker command does; no
// library code here does.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of dronehub's own spans.
const ScopeName = "github.com/dronehub/dronehub"

// DefaultServiceName is the service.name of a provider when neither
// OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names the service.
const DefaultServiceName = "dronehub"

// ErrUnsupported is wrapped by FromEnv's error for a setting it cannot honour.
var ErrUnsupported = errors.New("unsupported tracing setting")

// Getenv reads an environment variable; os.Getenv in production.
type Getenv func(string) string

// Enabled reports whether the environment asks for traces: OTEL_SDK_DISABLED
// is not "true", and OTEL_TRACES_EXPORTER is "otlp", or it is unset and an
// OTLP endpoint is (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). With none of them set, tracing is
// off: unlike the OpenTelemetry default, no exporter sends to localhost
// unasked.
func Enabled(getenv Getenv) (bool, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	switch exp := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER"))); exp {
	case "":
		return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "", nil
	case "none":
		return false, nil
	case "otlp":
		return true, nil
	default:
		return false, fmt.Errorf("%w: OTEL_TRACES_EXPORTER=%q: dronehub exports traces with otlp (or none)", ErrUnsupported, exp)
	}
}

// FromEnv returns a tracer provider configured from the OTEL_* environment,
// or nil when Enabled says tracing is off. getenv decides whether tracing
// is on and the protocol (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else
// OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf", the default, or "grpc"); the
// OpenTelemetry SDK and exporter read every other setting from the process
// environment themselves: endpoint, headers, timeout, compression and TLS
// (OTEL_EXPORTER_OTLP_*), the sampler (OTEL_TRACES_SAMPLER,
// OTEL_TRACES_SAMPLER_ARG; default parentbased_always_on), the batch
// processor (OTEL_BSP_*), and the resource (OTEL_SERVICE_NAME,
// OTEL_RESOURCE_ATTRIBUTES; service.name defaults to "dronehub").
//
// The caller owns the provider: Shutdown flushes the spans still buffered.
func FromEnv(ctx context.Context, getenv Getenv) (*sdktrace.TracerProvider, error) {
	on, err := Enabled(getenv)
	if err != nil || !on {
		return nil, err
	}
	proto := strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
	if proto == "" {
		proto = strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_PROTOCOL"))
	}
	var client otlptrace.Client
	switch proto {
	case "", "http/protobuf":
		client = otlptracehttp.NewClient()
	case "grpc":
		client = otlptracegrpc.NewClient()
	default:
		return nil, fmt.Errorf("%w: OTLP protocol %q: use http/protobuf or grpc", ErrUnsupported, proto)
	}
	exp, err := otlptrace.New(ctx, client)
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", DefaultServiceName)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithProcessPID(),
	)
	if err != nil && res == nil {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}

// NewLogHandler wraps h so that every record logged with a context holding
// a valid span (logger.InfoContext(ctx, …)) carries trace_id and span_id,
// the ids a trace UI finds the trace by. Records without one pass as they
// are. Wrapping a handler from NewLogHandler returns it unchanged.
func NewLogHandler(h slog.Handler) slog.Handler {
	if _, ok := h.(logHandler); ok {
		return h
	}
	return logHandler{h}
}

type logHandler struct{ slog.Handler }

// Handle implements slog.Handler.
func (h logHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return logHandler{h.Handler.WithAttrs(attrs)}
}

// WithGroup implements slog.Handler.
func (h logHandler) WithGroup(name string) slog.Handler {
	return logHandler{h.Handler.WithGroup(name)}
}

// TraceParent is sc as a W3C traceparent, "" unless it is valid and
// sampled.
func TraceParent(sc trace.SpanContext) string {
	if !sc.IsValid() || !sc.IsSampled() {
		return ""
	}
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), sc), c)
	return c["traceparent"]
}

// SpanContextOf parses a W3C traceparent; invalid when it is not one.
func SpanContextOf(traceparent string) trace.SpanContext {
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": traceparent})
	return trace.SpanContextFromContext(ctx)
}
