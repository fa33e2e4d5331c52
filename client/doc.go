// Package client is dronehub's typed Go client: one Client interface for
// delivery missions, for any orchestration registered on a worker, for
// telemetry and for the fleet, with two implementations that answer alike.
//
//   - Local(w) works in process, on a *worker.Worker. It calls what the HTTP
//     handlers call (worker.Worker.API), so it validates, composes mission
//     statuses and judges telemetry exactly as the HTTP API does.
//   - Dial(url, Options) talks to a running worker over the HTTP API, with an
//     API key, timeouts, retries on 503 and 429 that honour Retry-After, and
//     fail-over between workers.
//
// Starting a mission returns a MissionHandle; it reads the mission's status
// (a domain.MissionStatus beside its runtime status), waits for a phase or
// for the end, cancels, terminates, suspends, resumes and purges it:
//
//	c := client.Local(w) // or client.Dial("http://127.0.0.1:8080", client.Options{APIKey: key})
//	m, err := c.StartMission(ctx, req)
//	...
//	st, err := m.WaitPhase(ctx, domain.PhaseHeadedToPickup) // st.Status.DroneID, st.Status.Route
//	...
//	final, err := m.Wait(ctx) // final.Status.Phase: Completed, Failed or Cancelled
//
// Your own orchestrations get typed handles through Orchestration, declared
// once with their input and output types:
//
//	var booking = client.Orchestration[BookingRequest, BookingResult]{Name: "RechargeBooking"}
//	res, err := booking.Run(ctx, c, BookingRequest{...}, client.WithID("booking-7"))
//
// Errors are matchable with errors.Is and errors.As, whichever the
// implementation: ErrNotFound, ErrConflict, ErrGone, ErrInvalid (an
// *APIError whose Fields name each bad field), ErrForbidden,
// ErrUnauthorized, ErrUnavailable; an instance that ended other than
// Completed gives an *InstanceError (ErrFailed, ErrTerminated). See
// docs/go-api.md.
package client
