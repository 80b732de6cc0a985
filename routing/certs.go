package routing

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
)

// Certs holds the certificates the HTTPS listener serves, chosen by the
// ClientHello's server name: those published on the bus (cert events, one
// per domain), then those of a directory, then a default one. Like the
// route table, each source is an immutable set behind an atomic pointer:
// handshakes read it without a lock.
type Certs struct {
	log zerolog.Logger
	def *tls.Certificate // nil: unknown names are refused

	bus atomic.Pointer[certSet]
	dir atomic.Pointer[certSet]

	mu   sync.Mutex        // serialises Apply
	gens map[string]uint64 // domain → generation of its last cert event
}

// certSet maps exact names and wildcard bases ("example.com" for
// "*.example.com") to certificates.
type certSet struct {
	exact, wild hamt[tls.Certificate]
}

func (s *certSet) get(name string) (*tls.Certificate, bool) {
	if c, ok := s.exact.Get(name); ok {
		return c, true
	}
	return nil, false
}

func (s *certSet) getWild(name string) (*tls.Certificate, bool) {
	if i := strings.IndexByte(name, '.'); i > 0 {
		return s.wild.Get(name[i+1:])
	}
	return nil, false
}

// has reports whether domain, exact or wildcard, has a certificate.
func (s *certSet) has(domain string) bool {
	var ok bool
	if w, wild := strings.CutPrefix(domain, "*."); wild {
		_, ok = s.wild.Get(w)
	} else {
		_, ok = s.exact.Get(domain)
	}
	return ok
}

func (s *certSet) set(domain string, c *tls.Certificate) {
	if w, ok := strings.CutPrefix(domain, "*."); ok {
		s.wild = s.wild.Set(w, c)
	} else {
		s.exact = s.exact.Set(domain, c)
	}
}

func (s *certSet) delete(domain string) {
	if w, ok := strings.CutPrefix(domain, "*."); ok {
		s.wild = s.wild.Delete(w)
	} else {
		s.exact = s.exact.Delete(domain)
	}
}

// NewCerts returns an empty store; def, if not nil, is served to names
// that have no certificate.
func NewCerts(log zerolog.Logger, def *tls.Certificate) *Certs {
	c := &Certs{log: log, def: def, gens: map[string]uint64{}}
	c.bus.Store(&certSet{})
	c.dir.Store(&certSet{})
	return c
}

// Lookup returns the certificate for a server name: an exact name wins over
// a wildcard, and the bus over the directory.
func (c *Certs) Lookup(serverName string) (*tls.Certificate, bool) {
	name := normalizeHost(serverName)
	if name == "" {
		return nil, false
	}
	bus, dir := c.bus.Load(), c.dir.Load()
	for _, get := range []func(string) (*tls.Certificate, bool){bus.get, dir.get, bus.getWild, dir.getWild} {
		if cert, ok := get(name); ok {
			return cert, true
		}
	}
	return nil, false
}

// GetCertificate is the tls.Config hook: the certificate for the
// ClientHello's server name, else the default certificate, else none, which
// makes the handshake fail with the alert unrecognized_name. A refusal is
// logged at debug level with the server name (scanners send many);
// crypto/tls sends that alert only for its own "no certificates
// configured" error, which the HTTPS listener logs at debug level too.
func (c *Certs) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if cert, ok := c.Lookup(hello.ServerName); ok {
		return cert, nil
	}
	if c.def == nil {
		if e := c.log.Debug(); e.Enabled() {
			if hello.Conn != nil {
				e.Stringer("remote", hello.Conn.RemoteAddr())
			}
			e.Str("sni", hello.ServerName).Msg("TLS handshake refused: no certificate for the server name")
		}
	}
	return c.def, nil
}

