package gateway

import (
	"context"
	"log/slog"
	"time"

	"connectrpc.com/connect"
)

// CallObserver is told of every RPC the gateway serves, for metrics such as
// grpc_server_started_total and grpc_server_handled_total. Its methods run
// on the request path: they must be cheap and must not block.
type CallObserver interface {
	// Started is called when an RPC's handler starts; the CallDone it
	// returns is told how the RPC ended.
	Started(procedure string, streamType connect.StreamType) CallDone
}

// CallDone is told when an observed RPC's handler returns; code is 0 for
// success.
type CallDone interface {
	Handled(code connect.Code)
}

// WithCallObserver reports every RPC to o.
func WithCallObserver(o CallObserver) Option {
	return func(opts *options) { opts.observer = o }
}

// observerInterceptor feeds a CallObserver from connect's interceptor chain.
type observerInterceptor struct{ o CallObserver }

func (i observerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		spec := req.Spec()
		done := i.o.Started(spec.Procedure, spec.StreamType)
		resp, err := next(ctx, req)
		done.Handled(codeOf(err))
		return resp, err
	}
}

func (observerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i observerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		spec := conn.Spec()
		done := i.o.Started(spec.Procedure, spec.StreamType)
		err := next(ctx, conn)
		done.Handled(codeOf(err))
		return err
	}
}

// codeOf is the gRPC code a handler's error is answered with (0: OK).
func codeOf(err error) connect.Code {
	if err == nil {
		return 0
	}
	return connect.CodeOf(err)
}

// slowUnaryInterceptor logs unary RPCs that took longer than warnAfter,
// as etcd's --warning-unary-request-duration ("request stats"). It costs
// two clock reads per unary call.
type slowUnaryInterceptor struct {
	warnAfter time.Duration
	log       *slog.Logger
}

func (i slowUnaryInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		resp, err := next(ctx, req)
		if took := time.Since(start); took > i.warnAfter {
			i.log.Warn("request stats: request took too long", "procedure", req.Spec().Procedure,
				"remote", req.Peer().Addr, "took", took, "expected-duration", i.warnAfter, "code", codeOf(err).String())
		}
		return resp, err
	}
}

func (slowUnaryInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (slowUnaryInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
