package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	neturl "net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-router/sluice/events"
)

const defaultRegion = "local"

// publishFlags declares the flags of a publishing command and returns how it
// runs.
func publishFlags(kind events.Kind) func(fs *flag.FlagSet) func(context.Context, io.Writer, io.Writer) error {
	return func(fs *flag.FlagSet) func(context.Context, io.Writer, io.Writer) error {
		region := fs.String("region", defaultRegion, "region whose routers receive the event")
		natsURL := fs.String("nats", nats.DefaultURL, "NATS URL, comma-separated for a cluster")
		auth := natsAuthFlags(fs)
		app := fs.String("app", "", "app name (required)")
		gen := fs.Uint64("generation", 0, "the app's generation; must grow with each event of the app (default: the current time in microseconds)")
		timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
		var containers, domains listFlag
		var rate, burst int64
		var opts events.AppOptions
		switch kind.Aspect() {
		case events.AspectContainers:
			fs.Var(&containers, "container", "ID=HOST:PORT of one container; repeat for each")
			fs.Var(bytesFlag{&rate}, "rate", "bandwidth of each container of the app, each way, e.g. 40MB or 320Mbit per second (default: the router's)")
			fs.Var(bytesFlag{&burst}, "burst", "burst of each container of the app, each way, e.g. 3.2GB (default: the router's)")
		case events.AspectDomains:
			fs.Var(&domains, "domain", "a domain of the app; repeat for each")
			fs.StringVar((*string)(&opts.Balance), "balance", "", "how requests spread over the app's containers: round-robin or least-conn (default round-robin)")
			fs.BoolVar(&opts.Sticky, "sticky", false, "send each client back to the same container (cookie, 24 h)")
			fs.StringVar(&opts.ErrorPage, "error-page", "", "URL of an HTML page shown instead of the router's error pages")
			fs.BoolVar(&opts.ForceHTTPS, "force-https", false, "redirect plain HTTP to HTTPS (301) and send Strict-Transport-Security")
			fs.StringVar(&opts.Canonical, "canonical", "", "redirect every other domain of the app to this one (301)")
			fs.BoolVar(&opts.TLSPassthrough, "tls-passthrough", false, "relay HTTPS connections undecrypted to the containers, which terminate TLS")
		}
		return func(ctx context.Context, stdout, _ io.Writer) error {
			ev := events.Event{Kind: kind, App: *app, Generation: *gen, Domains: domains, Rate: rate, Burst: burst, Options: opts}
			if ev.Generation == 0 {
				ev.Generation = uint64(time.Now().UnixMicro())
			}
			if *app == "" {
				return usagef("%s: --app is required", kind)
			}
			if kind == events.KindDomains && len(domains) == 0 {
				return usagef("domains: give at least one --domain")
			}
			if given(fs, "rate") && rate == 0 || given(fs, "burst") && burst == 0 {
				return usagef("%s: --rate and --burst must be more than 0 (leave them out for the router's default)", kind)
			}
			if (kind == events.KindDeploy || kind == events.KindRestart) && len(containers) == 0 {
				return usagef("%s: give at least one --container (use scale for zero)", kind)
			}
			for _, c := range containers {
				id, addr, ok := strings.Cut(c, "=")
				if !ok {
					return usagef("--container %q: want ID=HOST:PORT", c)
				}
				ev.Containers = append(ev.Containers, events.Container{ID: id, Address: addr})
			}
			if err := publish(ctx, *natsURL, auth, *region, *timeout, ev); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "published %s of app %s at generation %d to region %s\n", ev.Kind, ev.App, ev.Generation, *region)
			return nil
		}
	}
}

