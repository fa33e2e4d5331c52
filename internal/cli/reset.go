package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/dronehub/dronehub/client"
)

// droneReset puts drones back in service after the failure demos (a drone
// left faulted, at 10% battery or silent): POST /api/drones/{id}/reset for
// each drone named, or for every drone with --all. A drone a mission holds
// is refused by the worker; with --all it is skipped and listed, and does
// not fail the command.
func (a *App) droneReset(ctx context.Context, fs *flag.FlagSet, f *apiFlags, args []string) error {
	all := fs.Bool("all", false, "reset every drone that no mission holds (drones a mission holds are listed and skipped)")
	pos, err := a.parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 && !*all || len(pos) > 0 && *all {
		return usageErr(a, droneSynopsis["reset"])
	}
	c, err := f.dial(client.Options{})
	if err != nil {
		return err
	}
	type skipped struct {
		DroneID string `json:"droneId"`
		Reason  string `json:"reason"`
	}
	result := struct {
		Reset   []client.Drone `json:"reset"`
		Skipped []skipped      `json:"skipped,omitempty"`
	}{Reset: []client.Drone{}}
	skip := func(id, reason string) {
		result.Skipped = append(result.Skipped, skipped{DroneID: id, Reason: reason})
		if !f.asJSON {
			fmt.Fprintf(f.out, "drone %s skipped: %s\n", id, reason)
		}
	}
	ids := pos
	if *all {
		drones, err := c.Drones(ctx)
		if err != nil {
			return err
		}
		for _, d := range drones {
			if d.MissionID != "" {
				skip(d.DroneID, "held by mission "+d.MissionID)
				continue
			}
			ids = append(ids, d.DroneID)
		}
	}
	var errs []error
	for _, id := range ids {
		d, err := c.ResetDrone(ctx, id)
		var ae *client.APIError
		switch {
		case err == nil:
			result.Reset = append(result.Reset, d)
			if !f.asJSON {
				fmt.Fprintf(f.out, "drone %s reset: ready at home %.5f,%.5f, battery 100%%, health %s\n", d.DroneID, d.Home.Lat, d.Home.Lon, d.Health)
			}
		case *all && errors.Is(err, client.ErrConflict) && errors.As(err, &ae):
			skip(id, ae.Detail) // reserved since the listing
		case errors.Is(err, client.ErrConflict), errors.Is(err, client.ErrNotFound), errors.Is(err, client.ErrInvalid):
			errs = append(errs, fmt.Errorf("drone %s not reset: %w", id, err))
		default:
			// The worker or its storage failed: the drones after this one
			// would fail alike.
			return errors.Join(append(errs, fmt.Errorf("drone %s: %w", id, err))...)
		}
	}
	if f.asJSON {
		if err := f.printJSON(result); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}
