package arcana_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The README's install steps, run as written in a new module: `go mod init`,
// a program that imports the client, `go mod edit -replace` to this folder,
// `go mod tidy`, then `go build` and `go vet`. Dependencies come from the
// module proxy (or the module cache).
func TestInstallAsDocumented(t *testing.T) {
	here, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	// The commands below are the README's, with its placeholder path filled in.
	for _, line := range []string{
		"go mod edit -replace github.com/arcana-sync/arcana/clients/go=/path/to/arcana/clients/go",
		"go mod tidy",
	} {
		if !strings.Contains(string(readme), line) {
			t.Fatalf("README.md no longer says %q: update this test with it", line)
		}
	}

	app := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = app
		// Outside this module and any workspace; -mod=mod lets tidy write go.sum.
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("mod", "init", "example.com/app")
	// The README's quick start, as a program.
	program := `package main

import (
	"context"
	"log"

	arcana "github.com/arcana-sync/arcana/clients/go"
)

func main() {
	ctx := context.Background()
	client, err := arcana.Dial("127.0.0.1:50051", "dev-alice")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	view, err := client.Subscribe(ctx, "project_tasks", arcana.Params{"project_id": 1})
	if err != nil {
		log.Fatal(err, arcana.Code(err))
	}
	defer view.Close()
	for _, item := range view.State().Items() {
		title, _ := item.Row.String("title")
		log.Println(title)
	}
}
`
	if err := os.WriteFile(filepath.Join(app, "main.go"), []byte(program), 0o644); err != nil {
		t.Fatal(err)
	}
	run("mod", "edit", "-replace", "github.com/arcana-sync/arcana/clients/go="+here)
	run("mod", "tidy")
	run("build", "-o", filepath.Join(app, "app"), ".")
	run("vet", ".")
	if _, err := os.Stat(filepath.Join(app, "app")); err != nil {
		t.Fatal(err)
	}
}
