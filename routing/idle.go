package routing

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// idleConn closes a connection to a container after idle without a byte
// either way, however long the exchange on it lasts: a rolling window that
// also covers WebSockets and server-sent events. A deadline is set once;
// when it fires, the read or write is resumed with a new deadline if bytes
// moved meanwhile, so a busy connection costs no timer change per byte.
type idleConn struct {
	net.Conn
	idle    time.Duration
	last    atomic.Int64 // unix nanoseconds of the last byte either way
	written atomic.Int64 // bytes written: the proxy retries a request none of which was sent
}

func newIdleConn(c net.Conn, idle time.Duration) net.Conn {
	ic := &idleConn{Conn: c, idle: idle}
	ic.touch()
	_ = c.SetDeadline(time.Now().Add(idle))
	return ic
}

func (c *idleConn) touch() { c.last.Store(time.Now().UnixNano()) }

// rearm returns whether the connection moved within the window, and if so
// sets the deadline to the window's new end.
func (c *idleConn) rearm(set func(time.Time) error, err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	end := time.Unix(0, c.last.Load()).Add(c.idle)
	if !time.Now().Before(end) {
		return false
	}
	return set(end) == nil
}

func (c *idleConn) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		if n > 0 {
			c.touch()
			return n, err
		}
		if !c.rearm(c.Conn.SetReadDeadline, err) {
			return n, err
		}
	}
}

func (c *idleConn) Write(p []byte) (int, error) {
	written := 0
	for {
		n, err := c.Conn.Write(p[written:])
		written += n
		if n > 0 {
			c.touch()
			c.written.Add(int64(n))
		}
		if err == nil || !c.rearm(c.Conn.SetWriteDeadline, err) {
			return written, err
		}
	}
}
