package azurestorage

import (
	"net/http"
	"sort"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// Counter counts storage requests by operation kind, such as "queue.enqueue",
// "queue.dequeue", "table.batch" or "blob.lease". Every attempt is counted,
// retries included: each is a billed request. It is safe for concurrent use;
// the zero value is ready.
type Counter struct {
	mu     sync.Mutex
	counts map[string]int64
	// statuses counts the answered attempts by kind and status class.
	statuses map[[2]string]int64
}

// addStatus counts an attempt of kind by the status class of its answer.
func (c *Counter) addStatus(kind, class string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.statuses == nil {
		c.statuses = map[[2]string]int64{}
	}
	c.statuses[[2]string{kind, class}]++
}

// StatusSnapshot returns the counts so far by kind and then by the status
// class of the answer: "2xx", "3xx", "4xx", "5xx", or "error" when no
// answer came (a transport error or a timeout). An attempt in flight is in
// Snapshot but not yet here.
func (c *Counter) StatusSnapshot() map[string]map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]map[string]int64{}
	for k, v := range c.statuses {
		if out[k[0]] == nil {
			out[k[0]] = map[string]int64{}
		}
		out[k[0]][k[1]] = v
	}
	return out
}

// statusClass classifies an attempt's outcome for StatusSnapshot.
func statusClass(resp *http.Response, err error) string {
	if resp == nil {
		return "error"
	}
	switch c := resp.StatusCode / 100; c {
	case 2, 3, 4, 5:
		return string(rune('0'+c)) + "xx"
	}
	return "error"
}

func (c *Counter) add(kind string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts == nil {
		c.counts = map[string]int64{}
	}
	c.counts[kind]++
}

// Snapshot returns a copy of the counts so far.
func (c *Counter) Snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.counts))
	for k, v := range c.counts {
		out[k] = v
	}
	return out
}

// Total returns the number of requests counted.
func (c *Counter) Total() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, v := range c.counts {
		n += v
	}
	return n
}

// Reset clears the counts.
func (c *Counter) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counts, c.statuses = nil, nil
}

// String lists the counts as "kind=n" sorted by kind.
func (c *Counter) String() string {
	snap := c.Snapshot()
	keys := make([]string, 0, len(snap))
	for k := range snap {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(itoa(snap[k]))
	}
	return b.String()
}

func itoa(n int64) string {
	if n == 0 {
		return "0"
	}
	var buf [20]byte
	i := len(buf)
	for n > 0 {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
	}
	return string(buf[i:])
}

// Policy returns an azcore pipeline policy that counts the requests of one
// service ("queue", "table" or "blob"). Install it per retry
// (ClientOptions.PerRetryPolicies) to count every attempt.
func (c *Counter) Policy(service string) policy.Policy {
	return countPolicy{c: c, service: service}
}

type countPolicy struct {
	c       *Counter
	service string
}

func (p countPolicy) Do(req *policy.Request) (*http.Response, error) {
	kind := OperationKind(p.service, req.Raw())
	p.c.add(kind)
	resp, err := req.Next()
	p.c.addStatus(kind, statusClass(resp, err))
	return resp, err
}

// OperationKind classifies a storage request as "service.operation".
func OperationKind(service string, r *http.Request) string {
	q := r.URL.Query()
	path := r.URL.Path
	op := strings.ToLower(r.Method)
	switch service {
	case "queue":
		switch {
		case strings.HasSuffix(path, "/messages") && r.Method == http.MethodGet && q.Get("peekonly") == "true":
			op = "peek"
		case strings.HasSuffix(path, "/messages") && r.Method == http.MethodGet:
			op = "dequeue"
		case strings.HasSuffix(path, "/messages") && r.Method == http.MethodPost:
			op = "enqueue"
		case strings.HasSuffix(path, "/messages") && r.Method == http.MethodDelete:
			op = "clear"
		case q.Get("popreceipt") != "" && r.Method == http.MethodDelete:
			op = "delete"
		case q.Get("popreceipt") != "" && r.Method == http.MethodPut:
			op = "update"
		case q.Get("comp") == "metadata":
			op = "metadata"
		case r.Method == http.MethodPut:
			op = "create"
		}
	case "table":
		switch {
		case strings.HasSuffix(path, "$batch"):
			op = "batch"
		case strings.HasSuffix(path, "/Tables") || strings.Contains(path, "/Tables("):
			op = "admin"
		case r.Method == http.MethodGet && strings.HasSuffix(path, ")") && !strings.HasSuffix(path, "()"):
			op = "get"
		case r.Method == http.MethodGet:
			op = "query"
		case r.Method == http.MethodPost:
			op = "insert"
		case r.Method == http.MethodPut:
			op = "replace"
		case r.Method == "MERGE" || r.Method == http.MethodPatch:
			op = "merge"
		}
	case "blob":
		if comp := q.Get("comp"); comp != "" {
			op = comp
			if comp == "lease" {
				op = "lease." + strings.ToLower(r.Header.Get("x-ms-lease-action"))
			}
		} else if q.Get("restype") == "container" {
			op = "container." + op
		}
	}
	return service + "." + op
}
