package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/httpapi"
)

// Options configures Dial. The zero value of each field means its default.
type Options struct {
	// APIKey is sent as "Authorization: Bearer KEY"; needed when the
	// worker has API keys.
	APIKey string
	// HTTPClient sends the requests; default a new http.Client. Its own
	// Timeout, if any, applies too.
	HTTPClient *http.Client
	// Timeout bounds each attempt of a request, answer included; default
	// 30 s.
	Timeout time.Duration
	// Retry says how requests are repeated after a failure.
	Retry RetryPolicy
	// FailoverURLs are the base URLs of more workers on the same task hub.
	// A request that failed and may be repeated goes to the next URL at
	// once, and so do the requests after it; the client backs off only
	// once every URL failed in turn.
	FailoverURLs []string
	// MaxPollInterval bounds the gap between two status reads while a
	// handle waits; default 1 s, the API's Retry-After for a running
	// instance.
	MaxPollInterval time.Duration
	// OnRetry, when set, is called with the error of each attempt that
	// will be repeated.
	OnRetry func(err error)
}

// RetryPolicy says how a request is repeated after a failure. The zero
// value of each field means its default.
//
// Only requests whose repetition is harmless are repeated after any
// failure (no answer, 502, 503, 504): reads, mission starts (the client
// sets the mission id, so a repeat cannot start a second mission),
// telemetry (frames already applied come back as duplicates), terminate,
// suspend, resume, cancel and drone resets. Orchestration starts, events,
// purges, drone registrations and dead-letter replays are repeated only
// when the worker says it did nothing: 429, a 503 "the server is busy", or no connection.
type RetryPolicy struct {
	// MaxAttempts bounds the attempts of one request, the first included;
	// default 4. 1 sends each request once; a negative value repeats until
	// the request's context ends.
	MaxAttempts int
	// InitialBackoff is the wait after the first failure, doubling after
	// each one, with jitter; default 100 ms.
	InitialBackoff time.Duration
	// MaxBackoff caps a wait, the answer's Retry-After included (a longer
	// Retry-After is cut to it); default 10 s.
	MaxBackoff time.Duration
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = 4
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = 100 * time.Millisecond
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = 10 * time.Second
	}
	return p
}

// Dial returns a Client on the dronehub HTTP API at baseURL
// ("http://127.0.0.1:8080"; a path prefix, as behind a reverse proxy, is
// kept). It sends no request: a worker that cannot be reached shows in the
// first call's error, an *UnreachableError.
func Dial(baseURL string, opts Options) (Client, error) {
	bases := make([]string, 0, 1+len(opts.FailoverURLs))
	for _, u := range append([]string{baseURL}, opts.FailoverURLs...) {
		b, err := checkBaseURL(u)
		if err != nil {
			return nil, err
		}
		bases = append(bases, b)
	}
	r := &remote{bases: bases, key: opts.APIKey, http: opts.HTTPClient, timeout: opts.Timeout,
		retry: opts.Retry.withDefaults(), onRetry: opts.OnRetry}
	if r.http == nil {
		r.http = &http.Client{}
	}
	if r.timeout <= 0 {
		r.timeout = 30 * time.Second
	}
	maxPoll := opts.MaxPollInterval
	if maxPoll <= 0 {
		maxPoll = time.Second
	}
	return &client{t: r, poll: pollPolicy{min: min(25*time.Millisecond, maxPoll), max: maxPoll}}, nil
}

