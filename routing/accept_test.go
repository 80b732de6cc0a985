package routing

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// flakyListener fails its first accepts with too many open files, then
// hands out conn once, then waits until it is closed.
type flakyListener struct {
	failures atomic.Int32
	accepts  atomic.Int32
	conn     chan net.Conn
	closed   chan struct{}
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.accepts.Add(1) <= l.failures.Load() {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	select {
	case c := <-l.conn:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *flakyListener) Close() error   { close(l.closed); return nil }
func (l *flakyListener) Addr() net.Addr { return &net.TCPAddr{} }

// The HTTPS listener outlives a shortage of file descriptors: it waits and
// accepts again, and stops only when closed.
func TestHTTPSAcceptRetriesTemporaryErrors(t *testing.T) {
	stub := &flakyListener{conn: make(chan net.Conn, 1), closed: make(chan struct{})}
	stub.failures.Store(3)
	server, client := net.Pipe()
	defer client.Close()
	stub.conn <- server
	p := NewProxy(NewTable(zerolog.Nop(), nil), Config{})
	guard := &guardListener{proxy: p}
	l := newSNIListener(stub, p, time.Minute, &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}, guard.guard)
	go func() {
		// Sends its ClientHello; fails when the test closes the pipe.
		_ = tls.Client(client, &tls.Config{ServerName: "app.example.com", InsecureSkipVerify: true}).Handshake()
	}()

	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatalf("no connection accepted after %d accepts", stub.accepts.Load())
	}
	if got := stub.accepts.Load(); got < 4 {
		t.Fatalf("%d accepts, want 3 failures and the connection", got)
	}
	l.Close()
	l.wait() // the accept loop ends on net.ErrClosed
	if _, err := l.Accept(); err != net.ErrClosed {
		t.Fatalf("Accept after Close: %v, want %v", err, net.ErrClosed)
	}
}

// selfSigned returns a certificate for app.example.com signed by its own
// key.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"app.example.com"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
