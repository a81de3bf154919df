package arcana

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// TokenFunc returns the bearer token for the next call or session. It lets a
// service rotate short-lived tokens without recreating the Client.
type TokenFunc func(ctx context.Context) (string, error)

type options struct {
	tokenFunc  TokenFunc
	creds      credentials.TransportCredentials
	tls        *TLSConfig
	dialOpts   []grpc.DialOption
	conn       *grpc.ClientConn
	minBackoff time.Duration
	maxBackoff time.Duration
	updateBuf  int
	logger     *slog.Logger
}

// Option configures a Client.
type Option func(*options)

// WithTokenFunc takes the token from f on every call and every new session
// instead of the fixed token given to Dial.
func WithTokenFunc(f TokenFunc) Option { return func(o *options) { o.tokenFunc = f } }

// WithTransportCredentials sets TLS (or other) credentials; the default is an
// insecure (plaintext) connection, fit only for local development.
func WithTransportCredentials(c credentials.TransportCredentials) Option {
	return func(o *options) { o.creds = c }
}

// TLSConfig says how to reach a server that serves TLS.
type TLSConfig struct {
	// CAFile holds the PEM CA certificates to trust; empty trusts the
	// system's roots.
	CAFile string
	// CertFile and KeyFile hold a PEM client certificate and its key, for a
	// server that requires mutual TLS (server.tls.client_ca).
	CertFile, KeyFile string
	// ServerName is checked against the server's certificate instead of the
	// host of the target given to Dial.
	ServerName string
}

// WithTLS connects over TLS as c says, instead of the insecure default.
// Dial reports unreadable files. WithTransportCredentials takes precedence.
func WithTLS(c TLSConfig) Option { return func(o *options) { o.tls = &c } }

func (c *TLSConfig) credentials() (credentials.TransportCredentials, error) {
	cfg := &tls.Config{ServerName: c.ServerName, MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading the CA file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no PEM certificate in the CA file %s", c.CAFile)
		}
	}
	if c.CertFile != "" || c.KeyFile != "" {
		pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("loading the client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(cfg), nil
}

// WithDialOptions adds gRPC dial options.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// WithConn uses an existing connection instead of dialing. Close does not
// close it.
func WithConn(conn *grpc.ClientConn) Option { return func(o *options) { o.conn = conn } }

// WithBackoff sets the reconnect delays: the first retry waits about min,
// each further one twice as long, up to max (defaults 100ms and 5s).
func WithBackoff(min, max time.Duration) Option {
	return func(o *options) { o.minBackoff, o.maxBackoff = min, max }
}

// WithUpdateBuffer sets how many updates each View buffers before it drops
// the oldest (default 64). The latest state is always delivered.
func WithUpdateBuffer(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.updateBuf = n
		}
	}
}

// WithLogger logs connection events (reconnects, resyncs) to l.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }
