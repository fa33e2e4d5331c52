package activities_test

import (
	"context"
	"testing"

	"github.com/dronehub/dronehub/activities"
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
