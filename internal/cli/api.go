package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dronehub/dronehub/client"
)

// apiFlags are the flags of the commands that talk to a worker's HTTP API
// through the Go client.
type apiFlags struct {
	url, key string
	asJSON   bool
	out      io.Writer
}

func (a *App) apiFlags(fs *flag.FlagSet) *apiFlags {
	f := &apiFlags{out: a.Stdout}
	fs.StringVar(&f.url, "url", "http://127.0.0.1:8080", "dronehub HTTP API base URL")
	fs.StringVar(&f.key, "api-key", "", "API key sent as 'Authorization: Bearer KEY'")
	fs.BoolVar(&f.asJSON, "json", false, "print JSON instead of a table")
	return f
}

// dial returns the client of the flags. --url may list several workers,
// comma-separated, to fail over between; opts says how requests are
// retried (by default each is sent once).
func (f *apiFlags) dial(opts client.Options) (client.Client, error) {
	var urls []string
	for _, u := range strings.Split(f.url, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		return nil, errors.New("--url: give at least one worker URL")
	}
	opts.APIKey = f.key
	opts.FailoverURLs = urls[1:]
	if opts.Timeout == 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.Retry.MaxAttempts == 0 {
		opts.Retry.MaxAttempts = 1
	}
	c, err := client.Dial(urls[0], opts)
	if err != nil {
		return nil, fmt.Errorf("--url: %w", err)
	}
	return c, nil
}

func (f *apiFlags) printJSON(v any) error {
	enc := json.NewEncoder(f.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// done prints v as JSON with --json, else the formatted text.
func (f *apiFlags) done(v any, format string, args ...any) error {
	if f.asJSON {
		return f.printJSON(v)
	}
	_, err := fmt.Fprintf(f.out, format, args...)
	return err
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

// describe is an error as the command line shows it: an API refusal with
// each field problem on its own line, an unreachable worker with a hint.
func describe(err error) string {
	msg := err.Error()
	var ae *client.APIError
	if errors.As(err, &ae) && len(ae.Fields) > 0 {
		// The fields go on lines of their own, not after the detail.
		msg = strings.Replace(msg, ae.Error(), fmt.Sprintf("HTTP %d: %s", ae.StatusCode, ae.Detail), 1)
		for _, f := range ae.Fields {
			msg += fmt.Sprintf("\n  %s: %s", f.Field, f.Message)
		}
	}
	var ue *client.UnreachableError
	if errors.As(err, &ue) {
		msg += "\n(is the worker running? set --url)"
	}
	return msg
}
