package arcana_test

import (
	"testing"
	"time"

	arcana "github.com/arcana-sync/arcana/clients/go"
	"github.com/arcana-sync/arcana/clients/go/examples/demotypes"
)

// The generated types decode what the server sends: NOT NULL columns as
// plain values, nullable ones as pointers, and a mutation's returned row.
func TestGeneratedTypesDecode(t *testing.T) {
	c := dial(t, "dev-alice")
	ctx := ctxT(t, 30*time.Second)
	v, err := c.Subscribe(ctx, demotypes.GraphProjectTasks, demotypes.ProjectTasksParams{ProjectID: 2}.Params())
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	res, err := c.Mutate(ctx, demotypes.MutationCreateTask, demotypes.CreateTaskParams{ProjectID: 2, Title: "typed: created"}.Params())
	if err != nil {
		t.Fatal(err)
	}
	created := demotypes.DecodeCreateTaskResult(res)
	if created.ID == 0 || created.ProjectID != 2 || created.AssigneeID != nil {
		t.Fatalf("create_task result %+v from %v", created, res.Data)
	}
	defer func() {
		if _, err := c.Mutate(ctxT(t, 20*time.Second), demotypes.MutationDeleteTask, demotypes.DeleteTaskParams{ID: created.ID}.Params()); err != nil {
			t.Errorf("delete_task: %v", err)
		}
	}()
	st := v.State()
	var row *demotypes.ProjectTasksRow
	for _, ref := range st.Refs {
		if r := demotypes.DecodeProjectTasksRow(st.Row(ref)); r.ID == created.ID {
			row = &r
		}
	}
	if row == nil {
		t.Fatalf("task %d not in the view", created.ID)
	}
	if row.Title != "typed: created" || row.Status == "" || row.DueAt != nil || row.Points != nil {
		t.Errorf("decoded row %+v", *row)
	}
	var _ arcana.JSON = row.Meta // NOT NULL: a plain value
}
