package main

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/testenv"
)

// role is one row of the permissions table of docs/security.md.
type role struct {
	inbox              string
	publish, subscribe []string
}

// documentedRoles reads the permissions table of docs/security.md, with
// the region R replaced by region.
func documentedRoles(t *testing.T, region string) map[string]role {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "security.md"))
	if err != nil {
		t.Fatal(err)
	}
	quoted := regexp.MustCompile("`([^`]+)`")
	subjects := func(cell string) []string {
		var out []string
		for _, m := range quoted.FindAllStringSubmatch(cell, -1) {
			s := strings.ReplaceAll(m[1], ".R.", "."+region+".")
			out = append(out, strings.ReplaceAll(s, "sluice-R", "sluice-"+region))
		}
		return out
	}
	roles := map[string]role{}
	for line := range strings.Lines(string(doc)) {
		cells := strings.Split(strings.TrimSpace(line), "|")
		if len(cells) != 6 {
			continue
		}
		name := strings.TrimSpace(cells[1])
		for _, prefix := range []string{"router", "control plane", "certificate manager"} {
			if strings.HasPrefix(name, prefix) {
				inbox := subjects(cells[2])
				if len(inbox) != 1 {
					t.Fatalf("security.md: role %s has inbox prefix %q", prefix, cells[2])
				}
				roles[prefix] = role{inbox: inbox[0], publish: subjects(cells[3]), subscribe: subjects(cells[4])}
			}
		}
	}
	if len(roles) != 3 {
		t.Fatalf("security.md: found roles %v, want router, control plane, certificate manager", roles)
	}
	return roles
}

// startNATSWithUsers starts a NATS server with JetStream on a random port,
// with one user (password "pw") per role, allowed exactly what the role's
// row says.
func startNATSWithUsers(t *testing.T, roles map[string]role) *server.Server {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true}
	for name, r := range roles {
		opts.Users = append(opts.Users, &server.User{
			Username: strings.ReplaceAll(name, " ", "-"),
			Password: "pw",
			Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: r.publish},
				Subscribe: &server.SubjectPermission{Allow: r.subscribe},
			},
		})
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(testenv.Timeout) {
		t.Fatal("NATS not ready")
	}
	return ns
}

// TestDocumentedNATSPermissions runs a router, the control plane and the
// certificate manager as NATS users with exactly the permissions
// docs/security.md gives them: each can do its job, and the control plane
// can read no key.
func TestDocumentedNATSPermissions(t *testing.T) {
	const region = "eu-1"
	roles := documentedRoles(t, region)
	ns := startNATSWithUsers(t, roles)
	port := strconv.Itoa(ns.Addr().(*net.TCPAddr).Port)
	url := func(user string) string { return "nats://" + user + ":pw@127.0.0.1:" + port }

	s := startServe(t, "--region", region, "--nats", url("router"), "--nats-inbox-prefix", roles["router"].inbox)

	// The control plane publishes an app; the router applies it.
	control := func(args ...string) []string {
		return append(args, "--region", region, "--nats", url("control-plane"), "--nats-inbox-prefix", roles["control plane"].inbox)
	}
	c := testenv.StartContainer(t, "hello", "h1")
	testenv.Eventually(t, "the control plane publishes", func() bool {
		// The router creates the stream as it starts.
		_, _, code := sluice(t, noEnv, control("domains", "--app", "hello", "--domain", "hello.example.com")...)
		return code == 0
	})
	if _, stderr, code := sluice(t, noEnv, control("deploy", "--app", "hello", "--container", "h1="+c.Address())...); code != 0 {
		t.Fatalf("deploy as the control plane: %s", stderr)
	}
	testenv.Eventually(t, "the router routes the app", func() bool {
		req, _ := http.NewRequest(http.MethodGet, "http://"+s.httpAddr+"/", nil)
		req.Host = "hello.example.com"
		resp, reply := testenv.Do(t, req)
		return resp.StatusCode == http.StatusOK && reply.Container == "h1"
	})

	// The certificate manager publishes a certificate; the router serves it.
	ca := testenv.NewCA(t)
	chain, key := ca.Issue(t, testenv.CertOptions{}, "hello.example.com")
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "chain.pem"), []byte(chain), 0o600))
	must(t, os.WriteFile(filepath.Join(dir, "key.pem"), []byte(key), 0o600))
	if _, stderr, code := sluice(t, noEnv, "cert", "--region", region, "--nats", url("certificate-manager"), "--nats-inbox-prefix", roles["certificate manager"].inbox,
		"--domain", "hello.example.com", "--cert", filepath.Join(dir, "chain.pem"), "--key", filepath.Join(dir, "key.pem")); code != 0 {
		t.Fatalf("cert as the certificate manager: %s", stderr)
	}
	testenv.Eventually(t, "the router serves the certificate", func() bool {
		conn, err := tls.Dial("tcp", s.httpsAddr, &tls.Config{RootCAs: ca.Pool(), ServerName: "hello.example.com"})
		if err == nil {
			conn.Close()
		}
		return err == nil
	})

	// The control plane reads no certificate: not from the router's
	// inbox, not from the subjects, not by direct get.
	violations := make(chan error, 10)
	nc, err := nats.Connect(url("control-plane"), nats.CustomInboxPrefix(roles["control plane"].inbox),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	must(t, err)
	defer nc.Close()
	for _, subject := range []string{roles["router"].inbox + ".>", "_INBOX.>", events.CertSubjects(region)} {
		if _, err := nc.SubscribeSync(subject); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-violations:
			if !errors.Is(err, nats.ErrPermissionViolation) {
				t.Fatalf("subscribe to %s: %v, want a permissions violation", subject, err)
			}
		case <-time.After(testenv.Timeout):
			t.Fatalf("the control plane may subscribe to %s", subject)
		}
	}
	js, err := jetstream.New(nc)
	must(t, err)
	st, err := js.Stream(context.Background(), events.StreamName(region))
	must(t, err)
	getCtx, getCancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer getCancel()
	if msg, err := st.GetLastMsgForSubject(getCtx, events.CertSubject(region, "hello.example.com")); err == nil {
		t.Fatalf("the control plane read the certificate message %d", msg.Sequence)
	}

	// Junk on an app's subject: a router that starts later reads the
	// subject's history to fall back to the newest valid event, which
	// its permissions allow; the control plane, which may not read the
	// history, still publishes over the junk.
	subject := events.Subject(region, "hello", events.AspectContainers)
	if _, err := js.Publish(context.Background(), subject, []byte("junk")); err != nil {
		t.Fatal(err)
	}
	rc, err := nats.Connect(url("router"), nats.CustomInboxPrefix(roles["router"].inbox))
	must(t, err)
	defer rc.Close()
	rjs, err := jetstream.New(rc)
	must(t, err)
	rst, err := rjs.Stream(context.Background(), events.StreamName(region))
	must(t, err)
	histCtx, histCancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer histCancel()
	if _, err := rst.GetMsg(histCtx, 1, jetstream.WithGetMsgSubject(subject)); err != nil {
		t.Fatalf("the router cannot read a subject's history: %v", err)
	}
	if _, stderr, code := sluice(t, noEnv, control("deploy", "--app", "hello", "--container", "h1="+c.Address())...); code != 0 {
		t.Fatalf("deploy over junk as the control plane: %s", stderr)
	}

	if strings.Contains(s.logs.String(), "ermission") {
		t.Fatalf("the router lacks a permission:\n%s", s.logs.String())
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
