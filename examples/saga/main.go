// Command saga runs an orchestration of its own, RechargeBooking, on an
// embedded dronehub worker, and uses dronehub's saga helper to undo its
// completed steps when a later one fails.
//
// A recharge booking reserves a charging pad, books a technician and charges
// the payment card. The second booking's card is declined, so the technician
// booking and the pad reservation are undone, newest first.
//
//	go run ./examples/saga
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
	"strings"
	"sync"
	"time"

	"github.com/microsoft/durabletask-go/task"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/worker"
)

// Orchestration and activity names, as registered.
const (
	RechargeBookingName = "RechargeBooking"
	ReservePad          = "ReservePad"
	ReleasePad          = "ReleasePad"
	BookTechnician      = "BookTechnician"
	CancelTechnician    = "CancelTechnician"
	ChargeCard          = "ChargeCard"
)

// Saga step names: they name the undos in the compensation record.
const (
	StepReservePad     = "reserve-pad"
	StepBookTechnician = "book-technician"
)

// BookingRequest is RechargeBooking's input.
type BookingRequest struct {
	BookingID   string `json:"bookingId"`
	DroneID     string `json:"droneId"`
	AmountCents int64  `json:"amountCents"`
	// DeclineCard makes the payment step fail, to show compensation.
	DeclineCard bool `json:"declineCard,omitempty"`
}

// BookingRef identifies a booking's claim on a resource: the input of the
// undo activities.
type BookingRef struct {
	BookingID string `json:"bookingId"`
	Resource  string `json:"resource"` // the pad or technician
}

// BookingResult is RechargeBooking's output.
type BookingResult struct {
	BookingID     string                      `json:"bookingId"`
	Status        string                      `json:"status"` // "Booked" or "Failed"
	Pad           string                      `json:"pad,omitempty"`
	Technician    string                      `json:"technician,omitempty"`
	Failure       string                      `json:"failure,omitempty"`
	Compensations []domain.CompensationResult `json:"compensations,omitempty"`
}

// stepRetry retries a forward step on transient errors. It returns a new
// policy each time: durabletask-go fills in a policy's defaults in place, so
// a policy shared between orchestrations would be written concurrently.
func stepRetry() *task.RetryPolicy {
	return &task.RetryPolicy{MaxAttempts: 3, InitialRetryInterval: 100 * time.Millisecond, BackoffCoefficient: 2}
}

// RechargeBooking books a recharge: pad, technician, payment. Each step's
// undo is registered right after the step succeeds; on failure the
// registered undos run, newest first, and the booking ends as Failed with
// the compensation record. The orchestration itself completes either way: a
// declined card is a business outcome, not a crash.
func RechargeBooking(ctx *task.OrchestrationContext) (any, error) {
	var req BookingRequest
	if err := ctx.GetInput(&req); err != nil {
		return nil, fmt.Errorf("decode booking request: %w", err)
	}
	saga := orchestrations.NewSaga(ctx, orchestrations.SagaOptions{
		// Undos are retried too; InitialRetryInterval must be positive.
		Retry: &task.RetryPolicy{MaxAttempts: 5, InitialRetryInterval: 100 * time.Millisecond, BackoffCoefficient: 2},
	})
	res := BookingResult{BookingID: req.BookingID, Status: "Booked"}
	fail := func(step string, err error) (any, error) {
		res.Status, res.Failure = "Failed", step+": "+err.Error()
		// No defer: compensate explicitly, where the failure is handled.
		res.Compensations = saga.Compensate()
		return res, nil
	}

	if err := ctx.CallActivity(ReservePad, task.WithActivityInput(req), task.WithActivityRetryPolicy(stepRetry())).Await(&res.Pad); err != nil {
		return fail("reserve pad", err)
	}
	if err := saga.Add(StepReservePad, ReleasePad, BookingRef{BookingID: req.BookingID, Resource: res.Pad}); err != nil {
		return fail("reserve pad", err)
	}

	if err := ctx.CallActivity(BookTechnician, task.WithActivityInput(req), task.WithActivityRetryPolicy(stepRetry())).Await(&res.Technician); err != nil {
		return fail("book technician", err)
	}
	if err := saga.Add(StepBookTechnician, CancelTechnician, BookingRef{BookingID: req.BookingID, Resource: res.Technician}); err != nil {
		return fail("book technician", err)
	}

	// A declined card is final: no retry policy.
	if err := ctx.CallActivity(ChargeCard, task.WithActivityInput(req)).Await(nil); err != nil {
		return fail("charge card", err)
	}
	// The last step needs no undo: nothing after it can fail.
	return res, nil
}

// Depot stands in for the charging depot's systems: pads, technicians and
// payments, in memory. It records every activity call in order. All of its
// state lives in the struct, guarded by mu, so two depots never share it.
type Depot struct {
	mu          sync.Mutex
	pads        []string          // pad ids, in the order they are offered
	padHolder   map[string]string // pad → booking holding it
	techs       []string
	techBooking map[string]string // technician → booking
	charged     map[string]int64  // booking → amount
	log         []string
}

// NewDepot returns a depot with two pads and two technicians.
func NewDepot() *Depot {
	return &Depot{
		pads:        []string{"pad-1", "pad-2"},
		padHolder:   map[string]string{},
		techs:       []string{"tech-ana", "tech-bo"},
		techBooking: map[string]string{},
		charged:     map[string]int64{},
	}
}

