package arcana

import pb "github.com/arcana-sync/arcana/clients/go/arcanapb"

// snapshotParts puts back together the snapshots that arrive in parts:
// consecutive snapshot frames of one view and version, `more` set on all but
// the last. A view only ever sees the whole snapshot. Used by the reader
// goroutine of one session only.
type snapshotParts struct {
	pending map[string][]*pb.ViewFrame
}

// push takes one frame and returns the frame to apply (f itself, or the
// joined snapshot once its last part is in), or nil while parts are still
// expected. The parts of a snapshot that another frame of the view
// interrupts (a newer snapshot, a diff, an error) are dropped.
func (p *snapshotParts) push(f *pb.ViewFrame) *pb.ViewFrame {
	held := p.pending[f.GetViewId()]
	snap := f.GetSnapshot()
	same := len(held) > 0 && snap != nil &&
		held[0].GetEpoch() == f.GetEpoch() && held[0].GetVersion() == f.GetVersion()
	if len(held) > 0 && !same {
		delete(p.pending, f.GetViewId())
		held = nil
	}
	if snap == nil {
		return f
	}
	if snap.GetMore() {
		if p.pending == nil {
			p.pending = map[string][]*pb.ViewFrame{}
		}
		p.pending[f.GetViewId()] = append(held, f)
		return nil
	}
	if !same {
		return f
	}
	delete(p.pending, f.GetViewId())
	return joinParts(append(held, f))
}

// joinParts makes one snapshot frame of parts: refs and rows in order, the
// total and window edges from the last part that has them.
func joinParts(parts []*pb.ViewFrame) *pb.ViewFrame {
	last := parts[len(parts)-1]
	whole := &pb.Snapshot{
		Graph:      parts[0].GetSnapshot().GetGraph(),
		ParamsHash: parts[0].GetSnapshot().GetParamsHash(),
	}
	for _, p := range parts {
		s := p.GetSnapshot()
		whole.Refs = append(whole.Refs, s.GetRefs()...)
		whole.Rows = append(whole.Rows, s.GetRows()...)
		if s.Total != nil {
			whole.Total = s.Total
		}
		if s.GetWindow() != nil {
			whole.Window = s.GetWindow()
		}
	}
	return &pb.ViewFrame{
		ViewId:      last.GetViewId(),
		Epoch:       last.GetEpoch(),
		Version:     last.GetVersion(),
		PrevVersion: last.GetPrevVersion(),
		PrevEpoch:   last.GetPrevEpoch(),
		Body:        &pb.ViewFrame_Snapshot{Snapshot: whole},
	}
}
