package routing_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/routing"
	"github.com/sluice-router/sluice/testenv"
)

// httpsClient returns a client that trusts ca and sends every request to
// the router's HTTPS listener, whatever the URL's host, with HTTP/2 offered.
func httpsClient(r *testenv.Router, ca *testenv.CA) *http.Client {
	d := &net.Dialer{}
	return &http.Client{
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: ca.Pool()},
			ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, r.HTTPSAddr)
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       testenv.Timeout,
	}
}

// wantRedirect checks that resp is a 301 to want.
func wantRedirect(t *testing.T, resp *http.Response, want string) {
	t.Helper()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != want {
		t.Fatalf("got %d to %q, want 301 to %q", resp.StatusCode, resp.Header.Get("Location"), want)
	}
}

// handshake opens a TLS connection to the router with server name sni and
// returns the certificate it was given.
func handshake(t *testing.T, r *testenv.Router, ca *testenv.CA, sni string, cfg *tls.Config) (*x509.Certificate, error) {
	t.Helper()
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg.RootCAs, cfg.ServerName = ca.Pool(), sni
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: testenv.Timeout}, "tcp", r.HTTPSAddr, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// publishCert publishes a certificate for domain, issued by ca for names
// (default: the domain), and returns its leaf's serial number.
func (w *world) publishCert(t *testing.T, ca *testenv.CA, domain string, opts testenv.CertOptions, names ...string) string {
	t.Helper()
	if len(names) == 0 {
		names = []string{domain}
	}
	chain, key := ca.Issue(t, opts, names...)
	must(t, w.pub.Cert(ctx(t), domain, w.gen.Add(1), chain, key))
	cert, err := tls.X509KeyPair([]byte(chain), []byte(key))
	must(t, err)
	return cert.Leaf.SerialNumber.String()
}

// waitCert waits until a handshake for sni gets the certificate serial.
func waitCert(t *testing.T, r *testenv.Router, ca *testenv.CA, sni, serial string) {
	t.Helper()
	testenv.Eventually(t, sni+" gets certificate "+serial, func() bool {
		cert, err := handshake(t, r, ca, sni, nil)
		return err == nil && cert.SerialNumber.String() == serial
	})
}

func decodeReply(t *testing.T, resp *http.Response) testenv.Reply {
	t.Helper()
	defer resp.Body.Close()
	var reply testenv.Reply
	if err := json.NewDecoder(resp.Body).Decode(&reply); err != nil {
		t.Fatalf("%d: not a container's reply: %v", resp.StatusCode, err)
	}
	return reply
}