// Log returns every activity call so far, oldest first.
func (d *Depot) Log() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.log...)
}

func (d *Depot) record(format string, args ...any) {
	d.log = append(d.log, fmt.Sprintf(format, args...))
}

// Register adds RechargeBooking and the depot's activities to r; pass it as
// worker.Config.Register.
func (d *Depot) Register(r *task.TaskRegistry) error {
	return errors.Join(
		r.AddOrchestratorN(RechargeBookingName, RechargeBooking),
		r.AddActivityN(ReservePad, d.reservePad),
		r.AddActivityN(ReleasePad, d.releasePad),
		r.AddActivityN(BookTechnician, d.bookTechnician),
		r.AddActivityN(CancelTechnician, d.cancelTechnician),
		r.AddActivityN(ChargeCard, d.chargeCard),
	)
}

// claim gives the booking the first free resource of ids, or the one it
// already holds: a redelivered activity must not claim a second one.
func claim(ids []string, holder map[string]string, booking string) (string, bool) {
	for _, id := range ids {
		if holder[id] == booking {
			return id, true
		}
	}
	for _, id := range ids {
		if holder[id] == "" {
			holder[id] = booking
			return id, true
		}
	}
	return "", false
}

// release frees a resource if the booking still holds it. Releasing twice is
// harmless, which makes the undo activities idempotent.
func release(holder map[string]string, ref BookingRef) {
	if holder[ref.Resource] == ref.BookingID {
		delete(holder, ref.Resource)
	}
}

func (d *Depot) reservePad(ctx task.ActivityContext) (any, error) {
	var req BookingRequest
	if err := ctx.GetInput(&req); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	pad, ok := claim(d.pads, d.padHolder, req.BookingID)
	if !ok {
		return nil, errors.New("every pad is reserved")
	}
	d.record("%s: ReservePad %s for %s", req.BookingID, pad, req.DroneID)
	return pad, nil
}

func (d *Depot) releasePad(ctx task.ActivityContext) (any, error) {
	var ref BookingRef
	if err := ctx.GetInput(&ref); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	release(d.padHolder, ref)
	d.record("%s: ReleasePad %s", ref.BookingID, ref.Resource)
	return nil, nil
}

func (d *Depot) bookTechnician(ctx task.ActivityContext) (any, error) {
	var req BookingRequest
	if err := ctx.GetInput(&req); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	tech, ok := claim(d.techs, d.techBooking, req.BookingID)
	if !ok {
		return nil, errors.New("no technician is free")
	}
	d.record("%s: BookTechnician %s", req.BookingID, tech)
	return tech, nil
}

func (d *Depot) cancelTechnician(ctx task.ActivityContext) (any, error) {
	var ref BookingRef
	if err := ctx.GetInput(&ref); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	release(d.techBooking, ref)
	d.record("%s: CancelTechnician %s", ref.BookingID, ref.Resource)
	return nil, nil
}

func (d *Depot) chargeCard(ctx task.ActivityContext) (any, error) {
	var req BookingRequest
	if err := ctx.GetInput(&req); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if req.DeclineCard {
		d.record("%s: ChargeCard %d cents declined", req.BookingID, req.AmountCents)
		return nil, errors.New("card declined")
	}
	if _, done := d.charged[req.BookingID]; !done {
		d.charged[req.BookingID] = req.AmountCents
	}
	d.record("%s: ChargeCard %d cents", req.BookingID, req.AmountCents)
	return nil, nil
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "saga:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) error {
	return runDepot(ctx, out, NewDepot())
}

// runDepot books two recharges on a worker that hosts depot's activities:
// one that succeeds and one whose card is declined.
func runDepot(ctx context.Context, out io.Writer, depot *Depot) (err error) {
	dir, err := os.MkdirTemp("", "dronehub-saga-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	w, err := worker.New(ctx, worker.Config{
		Storage:    filepath.Join(dir, "saga.db"),
		SeedDrones: -1, // no demo fleet: this example flies no missions
		Register:   depot.Register,
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

	for _, req := range []BookingRequest{
		{BookingID: "booking-1", DroneID: "drone-1", AmountCents: 4500},
		{BookingID: "booking-2", DroneID: "drone-2", AmountCents: 4500, DeclineCard: true},
	} {
		if err := book(ctx, out, w, depot, req); err != nil {
			return err
		}
	}
	return nil
}

// bookings is RechargeBooking for the typed client: its input and output.
var bookings = client.Orchestration[BookingRequest, BookingResult]{Name: RechargeBookingName}

func book(ctx context.Context, out io.Writer, w *worker.Worker, depot *Depot, req BookingRequest) error {
	// A declined card is a business outcome: the orchestration completes,
	// and Run fails only if it crashed or was terminated.
	res, err := bookings.Run(ctx, client.Local(w), req, client.WithID(req.BookingID))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: %s\n", res.BookingID, res.Status)
	fmt.Fprintln(out, "  activities:")
	for _, line := range depot.Log() {
		if rest, ok := strings.CutPrefix(line, req.BookingID+": "); ok {
			fmt.Fprintf(out, "    %s\n", rest)
		}
	}
	if res.Failure != "" {
		fmt.Fprintf(out, "  failure: %s\n", res.Failure)
	}
	if len(res.Compensations) > 0 {
		record, _ := json.MarshalIndent(res.Compensations, "  ", "  ")
		fmt.Fprintf(out, "  compensations: %s\n", record)
	}
	return nil
}
