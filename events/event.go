package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/idna"
)

// Version is the version of the wire format this package writes and reads.
const Version = 1

// Limits of the wire format. They bound the memory one event can cost a
// router and keep every message well under the NATS payload limit.
const (
	MaxEventSize    = 256 << 10 // bytes of JSON
	MaxContainers   = 1000      // per app
	MaxDomains      = 100       // per app
	MaxAppLen       = 63
	MaxContainerID  = 128
	MaxDomainLen    = 253
	MaxGeneration   = 1<<53 - 1 // exact in every JSON implementation
	MaxClaimedAt    = 1<<53 - 1 // unix milliseconds, exact in JSON
	maxAddressLen   = 262       // a maximal name, a colon and a port
	maxDomainLabels = 127
)

// Kind names what happened to an app.
type Kind string

// The event kinds. Deploy, Restart and Scale carry the container set, Domains
// the domain set; Delete carries neither.
const (
	KindDeploy  Kind = "deploy"
	KindRestart Kind = "restart"
	KindScale   Kind = "scale"
	KindDomains Kind = "domains"
	KindDelete  Kind = "delete"
	// KindCert carries the certificate (chain and key) of one domain;
	// KindCertDelete removes it. They belong to a domain, not an app.
	KindCert       Kind = "cert"
	KindCertDelete Kind = "cert-delete"
)

// Aspect is the part of an app's state that an event replaces. Each aspect
// of each app has a subject of its own, whose last message is its state.
type Aspect string

// The aspects of an app.
const (
	AspectContainers Aspect = "containers"
	AspectDomains    Aspect = "domains"
	AspectDelete     Aspect = "delete"
	// AspectCert is the certificate of a domain; its subject is the
	// domain's, not an app's (CertSubject).
	AspectCert Aspect = "cert"
)

// Aspect returns the aspect the kind replaces, or "" for an unknown kind.
func (k Kind) Aspect() Aspect {
	switch k {
	case KindDeploy, KindRestart, KindScale:
		return AspectContainers
	case KindDomains:
		return AspectDomains
	case KindDelete:
		return AspectDelete
	case KindCert, KindCertDelete:
		return AspectCert
	}
	return ""
}

// ErrInvalid is wrapped by every error that rejects an event or one of its
// fields.
var ErrInvalid = errors.New("invalid event")

// Container is one instance of an app, reachable at Address.
type Container struct {
	// ID names the container within its app, e.g. "web-1".
	ID string `json:"id"`
	// Address is HOST:PORT, where HOST is an IPv4 address, a bracketed
	// IPv6 address or a DNS name, and PORT the container's $PORT.
	Address string `json:"address"`
}

// Event is one app lifecycle event. Containers is the complete container set
// for KindDeploy, KindRestart and KindScale (empty: the app has no container
// and answers 503); Domains is the complete domain set for KindDomains.
type Event struct {
	Kind       Kind
	App        string
	Generation uint64
	Containers []Container
	Domains    []string
	// Rate and Burst are the app's bandwidth allowance per container and
	// per direction, in bytes per second and bytes, on container events
	// only; zero means the router's default.
	Rate, Burst int64
	// Options are how routers serve the app, on domains events only.
	Options AppOptions
	// ClaimedAt tells, on domains events only, when the app first claimed
	// each of its domains, in unix milliseconds (1..MaxClaimedAt); its
	// keys are among Domains. A domain without an entry ranks after every
	// domain with one when two apps claim it (see docs/events.md).
	// Publisher fills it.
	ClaimedAt map[string]int64
	// Domain is the domain a certificate event is about (App is empty).
	Domain string
	// Cert is the PEM certificate chain, leaf first, and Key its PEM
	// private key, of a KindCert event.
	Cert, Key string
}

// AppOptions are how routers serve an app. They travel with its domains
// events; the zero value is the default. The JSON names (as /routes shows
// them) are the fields' names on the wire.
type AppOptions struct {
	// Balance is how requests spread over the app's containers:
	// BalanceRoundRobin (also the empty string) or BalanceLeastConn.
	Balance Balance `json:"balance,omitempty"`
	// Sticky sends a client back to the container that served it first,
	// by a cookie, while that container runs.
	Sticky bool `json:"sticky,omitempty"`
	// ErrorPage is the URL of an HTML page that replaces the router's own
	// pages in the app's error answers; empty means the router's pages.
	ErrorPage string `json:"error_page,omitempty"`
	// ForceHTTPS answers plain HTTP requests with a redirect (301) to
	// HTTPS, and adds Strict-Transport-Security to HTTPS responses that
	// have none.
	ForceHTTPS bool `json:"force_https,omitempty"`
	// Canonical, if set, is one of the app's domains (not a wildcard): a
	// request for any other domain of the app is redirected (301) to it.
	Canonical string `json:"canonical,omitempty"`
	// TLSPassthrough hands HTTPS connections to the app's containers
	// without decrypting them (the app terminates TLS): the router reads
	// the server name of the ClientHello and relays the bytes.
	TLSPassthrough bool `json:"tls_passthrough,omitempty"`
}

