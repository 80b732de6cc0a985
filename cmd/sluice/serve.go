package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/term"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/routing"
	"github.com/sluice-router/sluice/shaping"
)

// serveFlags declares the flags of sluice serve and returns how it runs.
func serveFlags(fs *flag.FlagSet) func(context.Context, io.Writer, io.Writer) error {
	var cfg routing.Config
	fs.StringVar(&cfg.Region, "region", defaultRegion, "region whose events this router follows")
	natsURL := fs.String("nats", "", "URL of an existing NATS, comma-separated for a cluster (default: run an embedded NATS)")
	auth := natsAuthFlags(fs)
	natsListen := fs.String("nats-listen", "127.0.0.1:4222", "where the embedded NATS listens for publishers")
	dataDir := fs.String("data-dir", "sluice-data", "where the embedded NATS keeps its JetStream store")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", ":80", "where plain HTTP is served")
	fs.StringVar(&cfg.HTTPSAddr, "https-addr", ":443", "where HTTPS is served (off: no HTTPS)")
	fs.StringVar(&cfg.CertDir, "cert-dir", "", "directory of *.pem files (chain and key each) served for the names they list, reloaded on change")
	defaultCert := fs.String("default-cert", "", "PEM file (chain and key) served to unknown server names; without it their handshake is refused")
	fs.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:9180", "where /healthz, /readyz and /routes are served")
	fs.IntVar(&cfg.StreamReplicas, "stream-replicas", 1, "replicas of the region's stream when this router creates it (3 in a NATS cluster)")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", 5*time.Second, "bound on connecting to a container (then the next container is tried)")
	fs.DurationVar(&cfg.ResponseTimeout, "response-timeout", 30*time.Second, "bound on the time a container takes to start its response (504 beyond)")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", 60*time.Second, "close a request, WebSocket or event stream after this long without a byte either way")
	fs.DurationVar(&cfg.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "bound on the time a client takes to send its request headers")
	fs.DurationVar(&cfg.KeepAliveTimeout, "keepalive-timeout", 120*time.Second, "close a client connection idle this long between requests")
	cfg.MaxRequestBody = 75_000_000
	fs.Var(bytesFlag{&cfg.MaxRequestBody}, "max-request-body", "largest request body (413 beyond)")
	fs.Int64Var(&cfg.MaxInflight, "max-inflight", 50, "requests per container, from this router, not yet answered; as many more per container wait, the rest get 503 (-1: no bound)")
	var trusted listFlag
	fs.Var(&trusted, "trusted-proxy", "a network (CIDR) of proxies in front of the router whose X-Forwarded-For is kept; repeat for each")
	var pageNets listFlag
	fs.Var(&pageNets, "error-page-network", "a private network (CIDR) apps' error pages may be fetched from, besides public addresses; repeat for each")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "bound on the wait for requests in flight at shutdown")
	cfg.Shaping = shaping.DefaultLimits
	fs.Var(bytesFlag{&cfg.Shaping.Rate}, "container-rate", "bandwidth of each container, each way, per second, unless its app sets its own (e.g. 20MB, 160Mbit); 0 turns shaping off")
	fs.Var(bytesFlag{&cfg.Shaping.Burst}, "container-burst", "burst of each container, each way, unless its app sets its own")
	peers := fs.String("shaping-peers", "auto", "routers sharing each container's bandwidth: auto (counted from their heartbeats on NATS) or a number")
	logFormat := fs.String("log-format", "auto", "json, console, or auto (console on a terminal)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	return func(ctx context.Context, _, stderr io.Writer) error {
		logger, err := newLogger(*logFormat, *logLevel, stderr)
		if err != nil {
			return err
		}
		cfg.Logger = logger
		if cfg.Shaping.Rate == 0 {
			cfg.NoShaping = true
		} else if cfg.Shaping.Burst == 0 {
			return usagef("--container-burst must be more than 0")
		}
		if *defaultCert != "" {
			if cfg.DefaultCert, err = routing.LoadCertFile(*defaultCert); err != nil {
				return usagef("--default-cert: %v", err)
			}
		}
		for _, p := range trusted {
			pfx, err := netip.ParsePrefix(p)
			if err != nil {
				return usagef("--trusted-proxy %q: want a network such as 10.0.0.0/8", p)
			}
			cfg.TrustedProxies = append(cfg.TrustedProxies, pfx.Masked())
		}
		for _, p := range pageNets {
			pfx, err := netip.ParsePrefix(p)
			if err != nil {
				return usagef("--error-page-network %q: want a network such as 10.0.0.0/8", p)
			}
			cfg.ErrorPageNetworks = append(cfg.ErrorPageNetworks, pfx.Masked())
		}
		if cfg.MaxRequestBody <= 0 {
			return usagef("--max-request-body must be more than 0")
		}
		if cfg.MaxInflight == 0 {
			return usagef("--max-inflight must be 1 or more, or -1 for no bound")
		}
		if *peers != "auto" {
			n, err := strconv.Atoi(*peers)
			if err != nil || n < 1 {
				return usagef("--shaping-peers %q: want auto or a number of routers (1 or more)", *peers)
			}
			cfg.ShapingPeers = n
		}
		nc, stopNATS, err := connect(*natsURL, auth, *natsListen, *dataDir, logger)
		if err != nil {
			return err
		}
		defer stopNATS()
		if *natsURL == "" {
			// The embedded server is ours: create the region's stream
			// before saying we run, so that publishers can start at once.
			if err := ensureStream(ctx, nc, cfg.Region, cfg.StreamReplicas); err != nil {
				return err
			}
		}
		r, err := routing.NewRouter(nc, cfg)
		if err != nil {
			return usageError{err}
		}
		if err := r.Open(); err != nil {
			return err
		}
		return r.Run(ctx)
	}
}

