package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/dronehub/dronehub/domain"
	"github.com/dronehub/dronehub/httpapi"
)

// client talks to a dronehub HTTP API.
type client struct {
	base string
	// bases, when set (simulate), are worker URLs to fail over between;
	// at indexes the one in use.
	bases  []string
	at     atomic.Int64
	key    string
	http   *http.Client
	asJSON bool
	out    io.Writer
}

func (a *App) clientFlags(fs *flag.FlagSet) *client {
	c := &client{http: &http.Client{Timeout: 30 * time.Second}, out: a.Stdout}
	fs.StringVar(&c.base, "url", "http://127.0.0.1:8080", "dronehub HTTP API base URL")
	fs.StringVar(&c.key, "api-key", "", "API key sent as 'Authorization: Bearer KEY'")
	fs.BoolVar(&c.asJSON, "json", false, "print JSON instead of a table")
	return c
}

// parseInterleaved parses flags that may come before, between or after the
// positional arguments ("mission status ID --json") and returns the
// positionals.
func (a *App) parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	first := true
	for {
		var err error
		if first {
			err = a.parse(fs, args)
			first = false
		} else if err = fs.Parse(args); err != nil && !errors.Is(err, flag.ErrHelp) {
			err = errUsage
		}
		if err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// apiError is a non-2xx answer, carrying the problem detail.
type apiError struct {
	status int
	detail string
	fields []httpapi.FieldProblem
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("HTTP %d: %s", e.status, e.detail)
	for _, f := range e.fields {
		msg += fmt.Sprintf("\n  %s: %s", f.Field, f.Message)
	}
	return msg
}

func (c *client) do(ctx context.Context, method, path string, body any, out any) (int, http.Header, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(raw)
	}
	base := c.current()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(base, "/")+path, rd)
	if err != nil {
		return 0, nil, fmt.Errorf("--url %q: %w", base, err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, &unreachable{base: base, err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return resp.StatusCode, resp.Header, err
	}
	if resp.StatusCode >= 300 {
		var p httpapi.Problem
		if json.Unmarshal(data, &p) == nil && p.Detail != "" {
			return resp.StatusCode, resp.Header, &apiError{status: resp.StatusCode, detail: p.Detail, fields: p.Errors}
		}
		return resp.StatusCode, resp.Header, &apiError{status: resp.StatusCode, detail: strings.TrimSpace(string(data))}
	}
	if out != nil && len(data) > 0 {
		if raw, ok := out.(*json.RawMessage); ok {
			*raw = append((*raw)[:0], data...)
		} else if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, resp.Header, fmt.Errorf("unexpected answer from %s: %w", base, err)
		}
	}
	return resp.StatusCode, resp.Header, nil
}

