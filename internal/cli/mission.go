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
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/domain"
)

const missionUsage = `Usage: dronehub mission COMMAND [flags]

Commands:
  start      --pickup LAT,LON --dropoff LAT,LON --package ID [--weight KG] [--size small|medium|large]
             [--deadline 30m|RFC3339] [--id ID] [--drone ID] [--expedited] | --file request.json
  status     ID [--history]
  watch      ID [--interval 500ms]  follow the mission live until it ends: phase, progress,
                                   distance, ETA, battery, health (--json: a line per change).
                                   Exit status: 0 delivered, 3 failed, 4 cancelled,
                                   5 terminated, 1 error, 130 interrupted (Ctrl-C)
  list       [--status Running,Completed] [--prefix P] [--top N] [--all]
  raise      ID EVENT [JSON]       only events the worker declares public; missions declare
                                   none by default, so this answers 403 (use cancel/terminate)
  cancel     ID [--reason TEXT]    stop the mission and compensate
  terminate  ID [--reason TEXT]    stop the mission where it stands, no compensation
  suspend    ID [--reason TEXT]
  resume     ID [--reason TEXT]
  purge      ID                    delete an ended mission's history

Every command takes --url, --api-key and --json; dronehub mission COMMAND -h lists its flags.
`

// missionSynopsis is each mission command's usage line, without "dronehub".
var missionSynopsis = map[string]string{
	"start":     "mission start --pickup LAT,LON --dropoff LAT,LON --package ID [flags] | --file request.json",
	"status":    "mission status ID [--history]",
	"watch":     "mission watch ID [--interval 500ms] [--json]",
	"list":      "mission list [--status Running,Completed] [--prefix P] [--top N] [--all]",
	"raise":     "mission raise ID EVENT [JSON]",
	"cancel":    "mission cancel ID [--reason TEXT]",
	"terminate": "mission terminate ID [--reason TEXT]",
	"suspend":   "mission suspend ID [--reason TEXT]",
	"resume":    "mission resume ID [--reason TEXT]",
	"purge":     "mission purge ID",
}

// isHelp reports whether arg asks a command group for its help.
func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

// group starts a command group (mission, drone, hub, deadletter): without
// a command it prints the group's usage on stderr (exit 2), with -h on
// stdout (exit 0); an unknown command is named (exit 2). ok is whether
// cmd is one of the group's, whose usage line is synopsis[cmd].
func (a *App) group(name, usage string, synopsis map[string]string, args []string) (cmd string, ok bool, err error) {
	switch {
	case len(args) == 0:
		fmt.Fprint(a.Stderr, usage)
		return "", false, errUsage
	case isHelp(args[0]):
		fmt.Fprint(a.Stdout, usage)
		return "", false, nil
	}
	if _, known := synopsis[args[0]]; !known {
		fmt.Fprintf(a.Stderr, "dronehub: unknown %s command %q\n\n%s", name, args[0], usage)
		return "", false, errUsage
	}
	return args[0], true, nil
}

