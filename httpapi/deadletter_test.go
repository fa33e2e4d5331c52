package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dronehub/dronehub/httpapi"
	"github.com/dronehub/dronehub/internal/testkit"
	"github.com/dronehub/dronehub/taskhub"
)

// staleLetters is a backend whose only dead letter can no longer reach its
// execution (fault injection for the route's answer; the backends' own
// stale checks are in the conformance suite).
type staleLetters struct{ taskhub.Backend }

func (staleLetters) DeadLetters(context.Context) ([]taskhub.DeadLetter, error) { return nil, nil }

func (staleLetters) ReplayDeadLetter(_ context.Context, id string) error {
	return fmt.Errorf("dead letter %s: the execution has ended: %w", id, taskhub.ErrDeadLetterStale)
}

// TestReplayOfStaleDeadLetter: a replay the backend refused as stale is
// 410 Gone with the reason, not a storage error.
func TestReplayOfStaleDeadLetter(t *testing.T) {
	h := httpapi.NewHandler(httpapi.Options{Backend: staleLetters{}, Logger: testkit.Logger()})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/api/deadletters/7/replay", nil))
	if rec.Code != http.StatusGone || !strings.Contains(rec.Body.String(), "the execution has ended") {
		t.Fatalf("%d %s, want 410 naming why", rec.Code, rec.Body)
	}
}
