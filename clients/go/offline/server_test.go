package offline_test

// The integration tests run against a real server: `arcana demo` provides a
// throwaway PostgreSQL (and its workspaces), a notes table is added to it
// with psql, and `arcana serve` replicates that table to devices. Both start
// on first use and stop when the tests end. ARCANA_BIN picks the binary.

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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if srv != nil {
		srv.stop()
	}
	os.Exit(code)
}

const offlineConfig = `
[server]
listen = "%s"

[database]
url = "%s"

[[auth.tokens]]
token = "dev-alice"
user = "alice"
workspace = "acme"
role = "member"
permissions = ["tasks:read", "tasks:write"]

[[auth.tokens]]
token = "dev-bob"
user = "bob"
workspace = "acme"
role = "member"
permissions = ["tasks:read", "tasks:write"]

[offline]
min_app_version = "1.0.0"
# Short history, pruned often: a device that falls behind must snapshot.
retention_max_rows = 5
retention_interval_ms = 200
# Small chunks: snapshots take several, so one can break in the middle.
snapshot_chunk_rows = 2
# Small bundles and chunks: a few writes already take several of each.
max_push_rows = 5
max_chunk_rows = 2

[[offline.tables]]
table = "offline_notes"
scope = "workspace"
push = "scope"
conflict = "reject"

[[offline.tables]]
table = "offline_prefs"
scope = "workspace"
push = "scope"
conflict = "last_writer_wins"
`

type offlineServer struct {
	addr   string
	pgURL  string
	config string
	demo   *exec.Cmd
	demoX  chan struct{} // closed when the demo exits
	mu     sync.Mutex
	serve  *exec.Cmd
	serveX chan struct{}
	log    *strings.Builder
}

var (
	srv     *offlineServer
	srvErr  error
	srvOnce sync.Once
)

// server starts the servers once (a test fails when the binary or psql,
// which creates the test tables, is missing).
func server(t *testing.T) *offlineServer {
	t.Helper()
	if _, err := exec.LookPath("psql"); err != nil {
		t.Fatalf("psql is needed to create the test tables: %v", err)
	}
	srvOnce.Do(func() { srv, srvErr = startOffline() })
	if srvErr != nil {
		t.Fatal(srvErr)
	}
	return srv
}

func binary() string {
	if b := os.Getenv("ARCANA_BIN"); b != "" {
		return b
	}
	return filepath.Join("..", "..", "..", "target", "debug", "arcana")
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startOffline() (*offlineServer, error) {
	bin := binary()
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("arcana server binary not found at %s: run `cargo build --bin arcana` at the repository root, or set ARCANA_BIN", bin)
	}
	demoAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := &offlineServer{log: &strings.Builder{}}
	s.demo = exec.Command(bin, "demo", "--listen", demoAddr)
	s.demo.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, _ := s.demo.StdoutPipe()
	errp, _ := s.demo.StderrPipe()
	if err := s.demo.Start(); err != nil {
		return nil, err
	}
	s.demoX = make(chan struct{})
	ready := make(chan struct{})
	var once sync.Once
	pgRe := regexp.MustCompile(`PostgreSQL is up at (postgres://\S+)`)
	var pgMu sync.Mutex
	serving := false
	scan := func(r io.Reader) {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			pgMu.Lock()
			if m := pgRe.FindStringSubmatch(line); m != nil {
				s.pgURL = m[1]
			}
			if strings.Contains(line, "Arcana demo serving on") {
				serving = true
			}
			// The URL comes on the other stream: wait for both.
			if serving && s.pgURL != "" {
				once.Do(func() { close(ready) })
			}
			pgMu.Unlock()
		}
	}
	go scan(out)
	go scan(errp)
	go func() { _ = s.demo.Wait(); close(s.demoX) }()
	select {
	case <-ready:
	case <-s.demoX:
		return nil, fmt.Errorf("arcana demo exited before serving")
	case <-time.After(3 * time.Minute):
		s.stop()
		return nil, fmt.Errorf("arcana demo not serving after 3 minutes")
	}
	pgMu.Lock()
	defer pgMu.Unlock()
	if err := s.sql(`CREATE TABLE offline_notes (
		id bigint PRIMARY KEY,
		workspace_id text NOT NULL REFERENCES workspaces(id),
		body text NOT NULL,
		done boolean NOT NULL DEFAULT false);
		CREATE TABLE offline_prefs (
		id bigint PRIMARY KEY,
		workspace_id text NOT NULL REFERENCES workspaces(id),
		value text NOT NULL)`); err != nil {
		s.stop()
		return nil, err
	}
	if s.addr, err = freeAddr(); err != nil {
		s.stop()
		return nil, err
	}
	dir, err := os.MkdirTemp("", "arcana-offline-go-")
	if err != nil {
		s.stop()
		return nil, err
	}
	s.config = filepath.Join(dir, "arcana.toml")
	if err := os.WriteFile(s.config, []byte(fmt.Sprintf(offlineConfig, s.addr, s.pgURL)), 0o600); err != nil {
		s.stop()
		return nil, err
	}
	if err := s.resume(); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// sql runs SQL on the database with psql.
func (s *offlineServer) sql(q string) error {
	out, err := exec.Command("psql", s.pgURL, "-v", "ON_ERROR_STOP=1", "-c", q).CombinedOutput()
	if err != nil {
		return fmt.Errorf("psql: %v: %s", err, out)
	}
	return nil
}

// resume starts `arcana serve` and waits until Capabilities answers.
func (s *offlineServer) resume() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log.Reset()
	s.serve = exec.Command(binary(), "serve", "--config", s.config)
	s.serve.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	s.serve.Stdout, s.serve.Stderr = s.log, s.log
	if err := s.serve.Start(); err != nil {
		return err
	}
	s.serveX = make(chan struct{})
	cmd, exited := s.serve, s.serveX
	go func() { _ = cmd.Wait(); close(exited) }()
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rpc := pb.NewOfflineServiceClient(conn)
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer dev-alice"), 2*time.Second)
		_, err := rpc.Capabilities(ctx, &pb.CapabilitiesRequest{})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("arcana serve exited: %s", s.log.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("arcana serve not ready after a minute: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pause stops `arcana serve` (the database stays up).
func (s *offlineServer) pause() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serve == nil {
		return
	}
	_ = s.serve.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.serveX:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-s.serve.Process.Pid, syscall.SIGKILL)
		<-s.serveX
	}
	s.serve = nil
}

func (s *offlineServer) stop() {
	s.pause()
	if s.demo != nil && s.demo.Process != nil {
		_ = s.demo.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.demoX:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-s.demo.Process.Pid, syscall.SIGKILL)
			<-s.demoX
		}
	}
	if s.config != "" {
		os.RemoveAll(filepath.Dir(s.config))
	}
}
