package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/testenv"
)

func noEnv(string) string { return "" }

// sluice runs the command line and returns its output and exit status.
func sluice(t *testing.T, getenv func(string) string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	code = exitCode(run(ctx, args, getenv, &out, &errOut), &errOut)
	return out.String(), errOut.String(), code
}

func TestCLIRefusesBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no command", []string{"explode"}, `unknown command "explode"`},
		{"unknown flag", []string{"deploy", "--colour", "red"}, "flag provided but not defined"},
		{"stray argument", []string{"delete", "--app", "a", "extra"}, `unexpected argument "extra"`},
		{"no app", []string{"delete"}, "--app is required"},
		{"bad app", []string{"delete", "--app", "My_App"}, "app name"},
		{"bad region", []string{"delete", "--app", "a", "--region", "EU WEST"}, "region"},
		{"deploy without containers", []string{"deploy", "--app", "a"}, "at least one --container"},
		{"container without id", []string{"deploy", "--app", "a", "--container", "10.0.0.1:80"}, "want ID=HOST:PORT"},
		{"container without port", []string{"deploy", "--app", "a", "--container", "w=10.0.0.1"}, "HOST:PORT"},
		{"unbracketed IPv6", []string{"restart", "--app", "a", "--container", "w=::1:80"}, "HOST:PORT"},
		{"duplicate container", []string{"scale", "--app", "a", "--container", "w=10.0.0.1:80", "--container", "w=10.0.0.2:80"}, "twice"},
		{"domains without domain", []string{"domains", "--app", "a"}, "at least one --domain"},
		{"bad domain", []string{"domains", "--app", "a", "--domain", "Shop.Example.com"}, "lowercase"},
		{"huge generation", []string{"delete", "--app", "a", "--generation", "9007199254740993"}, "generation"},
		{"bad generation", []string{"delete", "--app", "a", "--generation", "soon"}, "invalid value"},
		{"serve bad log level", []string{"serve", "--log-level", "loud"}, "--log-level"},
		{"bad rate", []string{"deploy", "--app", "a", "--container", "w=10.0.0.1:80", "--rate", "fast"}, "invalid size"},
		{"zero burst", []string{"scale", "--app", "a", "--burst", "0"}, "more than 0"},
		{"rate unit", []string{"restart", "--app", "a", "--container", "w=10.0.0.1:80", "--rate", "20MiBps"}, "unknown unit"},
		{"serve bad container rate", []string{"serve", "--container-rate", "20XB"}, "unknown unit"},
		{"serve zero burst", []string{"serve", "--container-burst", "0"}, "--container-burst"},
		{"serve bad peers", []string{"serve", "--shaping-peers", "many"}, "--shaping-peers"},
		{"serve bad trusted proxy", []string{"serve", "--trusted-proxy", "10.0.0.0/33"}, "--trusted-proxy"},
		{"serve bad error page network", []string{"serve", "--error-page-network", "10.0.0.0"}, "--error-page-network"},
		{"serve zero inflight", []string{"serve", "--max-inflight", "0"}, "--max-inflight"},
		{"serve bad body limit", []string{"serve", "--max-request-body", "lots"}, "invalid size"},
		{"cert without domain", []string{"cert"}, "--domain is required"},
		{"cert without key", []string{"cert", "--domain", "a.example.com", "--cert", "c.pem"}, "give --cert and --key"},
		{"cert delete with files", []string{"cert", "--domain", "a.example.com", "--delete", "--cert", "c.pem"}, "takes no"},
		{"cert missing file", []string{"cert", "--domain", "a.example.com", "--cert", "/nonexistent/c.pem", "--key", "/nonexistent/k.pem"}, "no such file"},
		{"bad inbox prefix", []string{"delete", "--app", "a", "--nats-inbox-prefix", "_INBOX_cp.>"}, "nats-inbox-prefix"},
		{"serve bad default cert", []string{"serve", "--default-cert", "/nonexistent/d.pem"}, "--default-cert"},
		{"bad balance", []string{"domains", "--app", "a", "--domain", "a.example.com", "--balance", "random"}, "balance"},
		{"relative error page", []string{"domains", "--app", "a", "--domain", "a.example.com", "--error-page", "/oops.html"}, "error page"},
		{"zero timeout", []string{"delete", "--app", "a", "--timeout", "0"}, "--timeout 0s: want more than 0"},
		{"negative timeout", []string{"cert", "--domain", "a.example.com", "--delete", "--timeout", "-1s"}, "--timeout -1s"},
		{"event over the size limit", hugeDeploy(), "more than 262144"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// No broker runs: input errors are found before connecting.
			_, stderr, code := sluice(t, noEnv, tt.args...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr, tt.want)
			}
			if strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Fatalf("error is not one line: %q", stderr)
			}
		})
	}
}

