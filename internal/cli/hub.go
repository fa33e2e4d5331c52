package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
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
`

func (a *App) hub(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(a.Stderr, hubUsage)
		return errUsage
	}
	cmd, args := args[0], args[1:]
	if cmd != "create" && cmd != "info" && cmd != "delete" {
		fmt.Fprintf(a.Stderr, "dronehub: unknown hub command %q\n\n%s", cmd, hubUsage)
		return errUsage
	}
	fs := a.flagSet("hub "+cmd, "hub "+cmd+" [flags]")
	storage := fs.String("storage", "", "task hub connection string (see dronehub worker -h)")
	name := fs.String("hub", backend.DefaultHubName, "task hub name")
	partitions := fs.Int("partitions", 0, "control-queue partitions of a new Azure Storage hub (1-16, default 4)")
	asJSON := fs.Bool("json", false, "print JSON")
	yes := fs.Bool("yes", false, "confirm deletion")
	if err := a.parse(fs, args); err != nil {
		return err
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
			}
			fmt.Fprintf(tw, "  partition %d\t%s\n", p, owner)
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
  list            messages set aside after failing too often
  replay  ID      put one back on its queue

Every command takes --url, --api-key and --json.
`

func (a *App) deadLetter(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(a.Stderr, deadLetterUsage)
		return errUsage
	}
	cmd, args := args[0], args[1:]
	fs := a.flagSet("deadletter "+cmd, "deadletter "+cmd+" [flags]")
	f := a.apiFlags(fs)
	pos, err := a.parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	switch cmd {
	case "list":
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
		if len(pos) != 1 {
			return usageErr(a, "deadletter replay ID")
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
	fmt.Fprintf(a.Stderr, "dronehub: unknown deadletter command %q\n\n%s", cmd, deadLetterUsage)
	return errUsage
}
