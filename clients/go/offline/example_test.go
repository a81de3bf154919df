package offline_test

import (
	"context"
	"fmt"
	"log"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/arcana-sync/arcana/clients/go/offline"
)

// A device keeps its notes in a SQLite file, writes while offline, and
// syncs in the background whenever the server can be reached.
func Example() {
	ctx := context.Background()
	conn, err := grpc.NewClient("127.0.0.1:50051", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	storage, err := offline.OpenSQLite("notes.sqlite")
	if err != nil {
		log.Fatal(err)
	}
	store, err := offline.Open(ctx, offline.Options{
		Conn: conn, Storage: storage, Token: "dev-alice", AppVersion: "1.4.2",
		// Keep this device's edit when the server refused it as stale.
		OnConflict: func(c offline.Conflict) offline.Resolution { return offline.Reapply },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	store.Start()
	id, err := store.Insert(ctx, "notes", map[string]any{"id": 7, "body": "written on a plane"})
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Update(ctx, "notes", id, map[string]any{"done": true}); err != nil {
		log.Fatal(err)
	}
	rows, _ := store.Rows("notes")
	fmt.Println(len(rows))
}
