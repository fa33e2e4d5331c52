package httpapi

import (
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// tracerName is the instrumentation scope of the API's spans.
const tracerName = "github.com/dronehub/dronehub/httpapi"

// instrument wraps a route: it counts and times every request by route
// (the mux pattern, never the raw path) and, when traced and tracing is on,
// serves it inside a server span named after the route.
func (h *handler) instrument(route string, traced bool, next http.HandlerFunc) http.Handler {
	traced = traced && h.tracer != nil
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec, ok := w.(*reqWriter)
		if !ok {
			rec = &reqWriter{ResponseWriter: w}
		}
		var span trace.Span
		if traced {
			// A request made inside a trace of the client's (W3C
			// traceparent) joins it.
			ctx := propagation.TraceContext{}.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
			ctx, span = h.tracer.Start(ctx, route, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
				attribute.String("http.request.method", r.Method),
				attribute.String("http.route", route),
				attribute.String("url.path", r.URL.Path),
			))
			r = r.WithContext(ctx)
		}
		next(rec, r)
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		if span != nil {
			span.SetAttributes(attribute.Int("http.response.status_code", code))
			if code >= 500 {
				span.SetStatus(codes.Error, http.StatusText(code))
			}
			span.End()
		}
		h.metrics.ObserveHTTP(route, code, time.Since(start))
	})
}
