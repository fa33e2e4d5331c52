package azurestorage

import (
	"net/http/httptest"
	"sync"
	"testing"
)

func TestOperationKind(t *testing.T) {
	cases := []struct{ svc, method, url, want string }{
		{"queue", "POST", "http://h/acct/q/messages", "queue.enqueue"},
		{"queue", "GET", "http://h/acct/q/messages?numofmessages=32", "queue.dequeue"},
		{"queue", "GET", "http://h/acct/q/messages?peekonly=true", "queue.peek"},
		{"queue", "DELETE", "http://h/acct/q/messages/id?popreceipt=x", "queue.delete"},
		{"queue", "PUT", "http://h/acct/q/messages/id?popreceipt=x&visibilitytimeout=3", "queue.update"},
		{"queue", "PUT", "http://h/acct/q", "queue.create"},
		{"table", "POST", "http://h/acct/$batch", "table.batch"},
		{"table", "GET", "http://h/acct/T(PartitionKey='a',RowKey='b')", "table.get"},
		{"table", "GET", "http://h/acct/T()?$filter=x", "table.query"},
		{"table", "POST", "http://h/acct/Tables", "table.admin"},
		{"blob", "PUT", "http://h/acct/c/b?comp=lease", "blob.lease.acquire"},
		{"blob", "PUT", "http://h/acct/c?restype=container", "blob.container.put"},
		{"blob", "GET", "http://h/acct/c/b", "blob.get"},
	}
	for _, tc := range cases {
		r := httptest.NewRequest(tc.method, tc.url, nil)
		if tc.want == "blob.lease.acquire" {
			r.Header.Set("x-ms-lease-action", "acquire")
		}
		if got := OperationKind(tc.svc, r); got != tc.want {
			t.Errorf("%s %s: got %s, want %s", tc.method, tc.url, got, tc.want)
		}
	}
}

func TestCounterConcurrent(t *testing.T) {
	var c Counter
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				c.add("queue.enqueue")
				_ = c.Snapshot()
			}
		}()
	}
	wg.Wait()
	if got := c.Snapshot()["queue.enqueue"]; got != 800 || c.Total() != 800 {
		t.Fatalf("count = %d, total %d", got, c.Total())
	}
	if c.String() != "queue.enqueue=800" {
		t.Fatalf("String = %q", c.String())
	}
	c.Reset()
	if c.Total() != 0 {
		t.Fatal("Reset kept counts")
	}
}
