package activities_test

import (
	"context"
	"slices"
	"testing"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/fleet"
)

// TestReserveDroneRedeliveredAfterTheMissionEnded: a reservation whose
// worker died before answering runs again later, possibly after the mission
// finished and freed its drone. It must answer with the drone it reserved
// first and reserve nothing new, or that drone would never be released.
func TestReserveDroneRedeliveredAfterTheMissionEnded(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	ctx := context.Background()
	for _, id := range []string{"d1", "d2"} {
		if _, err := store.AddDrone(ctx, id, home()); err != nil {
			t.Fatal(err)
		}
	}
	a := activities.New(store, activities.Options{Logger: quiet()})
	first, err := a.ReserveDrone(ctx, activities.ReserveInput{MissionID: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.CompleteMission(ctx, activities.MissionRef{MissionID: "m1", DroneID: first.DroneID}); err != nil {
		t.Fatal(err)
	}
	again, err := a.ReserveDrone(ctx, activities.ReserveInput{MissionID: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	if again.DroneID != first.DroneID {
		t.Fatalf("redelivered reservation got %s, first got %s", again.DroneID, first.DroneID)
	}
	drones, err := store.Drones(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range drones {
		if d.MissionID != "" {
			t.Errorf("drone %s left reserved by %s", d.ID, d.MissionID)
		}
	}
}

// TestReserveDroneForAReusedMissionID: a mission id purged and started
// again is a new run. Its reservation must not find the old run's effects,
// and a drone the old run still holds is kept only if it can fly (issue
// #7.6).
func TestReserveDroneForAReusedMissionID(t *testing.T) {
	t.Parallel()
	store := openStore(t)
	ctx := context.Background()
	for _, id := range []string{"d1", "d2", "d3"} {
		if _, err := store.AddDrone(ctx, id, home()); err != nil {
			t.Fatal(err)
		}
	}
	a := activities.New(store, activities.Options{Logger: quiet()})
	faulty := func(id string) {
		t.Helper()
		if _, err := store.UpdateDrone(ctx, id, func(d *fleet.Drone) error {
			d.Tracked.State = &domain.DroneState{DeviceID: id, Battery: 0.9, FlightMode: domain.ModeReady,
				Health: domain.HealthState{GyrometerOK: false, AccelerometerOK: true, MagnetometerOK: true}}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	// Run 1 reserves d1, is compensated (d1 freed), and d1 turns out faulty.
	first, err := a.ReserveDrone(ctx, activities.ReserveInput{MissionID: "m1", Run: "r1"})
	if err != nil || first.DroneID != "d1" {
		t.Fatalf("run 1 reserved %+v, %v; want d1", first, err)
	}
	if _, err := a.ReleaseDrone(ctx, activities.MissionRef{MissionID: "m1", DroneID: "d1", Run: "r1"}); err != nil {
		t.Fatal(err)
	}
	faulty("d1")
	second, err := a.ReserveDrone(ctx, activities.ReserveInput{MissionID: "m1", Run: "r2"})
	if err != nil || second.DroneID != "d2" {
		t.Fatalf("run 2 reserved %+v, %v; want d2, not run 1's faulty d1", second, err)
	}
	for key, want := range map[string][]string{
		activities.EffectKey("m1", "r1"): {activities.EffectReserved, activities.EffectReleased},
		activities.EffectKey("m1", "r2"): {activities.EffectReserved},
	} {
		effects, err := store.Effects(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		var kinds []string
		for _, e := range effects {
			kinds = append(kinds, e.Kind)
		}
		if !slices.Equal(kinds, want) {
			t.Errorf("effects under %s: %v, want %v", key, kinds, want)
		}
	}

	// Mission m2's run r2 reserves d3 and is terminated and purged still
	// holding it; d3 then faults. The next run of m2 frees d3 instead of
	// flying it, and finds no other fit drone free.
	if res, err := a.ReserveDrone(ctx, activities.ReserveInput{MissionID: "m2", Run: "r2"}); err != nil || res.DroneID != "d3" {
		t.Fatalf("m2 run r2 reserved %+v, %v; want d3", res, err)
	}
	faulty("d3")
	third, err := a.ReserveDrone(ctx, activities.ReserveInput{MissionID: "m2", Run: "r3"})
	if err == nil {
		t.Fatalf("run 3 reserved %s; no fit drone is free", third.DroneID)
	}
	d3, err := store.Drone(ctx, "d3")
	if err != nil || d3.MissionID != "" {
		t.Fatalf("faulty d3 still held by %q (%v)", d3.MissionID, err)
	}
}