// checkBaseURL returns a base URL without its trailing slash.
func checkBaseURL(s string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	switch {
	case err != nil:
		return "", fmt.Errorf("dronehub URL %q: %v", s, err)
	case u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		return "", fmt.Errorf("dronehub URL %q: want http://HOST:PORT or https://HOST, e.g. http://127.0.0.1:8080", s)
	case u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("dronehub URL %q: want no query or fragment", s)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// remote is the HTTP transport.
type remote struct {
	bases   []string
	at      atomic.Int64 // index of the base URL in use
	key     string
	http    *http.Client
	timeout time.Duration
	retry   RetryPolicy
	onRetry func(error)
}

// request is one API call.
type request struct {
	method, path string
	query        url.Values
	body         []byte // JSON, or nil for none
	// idempotent marks a request whose repetition is harmless.
	idempotent bool
	out        any // decoded from a 2xx answer, when not nil
}

// do sends req, repeating it as the retry policy allows, and returns the
// base URL that answered.
func (r *remote) do(ctx context.Context, req request) (string, error) {
	backoff := r.retry.InitialBackoff
	var last error // the previous attempt's failure
	for attempt := 1; ; attempt++ {
		from := r.at.Load()
		base := r.bases[int(from%int64(len(r.bases)))]
		retryAfter, err := r.once(ctx, base, req)
		if err == nil {
			return base, nil
		}
		if ctx.Err() != nil && last != nil {
			return base, fmt.Errorf("%w (gave up: %w)", last, context.Cause(ctx))
		}
		if ctx.Err() != nil || !retryable(req, err) || (r.retry.MaxAttempts > 0 && attempt >= r.retry.MaxAttempts) {
			return base, err
		}
		last = err
		if r.onRetry != nil {
			r.onRetry(err)
		}
		if len(r.bases) > 1 {
			r.at.CompareAndSwap(from, from+1)
			if attempt%len(r.bases) != 0 {
				continue // the next worker, at once
			}
		}
		d := backoff/2 + rand.N(backoff/2+1)
		d = min(max(d, retryAfter), r.retry.MaxBackoff)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return base, fmt.Errorf("%w (gave up: %w)", err, context.Cause(ctx))
		case <-t.C:
		}
		backoff = min(2*backoff, r.retry.MaxBackoff)
	}
}

// retryable reports whether req may be sent again after err.
func retryable(req request, err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		switch ae.StatusCode {
		case http.StatusTooManyRequests:
			return true
		case http.StatusServiceUnavailable:
			// Load shedding answers before the route runs.
			return req.idempotent || strings.HasPrefix(ae.Detail, "the server is busy")
		case http.StatusBadGateway, http.StatusGatewayTimeout:
			return req.idempotent
		}
		return false
	}
	var ue *UnreachableError
	if errors.As(err, &ue) {
		var op *net.OpError
		return req.idempotent || errors.As(ue.Err, &op) && op.Op == "dial"
	}
	return false
}

// once sends req to base once. It returns the answer's Retry-After.
func (r *remote) once(ctx context.Context, base string, req request) (time.Duration, error) {
	actx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	u := base + req.path
	if len(req.query) > 0 {
		u += "?" + req.query.Encode()
	}
	var body io.Reader
	if req.body != nil {
		body = bytes.NewReader(req.body)
	}
	hr, err := http.NewRequestWithContext(actx, req.method, u, body)
	if err != nil {
		return 0, fmt.Errorf("dronehub %s %s: %w", req.method, req.path, err)
	}
	if req.body != nil {
		hr.Header.Set("Content-Type", "application/json")
	}
	hr.Header.Set("Accept", "application/json, application/problem+json")
	if r.key != "" {
		hr.Header.Set("Authorization", "Bearer "+r.key)
	}
	resp, err := r.http.Do(hr)
	if err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("dronehub %s %s: %w", req.method, req.path, context.Cause(ctx))
		}
		return 0, &UnreachableError{URL: base, Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("dronehub %s %s: %w", req.method, req.path, context.Cause(ctx))
		}
		return 0, &UnreachableError{URL: base, Err: fmt.Errorf("reading the answer: %w", err)}
	}
	retryAfter := parseRetryAfter(resp.Header.Get("Retry-After"))
	if resp.StatusCode >= 300 {
		return retryAfter, problemOf(resp.StatusCode, data, retryAfter)
	}
	if req.out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, req.out); err != nil {
			return 0, fmt.Errorf("unexpected answer from %s to %s %s: %w", base, req.method, req.path, err)
		}
	}
	return 0, nil
}

