// Command reporting is a small service that follows another service's data:
// it subscribes to a project's tasks with a service token and keeps a live
// summary (tasks per status, story points, unassigned work), printing a line
// whenever the task service changes something.
//
//	go run ./examples/reporting -addr 127.0.0.1:50051 -project 1
//
// The token comes from -token or ARCANA_TOKEN (default: the demo's
// dev-service token). It stops on Ctrl-C, or after -updates changes.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	arcana "github.com/arcana-sync/arcana/clients/go"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "Arcana server address")
	token := flag.String("token", envOr("ARCANA_TOKEN", "dev-service"), "service token")
	project := flag.Int64("project", 1, "project id to report on")
	updates := flag.Int("updates", 0, "exit after this many changes (0: run until interrupted)")
	verbose := flag.Bool("v", false, "log connection events")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts := []arcana.Option{}
	if *verbose {
		opts = append(opts, arcana.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	}
	client, err := arcana.Dial(*addr, *token, opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	subCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	view, err := client.Subscribe(subCtx, "project_tasks", arcana.Params{"project_id": *project})
	cancel()
	if err != nil {
		// err is an *arcana.Error: arcana.Code(err) is the gRPC code.
		log.Fatalf("subscribe: %v (code %s)", err, arcana.Code(err))
	}
	defer view.Close()

	// The first update is the initial snapshot; then one per change.
	changes := -1
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-view.Updates():
			if !ok {
				log.Fatalf("view stopped: %v", view.Err())
			}
			switch u.Kind {
			case arcana.UpdateSnapshot, arcana.UpdateDiff:
				fmt.Println(summarize(*project, u.State))
				changes++
			case arcana.UpdateSynced:
				fmt.Printf("resynced after reconnect (%s)\n", u.Mode)
			case arcana.UpdateError:
				fmt.Printf("view error, keeping the last good state: %v\n", u.Err)
			}
			if *updates > 0 && changes >= *updates {
				return
			}
		}
	}
}

// summarize renders one line about the project's tasks.
func summarize(project int64, st *arcana.State) string {
	byStatus := map[string]int{}
	var points int64
	unassigned := 0
	for _, it := range st.Items() {
		if it.Row == nil {
			continue
		}
		s, _ := it.Row.String("status")
		byStatus[s]++
		if p, ok := it.Row.Int("points"); ok {
			points += p
		}
		if _, ok := it.Nested["assignee"]; !ok {
			unassigned++
		}
	}
	statuses := make([]string, 0, len(byStatus))
	for s, n := range byStatus {
		statuses = append(statuses, fmt.Sprintf("%s %d", s, n))
	}
	sort.Strings(statuses)
	total := int64(len(st.Refs))
	if st.Total != nil {
		total = *st.Total
	}
	return fmt.Sprintf("project %d v%d: %d tasks (%s), %d points, %d unassigned",
		project, st.Version, total, strings.Join(statuses, ", "), points, unassigned)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
