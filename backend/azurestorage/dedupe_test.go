package azurestorage

import (
	"fmt"
	"testing"
	"time"
)

// TestSeenRoundTrip: Seen entries survive the sentinel's properties, and
// the most a commit can hold fits under the property limits.
func TestSeenRoundTrip(t *testing.T) {
	now := time.Now()
	var in []seenEntry
	for i := range maxSeenEntries {
		in = append(in, seenEntry{key: seenKey(fmt.Sprint("msg-", i)), at: now.Unix() - int64(i), resend: i%7 == 0})
	}
	e := entity{}
	setSeen(e, in)
	for i := range seenProps {
		if n := len(e.str(seenPropName(i))); n > seenPropChars {
			t.Fatalf("%s holds %d characters, limit %d", seenPropName(i), n, seenPropChars)
		}
	}
	out := parseSeen(e)
	if len(out) != len(in) {
		t.Fatalf("%d entries back, want %d", len(out), len(in))
	}
	for i := range in {
		if in[i] != out[i] {
			t.Fatalf("entry %d: %+v, want %+v", i, out[i], in[i])
		}
	}
}

// TestPruneSeen: an entry goes once its delete is confirmed (a resendable
// one only after resendWindow too), or after seenMaxAge; the cap drops the
// oldest.
func TestPruneSeen(t *testing.T) {
	now := time.Now()
	at := func(d time.Duration) int64 { return now.Add(-d).Unix() }
	entries := []seenEntry{
		{key: "old", at: at(25 * time.Hour)},
		{key: "confirmed", at: at(time.Minute)},
		{key: "unconfirmed", at: at(time.Minute)},
		{key: "resend-young", at: at(time.Minute), resend: true},
		{key: "resend-old", at: at(2 * time.Hour), resend: true},
	}
	confirmed := map[string]bool{"confirmed": true, "resend-young": true, "resend-old": true}
	got, dropped := pruneSeen(entries, confirmed, now)
	var keys []string
	for _, s := range got {
		keys = append(keys, s.key)
	}
	if fmt.Sprint(keys) != "[unconfirmed resend-young]" || dropped != 0 {
		t.Fatalf("kept %v (dropped %d), want [unconfirmed resend-young]", keys, dropped)
	}
	many := make([]seenEntry, maxSeenEntries+5)
	for i := range many {
		many[i] = seenEntry{key: fmt.Sprint(i), at: now.Unix()}
	}
	got, dropped = pruneSeen(many, nil, now)
	if len(got) != maxSeenEntries || dropped != 5 || got[0].key != "5" {
		t.Fatalf("cap: %d kept, %d dropped, first %s", len(got), dropped, got[0].key)
	}
}

// TestPackedEvents: an event list survives encoding, and a commit of
// any size is one row (inline chunks or a blob reference).
func TestPackedEvents(t *testing.T) {
	if _, err := decodeEvents([]byte{0x05, 1, 2}); err == nil {
		t.Fatal("a truncated list decoded")
	}
	if got, err := decodeEvents(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty list: %v, %v", got, err)
	}
	if _, _, ok := parseHistoryRK(historyRK(3, 17)); !ok {
		t.Fatal("history row key does not parse")
	}
	if g, p, _ := parseHistoryRK(historyRK(3, 17)); g != 3 || p != 17 {
		t.Fatalf("parsed %d/%d", g, p)
	}
	if _, _, ok := parseHistoryRK(outboxRK(1)); ok {
		t.Fatal("an outbox key parsed as history")
	}
}
