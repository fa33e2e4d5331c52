package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dronehub/dronehub/backend"
	"github.com/dronehub/dronehub/client"
	"github.com/dronehub/dronehub/taskhub"
)

const hubUsage = `Usage: dronehub hub COMMAND [flags]

Commands (they talk to the storage directly, not to a worker):
  create  --storage CONN [--hub NAME] [--partitions N]   create the task hub (idempotent)
  info    --storage CONN [--hub NAME] [--json]           partitions, owners, queue depths, instances, dead letters
  delete  --storage CONN [--hub NAME] --yes              delete the task hub and all its data

dronehub hub COMMAND -h lists its flags.
`

// hubSynopsis is each hub command's usage line, without "dronehub".
var hubSynopsis = map[string]string{
	"create": "hub create --storage CONN [--hub NAME] [--partitions N] [--json]",
	"info":   "hub info --storage CONN [--hub NAME] [--json]",
	"delete": "hub delete --storage CONN [--hub NAME] --yes",
}

func (a *App) hub(ctx context.Context, args []string) error {
	cmd, ok, err := a.group("hub", hubUsage, hubSynopsis, args)
	if !ok {
		return err
	}
	args = args[1:]
	fs := a.flagSet("hub "+cmd, hubSynopsis[cmd])
	storage := fs.String("storage", "", "task hub connection string (see dronehub worker -h)")
	name := fs.String("hub", backend.DefaultHubName, "task hub name")
	// Each command lists only the flags it uses.
	partitions, asJSON, yes := new(int), new(bool), new(bool)
	switch cmd {
	case "create":
		fs.IntVar(partitions, "partitions", 0, "control-queue partitions of a new Azure Storage hub (1-16, default 4)")
		fs.BoolVar(asJSON, "json", false, "print the new hub's description as JSON")
	case "info":
		fs.BoolVar(asJSON, "json", false, "print JSON")
	case "delete":
		fs.BoolVar(yes, "yes", false, "confirm deletion")
	}
	if err := a.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(a.Stderr, "dronehub: unexpected argument %q\n", fs.Arg(0))
		return usageErr(a, hubSynopsis[cmd])
	}
	if cmd == "delete" && !*yes {
		return errors.New("hub delete removes every instance, history and dead letter of the hub; add --yes to confirm")
	}
	logger, _ := newLogger(io.Discard, "error", "text")
	hub, err := backend.Open(ctx, *storage, backend.Options{HubName: *name, Partitions: *partitions, MustExist: cmd != "create", Logger: logger})
	if errors.Is(err, backend.ErrHubNotFound) {
		return fmt.Errorf("%w; create it with: dronehub hub create", err)
	}
	if err != nil {
		return err
	}
	defer hub.Close()
	switch cmd {
	case "delete":
		if err := hub.Backend.DeleteTaskHub(ctx); err != nil {
			return fmt.Errorf("delete hub: %w", err)
		}
		fmt.Fprintf(a.Stdout, "deleted task hub %s\n", hub.Description)
		return nil
	case "create":
		fmt.Fprintf(a.Stdout, "task hub %s is ready\n", hub.Description)
		if !*asJSON {
			return nil
		}
	}
	in, ok := hub.Backend.(taskhub.Inspector)
	if !ok {
		return fmt.Errorf("the %s task hub cannot be inspected", hub.Kind)
	}
	ictx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	info, err := in.HubInfo(ictx)
	if err != nil {
		return fmt.Errorf("hub info: %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(a.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(info)
	}
	return printHubInfo(a.Stdout, info)
}

func printHubInfo(w io.Writer, info taskhub.HubInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "kind\t%s\nname\t%s\n", info.Kind, info.Name)
	if info.Partitions > 0 {
		fmt.Fprintf(tw, "partitions\t%d\n", info.Partitions)
		for p := 0; p < info.Partitions; p++ {
			owner := info.Owners[p]
			if owner == "" {
				owner = "(unowned)"
			} else {
				owner = ownerName(owner, info.Workers)
			}
			fmt.Fprintf(tw, "  partition %d\t%s\n", p, owner)
		}
	}
	if len(info.Workers) > 0 {
		fmt.Fprintf(tw, "workers\t%d live\n", len(info.Workers))
		for _, id := range slices.Sorted(maps.Keys(info.Workers)) {
			wi := info.Workers[id]
			var held []string
			for p := 0; p < info.Partitions; p++ {
				if info.Owners[p] == id {
					held = append(held, strconv.Itoa(p))
				}
			}
			fmt.Fprintf(tw, "  %s\thost %s, http %s, partitions %s\n", id, orDash(wi.Host), orDash(wi.HTTPAddr), orDash(strings.Join(held, " ")))
		}
	}
	for _, k := range sortedKeys(info.QueueDepths) {
		fmt.Fprintf(tw, "queue %s\t%d\n", k, info.QueueDepths[k])
	}
	for _, k := range sortedKeys(info.Instances) {
		fmt.Fprintf(tw, "instances %s\t%d\n", k, info.Instances[k])
	}
	fmt.Fprintf(tw, "dead letters\t%d\n", info.DeadLetters)
	return tw.Flush()
}

