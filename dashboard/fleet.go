package dashboard

import (
	"math"
	"strings"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/httpapi"
)

// Drone conditions, as the fleet map colours them.
const (
	ConditionIdle       = "idle"       // no mission
	ConditionReserved   = "reserved"   // held by a mission, on the ground
	ConditionFlying     = "flying"     // held by a mission, taking off, in flight or landing
	ConditionFault      = "fault"      // a sensor failed
	ConditionLowBattery = "lowBattery" // below the battery floor
	ConditionSilent     = "silent"     // never reported, or quiet too long on a mission
)

// Drone is a drone as the feed sends it: the API's drone status and the
// condition the dashboard shows it in.
type Drone struct {
	httpapi.DroneStatus
	Condition string `json:"condition"`
}

// condition classifies a drone, the first that applies: a fault, silence
// (no telemetry yet, or none for silentAfter by its own clock while on a
// mission), a battery below floor, flying, reserved, idle.
func condition(d httpapi.DroneStatus, now time.Time, floor float64, silentAfter time.Duration) string {
	s := d.State
	switch {
	case s != nil && strings.HasPrefix(d.Health, "fault"):
		return ConditionFault
	case s == nil, d.MissionID != "" && now.Sub(s.Timestamp) > silentAfter:
		return ConditionSilent
	case s.Battery < floor:
		return ConditionLowBattery
	case d.MissionID != "" && (s.FlightMode == domain.ModeTakeoff || s.FlightMode == domain.ModeInflight || s.FlightMode == domain.ModeLanding):
		return ConditionFlying
	case d.MissionID != "":
		return ConditionReserved
	}
	return ConditionIdle
}

func droneView(d httpapi.DroneStatus, now time.Time, floor float64, silentAfter time.Duration) Drone {
	return Drone{DroneStatus: d, Condition: condition(d, now, floor, silentAfter)}
}

// FleetSummary counts the drones by condition.
type FleetSummary struct {
	Drones int `json:"drones"`
	// ByCondition has every condition, zeros included.
	ByCondition map[string]int `json:"byCondition"`
	// AverageBattery is the mean charge (0-1) of the drones that reported;
	// absent when none has.
	AverageBattery *float64 `json:"averageBattery,omitempty"`
}

func summarize(drones []Drone) FleetSummary {
	s := FleetSummary{Drones: len(drones), ByCondition: map[string]int{
		ConditionIdle: 0, ConditionReserved: 0, ConditionFlying: 0, ConditionFault: 0, ConditionLowBattery: 0, ConditionSilent: 0,
	}}
	sum, n := 0.0, 0
	for _, d := range drones {
		s.ByCondition[d.Condition]++
		if d.State != nil {
			sum += d.State.Battery
			n++
		}
	}
	if n > 0 {
		avg := math.Round(sum/float64(n)*1000) / 1000
		s.AverageBattery = &avg
	}
	return s
}