func TestHTTPSBySNI(t *testing.T) {
	w := newWorld(t, routing.Config{})
	ca := testenv.NewCA(t)
	w.deploy(t, "shop", events.AppOptions{}, testenv.StartContainer(t, "shop", "s1"))
	must(t, w.pub.Domains(ctx(t), "wild", w.gen.Add(1), []string{"*.wild.example.com"}))
	must(t, w.pub.Deploy(ctx(t), "wild", w.gen.Add(1), testenv.Containers(testenv.StartContainer(t, "wild", "w1"))))
	shopSerial := w.publishCert(t, ca, "shop.example.com", testenv.CertOptions{})
	wildSerial := w.publishCert(t, ca, "*.wild.example.com", testenv.CertOptions{RSA: true})
	waitCert(t, w.r, ca, "shop.example.com", shopSerial)
	client := httpsClient(w.r, ca)

	t.Run("HTTP/2 to the client, HTTP/1.1 to the container", func(t *testing.T) {
		resp, err := client.Get("https://shop.example.com/cart?x=1")
		must(t, err)
		reply := decodeReply(t, resp)
		if resp.Proto != "HTTP/2.0" || reply.Container != "s1" || reply.Proto != "HTTP/1.1" {
			t.Fatalf("client %s, container %q got %s; want HTTP/2.0, s1, HTTP/1.1", resp.Proto, reply.Container, reply.Proto)
		}
		_, port, _ := net.SplitHostPort(w.r.HTTPSAddr)
		if h := reply.Header; h.Get("X-Forwarded-Proto") != "https" || h.Get("X-Forwarded-Port") != port {
			t.Fatalf("X-Forwarded-Proto %q, X-Forwarded-Port %q; want https, %s", h.Get("X-Forwarded-Proto"), h.Get("X-Forwarded-Port"), port)
		}
	})
	t.Run("wildcard certificate", func(t *testing.T) {
		waitCert(t, w.r, ca, "api.wild.example.com", wildSerial)
		resp, err := client.Get("https://api.wild.example.com/")
		must(t, err)
		if reply := decodeReply(t, resp); reply.Container != "w1" {
			t.Fatalf("served by %q, want w1", reply.Container)
		}
	})
	t.Run("exact certificate beats the wildcard", func(t *testing.T) {
		exact := w.publishCert(t, ca, "api.wild.example.com", testenv.CertOptions{})
		waitCert(t, w.r, ca, "api.wild.example.com", exact)
		cert, err := handshake(t, w.r, ca, "other.wild.example.com", nil)
		if err != nil || cert.SerialNumber.String() != wildSerial {
			t.Fatalf("other.wild.example.com: %v, serial %v; want the wildcard's %s", err, cert, wildSerial)
		}
	})
	t.Run("TLS 1.2 and 1.3 only", func(t *testing.T) {
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			if _, err := handshake(t, w.r, ca, "shop.example.com", &tls.Config{MinVersion: v, MaxVersion: v}); err != nil {
				t.Errorf("TLS %x: %v", v, err)
			}
		}
		if _, err := handshake(t, w.r, ca, "shop.example.com", &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
			t.Error("a TLS 1.1 handshake succeeded")
		}
	})
	t.Run("hot replacement", func(t *testing.T) {
		next := w.publishCert(t, ca, "shop.example.com", testenv.CertOptions{})
		waitCert(t, w.r, ca, "shop.example.com", next)
	})
	t.Run("unknown server name", func(t *testing.T) {
		_, err := handshake(t, w.r, ca, "nope.example.com", nil)
		if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
			t.Fatalf("handshake for an unknown name: %v, want the alert unrecognized_name", err)
		}
	})
	t.Run("misdirected", func(t *testing.T) {
		for _, host := range []string{"api.wild.example.com", "nope.example.com"} {
			t.Run(host, func(t *testing.T) {
				// The connection names shop; the request another app, or none.
				req, _ := http.NewRequest(http.MethodGet, "https://shop.example.com/", nil)
				req.Host = host
				resp, err := client.Do(req)
				must(t, err)
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				wantError(t, resp, body, http.StatusMisdirectedRequest, "misdirected")
			})
		}
	})
}

