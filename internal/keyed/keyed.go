// Package keyed has the two tools a store needs to let many writers update
// one record without racing itself or giving up: per-key locks taken in
// arrival order, and a back-off for optimistic-concurrency retries.
package keyed

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Locks is a set of per-key locks, acquired in arrival order, that give up
// when the caller's context ends. A key's lock exists only while someone
// holds or waits for it. Each lock carries a Value of type T that a holder
// may leave for the next one (e.g. the record it just wrote). The zero
// value is ready.
type Locks[T any] struct {
	mu    sync.Mutex
	locks map[string]*Lock[T]
}

// Lock is one key's lock; Value is for its holder only.
type Lock[T any] struct {
	sem   chan struct{} // holds a token while the lock is held
	refs  int           // holders and waiters
	Value T
}

// Lock waits for key's lock, or returns ctx's error if ctx ends first.
func (k *Locks[T]) Lock(ctx context.Context, key string) (*Lock[T], error) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*Lock[T]{}
	}
	l := k.locks[key]
	if l == nil {
		l = &Lock[T]{sem: make(chan struct{}, 1)}
		k.locks[key] = l
	}
	l.refs++
	k.mu.Unlock()
	select {
	case l.sem <- struct{}{}:
		return l, nil
	case <-ctx.Done():
		k.release(key, l)
		return nil, ctx.Err()
	}
}

// Unlock releases a lock Lock returned for key.
func (k *Locks[T]) Unlock(key string, l *Lock[T]) {
	<-l.sem
	k.release(key, l)
}

// Len is how many keys are held or waited for.
func (k *Locks[T]) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.locks)
}

func (k *Locks[T]) release(key string, l *Lock[T]) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l.refs--; l.refs == 0 {
		delete(k.locks, key)
	}
}

// Backoff paces retries after lost optimistic-concurrency races:
// exponentially growing delays (First, doubling up to Max) with full
// jitter, so that writers that collided spread out instead of colliding
// again. Copy a configured Backoff for each sequence of retries.
type Backoff struct {
	First, Max time.Duration
	delay      time.Duration
}

// Wait sleeps before the next retry, or returns ctx's error if ctx ends first.
func (b *Backoff) Wait(ctx context.Context) error {
	if b.delay == 0 {
		b.delay = b.First
	}
	t := time.NewTimer(rand.N(b.delay + 1))
	defer t.Stop()
	b.delay = min(2*b.delay, b.Max)
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