func (c *client) printJSON(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

const missionUsage = `Usage: dronehub mission COMMAND [flags]

Commands:
  start      --pickup LAT,LON --dropoff LAT,LON --package ID [--weight KG] [--size small|medium|large]
             [--deadline 30m|RFC3339] [--id ID] [--drone ID] [--expedited] | --file request.json
  status     ID [--history]
  list       [--status Running,Completed] [--prefix P] [--top N] [--all]
  raise      ID EVENT [JSON]       only events the worker declares public; missions declare
                                   none by default, so this answers 403 (use cancel/terminate)
  cancel     ID [--reason TEXT]    stop the mission and compensate
  terminate  ID [--reason TEXT]    stop the mission where it stands, no compensation
  suspend    ID [--reason TEXT]
  resume     ID [--reason TEXT]
  purge      ID                    delete an ended mission's history

Every command takes --url, --api-key and --json.
`

func (a *App) mission(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(a.Stderr, missionUsage)
		return errUsage
	}
	cmd, args := args[0], args[1:]
	fs := a.flagSet("mission "+cmd, "mission "+cmd+" [flags]")
	c := a.clientFlags(fs)
	switch cmd {
	case "start":
		return a.missionStart(ctx, fs, c, args)
	case "status":
		history := fs.Bool("history", false, "include the orchestration history")
		pos, err := a.parseInterleaved(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr(a, "mission status ID")
		}
		path := "/api/missions/" + url.PathEscape(pos[0])
		if *history {
			path += "?showHistory=true"
		}
		var st httpapi.Status
		if _, _, err := c.do(ctx, http.MethodGet, path, nil, &st); err != nil {
			return err
		}
		if c.asJSON {
			return c.printJSON(st)
		}
		return printMission(c.out, st)
	case "list":
		return a.missionList(ctx, fs, c, args)
	case "raise":
		pos, err := a.parseInterleaved(fs, args)
		if err != nil {
			return err
		}
		if len(pos) < 2 || len(pos) > 3 {
			return usageErr(a, "mission raise ID EVENT [JSON]")
		}
		var body any
		if len(pos) == 3 {
			if !json.Valid([]byte(pos[2])) {
				return fmt.Errorf("event payload %q is not JSON (quote strings: '\"text\"')", pos[2])
			}
			body = []byte(pos[2])
		}
		if _, _, err := c.do(ctx, http.MethodPost, "/api/missions/"+url.PathEscape(pos[0])+"/events/"+url.PathEscape(pos[1]), body, nil); err != nil {
			var ae *apiError
			if errors.As(err, &ae) && ae.status == http.StatusForbidden {
				return fmt.Errorf("%w\nevent %q cannot be raised on mission %s: missions declare no public events unless the worker lists them in worker.Config.PublicEvents; to stop a mission use `dronehub mission cancel %s` (compensates) or `terminate`", err, pos[1], pos[0], pos[0])
			}
			return err
		}
		return c.done(map[string]string{"id": pos[0], "event": pos[1], "result": "raised"}, "event %s raised on mission %s\n", pos[1], pos[0])
	case "cancel", "terminate", "suspend", "resume":
		reason := fs.String("reason", "", "reason recorded with the operation")
		pos, err := a.parseInterleaved(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr(a, "mission "+cmd+" ID [--reason TEXT]")
		}
		path := "/api/missions/" + url.PathEscape(pos[0]) + "/" + cmd
		if *reason != "" {
			path += "?reason=" + url.QueryEscape(*reason)
		}
		if _, _, err := c.do(ctx, http.MethodPost, path, nil, nil); err != nil {
			return err
		}
		return c.done(map[string]string{"id": pos[0], "result": cmd + " requested"}, "mission %s: %s requested\n", pos[0], cmd)
	case "purge":
		pos, err := a.parseInterleaved(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr(a, "mission purge ID")
		}
		var res httpapi.PurgeResult
		if _, _, err := c.do(ctx, http.MethodDelete, "/api/missions/"+url.PathEscape(pos[0]), nil, &res); err != nil {
			return err
		}
		return c.done(res, "mission %s purged\n", pos[0])
	}
	fmt.Fprintf(a.Stderr, "dronehub: unknown mission command %q\n\n%s", cmd, missionUsage)
	return errUsage
}

func (c *client) done(v any, format string, args ...any) error {
	if c.asJSON {
		return c.printJSON(v)
	}
	_, err := fmt.Fprintf(c.out, format, args...)
	return err
}

func usageErr(a *App, synopsis string) error {
	fmt.Fprintf(a.Stderr, "Usage: dronehub %s\n", synopsis)
	return errUsage
}

func parseLatLon(flagName, s string) (*domain.LatLon, error) {
	lat, lon, ok := strings.Cut(s, ",")
	if !ok {
		return nil, fmt.Errorf("--%s %q: want LAT,LON, e.g. 47.6405,-122.1296", flagName, s)
	}
	la, err1 := strconv.ParseFloat(strings.TrimSpace(lat), 64)
	lo, err2 := strconv.ParseFloat(strings.TrimSpace(lon), 64)
	if err1 != nil || err2 != nil || !finite(la) || !finite(lo) {
		return nil, fmt.Errorf("--%s %q: want LAT,LON as finite numbers, e.g. 47.6405,-122.1296", flagName, s)
	}
	return &domain.LatLon{Lat: la, Lon: lo}, nil
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func (a *App) missionStart(ctx context.Context, fs *flag.FlagSet, c *client, args []string) error {
	var (
		file, id, drone, pickup, dropoff, pkg, size, deadline string
		weight                                                float64
		expedited                                             bool
	)
	fs.StringVar(&file, "file", "", "JSON mission request file ('-' for stdin); other request flags are then ignored")
	fs.StringVar(&id, "id", "", "mission id (default: a new UUID)")
	fs.StringVar(&drone, "drone", "", "drone to use (default: the fleet picks one)")
	fs.StringVar(&pickup, "pickup", "", "pickup position LAT,LON")
	fs.StringVar(&dropoff, "dropoff", "", "drop-off position LAT,LON")
	fs.StringVar(&pkg, "package", "", "package id")
	fs.Float64Var(&weight, "weight", 1, "package weight in kg")
	fs.StringVar(&size, "size", "small", "package size: small, medium or large")
	fs.StringVar(&deadline, "deadline", "1h", "deadline: a duration from now (30m) or an RFC 3339 time")
	fs.BoolVar(&expedited, "expedited", false, "expedited delivery")
	pos, err := a.parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("unexpected argument %q; mission start takes only flags", pos[0])
	}
	var body []byte
	if file != "" {
		if file == "-" {
			body, err = io.ReadAll(os.Stdin)
		} else {
			body, err = os.ReadFile(file)
		}
		if err != nil {
			return fmt.Errorf("--file: %w", err)
		}
	} else {
		req := domain.MissionRequest{MissionID: id, DroneID: drone, Expedited: expedited,
			Package: &domain.Package{ID: pkg, WeightKg: weight, Size: domain.Size(size)}}
		if pickup == "" || dropoff == "" || pkg == "" {
			return errors.New("mission start needs --pickup, --dropoff and --package (or --file)")
		}
		if !finite(weight) {
			return fmt.Errorf("--weight %v: want a finite number of kg, e.g. 1.5", weight)
		}
		if req.Pickup, err = parseLatLon("pickup", pickup); err != nil {
			return err
		}
		if req.Dropoff, err = parseLatLon("dropoff", dropoff); err != nil {
			return err
		}
		if d, derr := time.ParseDuration(deadline); derr == nil {
			req.Deadline = time.Now().Add(d).UTC().Truncate(time.Second)
		} else if t, terr := time.Parse(time.RFC3339, deadline); terr == nil {
			req.Deadline = t
		} else {
			return fmt.Errorf("--deadline %q: want a duration (30m) or an RFC 3339 time", deadline)
		}
		if body, err = json.Marshal(req); err != nil {
			return fmt.Errorf("mission start: cannot encode the request: %w", err)
		}
	}
	var acc httpapi.Accepted
	if _, _, err := c.do(ctx, http.MethodPost, "/api/missions", body, &acc); err != nil {
		return err
	}
	return c.done(acc, "mission %s started\nstatus: %s\n", acc.ID, c.resolve(acc.StatusQueryGetURI))
}