// problemOf is the *APIError of a non-2xx answer.
func problemOf(status int, body []byte, retryAfter time.Duration) *APIError {
	e := &APIError{StatusCode: status, RetryAfter: retryAfter}
	var p httpapi.Problem
	if json.Unmarshal(body, &p) == nil && p.Detail != "" {
		e.Detail, e.Fields = p.Detail, p.Errors
		return e
	}
	// Not ours: a proxy's or load balancer's answer.
	e.Detail = strings.TrimSpace(string(body))
	if len(e.Detail) > 512 {
		e.Detail = e.Detail[:512] + "…"
	}
	if e.Detail == "" {
		e.Detail = http.StatusText(status)
	}
	return e
}

// parseRetryAfter reads Retry-After: seconds or an HTTP date.
func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// resolve makes a URL of an answer absolute against base: a worker without
// a public URL answers with relative ones. A path from the root
// ("/api/missions/m-1") is joined to base as requests are, so a base with a
// path prefix keeps it.
func resolve(base, ref string) string {
	if ref == "" {
		return ""
	}
	if u, err := url.Parse(ref); err != nil || u.IsAbs() {
		return ref
	}
	if strings.HasPrefix(ref, "/") && !strings.HasPrefix(ref, "//") {
		return base + ref
	}
	b, err := url.Parse(base + "/")
	if err != nil {
		return ref
	}
	u, err := b.Parse(ref)
	if err != nil {
		return ref
	}
	return u.String()
}

func scopePath(sc httpapi.Scope, id string) string {
	base := "/api/instances"
	if sc == httpapi.ScopeMissions {
		base = "/api/missions"
	}
	if id == "" {
		return base
	}
	return base + "/" + url.PathEscape(id)
}

func startQuery(id string, startAt time.Time) url.Values {
	q := url.Values{}
	if id != "" {
		q.Set("instanceId", id)
	}
	if !startAt.IsZero() {
		q.Set("startAt", startAt.Format(time.RFC3339Nano))
	}
	return q
}

// start sends a start request and returns its answer, the URLs made absolute.
func (r *remote) start(ctx context.Context, req request) (Links, error) {
	var acc httpapi.Accepted
	req.out = &acc
	base, err := r.do(ctx, req)
	if err != nil {
		return Links{}, err
	}
	acc.StatusQueryGetURI = resolve(base, acc.StatusQueryGetURI)
	acc.SendEventPostURI = resolve(base, acc.SendEventPostURI)
	acc.TerminatePostURI = resolve(base, acc.TerminatePostURI)
	acc.SuspendPostURI = resolve(base, acc.SuspendPostURI)
	acc.ResumePostURI = resolve(base, acc.ResumePostURI)
	acc.PurgeHistoryDeleteURI = resolve(base, acc.PurgeHistoryDeleteURI)
	return acc, nil
}

func (r *remote) startMission(ctx context.Context, req domain.MissionRequest, startAt time.Time) (Links, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return Links{}, invalid("mission request: " + err.Error())
	}
	return r.start(ctx, request{method: http.MethodPost, path: "/api/missions", query: startQuery("", startAt), body: body, idempotent: true})
}

func (r *remote) startOrchestration(ctx context.Context, name, id string, input []byte, startAt time.Time) (Links, error) {
	return r.start(ctx, request{method: http.MethodPost, path: "/api/orchestrations/" + url.PathEscape(name), query: startQuery(id, startAt), body: input})
}

func (r *remote) status(ctx context.Context, sc httpapi.Scope, id string, history bool) (httpapi.Status, error) {
	var st httpapi.Status
	req := request{method: http.MethodGet, path: scopePath(sc, id), idempotent: true, out: &st}
	if history {
		req.query = url.Values{"showHistory": {"true"}}
	}
	_, err := r.do(ctx, req)
	return st, err
}

