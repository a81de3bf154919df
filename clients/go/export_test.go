package arcana

import pb "github.com/arcana-sync/arcana/clients/go/arcanapb"

// InjectFrame hands f to the client as if the server had sent it on the
// current session, to simulate lost or corrupt frames.
func InjectFrame(c *Client, f *pb.ViewFrame) {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	c.onFrames(s, []*pb.ViewFrame{f})
}

// Batches is the number of FrameBatch messages c received.
func Batches(c *Client) uint64 { return c.batches.Load() }

// SnapshotFrame encodes st as a snapshot frame.
func SnapshotFrame(st *State) *pb.ViewFrame {
	snap := &pb.Snapshot{Refs: st.Refs, Total: st.Total}
	for _, r := range st.Rows {
		snap.Rows = append(snap.Rows, &pb.Row{Table: r.Table, Id: r.ID, Fields: r.Fields})
	}
	return &pb.ViewFrame{
		ViewId:  st.ViewID,
		Epoch:   st.Epoch,
		Version: st.Version,
		Body:    &pb.ViewFrame_Snapshot{Snapshot: snap},
	}
}
