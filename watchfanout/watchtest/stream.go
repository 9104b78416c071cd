package watchtest

import (
	"context"
	"io"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Stream is an in-memory watch stream (implements watchfanout.Stream): the
// test plays the client through Create/Cancel/RequestProgress and reads
// what the server sent with Responses/Wait. Pause makes Send block, like a
// client that stops reading.
type Stream struct {
	ctx  context.Context
	reqs chan *pb.WatchRequest
	eof  chan struct{}
	once sync.Once

	mu      sync.Mutex
	resps   []*pb.WatchResponse
	changed chan struct{} // closed and replaced on every Send
	paused  chan struct{} // non-nil while paused; closed by Resume
}

// NewStream returns a stream whose Recv ends with ctx.
func NewStream(ctx context.Context) *Stream {
	return &Stream{ctx: ctx, reqs: make(chan *pb.WatchRequest), eof: make(chan struct{}), changed: make(chan struct{})}
}

// Recv implements watchfanout.Stream.
func (s *Stream) Recv() (*pb.WatchRequest, error) {
	select {
	case r := <-s.reqs:
		return r, nil
	case <-s.eof:
		return nil, io.EOF
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

// Send implements watchfanout.Stream.
func (s *Stream) Send(r *pb.WatchResponse) error {
	s.mu.Lock()
	p := s.paused
	s.mu.Unlock()
	if p != nil {
		select {
		case <-p:
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
	}
	if err := s.ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	s.resps = append(s.resps, r)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return nil
}

func (s *Stream) request(ctx context.Context, r *pb.WatchRequest) error {
	select {
	case s.reqs <- r:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// Create sends a create request; it returns once the server took it.
func (s *Stream) Create(ctx context.Context, r *pb.WatchCreateRequest) error {
	return s.request(ctx, &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: r}})
}

// Cancel sends a cancel request.
func (s *Stream) Cancel(ctx context.Context, id int64) error {
	return s.request(ctx, &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}})
}

// RequestProgress sends a progress request.
func (s *Stream) RequestProgress(ctx context.Context) error {
	return s.request(ctx, &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
}

// CloseSend makes Recv return io.EOF (the client closed its sending side).
func (s *Stream) CloseSend() { s.once.Do(func() { close(s.eof) }) }

// Pause makes Send block until Resume.
func (s *Stream) Pause() {
	s.mu.Lock()
	if s.paused == nil {
		s.paused = make(chan struct{})
	}
	s.mu.Unlock()
}

// Resume unblocks Send.
func (s *Stream) Resume() {
	s.mu.Lock()
	if s.paused != nil {
		close(s.paused)
		s.paused = nil
	}
	s.mu.Unlock()
}

// Responses returns a copy of every response sent so far.
func (s *Stream) Responses() []*pb.WatchResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*pb.WatchResponse(nil), s.resps...)
}

// Wait blocks until cond holds for the responses sent so far, or ctx ends.
func (s *Stream) Wait(ctx context.Context, cond func([]*pb.WatchResponse) bool) error {
	for {
		s.mu.Lock()
		ok := cond(s.resps)
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