// connect returns a connection to the region's NATS: the one at url, or an
// embedded server started on listen with its store in dataDir. The returned
// func closes the connection and stops the embedded server.
func connect(url string, auth *natsAuth, listen, dataDir string, logger zerolog.Logger) (*nats.Conn, func(), error) {
	log := logger.With().Str("component", "nats").Logger()
	opts := []nats.Option{
		nats.Name("sluice-router"),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: the router closed the connection itself
				log.Warn().Err(err).Msg("disconnected from NATS; serving the last known routes")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("reconnected to NATS")
		}),
		// A permission the router lacks is reported here, and nowhere else.
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn().Err(err).Msg("NATS error")
		}),
	}
	if url != "" {
		// A router starts even while NATS is down: it serves nothing until
		// the region's state loads, and keeps retrying.
		opts = append(opts, auth.options()...)
		nc, err := nats.Connect(url, append(opts, nats.RetryOnFailedConnect(true))...)
		if err != nil {
			return nil, nil, fmt.Errorf("NATS at %s: %w", redacted(url), err)
		}
		return nc, nc.Close, nil
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("data directory: %w", err)
	}
	ns, err := events.StartServer(events.ServerConfig{Listen: listen, DataDir: dataDir, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	log.Info().Str("url", ns.ClientURL()).Str("data_dir", dataDir).Msg("embedded NATS started")
	nc, err := nats.Connect("", append(opts, nats.InProcessServer(ns))...)
	if err != nil {
		ns.Shutdown()
		return nil, nil, fmt.Errorf("embedded NATS: %w", err)
	}
	return nc, func() {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	}, nil
}

// newLogger returns the process logger: JSON lines, or human-readable
// console output when asked or when w is a terminal. Console output is in
// colour only on a terminal, so that a file or a log collector gets no
// escape codes.
func newLogger(format, level string, w io.Writer) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Logger{}, usagef("--log-level %q: want debug, info, warn or error", level)
	}
	tty := isTerminal(w)
	switch format {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly, NoColor: !tty}
	case "auto":
		if tty {
			w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
		}
	default:
		return zerolog.Logger{}, usagef("--log-format %q: want json, console or auto", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func ensureStream(ctx context.Context, nc *nats.Conn, region string, replicas int) error {
	if err := events.ValidateRegion(region); err != nil {
		return usageError{err}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = events.EnsureStream(ctx, js, region, replicas)
	return err
}
