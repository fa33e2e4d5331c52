package cli

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// unreachable is a request that got no answer: the worker is down,
// restarting, or the connection broke.
type unreachable struct {
	base string
	err  error
}

func (e *unreachable) Error() string {
	return fmt.Sprintf("cannot reach dronehub at %s (is the worker running? set --url): %v", e.base, e.err)
}

func (e *unreachable) Unwrap() error { return e.err }

// current is the worker URL requests go to.
func (c *client) current() string {
	if len(c.bases) == 0 {
		return c.base
	}
	return c.bases[int(c.at.Load())%len(c.bases)]
}

// setBases takes --url as a comma-separated list of worker URLs.
func (c *client) setBases() error {
	c.bases = nil
	for _, b := range strings.Split(c.base, ",") {
		if b = strings.TrimSpace(b); b != "" {
			c.bases = append(c.bases, b)
		}
	}
	if len(c.bases) == 0 {
		return errors.New("--url: give at least one worker URL")
	}
	c.base = c.bases[0]
	return nil
}

// retryable reports whether a request should be sent again, perhaps to
// another worker: no answer, or 429, 502, 503 or 504 (the API asks clients
// to resend after a 503).
func retryable(err error) bool {
	var u *unreachable
	if errors.As(err, &u) {
		return true
	}
	var a *apiError
	if errors.As(err, &a) {
		switch a.status {
		case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
	}
	return false
}

const (
	retryFirst = 100 * time.Millisecond
	retryMax   = 2 * time.Second
)

// doRetry is do that resends on a retryable failure, moving to the next
// worker URL each time and backing off (with jitter, honouring a short
// Retry-After) once every URL has failed, until ctx ends. Only idempotent
// requests may use it; a telemetry batch sent twice comes back as
// duplicates. notice, when set, hears of each failed attempt.
func (c *client) doRetry(ctx context.Context, method, path string, body, out any, notice func(error)) error {
	backoff := retryFirst
	for failures := 1; ; failures++ {
		from := c.at.Load()
		_, hdr, err := c.do(ctx, method, path, body, out)
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		if notice != nil {
			notice(err)
		}
		if len(c.bases) > 1 {
			c.at.CompareAndSwap(from, from+1)
			if failures%len(c.bases) != 0 {
				continue // try the next worker at once
			}
		}
		d := backoff
		if ra, perr := strconv.Atoi(hdr.Get("Retry-After")); perr == nil && ra > 0 {
			d = max(d, min(time.Duration(ra)*time.Second, retryMax))
		}
		d = d/2 + rand.N(d/2+1)
		if werr := wait(ctx, d); werr != nil {
			return fmt.Errorf("%w (gave up: %v)", err, werr)
		}
		backoff = min(backoff*2, retryMax)
	}
}