func TestCertificatesAreChecked(t *testing.T) {
	w := newWorld(t, routing.Config{})
	ca := testenv.NewCA(t)
	good := w.publishCert(t, ca, "shop.example.com", testenv.CertOptions{})
	waitCert(t, w.r, ca, "shop.example.com", good)

	chain, key := ca.Issue(t, testenv.CertOptions{}, "shop.example.com")
	_, otherKey := ca.Issue(t, testenv.CertOptions{}, "shop.example.com")
	expired, expiredKey := ca.Issue(t, testenv.CertOptions{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}, "shop.example.com")
	other, otherDomainKey := ca.Issue(t, testenv.CertOptions{}, "other.example.com")
	for _, tt := range []struct{ name, chain, key, want string }{
		{"key of another certificate", chain, otherKey, "private key does not match"},
		{"expired", expired, expiredKey, "expired"},
		{"another domain", other, otherDomainKey, "does not cover"},
		{"not PEM", "hello", key, "certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := w.pub.Cert(ctx(t), "shop.example.com", w.gen.Add(1), tt.chain, tt.key)
			if !errors.Is(err, events.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("publish: %v, want ErrInvalid mentioning %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Fatal("the error quotes the key")
			}
		})
	}
	// A router refuses what a careless publisher sends, says why, and keeps
	// serving the previous certificate.
	js := w.n.JetStream(t)
	for i, tt := range []struct{ name, chain, key, want string }{
		{"key of another certificate", chain, otherKey, "private key does not match"},
		{"expired", expired, expiredKey, "expired"},
		{"another domain", other, otherDomainKey, "does not cover shop.example.com"},
	} {
		t.Run("router refuses "+tt.name, func(t *testing.T) {
			data, _ := json.Marshal(map[string]any{"v": 1, "kind": "cert", "domain": "shop.example.com", "generation": w.gen.Add(1), "cert": tt.chain, "key": tt.key})
			publishRaw(t, js, events.CertSubject(region, "shop.example.com"), string(data))
			testenv.Eventually(t, "the router refuses the certificate", func() bool {
				return status(t, w.r).Events.Rejected >= uint64(i+1)
			})
			if !strings.Contains(w.logs.String(), tt.want) {
				t.Fatalf("the log does not say %q:\n%s", tt.want, w.logs.String())
			}
			if cert, err := handshake(t, w.r, ca, "shop.example.com", nil); err != nil || cert.SerialNumber.String() != good {
				t.Fatalf("after a refused certificate: %v, serial %v; want the previous one", err, cert)
			}
		})
	}
	if strings.Contains(w.logs.String(), "PRIVATE KEY") {
		t.Fatal("a private key reached the log")
	}

	// A removed certificate is no longer served.
	must(t, w.pub.DeleteCert(ctx(t), "shop.example.com", w.gen.Add(1)))
	testenv.Eventually(t, "the removed certificate is no longer served", func() bool {
		_, err := handshake(t, w.r, ca, "shop.example.com", nil)
		return err != nil
	})
}

func TestCertificatesSurviveRestart(t *testing.T) {
	n := testenv.StartNATS(t)
	ca := testenv.NewCA(t)
	pub := n.Publisher(t, region)
	chain, key := ca.Issue(t, testenv.CertOptions{}, "shop.example.com")
	must(t, pub.Cert(ctx(t), "shop.example.com", 1, chain, key))
	// Routers that start later have it as soon as they are ready, each of
	// them.
	for range 2 {
		r := testenv.StartRouter(t, n.Connect(t), region)
		r.WaitReady(t)
		if _, ok := r.Certs().Lookup("shop.example.com"); !ok {
			t.Fatal("a router ready without the certificate published before it started")
		}
		if _, err := handshake(t, r, ca, "shop.example.com", nil); err != nil {
			t.Fatal(err)
		}
	}
}

func TestUnknownServerNameRefused(t *testing.T) {
	w := newWorld(t, routing.Config{})
	ca := testenv.NewCA(t)
	_, err := handshake(t, w.r, ca, "nope.example.com", nil)
	if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
		t.Fatalf("handshake for an unknown name: %v, want the alert unrecognized_name", err)
	}
	w.logs.WaitLine(t, "TLS handshake refused: no certificate for the server name", map[string]string{"level": "debug", "sni": "nope.example.com"})
	w.r.Stop(t) // the HTTPS server has logged all it will
	if logs := w.logs.String(); strings.Contains(logs, "no certificates configured") {
		t.Fatalf("the refusal is also logged as crypto/tls's misleading error:\n%s", logs)
	}
}

