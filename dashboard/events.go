package dashboard

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/dronehub/dronehub/httpapi"
)

// serve is GET /api/events: the live feed as server-sent events. The query
// parameter topics (instances, fleet, hub; comma-separated, default all)
// says what the page follows. The first "update" event is a snapshot, the
// later ones hold what changed (see Update). When the feed ends it (the
// worker shuts down, or the page fell behind), a "bye" event says why; the
// page then reconnects and starts again from a snapshot.
//
// The route is under /api/, so it needs the API key in the Authorization
// header like every /api route: the page reads it with fetch(), which can
// send the header (EventSource cannot), so the key never appears in a URL
// or a log.
func (f *feed) serve(w http.ResponseWriter, r *http.Request) {
	t, err := parseTopics(r.URL.Query().Get("topics"))
	if err != nil {
		httpapi.WriteProblem(w, http.StatusBadRequest, err.Error())
		return
	}
	s, err := f.subscribe(t)
	if err != nil {
		w.Header().Set("Retry-After", "5")
		httpapi.WriteProblem(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer f.unsubscribe(s)

	rc := http.NewResponseController(w)
	// The server's read and write timeouts are for ordinary requests; a feed
	// stays open, and each write gets its own deadline instead.
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write([]byte("retry: 2000\n: dronehub live feed\n\n")) {
		return
	}
	keep := time.NewTicker(keepAlive)
	defer keep.Stop()
	for {
		select {
		case msg := <-s.ch:
			if !write(msg) {
				return
			}
		case <-keep.C:
			if !write([]byte(": keep-alive\n\n")) {
				return
			}
		case <-s.done:
			bye, _ := json.Marshal(map[string]string{"reason": s.why})
			write(append(append([]byte("event: bye\ndata: "), bye...), "\n\n"...))
			return
		case <-r.Context().Done():
			return
		}
	}
}
