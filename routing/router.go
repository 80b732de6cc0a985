package routing

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/shaping"
)

// Config configures a Router. Zero fields take the defaults documented on
// them, applied by NewRouter.
type Config struct {
	// Region is the region whose events the router follows. Required.
	Region string
	// HTTPAddr is where plain HTTP is served. Empty means ":80".
	HTTPAddr string
	// HTTPSAddr is where HTTPS is served (TLS 1.2 and 1.3, HTTP/2 and
	// HTTP/1.1, the certificate and the app chosen by the server name).
	// Empty means ":443"; "off" serves no HTTPS.
	HTTPSAddr string
	// DefaultCert is served to server names that have no certificate; nil
	// refuses them in the handshake (alert unrecognized_name).
	DefaultCert *tls.Certificate
	// CertDir, if set, is a directory of *.pem files (a chain and its key
	// each) served for the names their certificates list, reloaded when
	// they change. Certificates published on NATS take precedence.
	CertDir string
	// CertDirInterval is how often CertDir is checked for changes. Zero
	// means 2s.
	CertDirInterval time.Duration
	// AdminAddr is where /healthz, /readyz and /routes are served. Empty
	// means "127.0.0.1:9180": loopback only.
	AdminAddr string
	// StreamReplicas is the number of copies of the region's stream, used
	// when the router creates it. Zero means 1.
	StreamReplicas int
	// ConnectTimeout bounds the connection to a container. Zero means 5s.
	ConnectTimeout time.Duration
	// ResponseTimeout bounds the time a container takes to start its
	// response once it has the request (504 beyond), and the time a request
	// waits in its app's queue. Zero means 30s.
	ResponseTimeout time.Duration
	// IdleTimeout closes a connection to a container, and the client's
	// request with it, after that long without a byte either way: a
	// rolling window, also for WebSockets and server-sent events. A client
	// that stops sending its body or taking the response is cut off after
	// as long (up to an eighth more). Zero means 60s.
	IdleTimeout time.Duration
	// ReadHeaderTimeout bounds the time a client takes to send its request
	// headers. Zero means 10s.
	ReadHeaderTimeout time.Duration
	// KeepAliveTimeout closes a client's keep-alive connection idle that
	// long between requests. Zero means 120s.
	KeepAliveTimeout time.Duration
	// MaxHeaderBytes bounds a request's header block (431 beyond); one
	// header is bounded by MaxHeaderField. Zero means 32 KiB.
	MaxHeaderBytes int
	// MaxRequestBody bounds a request's body (413 beyond). Zero means 75 MB.
	MaxRequestBody int64
	// MaxInflight bounds the requests this router has sent to one container
	// that it has not started to answer (a stream it answers, such as a
	// WebSocket, holds no slot); beyond, requests wait in their app's
	// queue, which holds MaxInflight per container, and beyond that get 503
	// queue_full. Zero means 50; a negative value means no bound.
	MaxInflight int64
	// ErrorPageNetworks are the networks, besides public addresses, that
	// apps' error pages may be fetched from, for a platform that hosts them
	// inside. Empty: loopback, link-local, unspecified, multicast, private
	// (RFC 1918, ULA) and shared (100.64.0.0/10) addresses are refused, as
	// they would let an app read what only the router can reach. The
	// router's admin listener is refused whatever the networks.
	ErrorPageNetworks []netip.Prefix
	// TrustedProxies are the networks whose X-Forwarded-For is kept and
	// extended (the router is behind them). Empty: the router is the edge,
	// and a client's X-Forwarded-For is replaced by its address.
	TrustedProxies []netip.Prefix
	// ProbeInterval is the time from a failed connection to a container to
	// the first probe of it; the interval doubles after each failed probe,
	// up to 30s. Zero means 1s.
	ProbeInterval time.Duration
	// ShutdownTimeout bounds the wait for requests in flight when the
	// router stops. Zero means 30s.
	ShutdownTimeout time.Duration
	// Shaping is the bandwidth allowance of each container, each way,
	// unless its app sets one in its container events. Zero fields take
	// shaping.DefaultLimits: 20 MB/s and a 1.6 GB burst.
	Shaping shaping.Limits
	// NoShaping turns bandwidth shaping off for every container.
	NoShaping bool
	// ShapingPeers is the number of routers that share each container's
	// allowance (each enforces 1/ShapingPeers of it). Zero means counting
	// them from their heartbeats on NATS.
	ShapingPeers int
	// DialContext opens connections to containers, for requests and
	// probes; the proxy bounds each attempt by ConnectTimeout. Nil means a
	// net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Transport reaches containers. Nil means NewTransport(ConnectTimeout).
	Transport http.RoundTripper
	// Logger receives the router's log and access log. The zero value logs
	// nothing.
	Logger zerolog.Logger
}