func (a *App) mission(ctx context.Context, args []string) error {
	cmd, ok, err := a.group("mission", missionUsage, missionSynopsis, args)
	if !ok {
		return err
	}
	args = args[1:]
	fs := a.flagSet("mission "+cmd, missionSynopsis[cmd])
	f := a.apiFlags(fs)
	switch cmd {
	case "start":
		return a.missionStart(ctx, fs, f, args)
	case "watch":
		return a.missionWatch(ctx, fs, f, args)
	case "status":
		history := fs.Bool("history", false, "include the orchestration history")
		pos, err := a.parseInterleaved(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr(a, missionSynopsis[cmd])
		}
		c, err := f.dial(client.Options{})
		if err != nil {
			return err
		}
		var opts []client.DescribeOption
		if *history {
			opts = append(opts, client.WithHistory())
		}
		st, err := c.Mission(pos[0]).Status(ctx, opts...)
		if err != nil {
			return err
		}
		if f.asJSON {
			return f.printJSON(st)
		}
		return printMission(f.out, st)
	case "list":
		return a.missionList(ctx, fs, f, args)
	case "raise":
		pos, err := a.parseInterleaved(fs, args)
		if err != nil {
			return err
		}
		if len(pos) < 2 || len(pos) > 3 {
			return usageErr(a, missionSynopsis[cmd])
		}
		var payload any
		if len(pos) == 3 {
			if !json.Valid([]byte(pos[2])) {
				return fmt.Errorf("event payload %q is not JSON (quote strings: '\"text\"')", pos[2])
			}
			payload = json.RawMessage(pos[2])
		}
		c, err := f.dial(client.Options{})
		if err != nil {
			return err
		}
		if err := c.Mission(pos[0]).RaiseEvent(ctx, pos[1], payload); err != nil {
			if errors.Is(err, client.ErrForbidden) {
				return fmt.Errorf("%w\nevent %q cannot be raised on mission %s: missions declare no public events unless the worker lists them in worker.Config.PublicEvents; to stop a mission use `dronehub mission cancel %s` (compensates) or `terminate`", err, pos[1], pos[0], pos[0])
			}
			return err
		}
		return f.done(map[string]string{"id": pos[0], "event": pos[1], "result": "raised"}, "event %s raised on mission %s\n", pos[1], pos[0])
	case "cancel", "terminate", "suspend", "resume":
		reason := fs.String("reason", "", "reason recorded with the operation")
		pos, err := a.parseInterleaved(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr(a, missionSynopsis[cmd])
		}
		c, err := f.dial(client.Options{})
		if err != nil {
			return err
		}
		m := c.Mission(pos[0])
		op := map[string]func(context.Context, string) error{
			"cancel": m.Cancel, "terminate": m.Terminate, "suspend": m.Suspend, "resume": m.Resume,
		}[cmd]
		if err := op(ctx, *reason); err != nil {
			return err
		}
		return f.done(map[string]string{"id": pos[0], "result": cmd + " requested"}, "mission %s: %s requested\n", pos[0], cmd)
	case "purge":
		pos, err := a.parseInterleaved(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr(a, missionSynopsis[cmd])
		}
		c, err := f.dial(client.Options{})
		if err != nil {
			return err
		}
		if err := c.Mission(pos[0]).Purge(ctx); err != nil {
			return err
		}
		return f.done(map[string]int{"instancesDeleted": 1}, "mission %s purged\n", pos[0])
	}
	return fmt.Errorf("mission %s: not implemented", cmd)
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

func (a *App) missionStart(ctx context.Context, fs *flag.FlagSet, f *apiFlags, args []string) error {
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
	var req domain.MissionRequest
	if file != "" {
		var body []byte
		if file == "-" {
			body, err = io.ReadAll(os.Stdin)
		} else {
			body, err = os.ReadFile(file)
		}
		if err != nil {
			return fmt.Errorf("--file: %w", err)
		}
		// Read as the API reads it: an unknown field is named.
		if err := domain.DecodeStrict(bytes.NewReader(body), &req); err != nil {
			return fmt.Errorf("--file %s: mission request: %w", file, err)
		}
	} else {
		req = domain.MissionRequest{MissionID: id, DroneID: drone, Expedited: expedited,
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
	}
	c, err := f.dial(client.Options{})
	if err != nil {
		return err
	}
	m, err := c.StartMission(ctx, req)
	if err != nil {
		return err
	}
	links := m.Links()
	return f.done(links, "mission %s started\nstatus: %s\n", m.ID(), links.StatusQueryGetURI)
}

func (a *App) missionList(ctx context.Context, fs *flag.FlagSet, f *apiFlags, args []string) error {
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
	opts := client.ListOptions{IDPrefix: *prefix, PageSize: *top}
	if *status != "" {
		for _, s := range strings.Split(*status, ",") {
			opts.RuntimeStatus = append(opts.RuntimeStatus, client.RuntimeStatus(strings.TrimSpace(s)))
		}
	}
	c, err := f.dial(client.Options{})
	if err != nil {
		return err
	}
	var items []client.Mission
	token := ""
	for page, err := range c.Missions(ctx, opts) {
		if err != nil {
			return err
		}
		items = append(items, page.Items...)
		token = page.ContinuationToken
		if !*all {
			break
		}
	}
	if f.asJSON {
		return f.printJSON(struct {
			Instances         []client.Mission `json:"instances"`
			ContinuationToken string           `json:"continuationToken,omitempty"`
		}{items, token})
	}
	tw := tabwriter.NewWriter(f.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tPHASE\tDRONE\tPROGRESS\tCREATED")
	for _, m := range items {
		ms := m.Status
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0f%%\t%s\n", m.InstanceID, m.RuntimeStatus, orDash(string(ms.Phase)), orDash(ms.DroneID),
			ms.ProgressPct, m.CreatedTime.Local().Format(time.DateTime))
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

func printMission(w io.Writer, m client.Mission) error {
	ms := m.Status
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("mission", m.InstanceID)
	row("runtime status", string(m.RuntimeStatus))
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
	if m.FailureDetails != nil {
		row("error", m.FailureDetails.ErrorMessage)
	}
	row("created", m.CreatedTime.Local().Format(time.DateTime))
	row("updated", m.LastUpdatedTime.Local().Format(time.DateTime))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(m.History) > 0 {
		fmt.Fprintln(w, "\nhistory:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, e := range m.History {
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
  reset   ID... | --all    put idle drones back in service after a failure: healthy, fully
                           charged, ready at home (refused for a drone a mission holds)

Every command takes --url, --api-key and --json; dronehub drone COMMAND -h lists its flags.
`

// droneSynopsis is each drone command's usage line, without "dronehub".
var droneSynopsis = map[string]string{
	"add":    "drone add ID --home LAT,LON",
	"list":   "drone list",
	"status": "drone status ID",
	"reset":  "drone reset ID... | --all",
}

func (a *App) drone(ctx context.Context, args []string) error {
	cmd, ok, err := a.group("drone", droneUsage, droneSynopsis, args)
	if !ok {
		return err
	}
	args = args[1:]
	fs := a.flagSet("drone "+cmd, droneSynopsis[cmd])
	f := a.apiFlags(fs)
	switch cmd {
	case "reset":
		return a.droneReset(ctx, fs, f, args)
	case "add":
		home := fs.String("home", "", "home base LAT,LON")
		pos, err := a.parseInterleaved(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 || *home == "" {
			return usageErr(a, droneSynopsis[cmd])
		}
		h, err := parseLatLon("home", *home)
		if err != nil {
			return err
		}
		c, err := f.dial(client.Options{})
		if err != nil {
			return err
		}
		d, err := c.AddDrone(ctx, pos[0], *h)
		if err != nil {
			return err
		}
		return f.done(d, "drone %s added at %.5f,%.5f\n", d.DroneID, d.Home.Lat, d.Home.Lon)
	case "list", "status":
		pos, err := a.parseInterleaved(fs, args)
		if err != nil {
			return err
		}
		if cmd == "status" && len(pos) != 1 || cmd == "list" && len(pos) != 0 {
			return usageErr(a, droneSynopsis[cmd])
		}
		c, err := f.dial(client.Options{})
		if err != nil {
			return err
		}
		var drones []client.Drone
		if cmd == "status" {
			d, err := c.Drone(ctx, pos[0])
			if err != nil {
				return err
			}
			if f.asJSON {
				return f.printJSON(d)
			}
			drones = []client.Drone{d}
		} else {
			if drones, err = c.Drones(ctx); err != nil {
				return err
			}
			if f.asJSON {
				return f.printJSON(struct {
					Drones []client.Drone `json:"drones"`
				}{drones})
			}
		}
		tw := tabwriter.NewWriter(f.out, 0, 4, 2, ' ', 0)
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
	return fmt.Errorf("drone %s: not implemented", cmd)
}
