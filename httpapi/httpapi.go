// Package httpapi is dronehub's HTTP API as an http.Handler: the mission
// routes, the same management routes for any registered orchestrator,
// telemetry ingestion, the fleet, and health checks. Its shape follows the
// Durable Functions HTTP management API. Mount it in any server; the
// worker package does.
package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"

	dtbackend "github.com/microsoft/durabletask-go/backend"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/taskhub"
)

// Body size limits. A request over its limit gets 413.
const (
	MaxMissionBody   = 64 << 10
	MaxEventBody     = 256 << 10
	MaxTelemetryBody = 4 << 20
)

// Options configures the handler. Client, Backend and Fleet are required.
type Options struct {
	Client  dtbackend.TaskHubClient
	Backend taskhub.Backend
	Fleet   fleet.Store
	// Ingestor applies POST /api/telemetry; nil disables the route.
	Ingestor *activities.Ingestor
	// Mission settings travel in each mission's input.
	Mission orchestrations.MissionSettings
	// APIKeys, when non-empty, are required as "Authorization: Bearer KEY"
	// on every /api route. Health routes stay open.
	APIKeys []string
	// Ready reports readiness for /readyz; nil means always ready.
	Ready func(context.Context) error
	// Logger receives request errors; default slog.Default().
	Logger *slog.Logger
	// Now is the clock used to validate deadlines; default time.Now.
	Now func() time.Time
}

type handler struct {
	opts    Options
	mux     *http.ServeMux
	log     *slog.Logger
	keys    [][sha256.Size]byte
	metrics *metrics
}

// NewHandler returns the API handler.
func NewHandler(opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Mission = opts.Mission.WithDefaults()
	h := &handler{opts: opts, mux: http.NewServeMux(), log: opts.Logger, metrics: newMetrics()}
	for _, k := range opts.APIKeys {
		h.keys = append(h.keys, sha256.Sum256([]byte(k)))
	}
	missions := scope{name: orchestrations.DeliveryMissionName, base: "/api/missions"}
	generic := scope{base: "/api/instances"}

	h.route("POST /api/missions", h.startMission)
	h.route("POST /api/orchestrations/{name}", h.startGeneric)
	for _, sc := range []scope{missions, generic} {
		h.route("GET "+sc.base, h.list(sc))
		h.route("GET "+sc.base+"/{id}", h.status(sc))
		h.route("DELETE "+sc.base+"/{id}", h.purge(sc))
		h.route("POST "+sc.base+"/{id}/events/{event}", h.raise(sc))
		h.route("POST "+sc.base+"/{id}/terminate", h.terminate(sc))
		h.route("POST "+sc.base+"/{id}/suspend", h.suspend(sc))
		h.route("POST "+sc.base+"/{id}/resume", h.resume(sc))
	}
	h.route("POST /api/missions/{id}/cancel", h.cancelMission(missions))
	h.route("POST /api/telemetry", h.telemetry)
	h.route("GET /api/drones", h.listDrones)
	h.route("POST /api/drones", h.addDrone)
	h.route("GET /api/drones/{id}/status", h.droneStatus)
	h.route("GET /api/fleet", h.fleetSummary)
	h.route("GET /api/hub", h.hubInfo)
	h.route("GET /api/deadletters", h.deadLetters)
	h.route("POST /api/deadletters/{id}/replay", h.replayDeadLetter)
	h.route("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	h.route("GET /readyz", h.readyz)
	h.route("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		var counts map[string]int64
		if rc, ok := opts.Backend.(taskhub.RequestCounter); ok {
			counts = rc.RequestCounts()
		}
		h.metrics.serve(w, counts)
	})
	return h
}

func (h *handler) route(pattern string, fn http.HandlerFunc) {
	h.mux.Handle(pattern, h.metrics.instrument(pattern, fn))
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			h.log.Error("panic in HTTP handler", "method", r.Method, "path", r.URL.Path, "panic", v)
			problem(w, http.StatusInternalServerError, "internal error; see the worker log")
		}
	}()
	if strings.HasPrefix(r.URL.Path, "/api/") && !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="dronehub"`)
		problem(w, http.StatusUnauthorized, "missing or wrong API key: send \"Authorization: Bearer KEY\" with a key from --api-keys")
		return
	}
	if _, pattern := h.mux.Handler(r); pattern == "" {
		h.notRouted(w, r)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// notRouted answers unknown paths with 404 and known paths with the wrong
// method with 405, both as problem+json (the mux's own replies are text).
func (h *handler) notRouted(w http.ResponseWriter, r *http.Request) {
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete, http.MethodPut, http.MethodPatch} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := h.mux.Handler(probe); p != "" {
			allowed = append(allowed, m)
		}
	}
	if len(allowed) == 0 {
		problem(w, http.StatusNotFound, fmt.Sprintf("no route %s; see docs/http-api.md", r.URL.Path))
		return
	}
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	problem(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s is not allowed on %s; use %s", r.Method, r.URL.Path, strings.Join(allowed, " or ")))
}

func (h *handler) authorized(r *http.Request) bool {
	if len(h.keys) == 0 {
		return true
	}
	auth := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(auth) <= len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		return false
	}
	// Hashing first makes every comparison the same length, so neither the
	// key's content nor its length leaks through timing.
	got := sha256.Sum256([]byte(strings.TrimSpace(auth[len(prefix):])))
	ok := 0
	for _, k := range h.keys {
		ok |= subtle.ConstantTimeCompare(got[:], k[:])
	}
	return ok == 1
}

func (h *handler) readyz(w http.ResponseWriter, r *http.Request) {
	if h.opts.Ready != nil {
		if err := h.opts.Ready(r.Context()); err != nil {
			problem(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// Problem is an RFC 9457 problem details body.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	// Errors lists field problems for 400s on invalid input.
	Errors []FieldProblem `json:"errors,omitempty"`
}

// FieldProblem is one invalid field.
type FieldProblem struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func problem(w http.ResponseWriter, status int, detail string, fields ...FieldProblem) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{
		Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: detail, Errors: fields,
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// readBody enforces the content type and size limit and returns the body.
// It writes the error response itself and returns ok=false on failure.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, required bool) ([]byte, bool) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			problem(w, http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type %q is not supported; send application/json", ct))
			return nil, false
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		// The rest of the body is not worth reading: close the connection.
		w.Header().Set("Connection", "close")
		problem(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is over the %d-byte limit of this route", limit))
		return nil, false
	case err != nil:
		problem(w, http.StatusBadRequest, "could not read the request body: "+err.Error())
		return nil, false
	case required && len(strings.TrimSpace(string(body))) == 0:
		problem(w, http.StatusBadRequest, "the request body is empty; send a JSON object")
		return nil, false
	}
	return body, true
}

// baseURL is the scheme and host clients used to reach us, for the
// absolute management URLs in responses.
func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}
