// Command fanworker is the worker process of the e2e fault tests
// (e2e/faults_test.go): a dronehub worker (package worker, the same host
// `dronehub worker` runs) that also registers a fan-out orchestration whose
// outputs a test can compute.
//
//   - FanOut, input {"n": N, "seed": S, "holdMs": H}: schedules N "Square"
//     activities at once, with inputs S*1000+i for i in [0, N), awaits them
//     all and returns the sum of their results. With H > 0 every episode
//     first spends H ms (an orchestrator busy computing), which widens the
//     window between a work item's fetch and its commit. Every episode
//     appends "<instance> <worker name> <unix ms>\n" to --episode-log.
//   - Square returns x*x and appends one line per execution to --exec-log:
//     "<instance> <x> <worker name> <unix ms>\n" (O_APPEND, one write per
//     line), so a test can count the executions of every (instance, input).
//
// SIGTERM or SIGINT shuts it down gracefully (in-flight work gets
// --shutdown-grace). It logs JSON to stderr at --log-level, plus the task
// hub backend's debug lines ("azurestorage: …": partitions claimed, outboxes
// sent again, copies dropped), which the tests read as evidence.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/worker"
)

// FanOutInput is the input of the FanOut orchestration.
type FanOutInput struct {
	N      int `json:"n"`
	Seed   int `json:"seed"`
	HoldMs int `json:"holdMs,omitempty"`
}

// SquareInput is the input of the Square activity: the activity context
// does not name the instance, so the input does.
type SquareInput struct {
	Instance string `json:"instance"`
	X        int64  `json:"x"`
}

// fanOut schedules in.N Square activities in parallel and returns the sum.
func (l *execLog) fanOut(ctx *task.OrchestrationContext) (any, error) {
	var in FanOutInput
	if err := ctx.GetInput(&in); err != nil {
		return nil, fmt.Errorf("FanOut input: %w", err)
	}
	if in.N < 0 || in.N > 1000 {
		return nil, fmt.Errorf("FanOut input: n %d is out of range 0-1000", in.N)
	}
	if err := l.write(l.episodes, fmt.Sprintf("%s %s %d\n", ctx.ID, l.name, time.Now().UnixMilli())); err != nil {
		return nil, err
	}
	if in.HoldMs > 0 {
		// Runs in every episode, replay or not; decides nothing.
		time.Sleep(time.Duration(min(in.HoldMs, 10000)) * time.Millisecond)
	}
	tasks := make([]task.Task, in.N)
	for i := range tasks {
		x := int64(in.Seed)*1000 + int64(i)
		tasks[i] = ctx.CallActivity("Square", task.WithActivityInput(SquareInput{Instance: string(ctx.ID), X: x}))
	}
	var sum int64
	for i, t := range tasks {
		var v int64
		if err := t.Await(&v); err != nil {
			return nil, fmt.Errorf("Square %d: %w", i, err)
		}
		sum += v
	}
	return sum, nil
}

// execLog records Square executions and FanOut episodes.
type execLog struct {
	mu       sync.Mutex
	f        *os.File // Square executions
	episodes *os.File // FanOut episodes
	name     string
}

// write appends line to f (if set) in one write: O_APPEND keeps lines whole.
func (l *execLog) write(f *os.File, line string) error {
	if f == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := f.Write([]byte(line)); err != nil {
		return fmt.Errorf("fanworker: record: %w", err)
	}
	return nil
}

func (l *execLog) square(ctx task.ActivityContext) (any, error) {
	var in SquareInput
	if err := ctx.GetInput(&in); err != nil {
		return nil, fmt.Errorf("Square input: %w", err)
	}
	if err := l.write(l.f, fmt.Sprintf("%s %d %s %d\n", in.Instance, in.X, l.name, time.Now().UnixMilli())); err != nil {
		return nil, err
	}
	return in.X * in.X, nil
}

// backendDebug passes the records of the base handler's level, and the
// task hub backend's debug records.
type backendDebug struct{ slog.Handler }

func (h backendDebug) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelDebug
}

func (h backendDebug) Handle(ctx context.Context, r slog.Record) error {
	if !h.Handler.Enabled(ctx, r.Level) && !strings.HasPrefix(r.Message, "azurestorage:") {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h backendDebug) WithAttrs(as []slog.Attr) slog.Handler {
	return backendDebug{h.Handler.WithAttrs(as)}
}

func (h backendDebug) WithGroup(name string) slog.Handler {
	return backendDebug{h.Handler.WithGroup(name)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "fanworker: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("fanworker", flag.ContinueOnError)
	var (
		name        = fs.String("name", "fanworker", "worker name written in the execution log")
		listen      = fs.String("listen", "127.0.0.1:0", "HTTP listen address (loopback)")
		storage     = fs.String("storage", "", "task hub connection string")
		hub         = fs.String("hub", "fanhub", "task hub name")
		partitions  = fs.Int("partitions", 4, "control-queue partitions of a new hub")
		lockTimeout = fs.Duration("lock-timeout", 20*time.Second, "work item lock timeout")
		grace       = fs.Duration("shutdown-grace", 30*time.Second, "time given to in-flight work on shutdown")
		orchConc    = fs.Int("orchestration-concurrency", 16, "orchestration work items processed at once")
		actConc     = fs.Int("activity-concurrency", 32, "activities processed at once")
		execPath    = fs.String("exec-log", "", "file that gets one line per Square execution")
		epPath      = fs.String("episode-log", "", "file that gets one line per FanOut episode")
		level       = fs.String("log-level", "info", "log level")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *storage == "" {
		return errors.New("--storage is required")
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level %q: %w", *level, err)
	}
	logger := slog.New(backendDebug{slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lv})}).With("worker", *name)

	el := &execLog{name: *name}
	for _, o := range []struct {
		path string
		f    **os.File
	}{{*execPath, &el.f}, {*epPath, &el.episodes}} {
		if o.path == "" {
			continue
		}
		f, err := os.OpenFile(o.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		*o.f = f
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *listen, err)
	}
	w, err := worker.New(ctx, worker.Config{
		Storage:                  *storage,
		HubName:                  *hub,
		Partitions:               *partitions,
		LockTimeout:              *lockTimeout,
		OrchestrationConcurrency: *orchConc,
		ActivityConcurrency:      *actConc,
		SeedDrones:               -1,
		Logger:                   logger,
		Register: func(r *task.TaskRegistry) error {
			if err := r.AddOrchestratorN("FanOut", el.fanOut); err != nil {
				return err
			}
			return r.AddActivityN("Square", el.square)
		},
	})
	if err != nil {
		ln.Close()
		return err
	}
	logger.Info("fanworker", "pid", os.Getpid(), "addr", ln.Addr().String())
	return w.Run(ctx, ln, *grace)
}