// def sets *p to v unless *p is positive.
func def(p *time.Duration, v time.Duration) {
	if *p <= 0 {
		*p = v
	}
}

// setTimeouts applies the defaults of the durations the transport uses.
func (c *Config) setTimeouts() {
	def(&c.ConnectTimeout, 5*time.Second)
	def(&c.ResponseTimeout, 30*time.Second)
	def(&c.IdleTimeout, 60*time.Second)
}

func (c *Config) setDefaults() {
	c.setTimeouts()
	if c.HTTPAddr == "" {
		c.HTTPAddr = ":80"
	}
	if c.AdminAddr == "" {
		c.AdminAddr = "127.0.0.1:9180"
	}
	if c.HTTPSAddr == "" {
		c.HTTPSAddr = ":443"
	}
	def(&c.CertDirInterval, 2*time.Second)
	def(&c.ReadHeaderTimeout, 10*time.Second)
	def(&c.KeepAliveTimeout, 120*time.Second)
	def(&c.ShutdownTimeout, 30*time.Second)
	def(&c.ProbeInterval, time.Second)
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 32 << 10
	}
	if c.MaxRequestBody <= 0 {
		c.MaxRequestBody = 75_000_000
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = 50
	}
	if c.Transport == nil {
		c.Transport = NewTransport(*c)
	}
}

// Router is a whole sluice router: the event subscriber that keeps the
// route table, the proxy that serves it, and the admin endpoints.
type Router struct {
	cfg     Config
	table   *Table
	events  *events.Subscriber
	peers   *shaping.Peers // nil when shaping is off
	proxy   *Proxy
	certs   *Certs
	https   *http.Server // nil when HTTPS is off
	httpsLn *sniListener
	http    *http.Server
	admin   *http.Server
	httpLn  net.Listener
	adminLn net.Listener
}

// NewRouter returns a router that follows the events of cfg.Region on nc.
func NewRouter(nc *nats.Conn, cfg Config) (*Router, error) {
	if err := events.ValidateRegion(cfg.Region); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	var limiter *shaping.Limiter
	var peers *shaping.Peers
	if !cfg.NoShaping {
		if err := cfg.Shaping.Or(shaping.DefaultLimits).Validate(); err != nil {
			return nil, err
		}
		limiter = shaping.NewLimiter(cfg.Shaping)
		peers = &shaping.Peers{Conn: nc, Region: cfg.Region, Logger: cfg.Logger.With().Str("component", "shaping").Logger()}
		if cfg.ShapingPeers > 0 {
			limiter.SetPeers(cfg.ShapingPeers)
		} else {
			peers.Limiter = limiter
		}
	}
	table := NewTable(cfg.Logger.With().Str("component", "table").Logger(), limiter)
	certs := NewCerts(cfg.Logger.With().Str("component", "certs").Logger(), cfg.DefaultCert)
	sub := &events.Subscriber{
		JetStream: js,
		Region:    cfg.Region,
		Handler:   splitter{table: table, certs: certs},
		Replicas:  cfg.StreamReplicas,
		Logger:    cfg.Logger.With().Str("component", "events").Logger(),
	}
	errLog := log.New(logWriter{cfg.Logger.With().Str("component", "http").Logger()}, "", 0)
	r := &Router{cfg: cfg, table: table, events: sub, peers: peers, proxy: NewProxy(table, cfg), certs: certs}
	server := func() *http.Server {
		return &http.Server{
			Handler:           r.proxy,
			ReadHeaderTimeout: cfg.ReadHeaderTimeout,
			IdleTimeout:       cfg.KeepAliveTimeout,
			// The proxy answers a header block over MaxHeaderBytes with
			// its own 431; the server cuts off only far larger ones.
			MaxHeaderBytes: 2 * cfg.MaxHeaderBytes,
			ErrorLog:       errLog,
		}
	}
	r.http = server()
	r.http.ConnState = guardConnState
	if cfg.HTTPSAddr != "off" {
		r.https = server()
		r.https.ConnState = guardConnState
		r.https.ConnContext = withTLSState
		r.https.TLSConfig = &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: certs.GetCertificate,
			NextProtos:     []string{"h2", "http/1.1"},
		}
	}
	r.admin = &http.Server{
		Handler: &Admin{
			Table:   table,
			Events:  sub.Status,
			NATS:    func() string { return nc.Status().String() },
			Shaping: limiter,
		},
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ErrorLog:          errLog,
	}
	return r, nil
}

// splitter hands the certificate events of a batch to the certificate store
// and the others to the route table.
type splitter struct {
	table *Table
	certs *Certs
}

