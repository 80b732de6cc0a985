package events

import (
	"net"
	"strings"
	"testing"
	"time"
)

// A listen address in use is an error at once, not a server that never
// becomes ready.
func TestStartServerAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	start := time.Now()
	ns, err := StartServer(ServerConfig{Listen: ln.Addr().String(), DataDir: t.TempDir()})
	if err == nil {
		ns.Shutdown()
		t.Fatalf("StartServer on %s, which is in use: no error", ln.Addr())
	}
	if !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("error %q does not say the address is in use", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the error took %v, want at once", d)
	}
}
