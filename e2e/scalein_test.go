package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dronehub/dronehub/backend/azurestorage"
)

// Graceful scale-in: a worker stopped with SIGTERM stops taking work,
// finishes what it holds, releases its partition leases and tells the other
// workers, which claim them at once instead of at their next lease round.

// stopGrace is the --shutdown-grace the scale tests give their workers, and
// stopWithin how long a SIGTERMed worker may take to exit: the grace, plus
// the hand-back of cut-off work and the lease release that follow it.
const (
	stopGrace  = 20 * time.Second
	stopWithin = stopGrace + 15*time.Second
)

// stop sends the worker SIGTERM, as a scale-in does, after taking it out of
// the live set (no new requests go to it), and waits for it to exit. It
// returns how long the exit took; an exit status other than 0 or an exit
// slower than within is an error (the worker is then killed).
func (c *cluster) stop(w *worker, within time.Duration) (time.Duration, error) {
	c.mu.Lock()
	for i, l := range c.live {
		if l == w {
			c.live = append(c.live[:i:i], c.live[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
	w.killed.Store(true) // an exit the test asked for
	began := time.Now()
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return 0, fmt.Errorf("SIGTERM %s: %w", w.name, err)
	}
	t := time.NewTimer(within)
	defer t.Stop()
	select {
	case <-w.exited:
	case <-t.C:
		w.kill()
		return time.Since(began), fmt.Errorf("%s did not exit within %s of SIGTERM; killed", w.name, within)
	}
	took := time.Since(began)
	if w.waitErr != nil {
		return took, fmt.Errorf("%s exited after SIGTERM with %v", w.name, w.waitErr)
	}
	return took, nil
}

// hubView reads the task hub's lease rows straight from storage, with a
// backend of its own that runs no lease rounds (a client).
type hubView struct {
	b *azurestorage.Backend
}

func openHubView(t *testing.T, c *cluster) *hubView {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := azurestorage.Open(ctx, azurestorage.Options{
		ConnectionString: c.storage, HubName: c.hub,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("open the task hub: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return &hubView{b: b}
}

// leaseState is who holds each partition, by worker process, as storage
// says at one moment.
type leaseState struct {
	at     time.Time
	owner  map[int]*worker // partition → the live lease's holder; absent when unowned
	byName map[string][]int
	rows   string // the rows as FormatLeases prints them, for failure messages
}

// read reads the lease rows and maps each live lease's owner to the worker
// process whose heartbeat names its HTTP address.
func (v *hubView) read(ctx context.Context, c *cluster) (leaseState, error) {
	leases, hbs, err := v.b.Leases(ctx)
	if err != nil {
		return leaseState{}, err
	}
	now := time.Now()
	s := leaseState{at: now, owner: map[int]*worker{}, byName: map[string][]int{}, rows: azurestorage.FormatLeases(leases, hbs, now)}
	byID := map[string]*worker{}
	c.mu.Lock()
	all := append([]*worker(nil), c.all...)
	c.mu.Unlock()
	for _, h := range hbs {
		for _, w := range all {
			if h.HTTP != "" && strings.HasSuffix(w.url, "//"+h.HTTP) {
				byID[h.WorkerID] = w
			}
		}
	}
	for _, l := range leases {
		if l.Owner == "" || !l.Expires.After(now) {
			continue
		}
		if w := byID[l.Owner]; w != nil {
			s.owner[l.Partition] = w
			s.byName[w.name] = append(s.byName[w.name], l.Partition)
		} else {
			s.owner[l.Partition] = &worker{name: "worker " + l.Owner}
		}
	}
	for _, ps := range s.byName {
		sort.Ints(ps)
	}
	return s, nil
}

// await polls the lease rows every 20 ms until cond holds or within passes.
func (v *hubView) await(t *testing.T, c *cluster, within time.Duration, what string, cond func(leaseState) bool) leaseState {
	t.Helper()
	deadline := time.Now().Add(within)
	var last leaseState
	var lastErr error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := v.read(ctx, c)
		cancel()
		if err == nil {
			last = s
			if cond(s) {
				return s
			}
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last read error %v; lease rows:\n%s", within, what, lastErr, last.rows)
		}
		time.Sleep(20 * time.Millisecond) // the poll interval; the deadline bounds the wait
	}
}

// handover is what one scale-in did to the partitions of the worker that
// left: when each stopped being owned (released, or the last sighting of
// the old owner) and when another worker held it again.
type handover struct {
	partitions []int
	sigterm    time.Time
	exited     time.Duration
	// gap[p] is how long partition p was seen without an owner: from the
	// first read that found it released to the first that found it held
	// by another worker (each read within 20 ms plus a request of the
	// previous one).
	gap map[int]time.Duration
	// sinceTerm[p] is from SIGTERM to the first read that found it held by
	// another worker.
	sinceTerm map[int]time.Duration
	// last: no other worker was left to take the partitions.
	last bool
}

// longestGap is the longest time a partition of the scale-in was unowned.
func (h handover) longestGap() time.Duration {
	var m time.Duration
	for _, g := range h.gap {
		m = max(m, g)
	}
	return m
}

func (h handover) String() string {
	if h.last {
		return fmt.Sprintf("exited %s after SIGTERM; the last worker: its partitions %v stay free", h.exited.Round(time.Millisecond), h.partitions)
	}
	var parts []string
	for _, p := range h.partitions {
		parts = append(parts, fmt.Sprintf("p%d unowned %s (held again %s after SIGTERM)", p,
			h.gap[p].Round(time.Millisecond), h.sinceTerm[p].Round(time.Millisecond)))
	}
	return fmt.Sprintf("exited %s after SIGTERM; %s", h.exited.Round(time.Millisecond), strings.Join(parts, ", "))
}

// scaleIn SIGTERMs w and watches its partitions move to the other live
// workers (with none left, only its exit). It returns once every one of
// them is held again and w has exited, or an error after within (or when
// w's exit was not clean).
func scaleIn(c *cluster, v *hubView, w *worker, within time.Duration) (handover, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	before, err := v.read(ctx, c)
	cancel()
	if err != nil {
		return handover{}, fmt.Errorf("read the lease rows: %w", err)
	}
	others := len(c.liveWorkers()) > 1
	h := handover{partitions: before.byName[w.name], sigterm: time.Now(), gap: map[int]time.Duration{}, sinceTerm: map[int]time.Duration{}, last: !others}
	type exit struct {
		took time.Duration
		err  error
	}
	exited := make(chan exit, 1)
	go func() {
		took, err := c.stop(w, stopWithin)
		exited <- exit{took, err}
	}()
	released := map[int]time.Time{}
	last := map[int]time.Time{} // the last read that still saw w hold p
	for _, p := range h.partitions {
		last[p] = h.sigterm
	}
	deadline := h.sigterm.Add(within)
	var done *exit
	var rows string
	for {
		select {
		case e := <-exited:
			done = &e
		default:
		}
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := v.read(rctx, c)
		cancel()
		if err == nil {
			rows = s.rows
			for _, p := range h.partitions {
				if _, ok := h.sinceTerm[p]; ok {
					continue
				}
				switch o := s.owner[p]; {
				case o == w:
					last[p] = s.at
				case o == nil:
					if _, ok := released[p]; !ok {
						released[p] = s.at
					}
				default:
					from, ok := released[p]
					if !ok {
						from = last[p] // moved between two reads
					}
					h.gap[p] = s.at.Sub(from)
					h.sinceTerm[p] = s.at.Sub(h.sigterm)
				}
			}
		}
		if done != nil && (len(h.sinceTerm) == len(h.partitions) || !others) {
			break
		}
		if time.Now().After(deadline) {
			return h, fmt.Errorf("scale-in of %s: not over %s after SIGTERM (exited: %v, partitions held again: %v of %v); lease rows:\n%s\n--- %s log tail ---\n%s",
				w.name, within, done != nil, h.sinceTerm, h.partitions, rows, w.name, w.logTail(40))
		}
		time.Sleep(20 * time.Millisecond) // the poll interval; the deadline bounds the wait
	}
	h.exited = done.took
	if done.err != nil {
		return h, fmt.Errorf("scale-in of %s: %w\n--- log tail ---\n%s", w.name, done.err, w.logTail(40))
	}
	return h, nil
}

// TestGracefulScaleIn stops one of two idle workers with SIGTERM, as an
// autoscaler scaling in does, and measures how long its partitions stay
// without an owner: the survivor must hold them within a second, not at
// its next lease round (LeaseDuration/3, 5 s) or after the lease expires
// (15 s).
func TestGracefulScaleIn(t *testing.T) {
	az := shared.Get(t)
	c := newCluster(t, az.ConnectionString(), "scalein")
	c.args = []string{"--shutdown-grace", stopGrace.String()}
	w1 := c.start("worker-1", 0)
	w2 := c.start("worker-2", 0)
	v := openHubView(t, c)
	v.await(t, c, 30*time.Second, "the partitions to split 2/2", func(s leaseState) bool {
		return len(s.byName[w1.name]) == 2 && len(s.byName[w2.name]) == 2
	})
	h, err := scaleIn(c, v, w2, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("scale-in of worker-2: %s", h)
	if g := h.longestGap(); g > time.Second {
		t.Errorf("a partition of worker-2 stayed unowned for %s after its release; want under 1 s (%s)", g.Round(time.Millisecond), h)
	}
	s := v.await(t, c, 5*time.Second, "worker-1 to hold every partition", func(s leaseState) bool { return len(s.byName[w1.name]) == 4 })
	t.Logf("lease rows after the scale-in:\n%s", s.rows)
	c.checkWorkers()
}
