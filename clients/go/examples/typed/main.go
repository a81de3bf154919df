// Command typed lists a project's tasks with the types `arcana codegen`
// generated from the demo server (package demotypes), then adds a task and
// shows it arrive.
//
//	go run ./examples/typed -addr 127.0.0.1:50051 -project 1
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	arcana "github.com/arcana-sync/arcana/clients/go"
	"github.com/arcana-sync/arcana/clients/go/examples/demotypes"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "Arcana server address")
	token := flag.String("token", "dev-alice", "bearer token")
	project := flag.Int64("project", 1, "project id")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := arcana.Dial(*addr, *token)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	view, err := client.Subscribe(ctx, demotypes.GraphProjectTasks, demotypes.ProjectTasksParams{ProjectID: *project}.Params())
	if err != nil {
		log.Fatal(err)
	}
	print := func(s *arcana.State) {
		for _, ref := range s.Refs {
			t := demotypes.DecodeProjectTasksRow(s.Row(ref))
			due := "no due date"
			if t.DueAt != nil { // nullable column: a pointer
				due = "due " + t.DueAt.Format(time.DateOnly)
			}
			fmt.Printf("  #%d %s [%s] %s\n", t.ID, t.Title, t.Status, due)
		}
	}
	fmt.Println("tasks:")
	print(view.State())

	title := fmt.Sprintf("typed example %d", time.Now().Unix())
	res, err := client.Mutate(ctx, demotypes.MutationCreateTask, demotypes.CreateTaskParams{ProjectID: *project, Title: title}.Params())
	if err != nil {
		log.Fatal(err)
	}
	created := demotypes.DecodeCreateTaskResult(res)
	fmt.Printf("after create_task (new task #%d):\n", created.ID)
	print(view.State())
}