func TestDefaultCertificate(t *testing.T) {
	ca := testenv.NewCA(t)
	chain, key := ca.Issue(t, testenv.CertOptions{}, "default.example.com")
	def, err := tls.X509KeyPair([]byte(chain), []byte(key))
	must(t, err)
	w := newWorld(t, routing.Config{DefaultCert: &def})
	cert, err := handshake(t, w.r, ca, "nope.example.com", &tls.Config{InsecureSkipVerify: true})
	if err != nil || cert.Subject.CommonName != "default.example.com" {
		t.Fatalf("handshake for an unknown name: %v, %v; want the default certificate", err, cert)
	}
	client := httpsClient(w.r, ca)
	client.Transport.(*http.Transport).TLSClientConfig.InsecureSkipVerify = true
	resp, err := client.Get("https://nope.example.com/")
	must(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wantError(t, resp, body, http.StatusNotFound, "unknown_host")
}

func TestForceHTTPSAndCanonical(t *testing.T) {
	w := newWorld(t, routing.Config{})
	ca := testenv.NewCA(t)
	c := testenv.StartContainer(t, "shop", "s1")
	must(t, w.pub.Publish(ctx(t), events.Event{Kind: events.KindDomains, App: "shop", Generation: w.gen.Add(1),
		Domains: []string{"shop.example.com", "www.shop.example.com"}, Options: events.AppOptions{ForceHTTPS: true, Canonical: "shop.example.com"}}))
	w.replace(t, "shop", c)
	must(t, w.pub.Publish(ctx(t), events.Event{Kind: events.KindDomains, App: "blog", Generation: w.gen.Add(1),
		Domains: []string{"blog.example.com", "www.blog.example.com"}, Options: events.AppOptions{Canonical: "blog.example.com"}}))
	w.replace(t, "blog", testenv.StartContainer(t, "blog", "b1"))
	for _, d := range []string{"shop.example.com", "www.shop.example.com"} {
		waitCert(t, w.r, ca, d, w.publishCert(t, ca, d, testenv.CertOptions{}))
	}
	_, httpsPort, _ := net.SplitHostPort(w.r.HTTPSAddr)
	_, httpPort, _ := net.SplitHostPort(strings.TrimPrefix(w.r.URL, "http://"))
	client := httpsClient(w.r, ca)
	noFollow := &http.Client{CheckRedirect: client.CheckRedirect}

	for _, tt := range []struct{ name, host, path, want string }{
		{"plain HTTP to HTTPS", "shop.example.com", "/cart?x=1", "https://shop.example.com:" + httpsPort + "/cart?x=1"},
		{"plain HTTP, other domain, to HTTPS canonical", "www.shop.example.com", "/a", "https://shop.example.com:" + httpsPort + "/a"},
		{"canonical keeps the scheme and port", "www.blog.example.com:" + httpPort, "/post/1?c=2", "http://blog.example.com:" + httpPort + "/post/1?c=2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, w.r.URL+tt.path, nil)
			req.Host = tt.host
			resp, err := noFollow.Do(req)
			must(t, err)
			resp.Body.Close()
			wantRedirect(t, resp, tt.want)
		})
	}
	t.Run("HTTPS canonical redirect", func(t *testing.T) {
		resp, err := client.Get("https://www.shop.example.com/b?q=1")
		must(t, err)
		resp.Body.Close()
		wantRedirect(t, resp, "https://shop.example.com:"+httpsPort+"/b?q=1")
	})
	t.Run("HSTS", func(t *testing.T) {
		resp, err := client.Get("https://shop.example.com/")
		must(t, err)
		decodeReply(t, resp)
		if got := resp.Header.Get("Strict-Transport-Security"); got != "max-age=31536000" {
			t.Fatalf("Strict-Transport-Security %q, want max-age=31536000", got)
		}
		resp, err = client.Get("https://shop.example.com/hsts")
		must(t, err)
		decodeReply(t, resp)
		if got := resp.Header.Values("Strict-Transport-Security"); len(got) != 1 || got[0] != testenv.AppHSTS {
			t.Fatalf("Strict-Transport-Security %q, want the app's own %q alone", got, testenv.AppHSTS)
		}
	})
}

