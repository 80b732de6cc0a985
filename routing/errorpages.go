package routing

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Bounds on the apps' own error pages.
const (
	MaxErrorPageSize = 64 << 10         // a larger page is refused
	errorPageTTL     = 5 * time.Minute  // a page is fetched again after that
	errorPageRetry   = 30 * time.Second // a failed fetch is retried after that
	errorPageTimeout = 5 * time.Second
	maxErrorPages    = 1000 // beyond, the page requested least recently is dropped
)

// errRefusedAddress is the failure to fetch an error page from an address
// the router must not reach for an app.
var errRefusedAddress = errors.New("address refused for an error page")

// internalNetworks are refused for error pages besides the loopback,
// link-local, multicast, unspecified and private (RFC 1918, ULA) addresses
// netip classifies.
var internalNetworks = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),     // "this network"
	netip.MustParsePrefix("100.64.0.0/10"), // shared address space (carrier-grade NAT)
}

// publicAddr reports whether a is an address an app's error page may be
// fetched from by default: not the router's machine, nor a network inside
// the platform.
func publicAddr(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() || a.IsPrivate() {
		return false
	}
	for _, p := range internalNetworks {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// errorPages fetches and caches the apps' error pages. A page is fetched the
// first time it is needed, in the background: until it arrives (or if it
// cannot be fetched), the router's own page is sent.
//
// An app chooses the URL, so the fetch must not reach what the app could
// not reach itself (server-side request forgery): every connection, the
// first and each redirect's, is checked by allow once its address is
// resolved, and only a text/html page answered 200 is kept.
type errorPages struct {
	client   *http.Client
	log      zerolog.Logger
	requests chan string
	done     chan struct{} // closed when run returns
	fetching sync.WaitGroup
	// allow reports whether a page may be fetched from an address; set
	// before the first fetch.
	allow  func(netip.AddrPort) bool
	max    int                              // entries kept in pages
	denied atomic.Pointer[[]netip.AddrPort] // the router's admin listener, see deny

	mu    sync.Mutex
	pages map[string]*cachedPage
}

type cachedPage struct {
	body     []byte // nil until fetched
	next     time.Time
	used     time.Time // last asked for
	fetching bool
}

// newErrorPages returns the cache of error pages, fetched from public
// addresses and from networks, never from the addresses given to deny.
func newErrorPages(log zerolog.Logger, networks []netip.Prefix) *errorPages {
	e := &errorPages{
		log:      log,
		requests: make(chan string, 64),
		done:     make(chan struct{}),
		max:      maxErrorPages,
		pages:    map[string]*cachedPage{},
	}
	e.allow = func(ap netip.AddrPort) bool {
		if e.isDenied(ap) {
			return false
		}
		for _, p := range networks {
			if p.Contains(ap.Addr().Unmap()) {
				return true
			}
		}
		return publicAddr(ap.Addr())
	}
	d := &net.Dialer{Timeout: errorPageTimeout, Control: e.control}
	e.client = &http.Client{
		Timeout: errorPageTimeout,
		// No proxy from the environment: the address checked must be
		// the page's own.
		Transport: &http.Transport{DialContext: d.DialContext, TLSHandshakeTimeout: errorPageTimeout, MaxIdleConnsPerHost: 1, IdleConnTimeout: errorPageTimeout},
	}
	return e
}

// deny refuses pages from addr (the admin listener's), whatever the
// networks allowed: from any of the machine's addresses when it listens
// on all of them, from any loopback address when on one of them.
func (e *errorPages) deny(addr net.Addr) {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return
	}
	list := []netip.AddrPort{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
	if ap.Addr().IsUnspecified() {
		addrs, _ := net.InterfaceAddrs() // without them, loopback is still denied
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				list = append(list, netip.AddrPortFrom(p.Addr().Unmap(), ap.Port()))
			}
		}
	}
	e.denied.Store(&list)
}

// isDenied reports whether ap was given to deny.
func (e *errorPages) isDenied(ap netip.AddrPort) bool {
	list := e.denied.Load()
	if list == nil {
		return false
	}
	a := ap.Addr().Unmap()
	for _, d := range *list {
		if d.Port() != ap.Port() {
			continue
		}
		if d.Addr() == a || (d.Addr().IsUnspecified() || d.Addr().IsLoopback()) && (a.IsLoopback() || a.IsUnspecified()) {
			return true
		}
	}
	return false
}

// control refuses a connection to an address allow refuses; it runs for
// every connection, after name resolution.
func (e *errorPages) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("error page address %q: %w", address, err)
	}
	if !e.allow(ap) {
		return errRefusedAddress // net.OpError names the address
	}
	return nil
}

// get returns the page at url if it has been fetched, and asks for a fetch
// when it is missing or old.
func (e *errorPages) get(url string) []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.pages[url]
	if p == nil {
		if len(e.pages) >= e.max && !e.evict() {
			return nil // every page is being fetched: the router's own page
		}
		p = &cachedPage{}
		e.pages[url] = p
	}
	p.used = time.Now()
	if !p.fetching && !time.Now().Before(p.next) {
		select {
		case e.requests <- url:
			p.fetching = true
		default: // too many fetches waiting: a later error asks again
		}
	}
	return p.body
}

// evict drops the page asked for least recently, not being fetched, and
// reports whether it found one. Called with mu held.
func (e *errorPages) evict() bool {
	var oldest string
	var used time.Time
	for url, p := range e.pages {
		if !p.fetching && (oldest == "" || p.used.Before(used)) {
			oldest, used = url, p.used
		}
	}
	if oldest == "" {
		return false
	}
	delete(e.pages, oldest)
	return true
}

// run fetches the pages asked for until ctx is done.
func (e *errorPages) run(ctx context.Context) {
	defer close(e.done)
	for {
		select {
		case <-ctx.Done():
			return
		case url := <-e.requests:
			e.fetching.Go(func() { e.fetch(ctx, url) })
		}
	}
}

// wait waits for run and the fetches it started to end.
func (e *errorPages) wait() {
	<-e.done
	e.fetching.Wait()
	e.client.CloseIdleConnections()
}

func (e *errorPages) fetch(ctx context.Context, url string) {
	body, err := e.download(ctx, url)
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.pages[url]
	p.fetching = false // never evicted while fetching
	if err != nil {
		p.next = time.Now().Add(errorPageRetry)
		e.log.Warn().Str("url", url).Err(err).Msg("app error page not fetched; the router's own page is used")
		return
	}
	p.body, p.next = body, time.Now().Add(errorPageTTL)
}

func (e *errorPages) download(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	if media, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); media != "text/html" {
		return nil, fmt.Errorf("content type %q, want text/html", resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxErrorPageSize+1))
	if err != nil {
		return nil, err
	}
	if len(body) > MaxErrorPageSize {
		return nil, fmt.Errorf("page larger than %d bytes", MaxErrorPageSize)
	}
	return body, nil
}