func (r *remote) list(ctx context.Context, sc httpapi.Scope, query url.Values) (httpapi.ListPage, error) {
	var page httpapi.ListPage
	_, err := r.do(ctx, request{method: http.MethodGet, path: scopePath(sc, ""), query: query, idempotent: true, out: &page})
	return page, err
}

func (r *remote) raise(ctx context.Context, sc httpapi.Scope, id, event string, payload []byte) error {
	_, err := r.do(ctx, request{method: http.MethodPost, path: scopePath(sc, id) + "/events/" + url.PathEscape(event), body: payload})
	return err
}

func (r *remote) operate(ctx context.Context, op operation, sc httpapi.Scope, id, reason string) error {
	req := request{method: http.MethodPost, path: scopePath(sc, id) + "/" + string(op), idempotent: true}
	if reason != "" {
		req.query = url.Values{"reason": {reason}}
	}
	_, err := r.do(ctx, req)
	return err
}

func (r *remote) purge(ctx context.Context, sc httpapi.Scope, id string) error {
	_, err := r.do(ctx, request{method: http.MethodDelete, path: scopePath(sc, id), out: &httpapi.PurgeResult{}})
	return err
}

func (r *remote) ingest(ctx context.Context, _ []domain.Frame, body []byte) (IngestResult, error) {
	var res IngestResult
	_, err := r.do(ctx, request{method: http.MethodPost, path: "/api/telemetry", body: body, idempotent: true, out: &res})
	return res, err
}

func (r *remote) drone(ctx context.Context, id string) (httpapi.DroneStatus, error) {
	var ds httpapi.DroneStatus
	_, err := r.do(ctx, request{method: http.MethodGet, path: "/api/drones/" + url.PathEscape(id) + "/status", idempotent: true, out: &ds})
	return ds, err
}

func (r *remote) drones(ctx context.Context) ([]httpapi.DroneStatus, error) {
	var list httpapi.DroneList
	_, err := r.do(ctx, request{method: http.MethodGet, path: "/api/drones", idempotent: true, out: &list})
	return list.Drones, err
}

func (r *remote) resetDrone(ctx context.Context, id string) (httpapi.DroneStatus, error) {
	var ds httpapi.DroneStatus
	// Resetting twice leaves the drone as resetting once: it may be repeated.
	_, err := r.do(ctx, request{method: http.MethodPost, path: "/api/drones/" + url.PathEscape(id) + "/reset", idempotent: true, out: &ds})
	return ds, err
}

func (r *remote) addDrone(ctx context.Context, nd httpapi.NewDrone) (httpapi.DroneStatus, error) {
	body, err := json.Marshal(nd)
	if err != nil {
		return httpapi.DroneStatus{}, invalid("drone: " + err.Error())
	}
	var ds httpapi.DroneStatus
	_, err = r.do(ctx, request{method: http.MethodPost, path: "/api/drones", body: body, out: &ds})
	return ds, err
}

func (r *remote) fleet(ctx context.Context) (FleetSummary, error) {
	var s FleetSummary
	_, err := r.do(ctx, request{method: http.MethodGet, path: "/api/fleet", idempotent: true, out: &s})
	return s, err
}

func (r *remote) hubInfo(ctx context.Context) (HubInfo, error) {
	var info HubInfo
	_, err := r.do(ctx, request{method: http.MethodGet, path: "/api/hub", idempotent: true, out: &info})
	return info, err
}

func (r *remote) deadLetters(ctx context.Context) ([]DeadLetter, error) {
	var list httpapi.DeadLetterList
	_, err := r.do(ctx, request{method: http.MethodGet, path: "/api/deadletters", idempotent: true, out: &list})
	return list.DeadLetters, err
}

func (r *remote) replay(ctx context.Context, id string) error {
	_, err := r.do(ctx, request{method: http.MethodPost, path: "/api/deadletters/" + url.PathEscape(id) + "/replay"})
	return err
}