func (s splitter) Apply(batch []events.Event) {
	apps := make([]events.Event, 0, len(batch))
	hasCerts := false
	for _, ev := range batch {
		if ev.Kind.Aspect() == events.AspectCert {
			hasCerts = true
		} else {
			apps = append(apps, ev)
		}
	}
	if hasCerts {
		s.certs.Apply(batch)
	}
	if len(apps) > 0 {
		s.table.Apply(apps)
	}
}

// Certs returns the router's certificate store.
func (r *Router) Certs() *Certs { return r.certs }

// Table returns the router's route table.
func (r *Router) Table() *Table { return r.table }

// Ready reports whether the region's state has been loaded.
func (r *Router) Ready() bool { return r.events.Status().Ready }

// Open binds the listeners, so that an address in use is reported before
// anything runs.
func (r *Router) Open() error {
	ln, err := net.Listen("tcp", r.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("http listener: %w", err)
	}
	// Request heads are checked before the server reads them; the guard
	// lets through heads as large as the server reads (MaxHeaderBytes
	// plus its 4096 bytes of slack), and times them as the server would.
	guard := &guardListener{Listener: ln, proxy: r.proxy, maxHead: r.http.MaxHeaderBytes + 4096, headTimeout: r.http.ReadHeaderTimeout}
	r.httpLn = guard
	if r.adminLn, err = net.Listen("tcp", r.cfg.AdminAddr); err != nil {
		r.httpLn.Close()
		return fmt.Errorf("admin listener: %w", err)
	}
	r.proxy.pages.deny(r.adminLn.Addr())
	if r.https != nil {
		ln, err := net.Listen("tcp", r.cfg.HTTPSAddr)
		if err != nil {
			r.httpLn.Close()
			r.adminLn.Close()
			return fmt.Errorf("https listener: %w", err)
		}
		if _, port, _ := net.SplitHostPort(ln.Addr().String()); port != "443" {
			r.proxy.httpsPort = port
		}
		r.httpsLn = newSNIListener(ln, r.proxy, r.cfg.ReadHeaderTimeout, r.https.TLSConfig, guard.guard)
	}
	return nil
}

// HTTPSAddr returns the address of the HTTPS listener, nil when HTTPS is
// off; valid after Open.
func (r *Router) HTTPSAddr() net.Addr {
	if r.httpsLn == nil {
		return nil
	}
	return r.httpsLn.Addr()
}

// HTTPAddr returns the address of the HTTP listener; valid after Open.
func (r *Router) HTTPAddr() net.Addr { return r.httpLn.Addr() }

// AdminAddr returns the address of the admin listener; valid after Open.
func (r *Router) AdminAddr() net.Addr { return r.adminLn.Addr() }

// Run serves until ctx is done, then stops accepting connections and waits
// up to ShutdownTimeout for requests in flight. Call Open first.
func (r *Router) Run(ctx context.Context) error {
	if r.httpLn == nil {
		return errors.New("routing: Run before Open")
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.events.Run(ctx) })
	g.Go(func() error { return r.proxy.Run(ctx) })
	if r.peers != nil {
		g.Go(func() error { return r.peers.Run(ctx) })
	}
	g.Go(func() error { return serve(r.http, r.httpLn) })
	g.Go(func() error { return serve(r.admin, r.adminLn) })
	servers := []*http.Server{r.http, r.admin}
	if r.https != nil {
		servers = append(servers, r.https)
		g.Go(func() error {
			// The listener's connections have done their handshake.
			err := r.https.Serve(r.httpsLn)
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return err
		})
	}
	if r.cfg.CertDir != "" {
		g.Go(func() error { return r.certs.watchDir(ctx, r.cfg.CertDir, r.cfg.CertDirInterval) })
	}
	g.Go(func() error {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
		defer cancel()
		var errs []error
		for _, s := range servers {
			errs = append(errs, s.Shutdown(shutdownCtx))
		}
		if r.httpsLn != nil {
			// Relayed connections had the same time as requests to end.
			r.httpsLn.Close()
			r.httpsLn.stopRelays()
			r.httpsLn.wait()
		}
		return errors.Join(errs...)
	})
	log := r.cfg.Logger.Info().Str("region", r.cfg.Region).Stringer("http", r.HTTPAddr()).Stringer("admin", r.AdminAddr())
	if r.httpsLn != nil {
		log = log.Stringer("https", r.HTTPSAddr())
	}
	log.Msg("router started")
	err := g.Wait()
	// Requests that ended during the shutdown pooled their connections.
	r.proxy.CloseIdleConnections()
	return err
}

func serve(s *http.Server, ln net.Listener) error {
	if err := s.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