func TestTLSPassthrough(t *testing.T) {
	w := newWorld(t, routing.Config{})
	ca := testenv.NewCA(t)
	chain, key := ca.Issue(t, testenv.CertOptions{}, "secure.example.com")
	c := testenv.StartTLSContainer(t, "secure", "t1", "127.0.0.1:0", chain, key)
	w.deploy(t, "secure", events.AppOptions{TLSPassthrough: true}, c)
	// The router has no certificate for the domain: the container's own
	// is what the client sees.
	client := httpsClient(w.r, ca)
	resp, err := client.Get("https://secure.example.com/inside")
	must(t, err)
	if resp.TLS.PeerCertificates[0].Subject.CommonName != "secure.example.com" {
		t.Fatalf("certificate %v, want the container's", resp.TLS.PeerCertificates[0].Subject)
	}
	reply := decodeReply(t, resp)
	if reply.Container != "t1" || reply.Path != "/inside" || reply.Header.Get("X-Forwarded-For") != "" {
		t.Fatalf("reply %+v: want t1's, untouched by the router", reply)
	}
	client.CloseIdleConnections()
	// One log line per relayed connection; the bytes are shaped as the
	// container's.
	w.logs.WaitLine(t, "connection", map[string]string{"tls_passthrough": "true"})
	app, _ := w.r.Table().Snapshot().App("secure")
	if st := app.Containers[0].Bucket().Stats(); st.Download.Bytes == 0 || st.Upload.Bytes == 0 {
		t.Fatalf("the relayed bytes were not charged to the container's bucket: %+v", st)
	}

	// The containers speak only TLS: plain HTTP is sent to HTTPS.
	plain := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(http.MethodGet, w.r.URL+"/inside?q=1", nil)
	req.Host = "secure.example.com"
	resp, err = plain.Do(req)
	must(t, err)
	resp.Body.Close()
	_, port, _ := net.SplitHostPort(w.r.HTTPSAddr)
	wantRedirect(t, resp, "https://secure.example.com:"+port+"/inside?q=1") // plain HTTP to a passthrough app

	// A relayed connection left open does not hold the router's shutdown.
	open, err := tls.Dial("tcp", w.r.HTTPSAddr, &tls.Config{RootCAs: ca.Pool(), ServerName: "secure.example.com"})
	must(t, err)
	defer open.Close()
	start := time.Now()
	w.r.Stop(t)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the router took %v to stop with a relayed connection open", d)
	}
	must(t, open.SetReadDeadline(time.Now().Add(testenv.Timeout)))
	if _, err := open.Read(make([]byte, 1)); err == nil {
		t.Fatal("the relayed connection is still open after the router stopped")
	}
}

func TestIPv6(t *testing.T) {
	w := newWorld(t, routing.Config{HTTPAddr: "[::1]:0", HTTPSAddr: "[::1]:0"})
	c := testenv.StartContainerAt(t, "six", "v6", "[::1]:0")
	if !strings.HasPrefix(c.Address(), "[::1]:") {
		t.Fatalf("container address %s, want [::1]:port", c.Address())
	}
	w.deploy(t, "six", events.AppOptions{}, c)
	if !strings.HasPrefix(w.r.URL, "http://[::1]:") {
		t.Fatalf("router URL %s, want [::1]", w.r.URL)
	}
	_, body := w.get(t, "six", "/")
	var reply testenv.Reply
	must(t, json.Unmarshal(body, &reply))
	if reply.Container != "v6" || reply.Header.Get("X-Forwarded-For") != "::1" {
		t.Fatalf("reply %+v, want v6 with X-Forwarded-For ::1", reply)
	}
	ca := testenv.NewCA(t)
	serial := w.publishCert(t, ca, "six.example.com", testenv.CertOptions{})
	waitCert(t, w.r, ca, "six.example.com", serial)
	resp, err := httpsClient(w.r, ca).Get("https://six.example.com/")
	must(t, err)
	if reply := decodeReply(t, resp); reply.Container != "v6" {
		t.Fatalf("over HTTPS on [::1]: %+v", reply)
	}
}

