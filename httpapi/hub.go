package httpapi

import (
	"context"
	"net/http"

	"github.com/dronehub/dronehub/scale"
	"github.com/dronehub/dronehub/taskhub"
)

func (h *handler) hubInfo(w http.ResponseWriter, r *http.Request) {
	info, err := h.svc.HubInfo(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (h *handler) hubScale(w http.ResponseWriter, r *http.Request) {
	st, err := h.svc.HubScale(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (h *handler) deadLetters(w http.ResponseWriter, r *http.Request) {
	list, err := h.svc.DeadLetters(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, DeadLetterList{DeadLetters: list})
}

// DeadLetterList is the body of GET /api/deadletters.
type DeadLetterList struct {
	DeadLetters []taskhub.DeadLetter `json:"deadLetters"`
}

func (h *handler) replayDeadLetter(w http.ResponseWriter, r *http.Request) {
	if err := h.svc.ReplayDeadLetter(r.Context(), r.PathValue("id")); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// HubScale is the task hub's scale signal (GET /api/hub/scale): the
// recommended worker count and why, from a sample of the queues at most
// Interval old (package scale); 501 without a scale source, 503 when no
// sample of storage has succeeded yet.
func (s *Service) HubScale(ctx context.Context) (scale.Status, error) {
	if s.opts.Scale == nil {
		return scale.Status{}, s.notSupported("scale signal")
	}
	st, err := s.opts.Scale.Status(ctx)
	if err != nil {
		return scale.Status{}, storageFailed("sample the task hub for its scale signal", err)
	}
	return st, nil
}
