// Package httpapi is dronehub's HTTP API as an http.Handler: the mission
// routes, the same management routes for any registered orchestrator,
// telemetry ingestion, the fleet, and health checks. Its shape follows the
// Durable Functions HTTP management API. Mount it in any server; the
// worker package does.
package httpapi

import (
	"bytes"
	"container/list"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	dtbackend "github.com/microsoft/durabletask-go/backend"
	"go.opentelemetry.io/otel/trace"

	"github.com/dronehub/dronehub/activities"
	"github.com/dronehub/dronehub/fleet"
	"github.com/dronehub/dronehub/metrics"
	"github.com/dronehub/dronehub/orchestrations"
	"github.com/dronehub/dronehub/scale"
	"github.com/dronehub/dronehub/taskhub"
)

// Body size limits. A request over its limit gets 413.
const (
	MaxMissionBody   = 64 << 10
	MaxEventBody     = 256 << 10
	MaxTelemetryBody = 4 << 20
)

// Defaults of the Options that bound the load a handler takes on.
const (
	DefaultMaxInFlight    = 64
	DefaultMaxBodyMemory  = 16 << 20
	DefaultStorageTimeout = 1200 * time.Millisecond
)

// What an answer echoes of a request is capped, so a request full of
// oversized values cannot make a larger answer.
const (
	maxEchoID        = 100 // the longest valid id
	maxEchoReason    = 512
	maxDetail        = 2048
	maxFieldProblems = 50
)

// Errors a Ready function reports; /readyz names them and hides anything
// else (storage error texts can carry paths and endpoints).
var (
	ErrNotStarted         = errors.New("worker is not started")
	ErrStorageUnavailable = errors.New("storage is unavailable")
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
	// Orchestrators are the orchestrators the worker registered, by name
	// (see Orchestrator). POST /api/orchestrations/{name} answers 404 for
	// any other name, and an event is raised over HTTP only if its
	// instance's orchestrator declares it public.
	Orchestrators map[string]Orchestrator
	// APIKeys, when non-empty, are required as "Authorization: Bearer KEY"
	// on every /api route. Health routes stay open.
	APIKeys []string
	// MetricsRequireKey puts /metrics behind the API keys too.
	MetricsRequireKey bool
	// PublicURL is the base URL clients reach the API at, e.g.
	// "https://drones.example.com" (a path prefix is kept); see
	// ValidatePublicURL. Location headers and the management URLs of a 202
	// are built from it. Without it they are relative ("/api/missions/m-1"),
	// unless a trusted proxy names the host, or the client addressed this
	// server by the very IP address and port it connected to. The Host
	// header alone is never copied into a URL.
	PublicURL string
	// TrustedProxies are the peers whose X-Forwarded-Proto and
	// X-Forwarded-Host (or Forwarded) headers are honoured when PublicURL is
	// empty; see ParseTrustedProxies. Empty: forwarded headers are ignored.
	TrustedProxies []netip.Prefix
	// MaxInFlight bounds the requests served at once (every route but
	// /healthz and /metrics); default DefaultMaxInFlight.
	MaxInFlight int
	// MaxBodyMemory bounds the request-body bytes of the requests served at
	// once: each reserves its Content-Length, or its route's body limit when
	// the length is not known up front. Default DefaultMaxBodyMemory.
	//
	// A request that finds no room waits up to half of StorageTimeout, then
	// gets 503 with Retry-After without its body being read.
	MaxBodyMemory int64
	// StorageTimeout bounds each request's storage work, counted from its
	// first storage call (less the time it waited for room). Past
	// it the request answers 503 with Retry-After. When a ping of storage
	// (taskhub.Pinger) then fails too, the handler answers 503 at once,
	// pinging storage once a second while requests come, until a ping
	// succeeds. Default DefaultStorageTimeout.
	StorageTimeout time.Duration
	// Ready reports readiness for /readyz; nil means always ready. Errors
	// wrapping ErrNotStarted or ErrStorageUnavailable are named in the
	// answer; the text of any error is only logged.
	Ready func(context.Context) error
	// Logger receives request errors; default slog.Default().
	Logger *slog.Logger
	// Now is the clock used to validate deadlines; default time.Now.
	Now func() time.Time
	// Mounts are more routes, by http.ServeMux pattern ("GET /ui/"),
	// served outside admission control and the storage deadline (a
	// long-lived stream must not hold a request slot); paths under /api/
	// need the API key like every /api route. The worker mounts its
	// dashboard here (package dashboard).
	Mounts map[string]http.Handler
	// Metrics receives the API's series and is what GET /metrics serves
	// (docs/metrics.md); nil means metrics of the handler's own, on a new
	// registry.
	Metrics *metrics.Metrics
	// TracerProvider, when set, gets a server span per API request (every
	// /api route), continuing a trace the client started (W3C traceparent);
	// nil traces nothing.
	TracerProvider trace.TracerProvider
	// Scale serves GET /api/hub/scale, the task hub's scale signal
	// (package scale); nil answers 501.
	Scale scale.Source
}

