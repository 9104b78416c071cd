package recipes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/concord-kv/concord/storage"
	"github.com/concord-kv/concord/watchfanout"
)

// watch is one in-process watch on the gateway's Watcher: a watch stream
// of its own that carries a single create request. Its goroutine (the
// Watcher's Serve) is owned by whoever called startWatch, who must call
// stop.
type watch struct {
	c      chan *pb.WatchResponse
	done   chan struct{} // closed when Serve has returned
	err    error         // Serve's result, read after done
	cancel context.CancelFunc
}

// startWatch starts a watch for req under ctx.
func (s *Service) startWatch(ctx context.Context, req *pb.WatchCreateRequest) *watch {
	wctx, cancel := context.WithCancel(ctx)
	w := &watch{c: make(chan *pb.WatchResponse), done: make(chan struct{}), cancel: cancel}
	st := &localStream{
		ctx: wctx,
		req: &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: req}},
		out: w.c,
	}
	go func() {
		defer close(w.done)
		w.err = s.w.Serve(wctx, st)
	}()
	return w
}

// stop ends the watch and waits for its goroutine. Idempotent.
func (w *watch) stop() {
	w.cancel()
	<-w.done
}

// next returns the next response carrying events, or the error that ended
// the watch (what clientv3's WatchResponse.Err reports, or errLostWatcher
// when the stream ended without one). Created and progress responses are
// skipped, as clientv3 does not deliver them unasked.
func (w *watch) next(ctx context.Context) (*pb.WatchResponse, error) {
	for {
		select {
		case r := <-w.c:
			switch {
			case r.GetCompactRevision() != 0:
				return nil, fmt.Errorf("watch from a compacted revision (compacted at %d): %w", r.GetCompactRevision(), storage.ErrCompacted)
			case r.GetCanceled() && r.GetCancelReason() != "":
				return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New(r.GetCancelReason()))
			case r.GetCanceled():
				return nil, fmt.Errorf("watch canceled: %w", storage.ErrFutureRev)
			case len(r.GetEvents()) > 0:
				return r, nil
			}
		case <-w.done:
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if errors.Is(w.err, watchfanout.ErrClosed) {
				return nil, ErrClosed // the watch service is going away
			}
			if w.err != nil && !errors.Is(w.err, context.Canceled) {
				return nil, w.err
			}
			return nil, errLostWatcher
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// localStream is a watchfanout.Stream whose client is this process: it
// sends one create request, then closes its sending side (the Watcher
// keeps serving until ctx ends), and hands responses to the reader of out.
type localStream struct {
	ctx  context.Context
	req  *pb.WatchRequest
	sent atomic.Bool
	out  chan<- *pb.WatchResponse
}

func (l *localStream) Recv() (*pb.WatchRequest, error) {
	if l.sent.CompareAndSwap(false, true) {
		return l.req, nil
	}
	return nil, io.EOF
}

func (l *localStream) Send(r *pb.WatchResponse) error {
	select {
	case l.out <- r:
		return nil
	case <-l.ctx.Done():
		return l.ctx.Err()
	}
}

// waitDelete is concurrency's waitDelete: it returns once key is deleted at
// or after revision rev.
func (s *Service) waitDelete(ctx context.Context, key []byte, rev int64) error {
	w := s.startWatch(ctx, &pb.WatchCreateRequest{Key: key, StartRevision: rev})
	defer w.stop()
	for {
		r, err := w.next(ctx)
		if err != nil {
			return err
		}
		for _, ev := range r.Events {
			if ev.GetType() == mvccpb.Event_DELETE {
				return nil
			}
		}
	}
}

// waitDeletes is concurrency's waitDeletes: it returns once no key of the
// prefix has a create revision at most maxCreateRev, waiting for the
// deletion of the newest such key, one at a time.
func (s *Service) waitDeletes(ctx context.Context, pfx string, maxCreateRev int64) error {
	for {
		resp, err := s.kv.Range(ctx, lastCreateBefore(pfx, maxCreateRev))
		if err != nil {
			return err
		}
		if len(resp.GetKvs()) == 0 {
			return nil
		}
		if err := s.waitDelete(ctx, resp.Kvs[0].GetKey(), resp.GetHeader().GetRevision()); err != nil {
			return err
		}
	}
}
