package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/simulator"
	"github.com/dronehub/dronehub/worker"
)

// exampleWorker starts a worker with one demo drone on a SQLite file in a
// temporary directory, with the orchestrations register adds; stop ends it.
func exampleWorker(register func(*task.TaskRegistry) error) (w *worker.Worker, stop func()) {
	dir, err := os.MkdirTemp("", "client-example-")
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	w, err = worker.New(ctx, worker.Config{
		Storage: filepath.Join(dir, "hub.db"), SeedDrones: 1, Register: register,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err == nil {
		err = w.Start(ctx)
	}
	if err != nil {
		log.Fatal(err)
	}
	return w, func() {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		w.Shutdown(ctx)
		os.RemoveAll(dir)
	}
}

// delivery is a mission a few hundred metres from the demo fleet's base.
func delivery(id string) domain.MissionRequest {
	return domain.MissionRequest{
		MissionID: id,
		Pickup:    &domain.LatLon{Lat: 47.6440, Lon: -122.1300},
		Dropoff:   &domain.LatLon{Lat: 47.6470, Lon: -122.1360},
		Package:   &domain.Package{ID: "pkg-" + id, WeightKg: 1.5, Size: domain.SizeSmall},
		Deadline:  time.Now().Add(time.Hour),
	}
}

// Fly a mission in process: start it, wait until its drone is dispatched,
// fly the drone with the simulator, and wait for the end.
func ExampleLocal() {
	w, stop := exampleWorker(nil)
	defer stop()
	ctx := context.Background()

	c := client.Local(w)
	m, err := c.StartMission(ctx, delivery("m-1"))
	if err != nil {
		log.Fatal(err)
	}
	st, err := m.WaitPhase(ctx, domain.PhaseHeadedToPickup)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.Status.DroneID, "dispatched")

	drone, err := c.Drone(ctx, st.Status.DroneID)
	if err != nil {
		log.Fatal(err)
	}
	flight := simulator.NewFlight(simulator.FlightOptions{
		DroneID: drone.DroneID, Route: *st.Status.Route, SpeedMps: 40, FirstSeq: drone.NextSeq(),
	})
	ingest := simulator.SinkFunc(func(ctx context.Context, frames []domain.Frame) error {
		_, err := c.Ingest(ctx, frames)
		return err
	})
	if err := simulator.Fly(ctx, ingest, 0, flight); err != nil {
		log.Fatal(err)
	}

	final, err := m.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(final.RuntimeStatus, final.Status.Phase, final.Status.ProgressPct)
	// Output:
	// drone-1 dispatched
	// Completed Completed 100
}

// Manage a mission over HTTP: the same calls on a worker's API.
func ExampleDial() {
	w, stop := exampleWorker(nil)
	defer stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := w.Server() // as `dronehub worker` serves it
	go srv.Serve(ln)
	defer srv.Close()
	ctx := context.Background()

	c, err := client.Dial("http://"+ln.Addr().String(), client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	m, err := c.StartMission(ctx, delivery("m-2"))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := m.WaitPhase(ctx, domain.PhaseHeadedToPickup); err != nil {
		log.Fatal(err)
	}
	if err := m.Cancel(ctx, "customer changed their mind"); err != nil {
		log.Fatal(err)
	}
	final, err := m.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(final.Status.Phase+":", final.Status.Failure)
	for _, comp := range final.Status.Compensations {
		fmt.Println(" ", comp.Step, comp.Status)
	}
	// Output:
	// Cancelled: customer changed their mind
	//   recall-drone compensated
	//   release-drone compensated
	//   notify-customer compensated
}

// Greeting is an orchestration of your own.
func Greeting(ctx *task.OrchestrationContext) (any, error) {
	var name string
	if err := ctx.GetInput(&name); err != nil {
		return nil, err
	}
	return "hello, " + name, nil
}

// Run your own orchestration with typed input and output.
func ExampleOrchestration() {
	w, stop := exampleWorker(func(r *task.TaskRegistry) error { return r.AddOrchestratorN("Greeting", Greeting) })
	defer stop()
	ctx := context.Background()
	c := client.Local(w)

	greeting := client.Orchestration[string, string]{Name: "Greeting"}
	out, err := greeting.Run(ctx, c, "drone-1", client.WithID("greet-1"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(out)
	// Output: hello, drone-1
}

// Errors match their sentinel, whichever the client; invalid input names
// each bad field.
func ExampleAPIError() {
	w, stop := exampleWorker(nil)
	defer stop()
	ctx := context.Background()
	c := client.Local(w)

	_, err := c.Mission("m-404").Status(ctx)
	fmt.Println(errors.Is(err, client.ErrNotFound), err)

	req := delivery("m-3")
	req.Package.WeightKg = 30
	_, err = c.StartMission(ctx, req)
	var ae *client.APIError
	if errors.Is(err, client.ErrInvalid) && errors.As(err, &ae) {
		for _, f := range ae.Fields {
			fmt.Println(f.Field+":", f.Message)
		}
	}
	// Output:
	// true HTTP 404: no mission with id "m-404"
	// package.weightKg: must be more than 0 and at most 20, got 30
}

// List page by page, or item by item with Items.
func ExampleItems() {
	w, stop := exampleWorker(func(r *task.TaskRegistry) error { return r.AddOrchestratorN("Greeting", Greeting) })
	defer stop()
	ctx := context.Background()
	c := client.Local(w)
	greeting := client.Orchestration[string, string]{Name: "Greeting"}
	for _, id := range []string{"g-1", "g-2", "g-3"} {
		if _, err := greeting.Run(ctx, c, id, client.WithID(id)); err != nil {
			log.Fatal(err)
		}
	}

	for page, err := range c.Instances(ctx, client.ListOptions{IDPrefix: "g-", PageSize: 2}) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("page of", len(page.Items))
	}
	for in, err := range client.Items(c.Instances(ctx, client.ListOptions{IDPrefix: "g-", RuntimeStatus: []client.RuntimeStatus{client.StatusCompleted}})) {
		if err != nil {
			log.Fatal(err)
		}
		var out string
		if err := in.DecodeOutput(&out); err != nil {
			log.Fatal(err)
		}
		fmt.Println(in.InstanceID, out)
	}
	// Output:
	// page of 2
	// page of 1
	// g-1 hello, g-1
	// g-2 hello, g-2
	// g-3 hello, g-3
}