type handler struct {
	opts      Options
	svc       *Service
	mux       *http.ServeMux
	log       *slog.Logger
	keys      [][sha256.Size]byte
	metrics   *metrics.Metrics
	tracer    trace.Tracer // nil when tracing is off
	publicURL string
	limiter   *limiter
	breaker   *breaker
	queueWait time.Duration
}

// NewHandler returns the API handler.
func NewHandler(opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.MaxBodyMemory <= 0 {
		opts.MaxBodyMemory = DefaultMaxBodyMemory
	}
	if opts.StorageTimeout <= 0 {
		opts.StorageTimeout = DefaultStorageTimeout
	}
	opts.Mission = opts.Mission.WithDefaults()
	if opts.Metrics == nil {
		opts.Metrics, _ = metrics.New(metrics.Options{}) // a new registry: cannot collide
	}
	h := &handler{
		opts: opts, svc: NewService(opts), mux: http.NewServeMux(), log: opts.Logger, metrics: opts.Metrics,
		limiter:   &limiter{maxN: opts.MaxInFlight, maxW: opts.MaxBodyMemory},
		breaker:   &breaker{interval: time.Second, log: opts.Logger, timeout: opts.StorageTimeout},
		queueWait: opts.StorageTimeout / 2,
	}
	if p, ok := opts.Backend.(taskhub.Pinger); ok {
		h.breaker.ping = p.Ping
	}
	if opts.PublicURL != "" {
		u, err := ValidatePublicURL(opts.PublicURL)
		if err != nil {
			h.log.Error("ignoring the public URL: absolute URLs are built as without one", "err", err)
		}
		h.publicURL = u
	}
	h.metrics.SetHTTPLoad(h.limiter.load)
	if opts.TracerProvider != nil {
		h.tracer = opts.TracerProvider.Tracer(tracerName)
	}
	for _, k := range opts.APIKeys {
		h.keys = append(h.keys, sha256.Sum256([]byte(k)))
	}
	// Each route with its body limit, which is what it reserves of
	// MaxBodyMemory when the request does not say its length.
	h.route("POST /api/missions", MaxMissionBody, h.startMission)
	h.route("POST /api/orchestrations/{name}", MaxEventBody, h.startGeneric)
	for _, sc := range []Scope{ScopeMissions, ScopeInstances} {
		base := sc.base()
		h.route("GET "+base, 0, h.list(sc))
		h.route("GET "+base+"/{id}", 0, h.status(sc))
		h.route("DELETE "+base+"/{id}", 0, h.purge(sc))
		h.route("POST "+base+"/{id}/events/{event}", MaxEventBody, h.raise(sc))
		h.route("POST "+base+"/{id}/terminate", 0, h.operation(sc, (*Service).Terminate))
		h.route("POST "+base+"/{id}/suspend", 0, h.operation(sc, (*Service).Suspend))
		h.route("POST "+base+"/{id}/resume", 0, h.operation(sc, (*Service).Resume))
	}
	h.route("POST /api/missions/{id}/cancel", 0, h.operation(ScopeMissions, func(s *Service, ctx context.Context, _ Scope, id, reason string) error {
		return s.CancelMission(ctx, id, reason)
	}))
	h.route("POST /api/telemetry", MaxTelemetryBody, h.telemetry)
	h.route("GET /api/drones", 0, h.listDrones)
	h.route("POST /api/drones", MaxMissionBody, h.addDrone)
	h.route("GET /api/drones/{id}/status", 0, h.droneStatus)
	h.route("POST /api/drones/{id}/reset", 0, h.resetDrone)
	h.route("GET /api/fleet", 0, h.fleetSummary)
	h.route("GET /api/hub", 0, h.hubInfo)
	h.route("GET /api/hub/scale", 0, h.hubScale)
	h.route("GET /api/deadletters", 0, h.deadLetters)
	h.route("POST /api/deadletters/{id}/replay", 0, h.replayDeadLetter)
	h.route("GET /readyz", 0, h.readyz)
	for pattern, mh := range opts.Mounts {
		h.open(pattern, mh.ServeHTTP)
	}
	// /healthz and /metrics never wait on storage and are never turned
	// away (the metrics read from storage are refreshed in the background).
	h.open("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	h.open("GET /metrics", h.metrics.Handler().ServeHTTP)
	return h
}

// route serves pattern through admission control (see admit).
func (h *handler) route(pattern string, bodyLimit int64, fn http.HandlerFunc) {
	h.mux.Handle(pattern, h.instrument(pattern, pattern != "GET /readyz", h.admit(bodyLimit, fn)))
}

// open serves pattern without admission control.
func (h *handler) open(pattern string, fn http.HandlerFunc) {
	h.mux.Handle(pattern, h.instrument(pattern, false, fn))
}

// ctxKey carries the handler in a request's context, for baseURL.
type ctxKey struct{}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rw := &reqWriter{ResponseWriter: w}
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			h.log.Error("panic in HTTP handler", "method", r.Method, "path", r.URL.Path, "panic", v)
			writeProblem(rw, http.StatusInternalServerError, "internal error; see the worker log")
		}
	}()
	r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, h))
	if h.needsKey(r.URL.Path) && !h.authorized(r) {
		rw.Header().Set("WWW-Authenticate", `Bearer realm="dronehub"`)
		writeProblem(rw, http.StatusUnauthorized, "missing or wrong API key: send \"Authorization: Bearer KEY\" with one of the worker's API keys")
		return
	}
	if _, pattern := h.mux.Handler(r); pattern == "" {
		h.notRouted(rw, r)
		return
	}
	h.mux.ServeHTTP(rw, r)
}