func FuzzPeekServerName(f *testing.F) {
	// A real ClientHello, as a seed.
	var hello bytes.Buffer
	client := tls.Client(&captureConn{w: &hello}, &tls.Config{ServerName: "shop.example.com"})
	_ = client.Handshake()
	f.Add(hello.Bytes())
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		name, read, err := routing.PeekServerName(bytes.NewReader(data))
		if !bytes.HasPrefix(data, read) {
			t.Fatalf("read %d bytes that are not the input's first", len(read))
		}
		if err == nil && name != "" && !strings.Contains(string(data), name) {
			t.Fatalf("server name %q not in the input", name)
		}
	})
}

// captureConn records what a TLS client writes, and ends its handshake.
type captureConn struct {
	net.Conn
	w io.Writer
}

func (c *captureConn) Write(p []byte) (int, error) { return c.w.Write(p) }
func (c *captureConn) Read([]byte) (int, error)    { return 0, io.EOF }
func (c *captureConn) Close() error                { return nil }
func (c *captureConn) SetDeadline(time.Time) error { return nil }

func TestCertDirectory(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewCA(t)
	writeWith := func(file string, opts testenv.CertOptions, names ...string) string {
		chain, key := ca.Issue(t, opts, names...)
		must(t, os.WriteFile(filepath.Join(dir, file), []byte(chain+key), 0o600))
		cert, err := tls.X509KeyPair([]byte(chain), []byte(key))
		must(t, err)
		return cert.Leaf.SerialNumber.String()
	}
	write := func(file string, names ...string) string { return writeWith(file, testenv.CertOptions{}, names...) }
	first := write("static.pem", "static.example.com", "*.static.example.com")
	must(t, os.WriteFile(filepath.Join(dir, "broken.pem"), []byte("not a certificate"), 0o600))
	w := newWorld(t, routing.Config{CertDir: dir, CertDirInterval: 20 * time.Millisecond})
	waitCert(t, w.r, ca, "static.example.com", first)
	waitCert(t, w.r, ca, "api.static.example.com", first)

	// A changed file is reloaded; a file that breaks keeps its previous
	// certificate.
	second := write("static.pem", "static.example.com")
	waitCert(t, w.r, ca, "static.example.com", second)
	must(t, os.WriteFile(filepath.Join(dir, "static.pem"), []byte("truncated"), 0o600))
	w.logs.WaitLine(t, "certificate file skipped", map[string]string{"file": filepath.Join(dir, "static.pem")})
	waitCert(t, w.r, ca, "static.example.com", second)

	// Certificates a published one would be refused for are refused, with
	// the reason: expired, or naming no domain.
	writeWith("expired.pem", testenv.CertOptions{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}, "expired.example.com")
	writeWith("unnamed.pem", testenv.CertOptions{})
	w.logs.WaitLine(t, "certificate file skipped", map[string]string{"file": filepath.Join(dir, "expired.pem"), "reason": "expired on"})
	w.logs.WaitLine(t, "certificate file skipped", map[string]string{"file": filepath.Join(dir, "unnamed.pem"), "reason": "no DNS name"})
	if _, err := handshake(t, w.r, ca, "expired.example.com", &tls.Config{InsecureSkipVerify: true}); err == nil || !strings.Contains(err.Error(), "unrecognized name") {
		t.Fatalf("handshake for an expired file's name: %v, want the alert unrecognized_name", err)
	}

	// The first file naming a wildcard wins, as for exact names; removing a
	// file unloads its certificate.
	tieB := write("tie-b.pem", "*.tie.example.com")
	waitCert(t, w.r, ca, "x.tie.example.com", tieB)
	tieA := write("tie-a.pem", "*.tie.example.com")
	waitCert(t, w.r, ca, "x.tie.example.com", tieA)
	must(t, os.Remove(filepath.Join(dir, "tie-a.pem")))
	waitCert(t, w.r, ca, "x.tie.example.com", tieB)
	must(t, os.Remove(filepath.Join(dir, "tie-b.pem")))
	testenv.Eventually(t, "the certificate of a removed file is no longer served", func() bool {
		_, err := handshake(t, w.r, ca, "x.tie.example.com", nil)
		return err != nil
	})

	// A certificate on the bus wins over the directory's.
	bus := w.publishCert(t, ca, "static.example.com", testenv.CertOptions{})
	waitCert(t, w.r, ca, "static.example.com", bus)
}

