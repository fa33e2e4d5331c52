package keyed

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestLocksSerialiseAndHandOver: holders of one key run one at a time and
// see the Value the previous holder left; the lock is gone when unused.
func TestLocksSerialiseAndHandOver(t *testing.T) {
	var k Locks[int]
	var wg sync.WaitGroup
	inside := 0
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := k.Lock(context.Background(), "d")
			if err != nil {
				t.Error(err)
				return
			}
			inside++ // a data race (and -race failure) if two held it at once
			l.Value++
			k.Unlock("d", l)
		}()
	}
	wg.Wait()
	if inside != 50 || len(k.locks) != 0 {
		t.Fatalf("%d holders, %d locks left", inside, len(k.locks))
	}
}

// TestLockGivesUpWithItsContext: a waiter whose context ends gets its
// error and leaves nothing behind.
func TestLockGivesUpWithItsContext(t *testing.T) {
	var k Locks[struct{}]
	held, err := k.Lock(context.Background(), "d")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := k.Lock(ctx, "d"); !errors.Is(err, context.Canceled) {
		t.Fatalf("waiter: %v", err)
	}
	k.Unlock("d", held)
	if len(k.locks) != 0 {
		t.Fatalf("%d locks left", len(k.locks))
	}
}

// TestBackoffEndsWithItsContext: Wait grows to Max and returns ctx's error.
func TestBackoffEndsWithItsContext(t *testing.T) {
	b := Backoff{First: time.Microsecond, Max: 4 * time.Microsecond}
	for range 5 {
		if err := b.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if b.delay != 4*time.Microsecond {
		t.Fatalf("delay %s, want the max", b.delay)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b = Backoff{First: time.Hour, Max: time.Hour}
	if err := b.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel: %v", err)
	}
}