func (h *handler) needsKey(path string) bool {
	return strings.HasPrefix(path, "/api/") || (h.opts.MetricsRequireKey && path == "/metrics")
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
			h.log.Warn("not ready", "err", err)
			reason := "see the worker log"
			switch {
			case errors.Is(err, ErrNotStarted):
				reason = ErrNotStarted.Error()
			case errors.Is(err, ErrStorageUnavailable) || context.Cause(r.Context()) != nil:
				reason = ErrStorageUnavailable.Error()
				if rw, ok := w.(*reqWriter); ok && rw.st != nil {
					rw.st.storageFailed = true
				}
			}
			w.Header().Set("Retry-After", storageRetryAfter)
			writeProblem(w, http.StatusServiceUnavailable, "not ready: "+reason)
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

// storageRetryAfter is the Retry-After of a 503 for unavailable storage.
const storageRetryAfter = "5"

// problem writes a problem answer from a route. By convention a route
// answers 503 only when storage failed, so a 503 is marked as such: its
// detail says storage is unavailable and it carries Retry-After.
func problem(w http.ResponseWriter, status int, detail string, fields ...FieldProblem) {
	if rw, ok := w.(*reqWriter); ok && rw.st != nil && status == http.StatusServiceUnavailable {
		rw.st.storageFailed = true
		if !strings.Contains(detail, ErrStorageUnavailable.Error()) {
			detail = ErrStorageUnavailable.Error() + ": " + detail
		}
		if w.Header().Get("Retry-After") == "" {
			w.Header().Set("Retry-After", storageRetryAfter)
		}
	}
	writeProblem(w, status, detail, fields...)
}

// writeProblem writes a problem answer, capping what it echoes.
// WriteProblem answers with an RFC 9457 problem as every route of the API
// does (other handlers on the same server, e.g. the dashboard's, use it).
func WriteProblem(w http.ResponseWriter, status int, detail string) { writeProblem(w, status, detail) }

func writeProblem(w http.ResponseWriter, status int, detail string, fields ...FieldProblem) {
	if len(fields) > maxFieldProblems {
		fields = fields[:maxFieldProblems]
	}
	for i := range fields {
		fields[i].Field = CapEcho(fields[i].Field, maxEchoID)
		fields[i].Message = CapEcho(fields[i].Message, maxEchoReason)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{
		Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: CapEcho(detail, maxDetail), Errors: fields,
	})
}

// CapEcho cuts s to at most n bytes (on a rune boundary), marking the cut:
// what a problem may echo of its input.
func CapEcho(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	switch res := v.(type) {
	case activities.IngestResult:
		v = capVerdicts(res)
	case *activities.IngestResult:
		if res != nil {
			v = capVerdicts(*res)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// capVerdicts caps the device id and reason each telemetry verdict echoes:
// a frame with a 4 KB device id used to come back with the id twice.
func capVerdicts(res activities.IngestResult) activities.IngestResult {
	var frames []activities.FrameVerdict
	for i, fv := range res.Frames {
		if len(fv.DeviceID) <= maxEchoID && len(fv.Reason) <= maxEchoReason {
			continue
		}
		if frames == nil {
			frames = slices.Clone(res.Frames)
		}
		frames[i].DeviceID = CapEcho(fv.DeviceID, maxEchoID)
		frames[i].Reason = CapEcho(fv.Reason, maxEchoReason)
	}
	if frames != nil {
		res.Frames = frames
	}
	return res
}

// readBody enforces the content type and size limit and returns the body.
// It writes the error response itself and returns ok=false on failure.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, required bool) ([]byte, bool) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			problem(w, http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type %q is not supported; send application/json", CapEcho(ct, maxEchoID)))
			return nil, false
		}
	}
	if r.ContentLength > limit {
		tooLarge(w, limit)
		return nil, false
	}
	// Sized up front when the length is known: no regrowing, no garbage.
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength) + bytes.MinRead)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		tooLarge(w, limit)
		return nil, false
	case err != nil:
		problem(w, http.StatusBadRequest, "could not read the request body: "+err.Error())
		return nil, false
	case required && len(bytes.TrimSpace(buf.Bytes())) == 0:
		problem(w, http.StatusBadRequest, "the request body is empty; send a JSON object")
		return nil, false
	}
	return buf.Bytes(), true
}