// Balance is a way to spread requests over containers.
type Balance string

// The balancing methods.
const (
	BalanceRoundRobin Balance = "round-robin"
	BalanceLeastConn  Balance = "least-conn"
)

// MaxErrorPageURL bounds the length of AppOptions.ErrorPage.
const MaxErrorPageURL = 2048

// wire is the JSON form. Pointers tell an absent field from an empty one:
// containers and domains must be present, even empty, where the kind needs
// them, so a misspelt field never reads as "zero containers".
type wire struct {
	V          *int             `json:"v"`
	Kind       Kind             `json:"kind"`
	App        string           `json:"app"`
	Generation *uint64          `json:"generation"`
	Containers *[]Container     `json:"containers,omitempty"`
	Domains    *[]string        `json:"domains,omitempty"`
	Rate       int64            `json:"rate,omitempty"`
	Burst      int64            `json:"burst,omitempty"`
	Balance    Balance          `json:"balance,omitempty"`
	Sticky     bool             `json:"sticky,omitempty"`
	ErrorPage  string           `json:"error_page,omitempty"`
	ForceHTTPS bool             `json:"force_https,omitempty"`
	Canonical  string           `json:"canonical,omitempty"`
	Passthru   bool             `json:"tls_passthrough,omitempty"`
	ClaimedAt  map[string]int64 `json:"claimed_at,omitempty"`
	Domain     string           `json:"domain,omitempty"`
	Cert       string           `json:"cert,omitempty"`
	Key        string           `json:"key,omitempty"`
}

// Encode validates ev and returns its JSON form. An event whose JSON form
// is over MaxEventSize, which routers would reject, is refused.
func Encode(ev Event) ([]byte, error) {
	if err := ev.Validate(); err != nil {
		return nil, err
	}
	v, gen := Version, ev.Generation
	w := wire{V: &v, Kind: ev.Kind, App: ev.App, Generation: &gen, Domain: ev.Domain, Cert: ev.Cert, Key: ev.Key}
	switch ev.Kind.Aspect() {
	case AspectContainers:
		cs := ev.Containers
		if cs == nil {
			cs = []Container{}
		}
		w.Containers = &cs
		w.Rate, w.Burst = ev.Rate, ev.Burst
	case AspectDomains:
		ds := ev.Domains
		if ds == nil {
			ds = []string{}
		}
		w.Domains = &ds
		o := ev.Options
		w.Balance, w.Sticky, w.ErrorPage = o.Balance, o.Sticky, o.ErrorPage
		w.ForceHTTPS, w.Canonical, w.Passthru = o.ForceHTTPS, o.Canonical, o.TLSPassthrough
		w.ClaimedAt = ev.ClaimedAt
	}
	data, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	if len(data) > MaxEventSize {
		return nil, fmt.Errorf("%w: %d bytes of JSON, more than %d", ErrInvalid, len(data), MaxEventSize)
	}
	return data, nil
}

// Decode parses and validates one event received on subject. The subject's
// app and aspect must agree with the payload's; a certificate's subject must
// be its domain's.
func Decode(subject string, data []byte) (Event, error) {
	if region, ok := certSubjectRegion(subject); ok {
		ev, err := decodePayload(data)
		if err != nil {
			return Event{}, err
		}
		if ev.Kind.Aspect() != AspectCert {
			return Event{}, fmt.Errorf("%w: kind %q sent on a certificate subject", ErrInvalid, ev.Kind)
		}
		if want := CertSubject(region, ev.Domain); subject != want {
			return Event{}, fmt.Errorf("%w: the certificate of %q belongs on %s, not %s", ErrInvalid, ev.Domain, want, subject)
		}
		return ev, nil
	}
	_, app, aspect, err := ParseSubject(subject)
	if err != nil {
		return Event{}, err
	}
	ev, err := decodePayload(data)
	if err != nil {
		return Event{}, err
	}
	if ev.App != app {
		return Event{}, fmt.Errorf("%w: app %q in the payload, %q in the subject", ErrInvalid, ev.App, app)
	}
	if ev.Kind.Aspect() != aspect {
		return Event{}, fmt.Errorf("%w: kind %q sent on the %q subject", ErrInvalid, ev.Kind, aspect)
	}
	return ev, nil
}

