package azurestorage

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
)

// Wake-ups: workers tell each other about work directly, so that idle
// queues can be polled seldom.
//
// Azure queues cannot be waited on, so a worker learns of a message by
// polling, and an idle worker's bill is its polls. Instead, every worker
// listens for UDP datagrams on Options.Wake and publishes the address in
// its heartbeat row; a process that enqueues a visible message to a
// control queue sends the partition's owner (known from the lease rows) a
// datagram naming the queue, and one that enqueues an activity sends one
// to every live worker. The receiver polls that queue at once. Polling
// stays as the fallback, every Options.IdlePollInterval per idle queue:
// a datagram is a hint, and losing one (UDP, a stale view of who owns a
// partition, a firewall) only delays the message until that poll.
//
// A datagram costs no storage request and carries nothing but the hub and
// the queue: a forged one makes the receiver poll a queue once, at most
// one poll per queue every minPoll however many arrive (see received).

// wakeOff disables wake-ups (Options.Wake).
const wakeOff = "off"

// defaultIdlePoll is Options.IdlePollInterval's default.
const defaultIdlePoll = 15 * time.Second

// waker sends and receives wake-ups for one backend.
type waker struct {
	b *Backend

	mu     sync.Mutex
	conn   *net.UDPConn // the listener, nil until started or when off
	addr   string       // advertised "ip:port"
	owners map[int]string
	peers  map[string]string // live worker id -> wake address
	viewAt time.Time         // when owners and peers were last read
	reads  bool              // a view read is under way
	last   [maxPartitions + 1]time.Time
	sender *net.UDPConn
}

func newWaker(b *Backend) *waker { return &waker{b: b} }

// listen starts the listener (once, with the lease manager: only workers
// listen). Failures leave wake-ups off: polling still finds everything.
func (w *waker) listen() {
	if w.b.opts.Wake == wakeOff {
		return
	}
	addr, err := net.ResolveUDPAddr("udp", w.b.opts.Wake)
	if err != nil {
		w.b.log.Warn("azurestorage: wake-ups off: bad listen address; idle queues are polled every IdlePollInterval", "wake", w.b.opts.Wake, "err", err)
		return
	}
	conn, err := net.ListenUDP("udp", addr)
	if err != nil {
		w.b.log.Warn("azurestorage: wake-ups off: cannot listen; idle queues are polled every IdlePollInterval", "wake", w.b.opts.Wake, "err", err)
		return
	}
	local := conn.LocalAddr().(*net.UDPAddr)
	host := local.IP
	if host.IsUnspecified() {
		host = outboundIP()
	}
	w.mu.Lock()
	w.conn, w.addr = conn, net.JoinHostPort(host.String(), strconv.Itoa(local.Port))
	w.mu.Unlock()
	w.b.wg.Add(1)
	go func() {
		defer w.b.wg.Done()
		w.serve(conn)
	}()
	context.AfterFunc(w.b.bg, func() { conn.Close() })
}

// outboundIP is the address other hosts reach this one at: the source
// address the routing table picks (no packet is sent), or loopback.
func outboundIP() net.IP {
	c, err := net.Dial("udp", "192.0.2.1:9") // TEST-NET-1: never contacted
	if err != nil {
		return net.IPv4(127, 0, 0, 1)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP
}

// address is the advertised wake address, "" when not listening.
func (w *waker) address() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.addr
}

// listening reports whether wake-ups are on for this worker: its idle
// queues are then polled every IdlePollInterval instead of MaxPollInterval.
func (w *waker) listening() bool { return w.address() != "" }

func (w *waker) serve(conn *net.UDPConn) {
	buf := make([]byte, 512)
	for {
		n, _, err := conn.ReadFromUDP(buf)
		if err != nil {
			if w.b.bg.Err() != nil {
				return
			}
			continue
		}
		w.received(string(buf[:n]))
	}
}

// received handles one datagram: "dronehub-wake <hub> c<partition>",
// "dronehub-wake <hub> w" or "dronehub-wake <hub> l" (run a lease round:
// see tellPeers).
func (w *waker) received(msg string) {
	f := strings.Fields(msg)
	if len(f) != 3 || f[0] != "dronehub-wake" || f[1] != w.b.opts.HubName {
		return
	}
	if f[2] == "l" {
		w.b.lm.kickRound() // at most one round per kickSpacing, however many come
		return
	}
	i := -1
	switch {
	case f[2] == "w":
		i = 0
	case strings.HasPrefix(f[2], "c"):
		p, err := strconv.Atoi(f[2][1:])
		if err != nil || p < 0 || p >= w.b.names.partitions {
			return
		}
		i = p + 1
	default:
		return
	}
	// At most one poll per queue every minPoll however many datagrams
	// arrive, but none is dropped: one that comes too soon after the last
	// poll it caused schedules a poll minPoll after that one (its message
	// may have been enqueued after that poll looked), unless a poll is
	// already scheduled after it, which covers it. (Dropping it instead
	// left the message to the idle poll, 15 s later by default.)
	w.mu.Lock()
	now := time.Now()
	at := now
	switch {
	case now.Before(w.last[i]):
		w.mu.Unlock()
		return
	case now.Sub(w.last[i]) < minPoll:
		at = w.last[i].Add(minPoll)
	}
	w.last[i] = at
	w.mu.Unlock()
	if at.Equal(now) {
		w.b.poll.markDirty(i)
	} else {
		w.b.poll.dueBy(i, at)
	}
	if i == 0 {
		w.b.actWake.Notify()
	} else {
		w.b.orchWake.Notify()
	}
}