// resolve makes a URL from an answer absolute against --url: a worker
// without --public-url answers with relative URLs.
// A path from the root ("/api/missions/m-1") is joined to --url the way
// requests are, so a --url with a path prefix (a reverse proxy) keeps it.
func (c *client) resolve(ref string) string {
	if u, err := url.Parse(ref); err != nil || u.IsAbs() || ref == "" {
		return ref
	}
	if strings.HasPrefix(ref, "/") && !strings.HasPrefix(ref, "//") {
		return strings.TrimSuffix(c.base, "/") + ref
	}
	base, err := url.Parse(strings.TrimSuffix(c.base, "/") + "/")
	if err != nil {
		return ref
	}
	u, err := base.Parse(ref)
	if err != nil {
		return ref
	}
	return u.String()
}

func (a *App) missionList(ctx context.Context, fs *flag.FlagSet, c *client, args []string) error {
	status := fs.String("status", "", "runtime statuses to show, comma-separated (Running, Completed, Failed, Terminated, Pending, Suspended)")
	prefix := fs.String("prefix", "", "only missions whose id starts with this")
	top := fs.Int("top", 20, "missions per page")
	all := fs.Bool("all", false, "follow continuation tokens to list every mission")
	pos, err := a.parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("unexpected argument %q; mission list takes only flags", pos[0])
	}
	q := url.Values{}
	if *status != "" {
		q.Set("runtimeStatus", *status)
	}
	if *prefix != "" {
		q.Set("instanceIdPrefix", *prefix)
	}
	q.Set("top", strconv.Itoa(*top))
	var items []httpapi.Status
	token := ""
	for {
		if token != "" {
			q.Set("continuationToken", token)
		}
		var page httpapi.ListPage
		if _, _, err := c.do(ctx, http.MethodGet, "/api/missions?"+q.Encode(), nil, &page); err != nil {
			return err
		}
		items = append(items, page.Instances...)
		token = page.ContinuationToken
		if token == "" || !*all {
			break
		}
	}
	if c.asJSON {
		return c.printJSON(httpapi.ListPage{Instances: items, ContinuationToken: token})
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tPHASE\tDRONE\tPROGRESS\tCREATED")
	for _, st := range items {
		ms := missionStatus(st)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0f%%\t%s\n", st.InstanceID, st.RuntimeStatus, orDash(string(ms.Phase)), orDash(ms.DroneID),
			ms.ProgressPct, st.CreatedTime.Local().Format(time.DateTime))
	}
	if token != "" {
		fmt.Fprintln(tw, "(more: use --all, or --top)")
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// missionStatus reads a mission's status from its output when it ended,
// else from its custom status.
func missionStatus(st httpapi.Status) domain.MissionStatus {
	var ms domain.MissionStatus
	if json.Unmarshal(st.Output, &ms) == nil && ms.Phase != "" {
		return ms
	}
	_ = json.Unmarshal(st.CustomStatus, &ms)
	return ms
}

func printMission(w io.Writer, st httpapi.Status) error {
	ms := missionStatus(st)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("mission", st.InstanceID)
	row("runtime status", st.RuntimeStatus)
	row("phase", orDash(string(ms.Phase)))
	row("drone", orDash(ms.DroneID))
	row("progress", fmt.Sprintf("%.0f%% (%.0f m left)", ms.ProgressPct, ms.DistanceLeftM))
	if ms.ETA != nil && !ms.Phase.Terminal() {
		row("eta", ms.ETA.Local().Format(time.TimeOnly))
	}
	if ms.Battery != nil {
		row("battery", fmt.Sprintf("%.0f%%", *ms.Battery*100))
	}
	if ms.Health != "" {
		row("health", ms.Health)
	}
	if ms.Failure != "" {
		row("failure", ms.Failure)
	}
	for i, c := range ms.Compensations {
		label := ""
		if i == 0 {
			label = "compensation"
		}
		detail := c.Step + ": " + c.Status
		if c.Error != "" {
			detail += " (" + c.Error + ")"
		}
		row(label, detail)
	}
	if st.FailureDetails != nil {
		row("error", st.FailureDetails.ErrorMessage)
	}
	row("created", st.CreatedTime.Local().Format(time.DateTime))
	row("updated", st.LastUpdatedTime.Local().Format(time.DateTime))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.History) > 0 {
		fmt.Fprintln(w, "\nhistory:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, e := range st.History {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", e.Timestamp.Local().Format("15:04:05.000"), e.EventType, strings.TrimSpace(e.Name+" "+e.Detail))
		}
		return tw.Flush()
	}
	return nil
}

