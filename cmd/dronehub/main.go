// Command dronehub runs the dronehub worker, its HTTP API clients and the
// drone telemetry simulator. See internal/cli for the commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/dronehub/dronehub/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr, cli.Getenv)
	stop()
	os.Exit(code)
}