// A plain HTTP request to the HTTPS listener gets a 400 that says so, not
// a connection closed without a word.
func TestPlainHTTPOnTheHTTPSPort(t *testing.T) {
	w := newWorld(t, routing.Config{})
	conn, err := net.Dial("tcp", w.r.HTTPSAddr)
	must(t, err)
	defer conn.Close()
	must(t, conn.SetDeadline(time.Now().Add(testenv.Timeout)))
	_, err = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
	must(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(routing.ErrorHeader) != "plain_http_on_https_port" {
		t.Fatalf("plain HTTP on the HTTPS port: %d %q, want 400 plain_http_on_https_port", resp.StatusCode, resp.Header.Get(routing.ErrorHeader))
	}
}

// HTTPS/1.1 requests go through the same request guard as plain HTTP: an
// ambiguous head gets the router's coded answer, a valid one is served
// with what the router knows of the TLS connection.
func TestGuardOverHTTPS(t *testing.T) {
	w := newWorld(t, routing.Config{})
	ca := testenv.NewCA(t)
	c := testenv.StartContainer(t, "app", "a")
	w.deploy(t, "app", events.AppOptions{}, c)
	serial := w.publishCert(t, ca, "app.example.com", testenv.CertOptions{})
	waitCert(t, w.r, ca, "app.example.com", serial)
	send := func(t *testing.T, request string) *http.Response {
		t.Helper()
		conn, err := tls.Dial("tcp", w.r.HTTPSAddr, &tls.Config{RootCAs: ca.Pool(), ServerName: "app.example.com", NextProtos: []string{"http/1.1"}})
		must(t, err)
		t.Cleanup(func() { conn.Close() })
		must(t, conn.SetDeadline(time.Now().Add(testenv.Timeout)))
		_, err = io.WriteString(conn, request)
		must(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		must(t, err)
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	for _, tt := range []struct {
		name, request, code string
		status              int
	}{
		{"two Host headers", "GET / HTTP/1.1\r\nHost: app.example.com\r\nHost: app.example.com\r\n\r\n", "duplicate_host", http.StatusBadRequest},
		{"length and chunks", "POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "ambiguous_length", http.StatusBadRequest},
		{"unknown expectation", "GET / HTTP/1.1\r\nHost: app.example.com\r\nExpect: magic\r\n\r\n", "expectation_failed", http.StatusExpectationFailed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp := send(t, tt.request)
			if resp.StatusCode != tt.status || resp.Header.Get(routing.ErrorHeader) != tt.code {
				t.Fatalf("%d %q, want %d %q", resp.StatusCode, resp.Header.Get(routing.ErrorHeader), tt.status, tt.code)
			}
		})
	}
	before := c.Hits()
	resp := send(t, "GET /x HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
	var reply testenv.Reply
	must(t, json.NewDecoder(resp.Body).Decode(&reply))
	if resp.StatusCode != http.StatusOK || reply.Header.Get("X-Forwarded-Proto") != "https" {
		t.Fatalf("a valid HTTPS/1.1 request: %d, X-Forwarded-Proto %q; want 200 and https", resp.StatusCode, reply.Header.Get("X-Forwarded-Proto"))
	}
	if got := c.Hits() - before; got != 1 {
		t.Fatalf("the container got %d requests, want only the valid one", got)
	}
}