const droneUsage = `Usage: dronehub drone COMMAND [flags]

Commands:
  add     ID --home LAT,LON
  list
  status  ID

Every command takes --url, --api-key and --json.
`

func (a *App) drone(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(a.Stderr, droneUsage)
		return errUsage
	}
	cmd, args := args[0], args[1:]
	fs := a.flagSet("drone "+cmd, "drone "+cmd+" [flags]")
	c := a.clientFlags(fs)
	switch cmd {
	case "add":
		home := fs.String("home", "", "home base LAT,LON")
		pos, err := a.parseInterleaved(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 || *home == "" {
			return usageErr(a, "drone add ID --home LAT,LON")
		}
		h, err := parseLatLon("home", *home)
		if err != nil {
			return err
		}
		var ds httpapi.DroneStatus
		if _, _, err := c.do(ctx, http.MethodPost, "/api/drones", httpapi.NewDrone{ID: pos[0], Home: h}, &ds); err != nil {
			return err
		}
		return c.done(ds, "drone %s added at %.5f,%.5f\n", ds.DroneID, ds.Home.Lat, ds.Home.Lon)
	case "list", "status":
		pos, err := a.parseInterleaved(fs, args)
		if err != nil {
			return err
		}
		var drones []httpapi.DroneStatus
		if cmd == "status" {
			if len(pos) != 1 {
				return usageErr(a, "drone status ID")
			}
			var ds httpapi.DroneStatus
			if _, _, err := c.do(ctx, http.MethodGet, "/api/drones/"+url.PathEscape(pos[0])+"/status", nil, &ds); err != nil {
				return err
			}
			if c.asJSON {
				return c.printJSON(ds)
			}
			drones = []httpapi.DroneStatus{ds}
		} else {
			var list struct {
				Drones []httpapi.DroneStatus `json:"drones"`
			}
			if _, _, err := c.do(ctx, http.MethodGet, "/api/drones", nil, &list); err != nil {
				return err
			}
			if c.asJSON {
				return c.printJSON(list)
			}
			drones = list.Drones
		}
		tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DRONE\tMISSION\tMODE\tBATTERY\tHEALTH\tPOSITION\tSEQ")
		for _, d := range drones {
			mode, battery, position, seq := "-", "-", "-", "-"
			if s := d.State; s != nil {
				mode, battery = string(s.FlightMode), fmt.Sprintf("%.0f%%", s.Battery*100)
				position = fmt.Sprintf("%.5f,%.5f", s.Position.Lat, s.Position.Lon)
				seq = strconv.FormatInt(s.Seq, 10)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.DroneID, orDash(d.MissionID), mode, battery, d.Health, position, seq)
		}
		return tw.Flush()
	}
	fmt.Fprintf(a.Stderr, "dronehub: unknown drone command %q\n\n%s", cmd, droneUsage)
	return errUsage
}
