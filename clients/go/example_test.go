package arcana_test

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The service-to-service example runs against the server: it prints the
// project's summary, then a new line when another client writes.
func TestReportingExample(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "reporting")
	if out, err := exec.Command("go", "build", "-o", bin, "./examples/reporting").CombinedOutput(); err != nil {
		t.Fatalf("building the example: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-addr", serverAddr, "-token", "dev-service", "-project", "2", "-updates", "1")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("the example exited early")
			}
			return l
		case <-time.After(20 * time.Second):
			t.Fatal("no output from the example")
		}
		return ""
	}
	first := next()
	if !strings.HasPrefix(first, "project 2 v") || !strings.Contains(first, "tasks (") {
		t.Fatalf("first line %q", first)
	}
	w := dial(t, "dev-alice")
	id := createTask(t, w, 2, "seen by the reporting service", nil)
	defer deleteTask(t, w, id)
	second := next()
	if !strings.Contains(second, "1 unassigned") || second == first {
		t.Errorf("after a new unassigned task: %q (before: %q)", second, first)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("example exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the example did not exit after -updates 1")
	}
}
