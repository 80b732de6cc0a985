package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/sluice-router/sluice/shaping"
)

// usageError marks an error in the command line itself.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func isUsage(err error) bool {
	var u usageError
	return errors.As(err, &u)
}

// command is one sluice subcommand.
type command struct {
	name    string
	summary string
	flags   func(fs *flag.FlagSet) func(ctx context.Context, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run a router (with an embedded NATS unless --nats is given)", serveFlags},
		{"deploy", "publish the container set of an app after a deploy", publishFlags("deploy")},
		{"restart", "publish the container set of an app after a restart", publishFlags("restart")},
		{"scale", "publish the container set of an app after a scale (no --container: zero containers)", publishFlags("scale")},
		{"domains", "publish the complete domain set of an app", publishFlags("domains")},
		{"delete", "publish that an app is deleted", publishFlags("delete")},
		{"cert", "publish (or --delete) the TLS certificate of a domain", certFlags},
	}
}

// run is the whole program: it parses args (flags fall back to SLUICE_*
// environment variables read through getenv) and runs the command.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printHelp(stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		fs := flag.NewFlagSet("sluice "+c.name, flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		exec := c.flags(fs)
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				printFlags(stdout, fs)
				return nil
			}
			return usageError{err}
		}
		if fs.NArg() > 0 {
			return usagef("%s: unexpected argument %q", c.name, fs.Arg(0))
		}
		if err := applyEnv(fs, getenv); err != nil {
			return err
		}
		return exec(ctx, stdout, stderr)
	}
	return usagef("unknown command %q", args[0])
}

// envName returns the environment variable that sets flag name.
func envName(name string) string {
	if name == "nats" {
		return "SLUICE_NATS_URL"
	}
	return "SLUICE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// applyEnv sets every flag not given on the command line from its
// environment variable, if set. A repeatable flag takes a comma-separated
// list.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		v := getenv(envName(f.Name))
		if given[f.Name] || v == "" || err != nil {
			return
		}
		values := []string{v}
		if _, ok := f.Value.(*listFlag); ok {
			values = strings.Split(v, ",")
		}
		for _, v := range values {
			if e := fs.Set(f.Name, strings.TrimSpace(v)); e != nil {
				err = usagef("%s=%q: %v", envName(f.Name), v, e)
			}
		}
	})
	return err
}

// listFlag is a flag that may be repeated.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// bytesFlag is a size or rate such as "20MB" or "160Mbit"
// (shaping.ParseBytes).
type bytesFlag struct{ n *int64 }

func (b bytesFlag) String() string {
	if b.n == nil || *b.n == 0 {
		return "" // no default shown: the router's
	}
	return shaping.FormatBytes(*b.n)
}

func (b bytesFlag) Set(v string) error {
	n, err := shaping.ParseBytes(v)
	if err != nil {
		return err
	}
	*b.n = n
	return nil
}

func printHelp(w io.Writer) {
	fmt.Fprintln(w, "sluice: a traffic router for a platform-as-a-service")
	fmt.Fprintln(w, "\nUsage: sluice COMMAND [flags]  (sluice COMMAND -h for its flags)")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nEvery flag can also be set with an environment variable: --http-addr is SLUICE_HTTP_ADDR, --nats is SLUICE_NATS_URL.")
}

func printFlags(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage of %s:\n", fs.Name())
	fs.VisitAll(func(f *flag.Flag) {
		def := ""
		if f.DefValue != "" {
			def = fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(w, "  --%s  %s%s [%s]\n", f.Name, f.Usage, def, envName(f.Name))
	})
}