func tooLarge(w http.ResponseWriter, limit int64) {
	// The rest of the body is not worth reading: close the connection.
	w.Header().Set("Connection", "close")
	writeProblem(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is over the %d-byte limit of this route", limit))
}

// baseURL is the scheme and host clients used to reach us, for the
// absolute URLs in responses (Location, the management URLs), or "" for
// URLs relative to the host the client used. It is the one place such URLs
// are built: from Options.PublicURL when set; else from the forwarded
// headers of a trusted proxy; else from the Host header only when it is
// the address the client connected to.
func baseURL(r *http.Request) string {
	h, _ := r.Context().Value(ctxKey{}).(*handler)
	if h == nil {
		return ""
	}
	return h.publicBase(r)
}

func (h *handler) publicBase(r *http.Request) string {
	if h.publicURL != "" {
		return h.publicURL
	}
	scheme, host := "http", ""
	if r.TLS != nil {
		scheme = "https"
	}
	if h.trustedPeer(r) {
		if p, fh := forwarded(r); p != "" || fh != "" {
			if p != "" {
				scheme = p
			}
			host = fh
		}
	}
	if host == "" && selfAddressed(r) {
		host = r.Host
	}
	if host == "" {
		return ""
	}
	return scheme + "://" + host
}

// selfAddressed reports whether the Host header names the very address the
// connection reached, so a URL built from it cannot point elsewhere: the
// local IP and port, or "localhost" and the port on a loopback connection
// (which comes from this machine).
func selfAddressed(r *http.Request) bool {
	la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	if strings.EqualFold(r.Host, la.String()) {
		return true
	}
	ap, err := netip.ParseAddrPort(la.String())
	if err != nil || !ap.Addr().IsLoopback() {
		return false
	}
	host, port, err := net.SplitHostPort(r.Host)
	return err == nil && strings.EqualFold(host, "localhost") && port == strconv.Itoa(int(ap.Port()))
}

func (h *handler) trustedPeer(r *http.Request) bool {
	if len(h.opts.TrustedProxies) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, p := range h.opts.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// forwarded reads the scheme and host a proxy says the client used: from
// the first element of Forwarded (RFC 7239), else from the first values of
// X-Forwarded-Proto and X-Forwarded-Host. Invalid values are dropped.
func forwarded(r *http.Request) (proto, host string) {
	if f := r.Header.Get("Forwarded"); f != "" {
		first, _, _ := strings.Cut(f, ",")
		for _, pair := range strings.Split(first, ";") {
			k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
			if !ok {
				continue
			}
			v = strings.Trim(v, `"`)
			switch strings.ToLower(k) {
			case "proto":
				proto = v
			case "host":
				host = v
			}
		}
	} else {
		proto, _, _ = strings.Cut(r.Header.Get("X-Forwarded-Proto"), ",")
		host, _, _ = strings.Cut(r.Header.Get("X-Forwarded-Host"), ",")
	}
	proto, host = strings.ToLower(strings.TrimSpace(proto)), strings.TrimSpace(host)
	if proto != "http" && proto != "https" {
		proto = ""
	}
	if !validHost(host) {
		host = ""
	}
	return proto, host
}

// validHost accepts a host name or IP literal with an optional port, and
// nothing that could change what a URL built from it points to.
func validHost(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == ':', c == '[', c == ']', c == '_':
		default:
			return false
		}
	}
	return true
}

