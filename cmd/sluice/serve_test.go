package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/sluice-router/sluice/testenv"
)

// serving is a sluice serve running in the test process.
type serving struct {
	httpAddr, httpsAddr, adminAddr string
	logs                           *testenv.Logs
}

// startServe runs sluice serve with args after listeners on random loopback
// ports and JSON logs, waits until it says it has started, and stops it at
// cleanup, failing the test if it returns an error.
func startServe(t *testing.T, args ...string) serving {
	t.Helper()
	_, logs := testenv.CaptureLogs(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	args = append([]string{"serve", "--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-format", "json"}, args...)
	go func() { done <- run(ctx, args, noEnv, io.Discard, logs) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve returned %v", err)
		}
	})
	started := logs.WaitLine(t, "router started", nil)
	s := serving{logs: logs}
	s.httpAddr, _ = started["http"].(string)
	s.httpsAddr, _ = started["https"].(string)
	s.adminAddr, _ = started["admin"].(string)
	return s
}

// admin returns the status code and the NATS state /path reports.
func (s serving) admin(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.adminAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		NATS string `json:"nats"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&st)
	return resp.StatusCode, st.NATS
}

// TestServeExternalNATS runs sluice serve --nats against a NATS of its own,
// as in production: nothing is embedded, and the router routes what is
// published there.
func TestServeExternalNATS(t *testing.T) {
	n := testenv.StartNATS(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	s := startServe(t, "--nats", n.URL(), "--data-dir", dataDir, "--nats-listen", "127.0.0.1:0")
	testenv.Eventually(t, "/readyz answers 200", func() bool {
		code, _ := s.admin(t, "/readyz")
		return code == http.StatusOK
	})
	if lines := s.logs.Lines("embedded NATS started", nil); len(lines) != 0 {
		t.Fatalf("serve --nats started an embedded NATS: %v", lines)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Fatalf("serve --nats created its data directory (%v)", err)
	}
	deployHello(t, n.URL(), s.httpAddr)
}

// A router whose NATS cannot be reached is alive (a liveness probe must not
// restart it) but not ready (no route to serve yet), and says why.
func TestServeUnreachableNATS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	s := startServe(t, "--nats", url, "--data-dir", filepath.Join(t.TempDir(), "data"))
	if code, _ := s.admin(t, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d, want 200", code)
	}
	code, state := s.admin(t, "/readyz")
	if code != http.StatusServiceUnavailable || state == "CONNECTED" || state == "" {
		t.Fatalf("/readyz = %d with NATS %q, want 503 and a NATS state other than CONNECTED", code, state)
	}
}
