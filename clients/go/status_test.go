package arcana_test

import (
	"fmt"
	"testing"
	"time"

	arcana "github.com/arcana-sync/arcana/clients/go"
	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// nextStatus returns the next UpdateStatus of v.
func nextStatus(t *testing.T, v *arcana.View, d time.Duration) arcana.Update {
	t.Helper()
	return nextUpdate(t, v, d, func(u arcana.Update) bool { return u.Kind == arcana.UpdateStatus })
}

func wantStatus(t *testing.T, v *arcana.View, want arcana.Status, withErr bool) {
	t.Helper()
	got, err := v.Status()
	if got != want || (err != nil) != withErr {
		t.Errorf("status %v (error %v), want %v (with an error: %v)", got, err, want, withErr)
	}
}

// A view turns stale, with the connection error, while its server is down,
// and live again once a restarted server has synced it.
func TestViewStatusAcrossServerRestart(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	srv, err := startServer(serverBin(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.stop() })
	c := dialAddr(t, addr, "dev-alice")
	v, err := c.Subscribe(ctxT(t, 30*time.Second), "project_tasks", arcana.Params{"project_id": 1})
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, v, arcana.StatusLive, false)
	before := v.State()
	drain(v)

	srv.stop()
	u := nextStatus(t, v, 20*time.Second)
	if u.Status != arcana.StatusStale || u.Err == nil {
		t.Fatalf("after the server stopped: status %v, error %v; want stale with an error", u.Status, u.Err)
	}
	if u.State != before || v.State() != before {
		t.Errorf("a stale view must keep its last state")
	}
	wantStatus(t, v, arcana.StatusStale, true)

	srv, err = startServer(serverBin(), addr)
	if err != nil {
		t.Fatal(err)
	}
	u = nextStatus(t, v, 60*time.Second)
	if u.Status != arcana.StatusLive || u.Err != nil {
		t.Fatalf("after the server restarted: status %v, error %v; want live", u.Status, u.Err)
	}
	wantStatus(t, v, arcana.StatusLive, false)
	if st := v.State(); st.Epoch == before.Epoch || !st.Equal(before) {
		t.Errorf("after the restart: epoch %d (before %d); %s", st.Epoch, before.Epoch, st.Diff(before))
	}
}

// An error frame puts the view in error, keeping its data; the diff the
// server sends when the view recovers makes it live again.
func TestViewStatusErrorFrameThenDiff(t *testing.T) {
	c := dial(t, "dev-alice")
	v, err := c.Subscribe(ctxT(t, 30*time.Second), "project_tasks", arcana.Params{"project_id": 1})
	if err != nil {
		t.Fatal(err)
	}
	st := v.State()
	drain(v)
	arcana.InjectFrame(c, &pb.ViewFrame{ViewId: st.ViewID, Epoch: st.Epoch, Version: st.Version,
		Body: &pb.ViewFrame_Error{Error: &pb.ViewError{Code: 14, Message: "database unavailable"}}})
	u := nextStatus(t, v, 5*time.Second)
	if u.Status != arcana.StatusError || arcana.Code(u.Err) != 14 || u.State != st {
		t.Fatalf("after an error frame: %+v", u)
	}
	wantStatus(t, v, arcana.StatusError, true)

	// The recovery diff (empty: nothing changed meanwhile).
	arcana.InjectFrame(c, &pb.ViewFrame{ViewId: st.ViewID, Epoch: st.Epoch, Version: st.Version + 1, PrevVersion: st.Version,
		Body: &pb.ViewFrame_Diff{Diff: &pb.ViewDiff{}}})
	u = nextStatus(t, v, 5*time.Second)
	if u.Status != arcana.StatusLive || u.Err != nil {
		t.Fatalf("after the recovery diff: %+v", u)
	}
	wantStatus(t, v, arcana.StatusLive, false)
}
