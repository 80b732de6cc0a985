package events

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// ServerConfig configures an embedded NATS server.
type ServerConfig struct {
	// Listen is the HOST:PORT clients connect to. Port 0 picks a free
	// port. Empty means "127.0.0.1:4222".
	Listen string
	// DataDir is where JetStream keeps the streams. Required.
	DataDir string
	// Logger receives the server's log. The zero value logs nothing.
	Logger zerolog.Logger
	// ReadyTimeout bounds the wait for the server to accept clients. Zero
	// means ten seconds.
	ReadyTimeout time.Duration
}

// StartServer starts a NATS server with JetStream in this process, for a
// single-binary router or a test. Call Shutdown and WaitForShutdown on the
// result to stop it.
func StartServer(cfg ServerConfig) (*server.Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("embedded NATS: no data directory")
	}
	listen := cfg.Listen
	if listen == "" {
		listen = "127.0.0.1:4222"
	}
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: listen address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("embedded NATS: listen address %q: bad port", listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	} else if ln, err := net.Listen("tcp", listen); err != nil {
		// The server would only log it, and never become ready.
		return nil, fmt.Errorf("embedded NATS: %w", err)
	} else {
		ln.Close()
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "sluice-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		NoSigs:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	ns.SetLoggerV2(natsLogger{cfg.Logger}, false, false, false)
	ns.Start()
	timeout := cfg.ReadyTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	if !ns.ReadyForConnections(timeout) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS: not ready after %s (is %s free?)", timeout, listen)
	}
	return ns, nil
}

// natsLogger forwards the embedded server's log to zerolog; its notices
// (a banner at start) are debug lines.
type natsLogger struct{ log zerolog.Logger }

func (l natsLogger) Noticef(format string, v ...any) { l.log.Debug().Msgf(format, v...) }
func (l natsLogger) Warnf(format string, v ...any)   { l.log.Warn().Msgf(format, v...) }
func (l natsLogger) Fatalf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l natsLogger) Errorf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l natsLogger) Debugf(format string, v ...any)  { l.log.Debug().Msgf(format, v...) }
func (l natsLogger) Tracef(format string, v ...any)  { l.log.Trace().Msgf(format, v...) }
