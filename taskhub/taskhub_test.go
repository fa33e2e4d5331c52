package taskhub_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	dtbackend "github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/dronehub/dronehub/taskhub"
)

// event builds a history event of the given kind (the HistoryEvent oneof
// field name) with the given fields set. durabletask-go's event constructors
// are internal; protobuf reflection on the public type stands in for them.
func event(id int32, kind string, fields map[string]protoreflect.Value) *dtbackend.HistoryEvent {
	e := &dtbackend.HistoryEvent{EventId: id, Timestamp: timestamppb.Now()}
	m := e.ProtoReflect()
	fd := m.Descriptor().Fields().ByName(protoreflect.Name(kind))
	if fd == nil {
		panic("no history event kind " + kind)
	}
	sub := m.NewField(fd).Message()
	for name, v := range fields {
		sub.Set(sub.Descriptor().Fields().ByName(protoreflect.Name(name)), v)
	}
	m.Set(fd, protoreflect.ValueOfMessage(sub))
	return e
}

func ts(t time.Time) protoreflect.Value {
	return protoreflect.ValueOfMessage(timestamppb.New(t).ProtoReflect())
}

func timerCreated(id int32, fireAt time.Time) *dtbackend.HistoryEvent {
	return event(id, "timerCreated", map[string]protoreflect.Value{"fireAt": ts(fireAt)})
}

func timerFired(timerID int32, fireAt time.Time) *dtbackend.HistoryEvent {
	return event(-1, "timerFired", map[string]protoreflect.Value{"fireAt": ts(fireAt), "timerId": protoreflect.ValueOfInt32(timerID)})
}

func eventRaised(name string) *dtbackend.HistoryEvent {
	return event(-1, "eventRaised", map[string]protoreflect.Value{"name": protoreflect.ValueOfString(name)})
}

func taskScheduled(id int32, name string) *dtbackend.HistoryEvent {
	return event(id, "taskScheduled", map[string]protoreflect.Value{"name": protoreflect.ValueOfString(name)})
}

func executionStarted(scheduledStart *time.Time) *dtbackend.HistoryEvent {
	fields := map[string]protoreflect.Value{
		"name":  protoreflect.ValueOfString("Orch"),
		"input": protoreflect.ValueOfMessage(wrapperspb.String(`"x"`).ProtoReflect()),
	}
	if scheduledStart != nil {
		fields["scheduledStartTimestamp"] = ts(*scheduledStart)
	}
	return event(-1, "executionStarted", fields)
}

func TestDropStaleTimers(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		history   []*dtbackend.HistoryEvent
		newEvents []*dtbackend.HistoryEvent
		keep      []int // indexes of newEvents kept
	}{
		{
			name:      "timer of the current execution is kept",
			history:   []*dtbackend.HistoryEvent{timerCreated(0, t0)},
			newEvents: []*dtbackend.HistoryEvent{timerFired(0, t0)},
			keep:      []int{0},
		},
		{
			name: "watchdog from the previous execution collides with an activity id",
			// After continue-as-new the history holds the new execution only:
			// task 0 is an activity, and no timer 0 exists.
			history:   []*dtbackend.HistoryEvent{executionStarted(nil), taskScheduled(0, "Slow")},
			newEvents: []*dtbackend.HistoryEvent{timerFired(0, t0)},
			keep:      []int{},
		},
		{
			name: "same id, different fire time: a timer of an earlier execution",
			history: []*dtbackend.HistoryEvent{
				timerCreated(0, t0.Add(time.Hour)),
			},
			newEvents: []*dtbackend.HistoryEvent{timerFired(0, t0), timerFired(0, t0.Add(time.Hour))},
			keep:      []int{1},
		},
		{
			name:      "a timer that already fired is dropped when delivered again",
			history:   []*dtbackend.HistoryEvent{timerCreated(3, t0), timerFired(3, t0)},
			newEvents: []*dtbackend.HistoryEvent{timerFired(3, t0)},
			keep:      []int{},
		},
		{
			name:      "a duplicate in one batch is kept once",
			history:   []*dtbackend.HistoryEvent{timerCreated(1, t0)},
			newEvents: []*dtbackend.HistoryEvent{timerFired(1, t0), eventRaised("e"), timerFired(1, t0)},
			keep:      []int{0, 1},
		},
		{
			name:      "other events are untouched",
			history:   nil,
			newEvents: []*dtbackend.HistoryEvent{eventRaised("a"), executionStarted(nil), eventRaised("b")},
			keep:      []int{0, 1, 2},
		},
		{
			name:      "timers created in the new events' own turn do not count",
			history:   nil,
			newEvents: []*dtbackend.HistoryEvent{timerCreated(0, t0), timerFired(0, t0)},
			keep:      []int{0},
		},
		{
			name:      "nothing in, nothing out",
			history:   []*dtbackend.HistoryEvent{timerCreated(0, t0)},
			newEvents: nil,
			keep:      []int{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := slices.Clone(tt.newEvents)
			got := taskhub.DropStaleTimers(tt.history, tt.newEvents)
			want := make([]*dtbackend.HistoryEvent, len(tt.keep))
			for i, k := range tt.keep {
				want[i] = tt.newEvents[k]
			}
			if !slices.Equal(got, want) {
				t.Errorf("kept %d events %v, want %v", len(got), got, want)
			}
			if !slices.Equal(tt.newEvents, before) {
				t.Errorf("DropStaleTimers modified its input")
			}
		})
	}
}

