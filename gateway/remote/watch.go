package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"connectrpc.com/connect"

	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/watchfanout"
)

// Watcher is a watch fan-out reached over the network; it implements
// gateway.Watcher by relaying each client stream to one upstream Watch
// stream of the fan-out process, both directions unchanged. When the
// upstream ends (the fan-out process died), the client stream ends with
// the upstream's error, and clientv3 re-creates its watches from their
// last revisions on a new stream, as after any broken etcd stream.
//
// With several fan-outs, new streams go to one until a stream to it fails
// with Unavailable, then to the next.
type Watcher struct {
	eps       []*Endpoint
	watch     []etcdserverpbconnect.WatchClient
	rot       rotation
	closeOnce sync.Once
}

// NewWatcher returns a client of the watch fan-outs at urls.
func NewWatcher(urls string, opts ...DialOption) (*Watcher, error) {
	eps, err := DialAll(urls, opts...)
	if err != nil {
		return nil, err
	}
	w := &Watcher{eps: eps}
	for _, ep := range eps {
		w.watch = append(w.watch, etcdserverpbconnect.NewWatchClient(ep.client, ep.URL, clientOpts()...))
	}
	w.rot.n = uint32(len(eps))
	return w, nil
}

// Close drops idle connections. Idempotent.
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() {
		for _, ep := range w.eps {
			_ = ep.Close()
		}
	})
	return nil
}

// Serve relays one client stream until either side ends it or ctx ends.
//
// The goroutine reading the client stream is bounded by the stream itself:
// its Recv returns once the transport ends the stream, which happens when
// Serve's caller (the handler) returns, the same contract as
// watchfanout.Fanout.Serve.
func (w *Watcher) Serve(ctx context.Context, s watchfanout.Stream) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	i := w.rot.pick()
	up, err := w.watch[i].Watch(ctx)
	if err != nil {
		err = upstreamError(err)
		w.rot.done(i, err)
		return err
	}
	defer func() { _ = up.CloseResponse() }()
	// The HTTP/2 client notices a cancelled context only once the request
	// body is done: while the client's side is idle (a watch that only
	// listens), Receive would wait for the fan-out's next event however
	// long the client has been gone (a stopping gateway waited for its
	// watchers to disconnect). Ending the request side lets it see ctx.
	stop := context.AfterFunc(ctx, func() { _ = up.CloseRequest() })
	defer stop()

	go func() {
		for {
			req, err := s.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					// The client half-closed: so does the upstream, which
					// keeps serving until the stream ends, like etcd.
					_ = up.CloseRequest()
				} else {
					cancel()
				}
				return
			}
			if err := up.Send(req); err != nil {
				// Receive reports the upstream's real error.
				return
			}
		}
	}()

	for {
		resp, err := up.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			err = upstreamError(err)
			w.rot.done(i, err)
			return err
		}
		if err := s.Send(resp); err != nil {
			return err
		}
	}
}

var _ interface {
	Serve(context.Context, watchfanout.Stream) error
} = (*Watcher)(nil)

// upstreamError is the error a client stream ends with when its upstream
// broke while the client was still there. A broken connection (the fan-out
// process died) surfaces from the HTTP/2 transport as Canceled or Unknown,
// which clientv3 treats as final; it is Unavailable instead, which clientv3
// retries, re-creating its watches from their last revisions. Errors the
// fan-out itself sent keep their code and message.
func upstreamError(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		switch ce.Code() {
		case connect.CodeCanceled, connect.CodeUnknown, connect.CodeDeadlineExceeded, connect.CodeInternal:
			return connect.NewError(connect.CodeUnavailable, fmt.Errorf("watch fan-out unavailable: %s", ce.Message()))
		}
		return ce
	}
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("watch fan-out unavailable: %w", err))
}
