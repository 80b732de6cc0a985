//go:build unix

package testenv

import (
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// StartBlackhole returns a loopback address where connections cannot be
// made and do not fail either, as with a container whose host drops
// packets: a listener that never accepts, its backlog full, so the kernel
// ignores further SYNs and a connection attempt waits for its timeout.
func StartBlackhole(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatalf("blackhole socket: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("blackhole bind: %v", err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatalf("blackhole listen: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("blackhole address: %v", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	// Fill the backlog until a connection attempt times out.
	for range 16 {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("the blackhole's backlog never filled")
	return ""
}