func decodePayload(data []byte) (Event, error) {
	if len(data) > MaxEventSize {
		return Event{}, fmt.Errorf("%w: %d bytes, more than %d", ErrInvalid, len(data), MaxEventSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var w wire
	if err := dec.Decode(&w); err != nil {
		return Event{}, fmt.Errorf("%w: malformed JSON: %w", ErrInvalid, err)
	}
	if _, err := dec.Token(); err == nil {
		return Event{}, fmt.Errorf("%w: data after the JSON object", ErrInvalid)
	}
	switch {
	case w.V == nil:
		return Event{}, fmt.Errorf("%w: no version (v)", ErrInvalid)
	case *w.V != Version:
		return Event{}, fmt.Errorf("%w: unsupported version %d (this router reads %d)", ErrInvalid, *w.V, Version)
	case w.Generation == nil:
		return Event{}, fmt.Errorf("%w: no generation", ErrInvalid)
	case w.Kind.Aspect() == "":
		return Event{}, fmt.Errorf("%w: unknown kind %q", ErrInvalid, w.Kind)
	}
	ev := Event{Kind: w.Kind, App: w.App, Generation: *w.Generation, Rate: w.Rate, Burst: w.Burst,
		Options: AppOptions{Balance: w.Balance, Sticky: w.Sticky, ErrorPage: w.ErrorPage,
			ForceHTTPS: w.ForceHTTPS, Canonical: w.Canonical, TLSPassthrough: w.Passthru},
		ClaimedAt: w.ClaimedAt, Domain: w.Domain, Cert: w.Cert, Key: w.Key}
	aspect := w.Kind.Aspect()
	switch {
	case aspect == AspectContainers && w.Containers == nil:
		return Event{}, fmt.Errorf("%w: %s event without containers (send [] for none)", ErrInvalid, w.Kind)
	case aspect == AspectDomains && w.Domains == nil:
		return Event{}, fmt.Errorf("%w: domains event without domains (send [] for none)", ErrInvalid)
	case aspect != AspectContainers && w.Containers != nil:
		return Event{}, fmt.Errorf("%w: %s event with containers", ErrInvalid, w.Kind)
	case aspect != AspectDomains && w.Domains != nil:
		return Event{}, fmt.Errorf("%w: %s event with domains", ErrInvalid, w.Kind)
	case aspect != AspectDomains && w.ClaimedAt != nil:
		return Event{}, fmt.Errorf("%w: %s event with claimed_at (domains events only)", ErrInvalid, w.Kind)
	}
	if w.Containers != nil {
		ev.Containers = *w.Containers
	}
	if w.Domains != nil {
		ev.Domains = *w.Domains
	}
	return ev, ev.Validate()
}

// Validate reports the first reason ev cannot be published or applied. A
// certificate is checked against the current time.
func (ev Event) Validate() error {
	if ev.Kind.Aspect() == "" {
		return fmt.Errorf("%w: unknown kind %q", ErrInvalid, ev.Kind)
	}
	if ev.Kind.Aspect() == AspectCert {
		return ev.validateCert(time.Now())
	}
	if ev.Domain != "" || ev.Cert != "" || ev.Key != "" {
		return fmt.Errorf("%w: %s event with a certificate field", ErrInvalid, ev.Kind)
	}
	if err := ValidateApp(ev.App); err != nil {
		return err
	}
	if ev.Generation == 0 || ev.Generation > MaxGeneration {
		return fmt.Errorf("%w: generation %d out of range 1..%d", ErrInvalid, ev.Generation, uint64(MaxGeneration))
	}
	aspect := ev.Kind.Aspect()
	if aspect != AspectContainers && (ev.Rate != 0 || ev.Burst != 0) {
		return fmt.Errorf("%w: %s event with a rate or burst (container events only)", ErrInvalid, ev.Kind)
	}
	if aspect != AspectDomains && ev.Options != (AppOptions{}) {
		return fmt.Errorf("%w: %s event with app options (domains events only)", ErrInvalid, ev.Kind)
	}
	if aspect != AspectDomains && ev.ClaimedAt != nil {
		return fmt.Errorf("%w: %s event with claimed_at (domains events only)", ErrInvalid, ev.Kind)
	}
	switch aspect {
	case AspectContainers:
		if err := validateAllowance(ev.Rate, ev.Burst); err != nil {
			return err
		}
		return validateContainers(ev.Containers)
	case AspectDomains:
		if err := ev.Options.Validate(); err != nil {
			return err
		}
		if c := ev.Options.Canonical; c != "" && !slices.Contains(ev.Domains, c) {
			return fmt.Errorf("%w: canonical domain %q is not one of the app's domains", ErrInvalid, c)
		}
		if err := validateDomains(ev.Domains); err != nil {
			return err
		}
		return validateClaimedAt(ev.ClaimedAt, ev.Domains)
	}
	return nil
}

// validateClaimedAt checks that every entry of claimedAt is about one of
// domains and holds a time in 1..MaxClaimedAt.
func validateClaimedAt(claimedAt map[string]int64, domains []string) error {
	for d, at := range claimedAt {
		if !slices.Contains(domains, d) {
			return fmt.Errorf("%w: claimed_at of %q, which is not one of the event's domains", ErrInvalid, d)
		}
		if at < 1 || at > MaxClaimedAt {
			return fmt.Errorf("%w: claimed_at of %q is %d, out of range 1..%d (unix milliseconds)", ErrInvalid, d, at, int64(MaxClaimedAt))
		}
	}
	return nil
}

// MaxBandwidth bounds a rate (bytes per second) or a burst (bytes), so that
// it travels exactly in JSON.
const MaxBandwidth = 1<<53 - 1

func validateAllowance(rate, burst int64) error {
	switch {
	case rate < 0 || rate > MaxBandwidth:
		return fmt.Errorf("%w: rate %d out of range 1..%d bytes per second (0: the router's default)", ErrInvalid, rate, int64(MaxBandwidth))
	case burst < 0 || burst > MaxBandwidth:
		return fmt.Errorf("%w: burst %d out of range 1..%d bytes (0: the router's default)", ErrInvalid, burst, int64(MaxBandwidth))
	}
	return nil
}

// Validate reports the first reason o cannot be applied.
func (o AppOptions) Validate() error {
	switch o.Balance {
	case "", BalanceRoundRobin, BalanceLeastConn:
	default:
		return fmt.Errorf("%w: balance %q: want %s or %s", ErrInvalid, o.Balance, BalanceRoundRobin, BalanceLeastConn)
	}
	if strings.HasPrefix(o.Canonical, "*.") {
		return fmt.Errorf("%w: canonical domain %q: a wildcard names no single host", ErrInvalid, o.Canonical)
	}
	if o.ErrorPage == "" {
		return nil
	}
	u, err := url.Parse(o.ErrorPage)
	switch {
	case len(o.ErrorPage) > MaxErrorPageURL:
		return fmt.Errorf("%w: error page URL longer than %d bytes", ErrInvalid, MaxErrorPageURL)
	case err != nil:
		return fmt.Errorf("%w: error page URL: %w", ErrInvalid, err)
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.User != nil:
		return fmt.Errorf("%w: error page URL %q: want an absolute http or https URL without credentials", ErrInvalid, o.ErrorPage)
	}
	return nil
}

func validateContainers(cs []Container) error {
	if len(cs) > MaxContainers {
		return fmt.Errorf("%w: %d containers, more than %d", ErrInvalid, len(cs), MaxContainers)
	}
	ids := make(map[string]bool, len(cs))
	addrs := make(map[string]bool, len(cs))
	for _, c := range cs {
		if err := ValidateContainerID(c.ID); err != nil {
			return err
		}
		if err := ValidateAddress(c.Address); err != nil {
			return fmt.Errorf("container %q: %w", c.ID, err)
		}
		if ids[c.ID] {
			return fmt.Errorf("%w: container id %q listed twice", ErrInvalid, c.ID)
		}
		if addrs[c.Address] {
			return fmt.Errorf("%w: address %q listed twice", ErrInvalid, c.Address)
		}
		ids[c.ID], addrs[c.Address] = true, true
	}
	return nil
}

func validateDomains(ds []string) error {
	if len(ds) > MaxDomains {
		return fmt.Errorf("%w: %d domains, more than %d", ErrInvalid, len(ds), MaxDomains)
	}
	seen := make(map[string]bool, len(ds))
	for _, d := range ds {
		if err := ValidateDomain(d); err != nil {
			return err
		}
		if seen[d] {
			return fmt.Errorf("%w: domain %q listed twice", ErrInvalid, d)
		}
		seen[d] = true
	}
	return nil
}

// ValidateApp checks an app name: 1 to 63 of [a-z0-9-], starting and ending
// with a letter or digit. Names are subject tokens, so nothing else is safe.
func ValidateApp(app string) error {
	if !isToken(app, MaxAppLen) {
		return fmt.Errorf("%w: app name %q: want 1 to %d of [a-z0-9-], not starting or ending with '-'", ErrInvalid, app, MaxAppLen)
	}
	return nil
}

// isToken reports whether s is 1 to max of [a-z0-9-], with no '-' at either
// end: the alphabet of app and region names.
func isToken(s string, max int) bool {
	if len(s) == 0 || len(s) > max || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ValidateContainerID checks a container id: 1 to 128 of [A-Za-z0-9_.-],
// starting with a letter or digit.
func ValidateContainerID(id string) error {
	ok := len(id) > 0 && len(id) <= MaxContainerID && isAlnum(id[0])
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		ok = isAlnum(c) || c == '_' || c == '.' || c == '-'
	}
	if !ok {
		return fmt.Errorf("%w: container id %q: want 1 to %d of [A-Za-z0-9_.-], starting with a letter or digit", ErrInvalid, id, MaxContainerID)
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// ValidateAddress checks a container address: HOST:PORT with HOST an IPv4
// address, a bracketed IPv6 address (no zone) or a DNS name, and PORT in
// 1..65535. Unspecified and multicast addresses are refused.
func ValidateAddress(addr string) error {
	bad := func(why string) error { return fmt.Errorf("%w: address %q: %s", ErrInvalid, addr, why) }
	if len(addr) > maxAddressLen {
		return bad("too long")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return bad("want HOST:PORT, with IPv6 in brackets")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || port[0] == '0' {
		return bad("port must be a number in 1..65535")
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		switch {
		case ip.Zone() != "":
			return bad("IPv6 zones are not supported")
		case ip.Is4() && strings.HasPrefix(addr, "["):
			return bad("IPv4 address in brackets")
		case ip.Is4In6():
			return bad("write IPv4 addresses as a.b.c.d")
		case ip.IsUnspecified(), ip.IsMulticast():
			return bad("not a unicast address")
		}
		return nil
	}
	if strings.HasPrefix(addr, "[") || !isHostname(strings.ToLower(host)) {
		return bad("host is neither an IP address nor a DNS name")
	}
	return nil
}

// isHostname reports whether s is a lowercase DNS name: dot-separated labels
// of [a-z0-9-], 1 to 63 each, no '-' at either end, whose last label is not
// all digits (so that no malformed IP address passes for a name).
func isHostname(s string) bool {
	if len(s) == 0 || len(s) > MaxDomainLen {
		return false
	}
	labels := strings.Split(s, ".")
	if len(labels) > maxDomainLabels {
		return false
	}
	for _, l := range labels {
		if !isToken(l, 63) {
			return false
		}
	}
	last := labels[len(labels)-1]
	return strings.Trim(last, "0123456789") != ""
}

// ValidateDomain checks a domain an app may own: a lowercase DNS name of at
// least two labels, non-ASCII labels written as IDNA A-labels ("xn--..."),
// optionally prefixed by "*." for a wildcard over one label.
func ValidateDomain(d string) error {
	name := strings.TrimPrefix(d, "*.")
	bad := func(why string) error { return fmt.Errorf("%w: domain %q: %s", ErrInvalid, d, why) }
	switch {
	case len(d) > MaxDomainLen:
		return bad("longer than 253 bytes")
	case strings.Contains(name, "*"):
		return bad("'*' is only allowed as a leading '*.'")
	case !isHostname(name):
		return bad("want a lowercase name of labels of [a-z0-9-] (IDNA A-labels for other scripts)")
	case !strings.Contains(name, "."):
		return bad("want at least two labels")
	}
	for l := range strings.SplitSeq(name, ".") {
		if strings.HasPrefix(l, "xn--") {
			if _, err := idna.Lookup.ToUnicode(l); err != nil {
				return bad(fmt.Sprintf("label %q is not a valid IDNA A-label", l))
			}
		} else if len(l) >= 4 && l[2:4] == "--" {
			return bad(fmt.Sprintf("label %q: '--' in third and fourth position is reserved", l))
		}
	}
	return nil
}
