package arcana_test

// The tests run against a real `arcana demo` server: TestMain starts one on a
// free port (with its throwaway PostgreSQL) and stops it at the end. Set
// ARCANA_BIN to use another binary than ../../target/debug/arcana.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	arcana "github.com/arcana-sync/arcana/clients/go"
)

var (
	serverAddr  string
	postgresURL string
)

func TestMain(m *testing.M) {
	os.Exit(runWithServer(m))
}

func runWithServer(m *testing.M) int {
	bin := serverBin()
	if _, err := os.Stat(bin); err != nil {
		fmt.Fprintf(os.Stderr, "arcana server binary not found at %s: run `cargo build --bin arcana` at the repository root (or clients/go/test.sh), or set ARCANA_BIN\n", bin)
		return 1
	}
	port, err := freePort()
	if err != nil {
		fmt.Fprintln(os.Stderr, "no free port:", err)
		return 1
	}
	serverAddr = fmt.Sprintf("127.0.0.1:%d", port)
	srv, err := startServer(bin, serverAddr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	postgresURL = srv.postgresURL
	code := m.Run()
	srv.stop()
	return code
}

// psqlPath is psql's path, for tests that write to the demo database
// directly; a machine without it fails them (clients/go/test.sh puts
// PostgreSQL's binaries on PATH).
func psqlPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("psql")
	if err != nil {
		t.Fatalf("psql is needed to write to the demo database: %v", err)
	}
	return p
}

func serverBin() string {
	if bin := os.Getenv("ARCANA_BIN"); bin != "" {
		return bin
	}
	return filepath.Join("..", "..", "target", "debug", "arcana")
}

// demoServer is a running `arcana demo` with its own throwaway PostgreSQL.
type demoServer struct {
	cmd         *exec.Cmd
	exited      chan error
	postgresURL string
	stopOnce    sync.Once
}

// startServer runs `arcana demo` on addr and returns once it serves.
func startServer(bin, addr string) (*demoServer, error) {
	cmd := exec.Command(bin, "demo", "--listen", addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the server: %w", err)
	}
	srv := &demoServer{cmd: cmd, exited: make(chan error, 1)}
	ready := make(chan struct{})
	var once sync.Once
	var logMu sync.Mutex
	var serverLog strings.Builder
	serving := false
	pgRe := regexp.MustCompile(`PostgreSQL is up at (postgres://\S+)`)
	scan := func(r io.Reader) {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			logMu.Lock()
			serverLog.WriteString(line + "\n")
			if m := pgRe.FindStringSubmatch(line); m != nil {
				srv.postgresURL = m[1]
			}
			if strings.Contains(line, "Arcana demo serving on") {
				serving = true
			}
			// Both lines, which come on different streams: tests that
			// write to the database need its URL.
			if serving && srv.postgresURL != "" {
				once.Do(func() { close(ready) })
			}
			logMu.Unlock()
		}
	}
	go scan(stdout)
	go scan(stderr)
	go func() { srv.exited <- cmd.Wait() }()
	select {
	case <-ready:
		logMu.Lock()
		defer logMu.Unlock()
		return srv, nil
	case err := <-srv.exited:
		logMu.Lock()
		defer logMu.Unlock()
		return nil, fmt.Errorf("the server exited before it was ready (%v):\n%s", err, serverLog.String())
	case <-time.After(3 * time.Minute):
		srv.stop()
		logMu.Lock()
		defer logMu.Unlock()
		return nil, fmt.Errorf("the server was not ready within 3 minutes:\n%s", serverLog.String())
	}
}

// stop ends the server (and its PostgreSQL) and waits for it to exit.
func (srv *demoServer) stop() {
	srv.stopOnce.Do(func() {
		_ = srv.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-srv.exited:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-srv.cmd.Process.Pid, syscall.SIGKILL)
			<-srv.exited
		}
	})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// dial returns a client for token, closed when the test ends.
func dial(t *testing.T, token string, opts ...arcana.Option) *arcana.Client {
	t.Helper()
	return dialAddr(t, serverAddr, token, opts...)
}

func dialAddr(t *testing.T, addr, token string, opts ...arcana.Option) *arcana.Client {
	t.Helper()
	opts = append([]arcana.Option{arcana.WithBackoff(50*time.Millisecond, 500*time.Millisecond)}, opts...)
	c, err := arcana.Dial(addr, token, opts...)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// proxy is a TCP relay in front of the server whose connections the test
// can cut, to exercise reconnection over a real network failure.
type proxy struct {
	t      *testing.T
	ln     net.Listener
	target string

	mu    sync.Mutex
	down  bool
	conns []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.Down()
	})
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			in.Close()
			continue
		}
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		go func() { io.Copy(out, in); out.Close() }()
		go func() { io.Copy(in, out); in.Close() }()
	}
}

// Down cuts every relayed connection and refuses new ones until Up.
func (p *proxy) Down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) Up() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}
