// Command remote flies one delivery mission on a running dronehub worker,
// over its HTTP API: the quickstart's code, with client.Dial instead of
// client.Local. Start a worker first:
//
//	go run ./cmd/dronehub worker &
//	go run ./examples/remote --url http://127.0.0.1:8080
//
// With API keys on the worker, pass one in DRONEHUB_API_KEY.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/simulator"
)

func main() {
	url := flag.String("url", "http://127.0.0.1:8080", "the worker's HTTP API")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout, *url, os.Getenv("DRONEHUB_API_KEY")); err != nil {
		fmt.Fprintln(os.Stderr, "remote:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer, url, apiKey string) error {
	c, err := client.Dial(url, client.Options{APIKey: apiKey})
	if err != nil {
		return err
	}
	m, err := c.StartMission(ctx, domain.MissionRequest{
		Pickup:   &domain.LatLon{Lat: 47.6440, Lon: -122.1300},
		Dropoff:  &domain.LatLon{Lat: 47.6470, Lon: -122.1360},
		Package:  &domain.Package{ID: "pkg-remote", WeightKg: 1.5, Size: domain.SizeSmall},
		Deadline: time.Now().Add(time.Hour),
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "mission %s started: %s\n", m.ID(), m.Links().StatusQueryGetURI)
	st, err := m.WaitPhase(ctx, domain.PhaseHeadedToPickup) // the drone and its route are known
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s dispatched, %.0f m to fly\n", st.Status.DroneID, st.Status.Route.TotalM())

	// Fly the drone, posting its telemetry to the worker.
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