// setView records who owns each partition and the live workers' wake
// addresses, as a lease round or a view read saw them.
func (w *waker) setView(owners map[int]string, peers map[string]string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.owners, w.peers, w.viewAt = owners, peers, time.Now()
}

// sent tells the workers concerned about a visible message this process
// enqueued to q.
func (w *waker) sent(q *azqueue.QueueClient) {
	if w.b.opts.Wake == wakeOff {
		return
	}
	queue, partition := "w", w.b.queuePartition(q)
	switch {
	case partition >= 0:
		queue = "c" + strconv.Itoa(partition)
	case q != w.b.work:
		return
	}
	targets := w.targets(partition)
	if len(targets) == 0 {
		return
	}
	msg := []byte(fmt.Sprintf("dronehub-wake %s %s", w.b.opts.HubName, queue))
	conn := w.senderConn()
	if conn == nil {
		return
	}
	for _, t := range targets {
		if addr, err := net.ResolveUDPAddr("udp", t); err == nil {
			conn.WriteToUDP(msg, addr) // a hint: a lost one waits for the poll
		}
	}
}

// targets are the wake addresses of the workers to tell about partition
// p's queue (-1: the work-item queue: every live worker but this one).
func (w *waker) targets(p int) []string {
	w.refreshView()
	me := w.b.opts.WorkerID
	w.mu.Lock()
	defer w.mu.Unlock()
	if p >= 0 {
		owner := w.owners[p]
		if owner == "" || owner == me || w.peers[owner] == "" {
			return nil
		}
		return []string{w.peers[owner]}
	}
	var out []string
	for id, addr := range w.peers {
		if id != me && addr != "" {
			out = append(out, addr)
		}
	}
	return out
}

// refreshView reads the lease rows when the view is older than a lease
// round (a process that runs no rounds, such as a client, learns who owns
// what this way: one listing per round at most, and only while it
// enqueues). The first read is waited for, briefly, so that the first
// message is not sent without its wake-up; later ones run in the
// background.
func (w *waker) refreshView() {
	w.mu.Lock()
	stale := time.Since(w.viewAt) > w.b.opts.LeaseDuration/3
	first := w.viewAt.IsZero()
	if !stale || w.reads {
		w.mu.Unlock()
		return
	}
	w.reads = true
	w.mu.Unlock()
	done := make(chan struct{})
	w.b.wg.Add(1)
	go func() {
		defer w.b.wg.Done()
		defer close(done)
		ctx, cancel := context.WithTimeout(w.b.bg, 10*time.Second)
		defer cancel()
		rows, err := w.b.lm.list(ctx)
		if err == nil {
			w.setView(viewOf(rows, w.b.names.partitions, time.Now()))
		}
		w.mu.Lock()
		w.reads = false
		w.mu.Unlock()
	}()
	if first {
		select {
		case <-done:
		case <-time.After(2 * time.Second):
		}
	}
}

// viewOf extracts partition owners and live workers' wake addresses from
// the lease table's rows.
func viewOf(rows []entity, partitions int, now time.Time) (map[int]string, map[string]string) {
	owners, peers := map[int]string{}, map[string]string{}
	for _, e := range rows {
		switch e.str("PartitionKey") {
		case workerPK:
			if liveHeartbeat(e, now) {
				peers[heartbeatID(e)] = e.str("Wake")
			}
		case leasePK:
			if p, ok := leasePartition(e.str("RowKey")); ok && p < partitions && parseTime(e.str("Expires")).After(now) {
				owners[p] = e.str("Owner")
			}
		}
	}
	return owners, peers
}

// tellPeers asks the workers named (every live worker but this one when
// none is named), as the last lease round saw them, to run a lease round
// now: "dronehub-wake <hub> l". A worker sends it when it has released its
// partitions at Close, when it joins the hub (after its first round), and
// when it releases a partition for a named worker; the receivers claim what
// was released, or shed to the newcomer, at once instead of at their next
// round (up to LeaseDuration/3 later). Workers of earlier versions ignore
// it and claim at their next round, as before. It sends from a socket of
// its own, so it works after Close has closed the sender.
func (w *waker) tellPeers(ids ...string) {
	if w.b.opts.Wake == wakeOff {
		return
	}
	me := w.b.opts.WorkerID
	w.mu.Lock()
	var targets []string
	if len(ids) == 0 {
		for id, addr := range w.peers {
			if id != me && addr != "" {
				targets = append(targets, addr)
			}
		}
	}
	for _, id := range ids {
		if addr := w.peers[id]; id != me && addr != "" {
			targets = append(targets, addr)
		}
	}
	w.mu.Unlock()
	if len(targets) == 0 {
		return
	}
	conn, err := net.ListenUDP("udp", nil)
	if err != nil {
		return // a hint: the peers' next rounds find the change
	}
	defer conn.Close()
	msg := []byte(fmt.Sprintf("dronehub-wake %s l", w.b.opts.HubName))
	for _, t := range targets {
		if addr, err := net.ResolveUDPAddr("udp", t); err == nil {
			conn.WriteToUDP(msg, addr)
		}
	}
}

// senderConn is the socket wake-ups are sent from (made once).
func (w *waker) senderConn() *net.UDPConn {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sender == nil {
		c, err := net.ListenUDP("udp", nil)
		if err != nil {
			return nil
		}
		w.sender = c
		context.AfterFunc(w.b.bg, func() { c.Close() })
	}
	return w.sender
}