// ValidatePublicURL checks a public base URL (scheme http or https, a
// host, an optional path prefix, no query, fragment or user info) and
// returns it without a trailing slash.
func ValidatePublicURL(s string) (string, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "", fmt.Errorf("public URL %q: %v", s, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("public URL %q: want an http:// or https:// URL, e.g. https://drones.example.com", s)
	case u.Host == "" || !validHost(u.Host):
		return "", fmt.Errorf("public URL %q: no valid host", s)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
		return "", fmt.Errorf("public URL %q: only scheme, host and path are allowed", s)
	}
	return strings.TrimRight(u.Scheme+"://"+u.Host+u.EscapedPath(), "/"), nil
}

// ParseTrustedProxies parses IP addresses and CIDR prefixes
// ("10.0.0.0/8", "127.0.0.1", "::1").
func ParseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("trusted proxy %q: want an IP address or CIDR prefix", s)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: want an IP address or CIDR prefix", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// --- Admission control and storage deadlines -------------------------------

// reqWriter is every request's ResponseWriter: it records the status for
// the metrics, and for admitted requests carries their state.
type reqWriter struct {
	http.ResponseWriter
	code int
	st   *reqState
}

func (w *reqWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *reqWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *reqWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// errStorageDeadline is the cause of an admitted request's context when its
// storage time ran out.
var errStorageDeadline = errors.New("storage did not answer within the storage timeout")

// reqState is an admitted request's storage clock and outcome.
//
// The clock starts at the route's first storage call, not when the request
// arrives: reading a body and decoding a 4 MB batch are not storage time.
// The route's context starts it the first time anything asks for its Done
// channel or Err, which every storage client does before it waits.
type reqState struct {
	ctx           *storageCtx
	cancel        context.CancelCauseFunc
	budget        time.Duration
	fired         chan struct{} // closed when the storage time ran out
	storageFailed bool          // the route answered 503: its storage failed

	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
}

func newReqState(parent context.Context, budget time.Duration) *reqState {
	inner, cancel := context.WithCancelCause(parent)
	st := &reqState{cancel: cancel, budget: budget, fired: make(chan struct{})}
	st.ctx = &storageCtx{Context: inner, st: st}
	return st
}

// start starts the storage clock, once.
func (s *reqState) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer != nil || s.stopped {
		return
	}
	s.timer = time.AfterFunc(s.budget, func() {
		s.cancel(errStorageDeadline)
		close(s.fired)
	})
}

func (s *reqState) timedOut() bool { return context.Cause(s.ctx) == errStorageDeadline }

func (s *reqState) stop() {
	s.mu.Lock()
	s.stopped = true
	if s.timer != nil {
		s.timer.Stop()
	}
	s.mu.Unlock()
	s.cancel(context.Canceled)
}

// storageCtx is a route's context: it starts the storage clock when a
// storage call first looks at it.
type storageCtx struct {
	context.Context
	st *reqState
}

func (c *storageCtx) Done() <-chan struct{} {
	c.st.start()
	return c.Context.Done()
}

func (c *storageCtx) Err() error {
	c.st.start()
	return c.Context.Err()
}

// answerGrace is how long after its storage time ran out a route may take
// to write its own answer before admit answers for it.
const answerGrace = 100 * time.Millisecond