// given reports whether flag name was set, on the command line or from the
// environment.
func given(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// certFlags declares the flags of sluice cert and returns how it runs.
func certFlags(fs *flag.FlagSet) func(context.Context, io.Writer, io.Writer) error {
	region := fs.String("region", defaultRegion, "region whose routers serve the certificate")
	natsURL := fs.String("nats", nats.DefaultURL, "NATS URL, comma-separated for a cluster")
	auth := natsAuthFlags(fs)
	domain := fs.String("domain", "", "the domain the certificate is for, e.g. shop.example.com or *.example.com (required)")
	certFile := fs.String("cert", "", "PEM file of the certificate chain, leaf first")
	keyFile := fs.String("key", "", "PEM file of its private key")
	del := fs.Bool("delete", false, "remove the domain's certificate instead")
	gen := fs.Uint64("generation", 0, "the certificate's generation; must grow with each event of the domain (default: the current time in microseconds)")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	return func(ctx context.Context, stdout, _ io.Writer) error {
		ev := events.Event{Kind: events.KindCertDelete, Domain: *domain, Generation: *gen}
		if ev.Generation == 0 {
			ev.Generation = uint64(time.Now().UnixMicro())
		}
		switch {
		case *domain == "":
			return usagef("cert: --domain is required")
		case *del && (*certFile != "" || *keyFile != ""):
			return usagef("cert: --delete takes no --cert or --key")
		case !*del && (*certFile == "" || *keyFile == ""):
			return usagef("cert: give --cert and --key, or --delete")
		}
		if !*del {
			chain, err := os.ReadFile(*certFile)
			if err != nil {
				return usagef("cert: %v", err)
			}
			key, err := os.ReadFile(*keyFile)
			if err != nil {
				return usagef("cert: %v", err)
			}
			ev.Kind, ev.Cert, ev.Key = events.KindCert, string(chain), string(key)
		}
		if err := publish(ctx, *natsURL, auth, *region, *timeout, ev); err != nil {
			return err
		}
		what := "certificate"
		if *del {
			what = "certificate removal"
		}
		fmt.Fprintf(stdout, "published the %s of %s at generation %d to region %s\n", what, ev.Domain, ev.Generation, *region)
		return nil
	}
}

// natsAuth is how a command authenticates to NATS, checks its certificate
// and names the inbox its replies come to.
type natsAuth struct {
	creds, ca string
	// inboxPrefix is the subject prefix of the connection's reply inboxes;
	// giving each role its own, with subscribe permission on it alone, keeps
	// one role from reading another's replies (a router's carry keys).
	inboxPrefix inboxPrefixFlag
}

func natsAuthFlags(fs *flag.FlagSet) *natsAuth {
	a := &natsAuth{inboxPrefix: "_INBOX"} // NATS's own default
	fs.StringVar(&a.creds, "nats-creds", "", "NATS credentials file (user JWT and NKey seed)")
	fs.StringVar(&a.ca, "nats-ca", "", "PEM file of the CA that signed the NATS servers' certificates (for tls:// URLs)")
	fs.Var(&a.inboxPrefix, "nats-inbox-prefix", "subject prefix of this connection's reply inboxes: one per role, matching its NATS subscribe permission")
	return a
}

func (a *natsAuth) options() []nats.Option {
	opts := []nats.Option{nats.CustomInboxPrefix(string(a.inboxPrefix))}
	if a.creds != "" {
		opts = append(opts, nats.UserCredentials(a.creds))
	}
	if a.ca != "" {
		opts = append(opts, nats.RootCAs(a.ca))
	}
	return opts
}

// inboxPrefixFlag is a NATS inbox prefix: subject tokens, no wildcard, no
// trailing dot.
type inboxPrefixFlag string

func (p *inboxPrefixFlag) String() string { return string(*p) }

func (p *inboxPrefixFlag) Set(v string) error {
	if err := nats.CustomInboxPrefix(v)(&nats.Options{}); err != nil {
		return fmt.Errorf("%q: want subject tokens without wildcards, such as _INBOX_router", v)
	}
	*p = inboxPrefixFlag(v)
	return nil
}

// publish validates ev (a usage error if invalid or too large: nothing is
// sent) and stores it in region's stream, within timeout.
func publish(ctx context.Context, url string, auth *natsAuth, region string, timeout time.Duration, ev events.Event) error {
	if timeout <= 0 {
		return usagef("--timeout %s: want more than 0", timeout)
	}
	if err := events.ValidateRegion(region); err != nil {
		return usageError{err}
	}
	if _, err := events.Encode(ev); err != nil {
		return usageError{err}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	opts := append([]nats.Option{nats.Name("sluice-cli"), nats.Timeout(min(timeout, 3*time.Second)), nats.NoReconnect()}, auth.options()...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return fmt.Errorf("cannot reach NATS at %s: %w", redacted(url), err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	pub, err := events.NewPublisher(js, region)
	if err != nil {
		return err
	}
	err = pub.Publish(ctx, ev)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer from NATS at %s within %s (is JetStream enabled?): %w", redacted(url), timeout, err)
	}
	return err
}

// redacted returns a comma-separated list of NATS URLs with their
// passwords replaced by "xxxxx", fit for an error message.
func redacted(urls string) string {
	list := strings.Split(urls, ",")
	for i, u := range list {
		if parsed, err := neturl.Parse(strings.TrimSpace(u)); err == nil {
			list[i] = parsed.Redacted()
		}
	}
	return strings.Join(list, ",")
}
