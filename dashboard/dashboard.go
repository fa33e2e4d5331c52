// Package dashboard is dronehub's web dashboard for operators: missions,
// the live fleet on a map, the task hub and its dead letters, and any
// orchestration. Every page and script is embedded in the binary (plain
// HTML, CSS and JavaScript modules, no build step, nothing fetched from
// the internet); the page reads and acts through the HTTP API
// (docs/http-api.md) and follows changes through one live feed, GET
// /api/events.
//
// The feed costs the task hub the same whatever the number of open
// dashboards: one poller per process, running only while a dashboard is
// connected, reads what changed once per interval and fans the changes out
// to every connected page (see docs/dashboard.md).
//
// The worker mounts the dashboard on its HTTP API (httpapi.Options.Mounts),
// so its pages are public, while the feed, under /api/, needs the API key
// like every /api route.
package dashboard

import (
	"context"
	"embed"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/dronehub/dronehub/httpapi"
	"github.com/dronehub/dronehub/taskhub"
)

//go:embed static
var staticFiles embed.FS

// Source is what the dashboard's feed reads; *httpapi.Service is one. Its
// errors are *httpapi.Error values, whose Detail the page shows.
type Source interface {
	List(ctx context.Context, sc httpapi.Scope, query url.Values) (httpapi.ListPage, error)
	Status(ctx context.Context, sc httpapi.Scope, id string, history bool) (httpapi.Status, error)
	Drones(ctx context.Context) ([]httpapi.DroneStatus, error)
	HubInfo(ctx context.Context) (taskhub.HubInfo, error)
	DeadLetters(ctx context.Context) ([]taskhub.DeadLetter, error)
}

// ChangeSource is a Source that can also list only the instances whose
// status changed since a time (*httpapi.Service is one, on a backend that
// is a taskhub.ChangeLister). With one, the feed lists the instances in
// full only on its first read, every resync (a minute) and after a failed
// read; its other reads ask for what changed. A 501 (*httpapi.Error) means
// the backend cannot, and the feed lists in full every time.
type ChangeSource interface {
	InstancesChangedSince(ctx context.Context, since time.Time, limit int) ([]httpapi.Status, time.Time, error)
}

// Options configures a Dashboard. Source is required.
type Options struct {
	Source Source
	// RequestCounts returns the backend's storage requests by kind (see
	// taskhub.RequestCounter), shown on the task hub page; nil when the
	// backend does not count them.
	RequestCounts func() map[string]int64
	// Interval is how often the feed reads the task hub while a dashboard
	// is connected; default 1 s.
	Interval time.Duration
	// HubInterval is how often it reads the hub's description and dead
	// letters while a task hub page is open; default 5 s.
	HubInterval time.Duration
	// BatteryFloor is the charge below which a drone shows as low on
	// battery; default 0.2 (the worker passes its mission setting).
	BatteryFloor float64
	// SilentAfter is how long a drone on a mission may go without a frame
	// (by its own timestamps) before it shows as silent; default 15 s.
	SilentAfter time.Duration
	// MaxClients bounds the feeds open at once; more get 503. Default 256.
	MaxClients int
	// Logger receives the feed's errors; default slog.Default().
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.HubInterval <= 0 {
		o.HubInterval = 5 * time.Second
	}
	if o.BatteryFloor <= 0 {
		o.BatteryFloor = 0.2
	}
	if o.SilentAfter <= 0 {
		o.SilentAfter = 15 * time.Second
	}
	if o.MaxClients <= 0 {
		o.MaxClients = 256
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Dashboard serves the dashboard's pages and its live feed.
type Dashboard struct {
	feed   *feed
	static http.Handler
}

// New returns a dashboard over opts.Source. Its feed polls nothing until a
// page connects.
func New(opts Options) *Dashboard {
	opts = opts.withDefaults()
	sub, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic(err) // the embedded tree always has the directory
	}
	return &Dashboard{
		feed:   newFeed(opts),
		static: http.StripPrefix("/ui/", staticHeaders(http.FileServerFS(sub))),
	}
}

// Routes are the dashboard's routes by http.ServeMux pattern, for
// httpapi.Options.Mounts: the pages under /ui/, "/" redirecting there, and
// the live feed GET /api/events.
func (d *Dashboard) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /ui/":        d.static,
		"GET /{$}":        http.HandlerFunc(redirectToUI),
		"GET /api/events": http.HandlerFunc(d.feed.serve),
	}
}

// Stats reports what the live feed has done so far.
func (d *Dashboard) Stats() Stats { return d.feed.statsNow() }

// CloseStreams ends the open feeds (pages reconnect, to this or another
// worker). An http.Server's Shutdown waits for connections to go idle, and a
// feed never does, so register it with http.Server.RegisterOnShutdown.
func (d *Dashboard) CloseStreams() { d.feed.closeStreams("the worker is shutting down") }

// Close ends the open feeds, refuses new ones with 503 and waits for the
// poller to stop, so that nothing reads the task hub after it is closed.
func (d *Dashboard) Close() { d.feed.close() }

func redirectToUI(w http.ResponseWriter, r *http.Request) {
	// Relative, so that a reverse proxy's path prefix is kept.
	w.Header().Set("Location", "ui/")
	w.WriteHeader(http.StatusFound)
}

// staticHeaders sets the headers of the embedded files: revalidate (they
// change with the binary), and a content security policy that allows only
// this origin, so the page runs nothing it did not ship with.
func staticHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		next.ServeHTTP(w, r)
	})
}