// admit wraps a route: it refuses at once while storage is known to be
// down (breaker), waits briefly for room under MaxInFlight and
// MaxBodyMemory (else 503 busy), and runs the route with a context that
// ends when its storage time runs out. The route writes into a buffer; if
// it has not answered shortly after its storage time ran out (a storage
// call that ignores its context), admit answers 503 for it, and the route
// finishes on its own, keeping its place until then.
func (h *handler) admit(bodyLimit int64, fn http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if bodyLimit > 0 && r.ContentLength > bodyLimit {
			tooLarge(w, bodyLimit)
			return
		}
		if !h.breaker.allow(time.Now()) {
			h.metrics.Rejected(metrics.RejectStorage)
			h.storageDown(w)
			return
		}
		out := outcomeNeutral
		defer func() {
			switch out {
			case outcomeTimeout:
				h.breaker.timedOut(time.Now())
			case outcomeSuccess:
				h.breaker.succeeded()
			}
		}()

		weight := int64(0)
		if bodyLimit > 0 {
			weight = bodyLimit
			if r.ContentLength >= 0 {
				weight = r.ContentLength
			}
		}
		weight = min(weight, h.limiter.maxW)
		arrived := time.Now()
		if !h.limiter.acquire(r.Context(), weight, h.queueWait) {
			h.metrics.Rejected(metrics.RejectBusy)
			w.Header().Set("Retry-After", "1")
			writeProblem(w, http.StatusServiceUnavailable, "the server is busy: too many requests in flight; retry after 1 s")
			return
		}

		budget := max(h.opts.StorageTimeout-time.Since(arrived), h.opts.StorageTimeout/4)
		st := newReqState(r.Context(), budget)
		buf := &bufferedWriter{header: http.Header{}}
		inner := &reqWriter{ResponseWriter: buf, st: st}
		finished := make(chan any, 1) // the route's panic, or nil
		go func() {
			defer h.limiter.release(weight)
			defer st.stop()
			defer func() { finished <- recover() }()
			fn(inner, r.WithContext(st.ctx))
		}()
		var panicked any
		select {
		case panicked = <-finished:
		case <-st.fired:
			grace := time.NewTimer(answerGrace)
			select {
			case panicked = <-finished:
				grace.Stop()
			case <-grace.C:
				buf.abandon()
				out = outcomeTimeout
				h.log.Warn("storage did not answer in time; answered 503 for the route", "method", r.Method, "path", r.URL.Path, "after", time.Since(arrived).Round(time.Millisecond))
				w.Header().Set("Retry-After", storageRetryAfter)
				writeProblem(w, http.StatusServiceUnavailable, fmt.Sprintf(
					"%s: the task hub storage did not answer within %s; retry after %s s",
					ErrStorageUnavailable, h.opts.StorageTimeout, storageRetryAfter))
				return
			}
		}
		if panicked != nil {
			panic(panicked) // ServeHTTP answers 500 and logs it
		}
		switch code := buf.copyTo(w); {
		case st.storageFailed && st.timedOut():
			out = outcomeTimeout
		case code >= 200 && code < 300, code == http.StatusNotFound, code == http.StatusConflict, code == http.StatusGone:
			out = outcomeSuccess
		}
	}
}

func (h *handler) storageDown(w http.ResponseWriter) {
	w.Header().Set("Retry-After", storageRetryAfter)
	writeProblem(w, http.StatusServiceUnavailable, fmt.Sprintf(
		"%s: the task hub storage does not answer (a ping failed after a request took over %s); retry after %s s",
		ErrStorageUnavailable, h.opts.StorageTimeout, storageRetryAfter))
}

// bufferedWriter holds a route's answer until the route has finished, so
// admit can answer instead when the route does not finish in time.
type bufferedWriter struct {
	header http.Header

	mu        sync.Mutex
	code      int
	body      bytes.Buffer
	abandoned bool
}

func (b *bufferedWriter) Header() http.Header { return b.header }

func (b *bufferedWriter) WriteHeader(code int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.code == 0 {
		b.code = code
	}
}

func (b *bufferedWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.abandoned {
		return 0, http.ErrHandlerTimeout
	}
	if b.code == 0 {
		b.code = http.StatusOK
	}
	return b.body.Write(p)
}

func (b *bufferedWriter) abandon() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.abandoned = true
	b.body = bytes.Buffer{}
}

// copyTo writes the finished answer to w and returns its status.
func (b *bufferedWriter) copyTo(w http.ResponseWriter) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	dst := w.Header()
	for k, v := range b.header {
		dst[k] = v
	}
	code := b.code
	if code == 0 {
		code = http.StatusOK
	}
	w.WriteHeader(code)
	_, _ = w.Write(b.body.Bytes())
	return code
}

