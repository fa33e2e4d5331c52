package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"path"
	"strings"

	"github.com/dronehub/dronehub/taskhub"
)

func (h *handler) notSupported(w http.ResponseWriter, what string) {
	problem(w, http.StatusNotImplemented, fmt.Sprintf("the %s task hub has no %s", h.kind(), what))
}

// kind names the backend without its location: a backend's String may
// carry a file path ("sqlite:/srv/dronehub/hub.db") or an account.
func (h *handler) kind() string {
	if i, ok := h.opts.Backend.(interface{ String() string }); ok {
		if k, _, ok := strings.Cut(i.String(), ":"); ok && k != "" && !strings.ContainsAny(k, " /\\") {
			return k
		}
	}
	return "current"
}

func (h *handler) hubInfo(w http.ResponseWriter, r *http.Request) {
	in, ok := h.opts.Backend.(taskhub.Inspector)
	if !ok {
		h.notSupported(w, "hub inspection")
		return
	}
	info, err := in.HubInfo(r.Context())
	if err != nil {
		h.storageError(w, r, "inspect hub", err)
		return
	}
	// A SQLite hub is named by its file: show the file name, not where it
	// lives on the worker's disk.
	if strings.ContainsAny(info.Name, "/\\") {
		info.Name = path.Base(strings.ReplaceAll(info.Name, "\\", "/"))
	}
	writeJSON(w, http.StatusOK, info)
}

func (h *handler) deadLetters(w http.ResponseWriter, r *http.Request) {
	dl, ok := h.opts.Backend.(taskhub.DeadLetterer)
	if !ok {
		h.notSupported(w, "dead-letter queue")
		return
	}
	list, err := dl.DeadLetters(r.Context())
	if err != nil {
		h.storageError(w, r, "list dead letters", err)
		return
	}
	if list == nil {
		list = []taskhub.DeadLetter{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"deadLetters": list})
}

func (h *handler) replayDeadLetter(w http.ResponseWriter, r *http.Request) {
	dl, ok := h.opts.Backend.(taskhub.DeadLetterer)
	if !ok {
		h.notSupported(w, "dead-letter queue")
		return
	}
	id := r.PathValue("id")
	err := dl.ReplayDeadLetter(r.Context(), id)
	switch {
	case errors.Is(err, taskhub.ErrDeadLetterNotFound):
		problem(w, http.StatusNotFound, fmt.Sprintf("no dead letter with id %q", id))
	case errors.Is(err, taskhub.ErrDeadLetterStale):
		// Not a storage failure: the message can no longer reach its
		// execution, and the backend has dropped it.
		problem(w, http.StatusGone, fmt.Sprintf("dead letter %q was dropped, not replayed: %v", id, err))
	case err != nil:
		h.storageError(w, r, "replay dead letter", err)
	default:
		w.WriteHeader(http.StatusAccepted)
	}
}
