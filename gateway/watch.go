package gateway

// This file is owned by the watchfanout work: it adapts connect's Watch
// bidi stream to watchfanout.Stream. Keep it self-contained.

import (
	"context"
	"errors"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/watchfanout"
)

// Watcher serves client watch streams; *watchfanout.Fanout implements it
// (in process, or a client of a remote watchfanout service).
type Watcher interface {
	Serve(ctx context.Context, s watchfanout.Stream) error
}

// connectWatchStream is a connect server-side Watch stream seen as a
// watchfanout.Stream. Receive returns an error wrapping io.EOF when the client
// closes its sending side, which watchfanout treats as etcd does (keep
// serving until the stream ends).
type connectWatchStream struct {
	s *connect.BidiStream[pb.WatchRequest, pb.WatchResponse]
}

func (c connectWatchStream) Recv() (*pb.WatchRequest, error) { return c.s.Receive() }
func (c connectWatchStream) Send(r *pb.WatchResponse) error  { return c.s.Send(r) }

// NewWatchStream adapts a connect bidi stream to watchfanout.Stream.
func NewWatchStream(s *connect.BidiStream[pb.WatchRequest, pb.WatchResponse]) watchfanout.Stream {
	return connectWatchStream{s: s}
}

// watchService implements the generated WatchHandler on top of a Watcher.
type watchService struct {
	etcdserverpbconnect.UnimplementedWatchHandler
	w Watcher
	// authz, when set, checks every watch creation (auth.go).
	authz WatchAuthorizer
}

// NewWatchService returns the handler to pass to
// etcdserverpbconnect.NewWatchHandler.
func NewWatchService(w Watcher) etcdserverpbconnect.WatchHandler {
	return watchService{w: w}
}

// Watch serves one Watch RPC.
func (ws watchService) Watch(ctx context.Context, s *connect.BidiStream[pb.WatchRequest, pb.WatchResponse]) error {
	stream := NewWatchStream(s)
	if ws.authz != nil {
		stream = &authWatchStream{ctx: ctx, inner: stream, authz: ws.authz}
	}
	return watchError(ws.w.Serve(ctx, stream))
}

// watchError maps the end of a watch stream to what etcd returns: a canceled
// context is "etcdserver: watch canceled"; everything else, a stopped fan-out
// included, goes through the one error table.
func watchError(err error) error {
	if errors.Is(err, context.Canceled) {
		return rpcError(rpctypes.ErrGRPCWatchCanceled)
	}
	return TranslateError(err)
}
