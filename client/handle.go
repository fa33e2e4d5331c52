package client

import (
	"context"
	"fmt"
	"time"

	"github.com/dronehub/dronehub/domain"
)

// Handle is an orchestration instance of any orchestrator. Its methods call
// the Client it came from. Waiting polls the instance's status, the gap
// between two reads doubling while nothing changes, up to 1 s (250 ms in
// process), until its context ends.
type Handle struct {
	c     Client
	ref   Ref
	links Links
	poll  pollPolicy
}

// ID is the instance id.
func (h *Handle) ID() string { return h.ref.ID }

// Links are the instance's management URLs, when it was started over HTTP.
func (h *Handle) Links() Links { return h.links }

// Status reads the instance.
func (h *Handle) Status(ctx context.Context, opts ...DescribeOption) (Instance, error) {
	return h.c.Describe(ctx, h.ref, opts...)
}

// Wait waits until the instance has ended and returns it. The error is nil
// when it Completed, an *InstanceError (ErrFailed, ErrTerminated) when it
// ended otherwise, and the context's error, wrapped, when ctx ends first.
func (h *Handle) Wait(ctx context.Context) (Instance, error) {
	in, err := h.waitFor(ctx, "to end", Instance.Ended)
	if err != nil {
		return in, err
	}
	return in, endedError(in)
}

// Get waits until the instance has ended and decodes its output into out
// (nil to discard it). It fails as Wait does when the instance did not
// complete.
func (h *Handle) Get(ctx context.Context, out any) error {
	in, err := h.Wait(ctx)
	if err != nil || out == nil {
		return err
	}
	return in.DecodeOutput(out)
}

// RaiseEvent raises one of the events the instance's orchestrator declares
// public, with payload encoded as JSON (nil for none).
func (h *Handle) RaiseEvent(ctx context.Context, event string, payload any) error {
	return h.c.RaiseEvent(ctx, h.ref, event, payload)
}

// Terminate stops the instance where it stands, without compensation;
// reason becomes its output.
func (h *Handle) Terminate(ctx context.Context, reason string) error {
	return h.c.Terminate(ctx, h.ref, reason)
}

// Suspend pauses the instance: events that arrive are kept for Resume.
func (h *Handle) Suspend(ctx context.Context, reason string) error {
	return h.c.Suspend(ctx, h.ref, reason)
}

// Resume continues a suspended instance.
func (h *Handle) Resume(ctx context.Context, reason string) error {
	return h.c.Resume(ctx, h.ref, reason)
}

// Purge deletes the ended instance's state.
func (h *Handle) Purge(ctx context.Context) error { return h.c.Purge(ctx, h.ref) }

// waitFor reads the instance until done holds, backing off while it does
// not change.
func (h *Handle) waitFor(ctx context.Context, what string, done func(Instance) bool) (Instance, error) {
	noun := "instance"
	if h.ref.Mission {
		noun = "mission"
	}
	gap := h.poll.min
	var last Instance
	for {
		in, err := h.c.Describe(ctx, h.ref)
		if err != nil {
			if ctx.Err() != nil {
				return last, fmt.Errorf("wait for %s %q %s: %w", noun, h.ref.ID, what, context.Cause(ctx))
			}
			return last, err
		}
		if done(in) {
			return in, nil
		}
		if !in.LastUpdatedTime.Equal(last.LastUpdatedTime) {
			gap = h.poll.min // it moves: look again soon
		}
		last = in
		t := time.NewTimer(gap)
		select {
		case <-ctx.Done():
			t.Stop()
			return in, fmt.Errorf("wait for %s %q %s (it is %s): %w", noun, h.ref.ID, what, in.RuntimeStatus, context.Cause(ctx))
		case <-t.C:
		}
		gap = min(2*gap, h.poll.max)
	}
}

// MissionHandle is a delivery mission. Besides the Handle's operations,
// which it addresses to missions only (another orchestrator's instance is
// ErrNotFound), it reads the mission's status decoded, waits for a phase and
// cancels.
type MissionHandle struct {
	Handle
}

