package cli

import (
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
)

// Progress on long commands (simulate, bench, deadletter replay --all,
// mission watch): on a terminal a bar redrawn in place, elsewhere (a pipe, a
// file, CI logs) plain lines, so that nothing prints escape sequences into
// a log.

// bar renders frac (clamped to [0, 1]) as a bar of width cells.
func bar(frac float64, width int) string {
	if math.IsNaN(frac) || frac < 0 {
		frac = 0
	}
	frac = min(frac, 1)
	full := int(math.Round(frac * float64(width)))
	return "[" + strings.Repeat("█", full) + strings.Repeat("░", width-full) + "]"
}

// fraction is done/total, 0 when total is not positive.
func fraction(done, total int) float64 {
	if total <= 0 {
		return 0
	}
	return float64(done) / float64(total)
}

// statusLine is one line at the bottom of a terminal, rewritten in place:
// Draw replaces it, Println prints a line above it and draws it again, and
// Clear erases it. It is safe for concurrent use (simulate's flights report
// retries while its main goroutine draws).
type statusLine struct {
	mu    sync.Mutex
	w     io.Writer
	text  string
	drawn bool
}

func newStatusLine(w io.Writer) *statusLine { return &statusLine{w: w} }

// Draw shows text as the line.
func (s *statusLine) Draw(text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.text = text
	fmt.Fprintf(s.w, "\r\033[K%s", text)
	s.drawn = true
}

// Println prints a line of its own above the status line.
func (s *statusLine) Println(line string) {
	s.Above(func() { fmt.Fprintln(s.w, line) })
}

// Above runs print, which writes lines to another writer on the same
// terminal (stdout), with the status line out of the way, and draws the
// line again after them.
func (s *statusLine) Above(print func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drawn {
		fmt.Fprint(s.w, "\r\033[K")
	}
	print()
	if s.drawn {
		fmt.Fprint(s.w, s.text)
	}
}

// Clear erases the line; what is printed next starts at its place.
func (s *statusLine) Clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drawn {
		fmt.Fprint(s.w, "\r\033[K")
		s.drawn = false
	}
}