// Apply applies the certificate events of a batch; other events are
// ignored. An event not newer than the domain's last one is ignored; one
// whose certificate is no longer valid (it expired since it was published)
// is refused with a log line, and the previous certificate stays.
func (c *Certs) Apply(batch []events.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := *c.bus.Load()
	changed := false
	for _, ev := range batch {
		if ev.Kind.Aspect() != events.AspectCert || ev.Generation <= c.gens[ev.Domain] {
			continue
		}
		log := c.log.With().Str("domain", ev.Domain).Uint64("generation", ev.Generation).Logger()
		if ev.Kind == events.KindCertDelete {
			c.gens[ev.Domain] = ev.Generation
			next.delete(ev.Domain)
			changed = true
			log.Info().Msg("certificate removed")
			continue
		}
		cert, err := events.ParseCert(ev.Domain, ev.Cert, ev.Key, time.Now())
		if err != nil {
			log.Warn().Str("reason", err.Error()).Msg("certificate refused; the previous one stays")
			continue
		}
		c.gens[ev.Domain] = ev.Generation
		next.set(ev.Domain, cert)
		changed = true
		log.Info().Strs("names", cert.Leaf.DNSNames).Time("not_after", cert.Leaf.NotAfter).Msg("certificate applied")
	}
	if changed {
		c.bus.Store(&next)
	}
}

// LoadCertFile reads a PEM file holding a certificate chain (leaf first)
// and its private key, as --default-cert and --cert-dir take them.
func LoadCertFile(path string) (*tls.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(data, data)
	if err != nil {
		return nil, &os.PathError{Op: "load certificate", Path: path, Err: err}
	}
	return &cert, nil
}

// loadDirCert loads a file of the certificate directory: a chain and its
// key (LoadCertFile), whose leaf must be valid at now, as a published
// certificate's, and list at least one DNS name to be served for.
func loadDirCert(path string, now time.Time) (*tls.Certificate, error) {
	cert, err := LoadCertFile(path)
	if err != nil {
		return nil, err
	}
	if err := events.CheckValidity(cert.Leaf, now); err != nil {
		return nil, &os.PathError{Op: "load certificate", Path: path, Err: err}
	}
	if len(cert.Leaf.DNSNames) == 0 {
		return nil, &os.PathError{Op: "load certificate", Path: path, Err: errNoDNSNames}
	}
	return cert, nil
}

// errNoDNSNames refuses a directory certificate that names no domain to
// serve it for.
var errNoDNSNames = errors.New("the certificate lists no DNS name")

// watchDir loads every *.pem file of dir (a chain and its key each, served
// for the names the certificate lists) and reloads them when a file changes,
// is added or removed, checking every interval until ctx is done. A file
// that cannot be loaded, or whose certificate is expired, not yet valid or
// names no domain, is logged and skipped; the certificates it held before
// stay. A removed file's certificates go.
func (c *Certs) watchDir(ctx context.Context, dir string, interval time.Duration) error {
	type stamp struct {
		size int64
		mod  time.Time
	}
	var seen map[string]stamp
	loaded := map[string]*tls.Certificate{} // by file
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		files, _ := filepath.Glob(filepath.Join(dir, "*.pem"))
		now := make(map[string]stamp, len(files))
		for _, f := range files {
			if fi, err := os.Stat(f); err == nil {
				now[f] = stamp{fi.Size(), fi.ModTime()}
			}
		}
		if seen == nil || !mapsEqual(seen, now) {
			next := map[string]*tls.Certificate{}
			for f := range now {
				cert, err := loadDirCert(f, time.Now())
				if err != nil {
					c.log.Warn().Str("file", f).Str("reason", err.Error()).Msg("certificate file skipped")
					if prev, ok := loaded[f]; ok {
						next[f] = prev
					}
					continue
				}
				next[f] = cert
			}
			loaded, seen = next, now
			c.dir.Store(buildSet(loaded))
			c.log.Info().Str("dir", dir).Int("files", len(loaded)).Msg("certificate directory loaded")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func mapsEqual[K, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// buildSet indexes certificates by the names they list, files in name order
// (the first file naming a domain wins).
func buildSet(byFile map[string]*tls.Certificate) *certSet {
	files := make([]string, 0, len(byFile))
	for f := range byFile {
		files = append(files, f)
	}
	slices.Sort(files)
	s := &certSet{}
	for _, f := range files {
		cert := byFile[f]
		for _, name := range cert.Leaf.DNSNames {
			name = strings.ToLower(name)
			if s.has(name) {
				continue
			}
			s.set(name, cert)
		}
	}
	return s
}
