package events

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

// CertSubject returns the subject that carries the certificate of domain in
// region: "sluice.<region>.cert.<id>", where id is the first 32 hex digits
// of the SHA-256 of the domain, so that no domain name is a subject token.
func CertSubject(region, domain string) string {
	sum := sha256.Sum256([]byte(domain))
	return SubjectPrefix + "." + region + ".cert." + hex.EncodeToString(sum[:16])
}

// CertSubjects returns the wildcard that matches every certificate subject
// of region.
func CertSubjects(region string) string { return SubjectPrefix + "." + region + ".cert.*" }

// Subject returns the subject ev is published on in region.
func (ev Event) Subject(region string) string {
	if ev.Kind.Aspect() == AspectCert {
		return CertSubject(region, ev.Domain)
	}
	return Subject(region, ev.App, ev.Kind.Aspect())
}

// certSubjectRegion returns the region of a certificate subject.
func certSubjectRegion(subject string) (string, bool) {
	t := strings.Split(subject, ".")
	if len(t) != 4 || t[0] != SubjectPrefix || t[2] != "cert" || ValidateRegion(t[1]) != nil {
		return "", false
	}
	return t[1], true
}

// ParseCert checks a PEM chain (leaf first) and its PEM private key as a
// certificate for domain at time now: the key must match the leaf, the leaf
// must be valid at now and cover domain (a wildcard domain needs the same
// wildcard in the certificate). It returns the certificate ready to serve.
func ParseCert(domain, certPEM, keyPEM string, now time.Time) (*tls.Certificate, error) {
	if err := ValidateDomain(domain); err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		// The error never quotes the key.
		return nil, fmt.Errorf("%w: certificate of %s: %w", ErrInvalid, domain, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("%w: certificate of %s: %w", ErrInvalid, domain, err)
		}
		cert.Leaf = leaf
	}
	if err := CheckValidity(leaf, now); err != nil {
		return nil, fmt.Errorf("%w: certificate of %s: %w", ErrInvalid, domain, err)
	}
	if !covers(leaf, domain) {
		return nil, fmt.Errorf("%w: certificate does not cover %s (it names %s)", ErrInvalid, domain, strings.Join(leaf.DNSNames, ", "))
	}
	return &cert, nil
}

// CheckValidity reports a leaf that is expired or not yet valid at now.
func CheckValidity(leaf *x509.Certificate, now time.Time) error {
	switch {
	case now.After(leaf.NotAfter):
		return fmt.Errorf("expired on %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// covers reports whether leaf is valid for domain; for a wildcard domain,
// the leaf must name the same wildcard.
func covers(leaf *x509.Certificate, domain string) bool {
	if strings.HasPrefix(domain, "*.") {
		for _, n := range leaf.DNSNames {
			if strings.EqualFold(n, domain) {
				return true
			}
		}
		return false
	}
	return leaf.VerifyHostname(domain) == nil
}

func (ev Event) validateCert(now time.Time) error {
	switch {
	case ev.App != "":
		return fmt.Errorf("%w: a certificate belongs to a domain, not to app %q", ErrInvalid, ev.App)
	case ev.Generation == 0 || ev.Generation > MaxGeneration:
		return fmt.Errorf("%w: generation %d out of range 1..%d", ErrInvalid, ev.Generation, uint64(MaxGeneration))
	case ev.Containers != nil || ev.Domains != nil || ev.Rate != 0 || ev.Burst != 0 || ev.Options != (AppOptions{}) || ev.ClaimedAt != nil:
		return fmt.Errorf("%w: %s event with app fields", ErrInvalid, ev.Kind)
	}
	if ev.Kind == KindCertDelete {
		if ev.Cert != "" || ev.Key != "" {
			return fmt.Errorf("%w: cert-delete event with a certificate", ErrInvalid)
		}
		return ValidateDomain(ev.Domain)
	}
	_, err := ParseCert(ev.Domain, ev.Cert, ev.Key, now)
	return err
}
