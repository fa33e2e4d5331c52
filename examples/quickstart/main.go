// Command quickstart embeds a dronehub worker in a Go program and flies one
// delivery mission on it with the in-process client: it starts the mission,
// waits for its drone to be dispatched, flies the drone with the simulator
// and prints the phases the mission went through.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/worker"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) (err error) {
	dir, err := os.MkdirTemp("", "dronehub-quickstart-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// The worker, on a SQLite file, with a demo fleet of one drone.
	w, err := worker.New(ctx, worker.Config{Storage: filepath.Join(dir, "quickstart.db"), SeedDrones: 1,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = errors.Join(err, w.Shutdown(sctx))
	}()
	if err := w.Start(ctx); err != nil {
		return err
	}
	c := client.Local(w) // or client.Dial("http://127.0.0.1:8080", client.Options{}): see examples/remote

	m, err := c.StartMission(ctx, domain.MissionRequest{
		Pickup:   &domain.LatLon{Lat: 47.6440, Lon: -122.1300},
		Dropoff:  &domain.LatLon{Lat: 47.6470, Lon: -122.1360},
		Package:  &domain.Package{ID: "pkg-1", WeightKg: 1.5, Size: domain.SizeSmall},
		Deadline: time.Now().Add(time.Hour),
	}, client.WithID("quickstart-1"))
	if err != nil {
		return err
	}
	st, err := m.WaitPhase(ctx, domain.PhaseHeadedToPickup) // the drone and its route are known
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "mission %s: %s dispatched, %.0f m to fly\n", m.ID(), st.Status.DroneID, st.Status.Route.TotalM())

	// Fly the drone: its frames continue the sequence numbers it sent before.
	drone, err := c.Drone(ctx, st.Status.DroneID)
	if err != nil {
		return err
	}
	flight := simulator.NewFlight(simulator.FlightOptions{DroneID: drone.DroneID, Route: *st.Status.Route, SpeedMps: 40, FirstSeq: drone.NextSeq()})
	err = simulator.Fly(ctx, simulator.SinkFunc(func(ctx context.Context, frames []domain.Frame) error {
		_, err := c.Ingest(ctx, frames)
		return err
	}), 0, flight)
	if err != nil {
		return err
	}

	final, err := m.Wait(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "timeline:")
	for i, pc := range final.Status.Timeline {
		fmt.Fprintf(out, "  %d. %s\n", i+1, pc.Phase)
	}
	fmt.Fprintf(out, "mission %s: runtime status %s, phase %s\n", m.ID(), final.RuntimeStatus, final.Status.Phase)
	return nil
}
