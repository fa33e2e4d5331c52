package tracing_test

import (
	"context"
	"os"
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/dronehub/dronehub/internal/azurite"
)

// azr is the Azurite server this package's tests share.
var azr azurite.Shared

// spans holds every span the tests' provider ended, tp. durabletask-go
// takes its tracer from the global provider, bound to the first one set, so
// the test binary sets one provider, once, here, as the worker command does
// in production; tests tell their spans apart by trace.
var (
	spans = tracetest.NewInMemoryExporter()
	tp    = sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
)

func TestMain(m *testing.M) {
	otel.SetTracerProvider(tp)
	code := m.Run()
	_ = tp.Shutdown(context.Background())
	azr.Close()
	os.Exit(code)
}
