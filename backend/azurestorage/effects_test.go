package azurestorage

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/dronehub/dronehub/fleet"
)

// TestEffectsOneRequestEach: a mission's effects cost one transaction each
// when this Fleet recorded the mission's earlier ones (or none exist); a
// repeated effect is still refused.
func TestEffectsOneRequestEach(t *testing.T) {
	t.Parallel()
	var counter Counter
	f := openTestFleet(t, testHub(t), &counter)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 4 {
		counter.Reset()
		ok, err := f.RecordEffect(ctx, fleet.Effect{MissionID: "m-1", Kind: fmt.Sprint("k", i)})
		if err != nil || !ok {
			t.Fatalf("effect %d: %v, %v", i, ok, err)
		}
		wantRequests(t, fmt.Sprint("effect ", i), &counter, map[string]int64{"table.batch": 1})
	}
	if ok, err := f.RecordEffect(ctx, fleet.Effect{MissionID: "m-1", Kind: "k2"}); err != nil || ok {
		t.Fatalf("a repeated effect: %v, %v; want refused", ok, err)
	}
	effects, err := f.Effects(ctx, "m-1")
	if err != nil || len(effects) != 4 {
		t.Fatalf("Effects: %v, %v", effects, err)
	}
	for i, e := range effects {
		if e.Seq != int64(i+1) || e.Kind != fmt.Sprint("k", i) {
			t.Errorf("effect %d: %+v", i, e)
		}
	}
}

// TestEffectsStaleGuess: two Fleets (two workers) record effects of one
// mission in turn, each guessing from what it last wrote: every guess the
// other made stale is caught, no effect is lost or recorded twice, and the
// numbers stay unique and in order.
func TestEffectsStaleGuess(t *testing.T) {
	t.Parallel()
	hub := testHub(t)
	a, b := openTestFleet(t, hub, nil), openTestFleet(t, hub, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stores := []*Fleet{a, b, b, a, a, b}
	for i, s := range stores {
		ok, err := s.RecordEffect(ctx, fleet.Effect{MissionID: "m-1", Kind: fmt.Sprint("k", i)})
		if err != nil || !ok {
			t.Fatalf("effect %d: %v, %v", i, ok, err)
		}
	}
	// Repeats are refused by either Fleet, whatever it guesses.
	for i := range stores {
		for _, s := range []*Fleet{a, b} {
			if ok, err := s.RecordEffect(ctx, fleet.Effect{MissionID: "m-1", Kind: fmt.Sprint("k", i)}); err != nil || ok {
				t.Fatalf("effect %d repeated: %v, %v; want refused", i, ok, err)
			}
		}
	}
	effects, err := b.Effects(ctx, "m-1")
	if err != nil || len(effects) != len(stores) {
		t.Fatalf("Effects: %v, %v", effects, err)
	}
	for i, e := range effects {
		if e.Seq != int64(i+1) || e.Kind != fmt.Sprint("k", i) {
			t.Errorf("effect %d: %+v", i, e)
		}
	}
}
