package tracing_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/dronehub/dronehub/tracing"
)

func env(vars map[string]string) tracing.Getenv {
	return func(k string) string { return vars[k] }
}

func TestFromEnv(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		vars map[string]string
		on   bool
		err  bool
	}{
		{"unset: off", nil, false, false},
		{"a service name alone: off", map[string]string{"OTEL_SERVICE_NAME": "x"}, false, false},
		{"an endpoint: on", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, true, false},
		{"a traces endpoint: on", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1/v1/traces"}, true, false},
		{"otlp exporter: on", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, false},
		{"grpc: on", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, true, false},
		{"traces protocol beats protocol", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, true, false},
		{"none: off", map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, false, false},
		{"SDK disabled: off", map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, false, false},
		{"console: refused", map[string]string{"OTEL_TRACES_EXPORTER": "console"}, false, true},
		{"http/json: refused", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, false, true},
	} {
		tp, err := tracing.FromEnv(ctx, env(tc.vars))
		switch {
		case tc.err:
			if !errors.Is(err, tracing.ErrUnsupported) {
				t.Errorf("%s: error %v, want ErrUnsupported", tc.name, err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case (tp != nil) != tc.on:
			t.Errorf("%s: provider %v, want on=%t", tc.name, tp, tc.on)
		}
		if tp != nil {
			// Nothing was recorded, so nothing is sent: shutting down
			// does not reach for the (absent) collector.
			if err := tp.Shutdown(ctx); err != nil {
				t.Errorf("%s: shutdown: %v", tc.name, err)
			}
		}
	}
}

func TestLogHandler(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := slog.New(tracing.NewLogHandler(slog.NewTextHandler(&buf, nil))).With("worker", "w1")
	if tracing.NewLogHandler(log.Handler()) != log.Handler() {
		t.Error("wrapping twice adds a second wrapper")
	}
	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	defer span.End()
	sc := trace.SpanContextFromContext(ctx)

	log.InfoContext(ctx, "in a span")
	log.InfoContext(context.Background(), "outside")
	log.Info("no context")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines: %q", len(lines), buf.String())
	}
	want := "trace_id=" + sc.TraceID().String() + " span_id=" + sc.SpanID().String()
	if !strings.Contains(lines[0], want) || !strings.Contains(lines[0], "worker=w1") {
		t.Errorf("log in a span: %q, want %q", lines[0], want)
	}
	for _, l := range lines[1:] {
		if strings.Contains(l, "trace_id") {
			t.Errorf("log outside a span has a trace id: %q", l)
		}
	}
}
