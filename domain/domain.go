// Package domain holds dronehub's delivery vocabulary: mission requests,
// telemetry frames, drone state and mission status, with their validation
// and the pure functions that derive one from another.
//
// Everything here is deterministic and free of I/O so that orchestrations can
// call it during replay.
package domain

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// LatLon is a point on the ground.
type LatLon struct {
	Lat float64 `json:"lat"`
	Lon float64 `json:"lon"`
}

// Size is a package size class.
type Size string

// Package sizes accepted by the API.
const (
	SizeSmall  Size = "small"
	SizeMedium Size = "medium"
	SizeLarge  Size = "large"
)

// Package is the parcel a mission carries.
type Package struct {
	ID       string  `json:"id"`
	WeightKg float64 `json:"weightKg"`
	Size     Size    `json:"size"`
}

// MaxPackageWeightKg is the heaviest parcel a drone in the fleet can lift.
const MaxPackageWeightKg = 20

// MissionRequest is the input a client sends to start a delivery.
type MissionRequest struct {
	MissionID string    `json:"missionId,omitempty"`
	DroneID   string    `json:"droneId,omitempty"`
	Pickup    *LatLon   `json:"pickup"`
	Dropoff   *LatLon   `json:"dropoff"`
	Package   *Package  `json:"package"`
	Deadline  time.Time `json:"deadline"`
	Expedited bool      `json:"expedited"`
}

// FieldError is one problem with one field of an input.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// ValidationError lists every problem found in an input, so a client can fix
// them all at once.
type ValidationError struct {
	Problems []FieldError
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.Field + ": " + p.Message
	}
	return "invalid input: " + strings.Join(parts, "; ")
}

func (e *ValidationError) add(field, format string, args ...any) {
	e.Problems = append(e.Problems, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

func (e *ValidationError) orNil() error {
	if len(e.Problems) == 0 {
		return nil
	}
	return e
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$`)

// ValidID reports whether s can be used as a mission, drone or package id:
// 1–100 characters of letters, digits, '.', '_', ':' or '-', starting with a
// letter or digit. The limits keep ids safe in URLs and storage keys.
func ValidID(s string) bool { return idPattern.MatchString(s) }

const idRule = "must be 1-100 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"

// Validate reports every problem with the request. now is the time the
// deadline is checked against.
func (r *MissionRequest) Validate(now time.Time) error {
	v := &ValidationError{}
	if r.MissionID != "" && !ValidID(r.MissionID) {
		v.add("missionId", "%q %s", r.MissionID, idRule)
	}
	if r.DroneID != "" && !ValidID(r.DroneID) {
		v.add("droneId", "%q %s", r.DroneID, idRule)
	}
	validatePoint(v, "pickup", r.Pickup)
	validatePoint(v, "dropoff", r.Dropoff)
	if r.Pickup != nil && r.Dropoff != nil && *r.Pickup == *r.Dropoff {
		v.add("dropoff", "is the same place as pickup")
	}
	if r.Package == nil {
		v.add("package", "is required: {\"id\", \"weightKg\", \"size\"}")
	} else {
		if r.Package.ID == "" {
			v.add("package.id", "is required")
		} else if !ValidID(r.Package.ID) {
			v.add("package.id", "%q %s", r.Package.ID, idRule)
		}
		if r.Package.WeightKg <= 0 || r.Package.WeightKg > MaxPackageWeightKg {
			v.add("package.weightKg", "must be more than 0 and at most %d, got %g", MaxPackageWeightKg, r.Package.WeightKg)
		}
		switch r.Package.Size {
		case SizeSmall, SizeMedium, SizeLarge:
		case "":
			v.add("package.size", "is required: one of small, medium, large")
		default:
			v.add("package.size", "must be one of small, medium, large, got %q", r.Package.Size)
		}
	}
	if r.Deadline.IsZero() {
		v.add("deadline", "is required (RFC 3339, e.g. 2026-11-22T12:00:00Z)")
	} else if !r.Deadline.After(now) {
		v.add("deadline", "%s is not in the future", r.Deadline.Format(time.RFC3339))
	}
	return v.orNil()
}

func validatePoint(v *ValidationError, field string, p *LatLon) {
	if p == nil {
		v.add(field, "is required: {\"lat\", \"lon\"}")
		return
	}
	if p.Lat < -90 || p.Lat > 90 {
		v.add(field+".lat", "must be between -90 and 90, got %g", p.Lat)
	}
	if p.Lon < -180 || p.Lon > 180 {
		v.add(field+".lon", "must be between -180 and 180, got %g", p.Lon)
	}
}

// Equivalent reports whether two requests ask for the same mission. It is
// used to make starts idempotent: a repeated start with the same body is not a
// conflict.
func (r *MissionRequest) Equivalent(o *MissionRequest) bool {
	a, _ := json.Marshal(r)
	b, _ := json.Marshal(o)
	return string(a) == string(b)
}

// Phase is where a mission is in its life.
type Phase string

// Mission phases, in the order a successful mission passes through them.
const (
	PhaseCreated         Phase = "Created"
	PhaseDroneReserved   Phase = "DroneReserved"
	PhaseHeadedToPickup  Phase = "HeadedToPickup"
	PhasePickedUp        Phase = "PickedUp"
	PhaseHeadedToDropoff Phase = "HeadedToDropoff"
	PhaseDelivered       Phase = "Delivered"
	PhaseReturning       Phase = "Returning"
	PhaseCompleted       Phase = "Completed"
	PhaseFailed          Phase = "Failed"
	PhaseCancelled       Phase = "Cancelled"
)

var phaseOrder = map[Phase]int{
	PhaseCreated: 0, PhaseDroneReserved: 1, PhaseHeadedToPickup: 2, PhasePickedUp: 3,
	PhaseHeadedToDropoff: 4, PhaseDelivered: 5, PhaseReturning: 6, PhaseCompleted: 7,
}

// Before reports whether p comes before q on the successful path.
func (p Phase) Before(q Phase) bool { return phaseOrder[p] < phaseOrder[q] }

// Terminal reports whether no further phase follows p.
func (p Phase) Terminal() bool {
	return p == PhaseCompleted || p == PhaseFailed || p == PhaseCancelled
}