// ownerName names a partition's owner by where an operator finds it: its
// host and HTTP address from its heartbeat, then its worker id (host, pid
// and a random suffix).
func ownerName(id string, workers map[string]taskhub.WorkerInfo) string {
	wi, ok := workers[id]
	if !ok || wi.Host == "" && wi.HTTPAddr == "" {
		return id
	}
	where := wi.Host
	if addr := wi.HTTPAddr; addr != "" {
		// A worker listening on every interface is reached by its host name.
		if h, port, err := net.SplitHostPort(addr); err == nil && wi.Host != "" {
			if ip := net.ParseIP(h); h == "" || ip != nil && ip.IsUnspecified() {
				addr = net.JoinHostPort(wi.Host, port)
			}
		}
		where = strings.TrimSpace(where + " http://" + addr)
	}
	return fmt.Sprintf("%s (worker %s)", where, id)
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

const deadLetterUsage = `Usage: dronehub deadletter COMMAND [flags]

Commands:
  list                  messages set aside after failing too often
  replay  ID | --all    put one back on its queue, or every one (those that can no longer
                        reach their executions are dropped by the worker, and listed)

Every command takes --url, --api-key and --json; dronehub deadletter COMMAND -h lists its flags.
`

// deadLetterSynopsis is each deadletter command's usage line, without
// "dronehub".
var deadLetterSynopsis = map[string]string{
	"list":   "deadletter list",
	"replay": "deadletter replay ID | --all",
}

func (a *App) deadLetter(ctx context.Context, args []string) error {
	cmd, ok, err := a.group("deadletter", deadLetterUsage, deadLetterSynopsis, args)
	if !ok {
		return err
	}
	args = args[1:]
	fs := a.flagSet("deadletter "+cmd, deadLetterSynopsis[cmd])
	f := a.apiFlags(fs)
	all := new(bool)
	if cmd == "replay" {
		fs.BoolVar(all, "all", false, "replay every dead letter")
	}
	pos, err := a.parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	switch cmd {
	case "list":
		if len(pos) != 0 {
			return usageErr(a, deadLetterSynopsis[cmd])
		}
		c, err := f.dial(client.Options{})
		if err != nil {
			return err
		}
		list, err := c.DeadLetters(ctx)
		if err != nil {
			return err
		}
		if f.asJSON {
			return f.printJSON(struct {
				DeadLetters []client.DeadLetter `json:"deadLetters"`
			}{list})
		}
		tw := tabwriter.NewWriter(f.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tQUEUE\tINSTANCE\tEVENT\tDEQUEUES\tDEAD AT\tREASON")
		for _, d := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.ID, d.Queue, orDash(d.InstanceID), d.EventType, d.DequeueCount, d.DeadAt.Local().Format(time.DateTime), d.Reason)
		}
		return tw.Flush()
	case "replay":
		if *all {
			if len(pos) != 0 {
				return usageErr(a, deadLetterSynopsis[cmd])
			}
			return a.replayAll(ctx, f)
		}
		if len(pos) != 1 {
			return usageErr(a, deadLetterSynopsis[cmd])
		}
		c, err := f.dial(client.Options{})
		if err != nil {
			return err
		}
		if err := c.ReplayDeadLetter(ctx, pos[0]); err != nil {
			return err
		}
		return f.done(map[string]string{"id": pos[0], "result": "replayed"}, "dead letter %s replayed\n", pos[0])
	}
	return fmt.Errorf("deadletter %s: not implemented", cmd)
}

// replayAll replays every dead letter, oldest first. One the worker drops
// (410: it can no longer reach its execution) is listed, and one already
// gone (404: replayed meanwhile) skipped; neither fails the command. Any
// other failure stops it, after saying how far it got. Progress shows as a
// bar on a terminal (stderr), else a line per dead letter.
func (a *App) replayAll(ctx context.Context, f *apiFlags) error {
	c, err := f.dial(client.Options{})
	if err != nil {
		return err
	}
	list, err := c.DeadLetters(ctx)
	if err != nil {
		return err
	}
	type dropped struct {
		ID     string `json:"id"`
		Reason string `json:"reason"`
	}
	res := struct {
		Replayed []string  `json:"replayed"`
		Dropped  []dropped `json:"dropped"`
		Gone     []string  `json:"gone"`
	}{Replayed: []string{}, Dropped: []dropped{}, Gone: []string{}}
	var line *statusLine
	if isTerminal(a.Stderr) {
		line = newStatusLine(a.Stderr)
		defer line.Clear()
	}
	// say prints a line of the report on stdout, above the bar.
	say := func(format string, args ...any) {
		if f.asJSON {
			return
		}
		if line != nil {
			line.Above(func() { fmt.Fprintf(f.out, format, args...) })
			return
		}
		fmt.Fprintf(f.out, format, args...)
	}
	for i, d := range list {
		if line != nil {
			line.Draw(fmt.Sprintf("replaying dead letters %s %d/%d", bar(fraction(i, len(list)), 30), i, len(list)))
		}
		err := c.ReplayDeadLetter(ctx, d.ID)
		var ae *client.APIError
		switch {
		case err == nil:
			res.Replayed = append(res.Replayed, d.ID)
			if line == nil {
				say("dead letter %s replayed (%s %s, instance %s)\n", d.ID, d.Queue, d.EventType, orDash(d.InstanceID))
			}
		case errors.Is(err, client.ErrGone) && errors.As(err, &ae):
			res.Dropped = append(res.Dropped, dropped{ID: d.ID, Reason: ae.Detail})
			say("dead letter %s dropped: %s\n", d.ID, ae.Detail)
		case errors.Is(err, client.ErrNotFound):
			res.Gone = append(res.Gone, d.ID)
			if line == nil {
				say("dead letter %s is gone already\n", d.ID)
			}
		default:
			if line != nil {
				line.Clear()
			}
			return fmt.Errorf("replaying dead letter %s (%d of %d; %d replayed so far): %w", d.ID, i+1, len(list), len(res.Replayed), err)
		}
	}
	if line != nil {
		line.Clear()
	}
	if f.asJSON {
		return f.printJSON(res)
	}
	_, err = fmt.Fprintf(f.out, "%d dead letters: %d replayed, %d dropped, %d gone already\n", len(list), len(res.Replayed), len(res.Dropped), len(res.Gone))
	return err
}
