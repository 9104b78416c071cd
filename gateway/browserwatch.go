package gateway

// This file serves concord.v1.WatchService (proto/concord/v1/watch.proto):
// one etcd watch per server-streaming call, for browsers, whose Connect-Web
// and gRPC-Web transports cannot open etcd's bidirectional Watch stream.
//
// Invariants:
//   - The call is exactly one etcd watch stream holding exactly one watch:
//     the create request is the stream's only request, and every response
//     the Watcher sends for it is forwarded unchanged and in order (created,
//     events, progress notifications, fragments, canceled), so a browser
//     sees what a clientv3 watch sees on the wire.
//   - A watch the server cancels (compacted start revision, empty range,
//     duplicate ID) ends the call normally right after its canceled
//     response: nothing more can come for it. A client that ends the call
//     ends the watch.

import (
	"context"
	"net/http"
	"sync"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
)

// WithBrowserWatch serves concord.v1.WatchService with w (the same Watcher
// behind the Watch service, e.g. a *watchfanout.Fanout); without it the
// service answers Unimplemented.
func WithBrowserWatch(w Watcher) Option {
	return func(o *options) { o.browserWatch = w }
}

// browserWatchHandler returns the mount path and handler of
// concord.v1.WatchService for w (nil: Unimplemented).
func browserWatchHandler(w Watcher, authz WatchAuthorizer, opts ...connect.HandlerOption) (string, http.Handler) {
	var h concordv1connect.WatchServiceHandler = concordv1connect.UnimplementedWatchServiceHandler{}
	if w != nil {
		h = browserWatchService{w: w, authz: authz}
	}
	return concordv1connect.NewWatchServiceHandler(h, opts...)
}

// browserWatchService implements concordv1connect.WatchServiceHandler on a
// Watcher.
type browserWatchService struct {
	w Watcher
	// authz, when set, checks the watch's creation (auth.go).
	authz WatchAuthorizer
}

// NewBrowserWatchService returns the handler to pass to
// concordv1connect.NewWatchServiceHandler.
func NewBrowserWatchService(w Watcher) concordv1connect.WatchServiceHandler {
	return browserWatchService{w: w}
}

// Watch serves one watch until the client ends the call, the server cancels
// the watch, or the Watcher stops.
func (b browserWatchService) Watch(ctx context.Context, req *pb.WatchCreateRequest, ss *connect.ServerStream[pb.WatchResponse]) error {
	if b.authz != nil {
		if h, err := b.authz.AuthorizeWatch(ctx, req.GetKey(), req.GetRangeEnd()); err != nil {
			// Refused as the Watch service refuses: created and canceled.
			return ss.Send(&pb.WatchResponse{Header: h, WatchId: -1, Created: true, Canceled: true, CancelReason: watchCancelReason(err)})
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := &singleWatchStream{ctx: ctx, end: cancel, send: ss.Send}
	st.first = &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: req}}
	err := b.w.Serve(ctx, st)
	if st.canceled() {
		return nil // the canceled response was the last word, as in etcd
	}
	return watchError(err)
}

// singleWatchStream is a watchfanout.Stream whose only request is one
// create request. It ends the stream (through end) once the watch is
// canceled by the server.
type singleWatchStream struct {
	ctx  context.Context
	end  context.CancelFunc
	send func(*pb.WatchResponse) error

	mu    sync.Mutex
	first *pb.WatchRequest // returned by the first Recv, then nil
	id    int64            // the watch's ID once created
	done  bool             // the server canceled the watch
}

// Recv returns the create request once, then blocks until the call ends:
// a server stream has nothing more to receive.
func (s *singleWatchStream) Recv() (*pb.WatchRequest, error) {
	s.mu.Lock()
	req := s.first
	s.first = nil
	s.mu.Unlock()
	if req != nil {
		return req, nil
	}
	<-s.ctx.Done()
	return nil, s.ctx.Err()
}

// Send forwards r and ends the stream after the watch's canceled response
// (a failed creation is created and canceled in one response).
func (s *singleWatchStream) Send(r *pb.WatchResponse) error {
	if err := s.send(r); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case r.Created && r.Canceled:
		s.done = true
	case r.Created:
		s.id = r.WatchId
	case r.Canceled && r.WatchId == s.id:
		s.done = true
	}
	if s.done {
		s.end()
	}
	return nil
}

func (s *singleWatchStream) canceled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}
