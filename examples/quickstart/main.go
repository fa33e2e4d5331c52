// Command quickstart embeds a dronehub worker in a Go program: it starts one
// DeliveryMission on a SQLite file in a temporary directory, flies the
// mission's drone with the in-process simulator, waits for the mission to
// end and prints the phases it went through.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/microsoft/durabletask-go/api"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/taskhub"
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

	// The worker: task hub, mission orchestration, activities and telemetry
	// ingestion on one SQLite file, with a demo fleet of one drone.
	w, err := worker.New(ctx, worker.Config{
		Storage:    filepath.Join(dir, "quickstart.db"),
		SeedDrones: 1,
		Logger:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	if err := w.Start(ctx); err != nil {
		w.Shutdown(ctx)
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = errors.Join(err, w.Shutdown(sctx))
	}()

	// Start a delivery: pickup and drop-off a few hundred metres from the
	// demo fleet's base.
	id, err := w.StartMission(ctx, domain.MissionRequest{
		MissionID: "quickstart-1",
		Pickup:    &domain.LatLon{Lat: 47.6440, Lon: -122.1300},
		Dropoff:   &domain.LatLon{Lat: 47.6470, Lon: -122.1360},
		Package:   &domain.Package{ID: "pkg-1", WeightKg: 1.5, Size: domain.SizeSmall},
		Deadline:  time.Now().Add(time.Hour),
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "mission %s started\n", id)

	// The mission publishes its drone and route in its custom status once
	// the drone is dispatched.
	st, err := awaitDispatch(ctx, w, id)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s dispatched: %.0f m to fly\n", st.DroneID, st.Route.TotalM())

	// Fly the drone. A real drone keeps counting its sequence numbers across
	// flights, so the simulated flight continues after the last one stored.
	d, err := w.Fleet().Drone(ctx, st.DroneID)
	if err != nil {
		return err
	}
	flight := simulator.NewFlight(simulator.FlightOptions{
		DroneID:  st.DroneID,
		Route:    *st.Route,
		SpeedMps: 40,
		FirstSeq: d.Tracked.Window.Last + 1,
	})
	var frames, accepted int
	sink := simulator.SinkFunc(func(ctx context.Context, batch []domain.Frame) error {
		decoded := make([]domain.DecodedFrame, len(batch))
		for i, f := range batch {
			decoded[i] = domain.DecodedFrame{Frame: f}
		}
		res, err := w.Ingestor().Ingest(ctx, decoded)
		frames += len(batch)
		accepted += res.Accepted
		return err
	})
	if err := simulator.Fly(ctx, sink, 0, flight); err != nil {
		return err
	}
	fmt.Fprintf(out, "flight over: %d frames sent, %d accepted\n", frames, accepted)

	// Wait for the orchestration to end and read its output.
	md, err := w.Client().WaitForOrchestrationCompletion(ctx, api.InstanceID(id))
	if err != nil {
		return err
	}
	var res domain.MissionStatus
	if err := json.Unmarshal([]byte(md.SerializedOutput), &res); err != nil {
		return fmt.Errorf("mission output %q: %w", md.SerializedOutput, err)
	}
	fmt.Fprintln(out, "timeline:")
	for i, c := range res.Timeline {
		fmt.Fprintf(out, "  %d. %s\n", i+1, c.Phase)
	}
	if res.Failure != "" {
		fmt.Fprintf(out, "failure: %s\n", res.Failure)
	}
	fmt.Fprintf(out, "mission %s: runtime status %s, phase %s\n", id, taskhub.StatusName(md.RuntimeStatus), res.Phase)
	return nil
}

// awaitDispatch polls the mission's custom status until its drone is on the
// way.
func awaitDispatch(ctx context.Context, w *worker.Worker, id string) (domain.MissionStatus, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		md, err := w.Client().FetchOrchestrationMetadata(ctx, api.InstanceID(id))
		if err != nil {
			return domain.MissionStatus{}, err
		}
		var st domain.MissionStatus
		if md.SerializedCustomStatus != "" {
			if err := json.Unmarshal([]byte(md.SerializedCustomStatus), &st); err != nil {
				return st, err
			}
		}
		switch {
		case st.Route != nil && st.Phase == domain.PhaseHeadedToPickup:
			return st, nil
		case st.Phase.Terminal():
			return st, fmt.Errorf("mission %s ended before its drone left: %s", id, st.Failure)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return st, fmt.Errorf("mission %s never dispatched its drone: %w", id, ctx.Err())
		}
	}
}