// hugeDeploy returns a deploy of 1000 containers with long ids and host
// names: each is valid, but the event is over events.MaxEventSize.
func hugeDeploy() []string {
	args := []string{"deploy", "--app", "big"}
	host := strings.Repeat(strings.Repeat("h", 60)+".", 3) + "internal"
	for i := range events.MaxContainers {
		args = append(args, "--container", fmt.Sprintf("web-%0120d=node-%d.%s:8080", i, i, host))
	}
	return args
}

// silentListener accepts TCP connections on a loopback port and never says
// a word on them, as a wrong service or a hung broker would. It returns its
// NATS URL; everything stops at cleanup.
func silentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return "nats://" + ln.Addr().String()
}

func TestCLIUnreachableBrokerFailsFast(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The password must not reach the error message.
	closed := "nats://user:s3cret@" + ln.Addr().String()
	ln.Close() // nothing listens there now
	for _, tt := range []struct {
		name, url string
	}{{"closed port", closed}, {"silent listener", silentListener(t)}} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, stderr, code := sluice(t, noEnv, "delete", "--app", "a", "--nats", tt.url, "--timeout", "1s")
			if took := time.Since(start); took > 2500*time.Millisecond {
				t.Errorf("took %v with --timeout 1s, want under 2.5s", took)
			}
			if code != 1 || !strings.Contains(stderr, "cannot reach NATS") || strings.Contains(stderr, "s3cret") {
				t.Fatalf("exit %d, stderr %q; want 1 and a reason, without the password", code, stderr)
			}
		})
	}
}

