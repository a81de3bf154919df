package arcana

import (
	"context"
	"sync"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// call is one request waiting for its reply.
type call struct {
	op string
	id uint64
	// onReply runs on the reader goroutine before the next message is read,
	// so it sees the session exactly as the server left it.
	onReply func(*pb.Reply) any
	// onAbandon runs instead when the caller gave up before the reply.
	onAbandon func(*pb.Reply)

	mu        sync.Mutex
	abandoned bool
	answered  bool
	reply     *pb.Reply
	result    any
	done      chan struct{}
}

// send registers cl (when not nil) and writes msg on s. The request id is
// assigned under the send lock, so ids grow in the order messages go out.
func (c *Client) send(s *session, msg *pb.ClientMessage, cl *call) (uint64, error) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	id := c.nextID.Add(1)
	msg.RequestId = id
	if cl != nil {
		cl.id = id
		c.mu.Lock()
		if s.lost {
			c.mu.Unlock()
			return 0, errLost(cl.op)
		}
		s.pending[id] = cl
		c.mu.Unlock()
	}
	if err := s.stream.Send(msg); err != nil {
		// The reader sees the real error and ends the session.
		if cl != nil {
			c.mu.Lock()
			if s.pending != nil {
				delete(s.pending, id)
			}
			c.mu.Unlock()
		}
		return 0, errLost(opOf(cl))
	}
	return id, nil
}

func opOf(cl *call) string {
	if cl == nil {
		return ""
	}
	return cl.op
}

// answer completes the call with r (nil: the session was lost).
func (cl *call) answer(r *pb.Reply) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.answered {
		return
	}
	cl.answered = true
	cl.reply = r
	if r != nil {
		if cl.abandoned {
			if cl.onAbandon != nil {
				cl.onAbandon(r)
			}
		} else if cl.onReply != nil {
			cl.result = cl.onReply(r)
		}
	}
	close(cl.done)
}

// request sends msg on s and waits for its reply.
func (c *Client) request(ctx context.Context, s *session, msg *pb.ClientMessage, cl *call) (*pb.Reply, any, error) {
	cl.done = make(chan struct{})
	if _, err := c.send(s, msg, cl); err != nil {
		return nil, nil, err
	}
	if err := c.wait(ctx, cl); err != nil {
		return nil, nil, err
	}
	return cl.reply, cl.result, nil
}

// wait blocks until cl is answered, the session is lost or ctx ends.
func (c *Client) wait(ctx context.Context, cl *call) error {
	select {
	case <-cl.done:
	case <-ctx.Done():
		cl.mu.Lock()
		if !cl.answered {
			cl.abandoned = true
			cl.mu.Unlock()
			return fromStatus(cl.op, ctx.Err())
		}
		cl.mu.Unlock()
	}
	if cl.reply == nil {
		return errLost(cl.op)
	}
	return nil
}
