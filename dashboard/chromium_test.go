package dashboard_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Environment of the browser tests.
const (
	// envChromium names the browser binary; default the first of
	// chromium, chromium-browser, google-chrome, headless-shell in PATH.
	envChromium = "DRONEHUB_CHROMIUM"
	// envScreenshots is where the screenshots go; default a temporary
	// directory of the test. Point it at docs/dashboard to refresh the
	// README's pictures.
	envScreenshots = "DRONEHUB_SCREENSHOTS"
)

// findChromium returns the browser to drive. Without one the test is
// skipped, or failed under CI=true, where scripts/test has installed it.
func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv(envChromium); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	const how = "install Chromium (Debian: apt-get install -y chromium; ./scripts/test does it when run as root) or set " + envChromium
	if os.Getenv("CI") == "true" {
		t.Fatalf("no Chromium for the browser tests: %s", how)
	}
	t.Skipf("skipping the browser tests: no Chromium found; %s", how)
	return ""
}

// browser is one headless Chromium shared by a test's subtests.
type browser struct {
	ctx context.Context
}

// startBrowser starts Chromium with a fresh profile. The flags keep it off
// the network (the machine may have none, and it must not try) and let it
// run as root in a container.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	exe := findChromium(t)
	dir, err := os.MkdirTemp("", "dronehub-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(dir),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints,DialMediaRouteProvider"),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("use-mock-keychain", true),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("lang", "en-US"),
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		bcancel()
		acancel()
		removeProfile(t, dir)
	})
	// The first run starts the browser; its context must be the browser's
	// own (a run whose context ends closes the browser it started).
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start %s: %v", exe, err)
	}
	return &browser{ctx: bctx}
}

// removeProfile deletes the browser's profile. Its helper processes may
// still write there for a moment after it stopped, so a failed removal is
// retried until a deadline.
func removeProfile(t *testing.T, dir string) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.RemoveAll(dir)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Logf("leaving the browser profile %s: %v", dir, err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tab is one browser tab. It records what the page writes to the console;
// when the test ends, any error there fails it, unless allowed says so.
type tab struct {
	t    *testing.T
	ctx  context.Context
	mu   sync.Mutex
	errs []string
}

// open opens a tab. allowed, when not nil, accepts console errors the test
// expects (a refused request logs one).
func (b *browser) open(t *testing.T, allowed func(chromedp.ConsoleMessage) bool) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx)
	tb := &tab{t: t, ctx: ctx}
	// The first run opens the tab, with the tab's own context, as above.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(desktopWidth, desktopHeight)); err != nil {
		cancel()
		t.Fatalf("open a tab: %v", err)
	}
	msgs := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.Type != chromedp.ConsoleError && !m.IsException() {
				continue
			}
			if allowed != nil && allowed(m) {
				continue
			}
			tb.mu.Lock()
			tb.errs = append(tb.errs, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line+1))
			tb.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		tb.mu.Lock()
		defer tb.mu.Unlock()
		if len(tb.errs) > 0 {
			t.Errorf("the page wrote errors to the console:\n%s", strings.Join(tb.errs, "\n"))
		}
	})
	return tb
}

// run runs the actions, failing the test after timeout.
func (tb *tab) run(what string, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("timed out after %s", timeout)
		}
		tb.t.Fatalf("%s: %v\n%s", what, err, tb.describe())
	}
}

// waitFor polls a JavaScript expression until it is true.
func (tb *tab) waitFor(what string, timeout time.Duration, expr string) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, timeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		tb.t.Fatalf("waiting for %s: %v\n%s", what, err, tb.describe())
	}
}

// eval evaluates a JavaScript expression.
func eval[T any](tb *tab, expr string) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		tb.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// describe is the page's state for a failure message.
func (tb *tab) describe() string {
	ctx, cancel := context.WithTimeout(tb.ctx, 3*time.Second)
	defer cancel()
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText.slice(0, 1500)`))
	if err != nil {
		return "(page state unknown: " + err.Error() + ")"
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return "page: " + text + "\nconsole errors: " + strings.Join(tb.errs, "; ")
}

// shots saves screenshots.
type shots struct {
	dir string
}

func newShots(t *testing.T) *shots {
	dir := os.Getenv(envScreenshots)
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)
	return &shots{dir: dir}
}

// viewport is a screenshot's size.
type viewport struct {
	name          string
	width, height int64
}

// The desktop size tabs open at and is shot at.
const desktopWidth, desktopHeight = 1280, 800

// take saves the tab as name-desktop.png (1280×800) and name-phone.png (390
// px wide), each once ready holds in that size, and leaves the tab at the
// desktop size.
func (s *shots) take(tb *tab, name, ready string) {
	tb.t.Helper()
	for _, v := range []viewport{{"desktop", desktopWidth, desktopHeight}, {"phone", 390, 844}} {
		tb.run("resize to "+v.name, 10*time.Second, chromedp.EmulateViewport(v.width, v.height))
		tb.waitFor(name+" to be drawn at "+v.name+" size", 10*time.Second, ready)
		// Usable at this width: nothing makes the page scroll sideways
		// (wide tables scroll in their own box).
		if w := eval[int64](tb, `document.documentElement.scrollWidth`); w > v.width {
			tb.t.Errorf("%s at %s size is %d px wide, more than the %d px viewport", name, v.name, w, v.width)
		}
		ctx, cancel := context.WithTimeout(tb.ctx, 20*time.Second)
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		cancel()
		if err != nil {
			tb.t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(s.dir, name+"-"+v.name+".png"), png, 0o644); err != nil {
			tb.t.Fatal(err)
		}
	}
	tb.run("resize to desktop", 10*time.Second, chromedp.EmulateViewport(desktopWidth, desktopHeight))
}