func TestCLIPublishesEveryKind(t *testing.T) {
	n := testenv.StartNATS(t)
	n.Publisher(t, "eu-1") // creates the stream, as a router would
	js := n.JetStream(t)
	env := map[string]string{"SLUICE_NATS_URL": n.URL(), "SLUICE_REGION": "eu-1"}
	getenv := func(k string) string { return env[k] }
	steps := [][]string{
		{"domains", "--app", "web", "--generation", "1", "--domain", "web.example.com", "--domain", "*.web.example.com"},
		{"deploy", "--app", "web", "--generation", "2", "--container", "w1=10.0.0.1:5000", "--container", "w2=[2001:db8::2]:5000"},
		{"restart", "--app", "web", "--generation", "3", "--container", "w3=node-3.internal:5000"},
		{"scale", "--app", "web", "--generation", "4"},
		{"delete", "--app", "web", "--generation", "5"},
	}
	for _, args := range steps {
		stdout, stderr, code := sluice(t, getenv, args...)
		if code != 0 || !strings.Contains(stdout, "published "+args[0]) {
			t.Fatalf("%v: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
	st, err := js.Stream(context.Background(), events.StreamName("eu-1"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[events.Aspect]uint64{events.AspectDomains: 1, events.AspectContainers: 4, events.AspectDelete: 5}
	for aspect, gen := range want {
		m, err := st.GetLastMsgForSubject(context.Background(), events.Subject("eu-1", "web", aspect))
		if err != nil {
			t.Fatalf("%s: %v", aspect, err)
		}
		ev, err := events.Decode(m.Subject, m.Data)
		if err != nil || ev.Generation != gen {
			t.Fatalf("%s: generation %d (%v), want %d", aspect, ev.Generation, err, gen)
		}
	}
	// A stale generation is refused with the reason.
	_, stderr, code := sluice(t, getenv, "scale", "--app", "web", "--generation", "3")
	if code != 1 || !strings.Contains(stderr, "stale generation") {
		t.Fatalf("stale: exit %d, stderr %q", code, stderr)
	}
	// An app's own bandwidth allowance travels with its containers.
	if _, stderr, code := sluice(t, getenv, "deploy", "--app", "fast", "--generation", "1", "--container", "f=10.0.0.9:80", "--rate", "320Mbit", "--burst", "3.2GB"); code != 0 {
		t.Fatalf("deploy with an allowance: exit %d, %s", code, stderr)
	}
	m, err := st.GetLastMsgForSubject(context.Background(), events.Subject("eu-1", "fast", events.AspectContainers))
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := events.Decode(m.Subject, m.Data); err != nil || ev.Rate != 40_000_000 || ev.Burst != 3_200_000_000 {
		t.Fatalf("stored rate %d and burst %d (%v), want 40000000 and 3200000000", ev.Rate, ev.Burst, err)
	}
	// App options travel with its domains.
	if _, stderr, code := sluice(t, getenv, "domains", "--app", "fast", "--generation", "2", "--domain", "fast.example.com",
		"--balance", "least-conn", "--sticky", "--error-page", "https://pages.example.com/fast.html"); code != 0 {
		t.Fatalf("domains with options: exit %d, %s", code, stderr)
	}
	m, err = st.GetLastMsgForSubject(context.Background(), events.Subject("eu-1", "fast", events.AspectDomains))
	if err != nil {
		t.Fatal(err)
	}
	wantOpts := events.AppOptions{Balance: events.BalanceLeastConn, Sticky: true, ErrorPage: "https://pages.example.com/fast.html"}
	if ev, err := events.Decode(m.Subject, m.Data); err != nil || ev.Options != wantOpts {
		t.Fatalf("stored options %+v (%v), want %+v", ev.Options, err, wantOpts)
	}
	// Certificates: checked before sending, then stored by domain.
	ca := testenv.NewCA(t)
	dir := t.TempDir()
	chain, key := ca.Issue(t, testenv.CertOptions{}, "fast.example.com")
	_, otherKey := ca.Issue(t, testenv.CertOptions{}, "fast.example.com")
	for name, data := range map[string]string{"chain.pem": chain, "key.pem": key, "other.pem": otherKey} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	expired, expiredKey := ca.Issue(t, testenv.CertOptions{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}, "fast.example.com")
	elsewhere, elsewhereKey := ca.Issue(t, testenv.CertOptions{}, "slow.example.com")
	for name, data := range map[string]string{"expired.pem": expired, "expired-key.pem": expiredKey, "elsewhere.pem": elsewhere, "elsewhere-key.pem": elsewhereKey} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct{ name, chain, key, want string }{
		{"wrong key", "chain.pem", "other.pem", "does not match"},
		{"expired", "expired.pem", "expired-key.pem", "expired"},
		{"another domain", "elsewhere.pem", "elsewhere-key.pem", "does not cover fast.example.com"},
	} {
		_, stderr, code := sluice(t, getenv, "cert", "--domain", "fast.example.com", "--cert", filepath.Join(dir, tt.chain), "--key", filepath.Join(dir, tt.key))
		if code != 2 || !strings.Contains(stderr, tt.want) || strings.Contains(stderr, "PRIVATE") {
			t.Fatalf("cert, %s: exit %d, %s; want 2 and %q", tt.name, code, stderr, tt.want)
		}
	}
	if _, stderr, code := sluice(t, getenv, "cert", "--domain", "fast.example.com", "--generation", "1", "--cert", filepath.Join(dir, "chain.pem"), "--key", filepath.Join(dir, "key.pem")); code != 0 {
		t.Fatalf("cert: exit %d, %s", code, stderr)
	}
	m, err = st.GetLastMsgForSubject(context.Background(), events.CertSubject("eu-1", "fast.example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := events.Decode(m.Subject, m.Data); err != nil || ev.Kind != events.KindCert || ev.Domain != "fast.example.com" {
		t.Fatalf("stored certificate event %+v (%v)", ev, err)
	}
	if _, stderr, code := sluice(t, getenv, "cert", "--domain", "fast.example.com", "--generation", "2", "--delete"); code != 0 {
		t.Fatalf("cert --delete: exit %d, %s", code, stderr)
	}
	// Environment lists: SLUICE_CONTAINER is comma-separated.
	env["SLUICE_CONTAINER"] = "a=10.0.0.1:80, b=10.0.0.2:80"
	if _, stderr, code := sluice(t, getenv, "deploy", "--app", "env", "--generation", "1"); code != 0 {
		t.Fatalf("deploy from env: exit %d, %s", code, stderr)
	}
}

// TestServeEmbedded runs the single-binary router as an operator would and
// drives it with the publishing commands.
func TestServeShapesByDefault(t *testing.T) {
	// Without shaping flags, sluice serve keeps the platform's promise.
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	serveFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"container-rate": "20MB", "container-burst": "1.6GB", "shaping-peers": "auto"} {
		if got := fs.Lookup(name).Value.String(); got != want {
			t.Errorf("--%s defaults to %q, want %q", name, got, want)
		}
	}
}

func TestServeEmbedded(t *testing.T) {
	logR, logW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	dir := t.TempDir()
	go func() {
		done <- run(ctx, []string{"serve", "--data-dir", dir, "--nats-listen", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-format", "json", "--container-rate", "8MB"}, noEnv, io.Discard, logW)
		logW.Close()
	}()
	// The log says where everything listens.
	lines := bufio.NewScanner(logR)
	var natsURL, httpAddr, adminAddr string
	for httpAddr == "" && lines.Scan() {
		var line map[string]any
		if json.Unmarshal(lines.Bytes(), &line) != nil {
			t.Fatalf("log line is not JSON: %s", lines.Text())
		}
		switch line["message"] {
		case "embedded NATS started":
			natsURL, _ = line["url"].(string)
		case "router started":
			httpAddr, _ = line["http"].(string)
			adminAddr, _ = line["admin"].(string)
		}
	}
	go func() { _, _ = io.Copy(io.Discard, logR) }()
	if natsURL == "" || httpAddr == "" {
		t.Fatalf("no addresses in the log (nats %q, http %q)", natsURL, httpAddr)
	}
	deployHello(t, natsURL, httpAddr)
	resp, err := http.Get("http://" + adminAddr + "/readyz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %v %v", resp, err)
	}
	var ready struct {
		Shaping struct {
			Defaults struct{ Rate, Burst int64 }
			Peers    int
		}
	}
	err = json.NewDecoder(resp.Body).Decode(&ready)
	resp.Body.Close()
	if got := ready.Shaping; err != nil || got.Defaults.Rate != 8_000_000 || got.Defaults.Burst != 1_600_000_000 || got.Peers != 1 {
		t.Fatalf("/readyz shaping %+v (%v), want the 8MB rate given, the default burst, 1 peer", got, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve returned %v", err)
	}
}

// deployHello starts a container h1 of the app "hello", publishes it with
// the CLI through natsURL, and waits until the router at httpAddr routes
// hello.example.com to it.
func deployHello(t *testing.T, natsURL, httpAddr string) {
	t.Helper()
	c := testenv.StartContainer(t, "hello", "h1")
	for _, args := range [][]string{
		{"domains", "--nats", natsURL, "--app", "hello", "--domain", "hello.example.com"},
		{"deploy", "--nats", natsURL, "--app", "hello", "--container", "h1=" + c.Address()},
	} {
		if _, stderr, code := sluice(t, noEnv, args...); code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
	}
	testenv.Eventually(t, "the router routes hello.example.com to h1", func() bool {
		req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/", nil)
		req.Host = "hello.example.com"
		resp, reply := testenv.Do(t, req)
		return resp.StatusCode == http.StatusOK && reply.Container == "h1"
	})
}