// limiter admits requests while fewer than maxN are in flight and their
// body reservations fit in maxW bytes; others queue, first come first
// served, for a bounded time.
type limiter struct {
	maxN int
	maxW int64

	mu      sync.Mutex
	n       int
	w       int64
	waiters list.List // of *waiter
}

type waiter struct {
	w     int64
	ready chan struct{}
}

func (l *limiter) fits(w int64) bool { return l.n < l.maxN && l.w+w <= l.maxW }

func (l *limiter) acquire(ctx context.Context, w int64, wait time.Duration) bool {
	l.mu.Lock()
	if l.waiters.Len() == 0 && l.fits(w) {
		l.n++
		l.w += w
		l.mu.Unlock()
		return true
	}
	if wait <= 0 {
		l.mu.Unlock()
		return false
	}
	wt := &waiter{w: w, ready: make(chan struct{})}
	el := l.waiters.PushBack(wt)
	l.mu.Unlock()

	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-wt.ready:
		return true
	case <-timer.C:
	case <-ctx.Done():
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-wt.ready:
		return true // admitted just as the wait ended: keep it
	default:
	}
	front := l.waiters.Front() == el
	l.waiters.Remove(el)
	if front {
		l.grant() // those behind may fit where this one did not
	}
	return false
}

func (l *limiter) release(w int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	l.w -= w
	l.grant()
}

// grant admits waiters from the front while they fit; l.mu is held.
func (l *limiter) grant() {
	for e := l.waiters.Front(); e != nil; e = l.waiters.Front() {
		wt := e.Value.(*waiter)
		if !l.fits(wt.w) {
			return
		}
		l.n++
		l.w += wt.w
		l.waiters.Remove(e)
		close(wt.ready)
	}
}

func (l *limiter) load() (n int, w int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n, l.w
}

type outcome int

const (
	outcomeNeutral outcome = iota // the request says nothing about storage
	outcomeSuccess                // storage answered
	outcomeTimeout                // storage did not answer in time
)

// breakerStrikes is how many storage timeouts in a row open the breaker of
// a backend that cannot be pinged.
const breakerStrikes = 3

// breaker remembers that storage stopped answering, so that requests get
// their 503 at once instead of each waiting out the storage timeout.
//
// A request that runs out of storage time is not proof: the machine may be
// busy, or the request big. So a timeout is confirmed by pinging storage
// (taskhub.Pinger; one ping at a time, bounded by the storage timeout), and
// only a failed ping opens the breaker. While it is open every request is
// answered at once, and storage is pinged again at most once per interval
// while requests keep coming; the first good ping closes it. A backend that
// cannot be pinged opens it for one interval after breakerStrikes timeouts
// in a row.
type breaker struct {
	interval time.Duration
	log      *slog.Logger
	// ping checks storage with a cheap call; nil when the backend has none.
	ping    func(context.Context) error
	timeout time.Duration

	mu         sync.Mutex
	strikes    int
	open       bool
	confirming bool
	next       time.Time // while open: when to ping again (or, without ping, to close)
}

// allow reports whether a request may go on to storage.
func (b *breaker) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return true
	}
	if !now.Before(b.next) {
		if b.ping == nil {
			b.closeLocked()
			return true
		}
		if !b.confirming {
			b.confirming = true
			b.next = now.Add(b.interval)
			go b.confirm()
		}
	}
	return false
}

// timedOut records a request that ran out of storage time.
func (b *breaker) timedOut(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ping != nil {
		if !b.open && !b.confirming {
			b.confirming = true
			go b.confirm()
		}
		return
	}
	b.strikes++
	if b.strikes >= breakerStrikes {
		b.openLocked(now)
	}
}

// succeeded records a request that storage answered.
func (b *breaker) succeeded() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.strikes = 0
}

// confirm pings storage: a failure opens the breaker, success closes it.
func (b *breaker) confirm() {
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	err := b.ping(ctx)
	cancel()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.confirming = false
	if err != nil {
		b.openLocked(time.Now())
		return
	}
	b.closeLocked()
}

func (b *breaker) openLocked(now time.Time) {
	if !b.open {
		b.log.Warn("storage is not answering; answering 503 at once until it does")
	}
	b.open = true
	b.next = now.Add(b.interval)
}

func (b *breaker) closeLocked() {
	if b.open {
		b.log.Info("storage answers again; serving requests")
	}
	b.strikes, b.open = 0, false
}
