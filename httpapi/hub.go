package httpapi

import (
	"net/http"

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