// Status reads the mission.
func (m *MissionHandle) Status(ctx context.Context, opts ...DescribeOption) (Mission, error) {
	in, err := m.Handle.Status(ctx, opts...)
	if err != nil {
		return Mission{}, err
	}
	return missionOf(in), nil
}

// Wait waits until the mission has ended and returns it. A mission that
// ends by itself or by a cancel completes, even when its delivery failed:
// read Status.Phase (Completed, Failed or Cancelled), Status.Failure and
// Status.Compensations. The error is an *InstanceError only when the
// orchestration failed (ErrFailed) or was terminated (ErrTerminated).
func (m *MissionHandle) Wait(ctx context.Context) (Mission, error) {
	in, err := m.Handle.Wait(ctx)
	return missionOf(in), err
}

// WaitPhase waits until the mission has reached phase, or passed it on the
// way to Completed, and returns it: once it reached PhaseHeadedToPickup, say,
// its Status carries the drone and the route. A mission that fails, is
// cancelled or ends before it reaches phase is returned with an error
// wrapping ErrGone.
func (m *MissionHandle) WaitPhase(ctx context.Context, phase domain.Phase) (Mission, error) {
	if !onPath(phase) && phase != domain.PhaseFailed && phase != domain.PhaseCancelled {
		return Mission{}, invalid(fmt.Sprintf("phase %q is not a mission phase", phase))
	}
	reached := func(p domain.Phase) bool {
		return p == phase || onPath(phase) && onPath(p) && phase.Before(p)
	}
	in, err := m.waitFor(ctx, "to reach "+string(phase), func(in Instance) bool {
		p := missionOf(in).Status.Phase
		return reached(p) || p.Terminal() || in.Ended()
	})
	ms := missionOf(in)
	switch {
	case err != nil:
		return ms, err
	case reached(ms.Status.Phase):
		return ms, nil
	}
	phaseNow := ms.Status.Phase
	if phaseNow == "" {
		phaseNow = "(none)"
	}
	return ms, fmt.Errorf("mission %q ended in phase %s (runtime status %s) without reaching %s: %w",
		m.ID(), phaseNow, ms.RuntimeStatus, phase, ErrGone)
}

// onPath reports whether p is on a successful mission's path.
func onPath(p domain.Phase) bool {
	return p == domain.PhaseCompleted || domain.Successor(p) != p
}

// Cancel asks the mission to stop and compensate its completed steps; it
// then ends with phase Cancelled.
func (m *MissionHandle) Cancel(ctx context.Context, reason string) error {
	return m.c.CancelMission(ctx, m.ID(), reason)
}

// Orchestration is an orchestrator a worker registered, with its input and
// output types, for typed starts and results:
//
//	var booking = client.Orchestration[BookingRequest, BookingResult]{Name: "RechargeBooking"}
//	res, err := booking.Run(ctx, c, req, client.WithID(req.BookingID))
type Orchestration[In, Out any] struct {
	// Name is the orchestrator's registered name.
	Name string
}

// Start starts an instance with input in.
func (o Orchestration[In, Out]) Start(ctx context.Context, c Client, in In, opts ...StartOption) (*TypedHandle[Out], error) {
	h, err := c.StartOrchestration(ctx, o.Name, in, opts...)
	if err != nil {
		return nil, err
	}
	return &TypedHandle[Out]{Handle: *h}, nil
}

// Run starts an instance with input in, waits until it has ended and
// returns its output.
func (o Orchestration[In, Out]) Run(ctx context.Context, c Client, in In, opts ...StartOption) (Out, error) {
	h, err := o.Start(ctx, c, in, opts...)
	if err != nil {
		var zero Out
		return zero, err
	}
	return h.Result(ctx)
}

// Attach returns a typed handle on the existing instance id.
func (o Orchestration[In, Out]) Attach(c Client, id string) *TypedHandle[Out] {
	return &TypedHandle[Out]{Handle: *c.Instance(id)}
}

// TypedHandle is an instance whose output decodes as Out.
type TypedHandle[Out any] struct {
	Handle
}

// Result waits until the instance has ended and returns its output. It
// fails as Handle.Wait does when the instance did not complete.
func (h *TypedHandle[Out]) Result(ctx context.Context) (Out, error) {
	var out Out
	err := h.Get(ctx, &out)
	return out, err
}