func TestScheduledStart(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	later, earlier := now.Add(2*time.Second), now.Add(-time.Second)
	if at, ok := taskhub.ScheduledStart([]*dtbackend.HistoryEvent{eventRaised("e"), executionStarted(&later)}, now); !ok || !at.Equal(later) {
		t.Errorf("future start: %s, %v; want %s, true", at, ok, later)
	}
	if _, ok := taskhub.ScheduledStart([]*dtbackend.HistoryEvent{executionStarted(&earlier)}, now); ok {
		t.Errorf("a start time in the past postpones the start")
	}
	if _, ok := taskhub.ScheduledStart([]*dtbackend.HistoryEvent{executionStarted(&now)}, now); ok {
		t.Errorf("a start time of exactly now postpones the start")
	}
	if _, ok := taskhub.ScheduledStart([]*dtbackend.HistoryEvent{executionStarted(nil), eventRaised("e")}, now); ok {
		t.Errorf("no start time postpones the start")
	}
	if _, ok := taskhub.ScheduledStart(nil, now); ok {
		t.Errorf("no events postpone the start")
	}
}

func TestStatusNames(t *testing.T) {
	want := map[api.OrchestrationStatus]string{
		api.RUNTIME_STATUS_RUNNING:          "Running",
		api.RUNTIME_STATUS_COMPLETED:        "Completed",
		api.RUNTIME_STATUS_CONTINUED_AS_NEW: "ContinuedAsNew",
		api.RUNTIME_STATUS_FAILED:           "Failed",
		api.RUNTIME_STATUS_CANCELED:         "Canceled",
		api.RUNTIME_STATUS_TERMINATED:       "Terminated",
		api.RUNTIME_STATUS_PENDING:          "Pending",
		api.RUNTIME_STATUS_SUSPENDED:        "Suspended",
	}
	for s, name := range want {
		if got := taskhub.StatusName(s); got != name {
			t.Errorf("StatusName(%v) = %q, want %q", s, got, name)
		}
		for _, spelling := range []string{name, strings.ToUpper(name), strings.ToLower(name), taskhub.StorageName(s)} {
			if got, err := taskhub.ParseStatus(spelling); err != nil || got != s {
				t.Errorf("ParseStatus(%q) = %v, %v; want %v", spelling, got, err, s)
			}
		}
	}
	if got, err := taskhub.ParseStatus("continued_as_new"); err != nil || got != api.RUNTIME_STATUS_CONTINUED_AS_NEW {
		t.Errorf("ParseStatus(continued_as_new) = %v, %v", got, err)
	}
	if got, err := taskhub.ParseStatus("Cancelled"); err != nil || got != api.RUNTIME_STATUS_CANCELED {
		t.Errorf("ParseStatus(Cancelled) = %v, %v", got, err)
	}
	_, err := taskhub.ParseStatus("Sleeping")
	if !errors.Is(err, taskhub.ErrInvalidQuery) || !strings.Contains(err.Error(), "Running") {
		t.Errorf("ParseStatus(Sleeping) error %v: want ErrInvalidQuery listing the valid names", err)
	}
}

func TestQueryNormalize(t *testing.T) {
	q, err := taskhub.Query{}.Normalize()
	if err != nil || q.PageSize != taskhub.DefaultPageSize {
		t.Errorf("zero query: %+v, %v; want page size %d", q, err, taskhub.DefaultPageSize)
	}
	now := time.Now()
	token := taskhub.Cursor{Created: "2030-01-01 00:00:00 +0000 UTC", ID: "a"}.Encode()
	for _, ok := range []taskhub.Query{
		{PageSize: 1}, {PageSize: taskhub.MaxPageSize},
		{CreatedFrom: now, CreatedTo: now.Add(time.Nanosecond)},
		{CreatedFrom: now}, {CreatedTo: now},
		{ContinuationToken: token},
	} {
		if _, err := ok.Normalize(); err != nil {
			t.Errorf("Normalize(%+v): %v", ok, err)
		}
	}
	for _, bad := range []taskhub.Query{
		{PageSize: -1}, {PageSize: taskhub.MaxPageSize + 1},
		{CreatedFrom: now, CreatedTo: now}, {CreatedFrom: now.Add(time.Second), CreatedTo: now},
		{ContinuationToken: "garbage"}, {ContinuationToken: taskhub.Cursor{Created: "x"}.Encode()},
	} {
		if _, err := bad.Normalize(); !errors.Is(err, taskhub.ErrInvalidQuery) {
			t.Errorf("Normalize(%+v) = %v, want ErrInvalidQuery", bad, err)
		}
	}
}

func TestCursorRoundTrip(t *testing.T) {
	c := taskhub.Cursor{Created: "2030-01-01 00:00:00.123 +0000 UTC", ID: "mission/42?x=%"}
	got, err := taskhub.DecodeCursor(c.Encode())
	if err != nil || got != c {
		t.Fatalf("DecodeCursor(Encode(%+v)) = %+v, %v", c, got, err)
	}
	if strings.ContainsAny(c.Encode(), "+/=") {
		t.Errorf("token %q is not URL-safe", c.Encode())
	}
}
