package arcana_test

// TLS: a second server on the demo's database serves over TLS with a
// certificate from a CA made here; the client trusts that CA through
// WithTLS and is refused with another CA or without TLS.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	arcana "github.com/arcana-sync/arcana/clients/go"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// leaf returns a PEM server certificate for localhost signed by ca, and its PEM key.
func (ca *testCA) leaf(t *testing.T) (certPEM, keyPEM []byte) {
	return ca.issue(t, x509.ExtKeyUsageServerAuth)
}

func (ca *testCA) issue(t *testing.T, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func write(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startTLSServer serves the demo config over TLS on the demo's database;
// with clientCA, clients must present a certificate it signed.
func startTLSServer(t *testing.T, ca *testCA, clientCA *testCA) string {
	t.Helper()
	dir := t.TempDir()
	certPEM, keyPEM := ca.leaf(t)
	cert := write(t, dir, "server.crt", certPEM)
	key := write(t, dir, "server.key", keyPEM)
	demo, err := os.ReadFile(filepath.Join("..", "..", "demo", "arcana.toml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("%s\n[changes]\nmode = \"none\"\n\n[server.tls]\ncert = %q\nkey = %q\n", demo, cert, key)
	if clientCA != nil {
		cfg += fmt.Sprintf("client_ca = %q\n", write(t, dir, "clients.pem", clientCA.pem))
	}
	cfgPath := write(t, dir, "arcana.toml", []byte(cfg))
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	bin := os.Getenv("ARCANA_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "target", "debug", "arcana")
	}
	cmd := exec.Command(bin, "serve", "-c", cfgPath, "--database-url", postgresURL, "--listen", addr)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("the TLS server did not listen on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func connects(t *testing.T, addr string, opts ...arcana.Option) error {
	t.Helper()
	c, err := arcana.Dial(addr, "dev-alice", opts...)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = c.WaitConnected(ctx)
	return err
}

func TestTLSWithCAFile(t *testing.T) {
	ca := newCA(t, "arcana test ca")
	addr := startTLSServer(t, ca, nil)
	caFile := write(t, t.TempDir(), "ca.pem", ca.pem)

	if err := connects(t, addr, arcana.WithTLS(arcana.TLSConfig{CAFile: caFile, ServerName: "localhost"})); err != nil {
		t.Fatalf("over TLS with the right CA: %v", err)
	}
	other := write(t, t.TempDir(), "other.pem", newCA(t, "another ca").pem)
	if err := connects(t, addr, arcana.WithTLS(arcana.TLSConfig{CAFile: other, ServerName: "localhost"})); err == nil {
		t.Fatal("a client trusting another CA connected")
	}
	if err := connects(t, addr); err == nil {
		t.Fatal("a plaintext client connected to a TLS server")
	}
	if _, err := arcana.Dial(addr, "dev-alice", arcana.WithTLS(arcana.TLSConfig{CAFile: filepath.Join(t.TempDir(), "missing.pem")})); err == nil {
		t.Fatal("Dial accepted a missing CA file")
	}
}

func TestMutualTLS(t *testing.T) {
	ca := newCA(t, "arcana test ca")
	clients := newCA(t, "arcana client ca")
	addr := startTLSServer(t, ca, clients)
	dir := t.TempDir()
	caFile := write(t, dir, "ca.pem", ca.pem)

	if err := connects(t, addr, arcana.WithTLS(arcana.TLSConfig{CAFile: caFile, ServerName: "localhost"})); err == nil {
		t.Fatal("a client without a certificate connected")
	}
	certPEM, keyPEM := clients.issue(t, x509.ExtKeyUsageClientAuth)
	tlsCfg := arcana.TLSConfig{
		CAFile:     caFile,
		ServerName: "localhost",
		CertFile:   write(t, dir, "client.crt", certPEM),
		KeyFile:    write(t, dir, "client.key", keyPEM),
	}
	if err := connects(t, addr, arcana.WithTLS(tlsCfg)); err != nil {
		t.Fatalf("with a client certificate from client_ca: %v", err)
	}
}
