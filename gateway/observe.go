package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/storage"
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

// MessageCounter is a CallDone that also counts the RPC's messages, as
// etcd's go-grpc-middleware prometheus provider counts
// grpc_server_msg_received_total and _sent_total: a unary call receives
// one and sends one, failed or not; a stream counts every Receive and Send,
// failed ones included (the Receive that sees the stream end too).
type MessageCounter interface {
	CallDone
	Received()
	Sent()
}

// countingConn counts a streaming call's messages.
type countingConn struct {
	connect.StreamingHandlerConn
	mc MessageCounter
}

func (c countingConn) Receive(m any) error {
	err := c.StreamingHandlerConn.Receive(m)
	c.mc.Received()
	return err
}

func (c countingConn) Send(m any) error {
	err := c.StreamingHandlerConn.Send(m)
	c.mc.Sent()
	return err
}

// WithCallObserver reports every RPC to o. An o that is also a
// MessageSizeObserver is told the size of every binary protobuf message
// read and written.
func WithCallObserver(o CallObserver) Option {
	return func(opts *options) { opts.observer = o }
}

// MessageSizeObserver is told the encoded size of each protobuf message the
// gateway's RPCs receive and send, for etcd's
// etcd_network_client_grpc_received_bytes_total and _sent_bytes_total,
// which etcd counts in its gRPC codec too. Its methods run on the request
// path: they must be cheap and must not block.
type MessageSizeObserver interface {
	Received(n int)
	Sent(n int)
}

// protoCodec is connect's binary protobuf codec ("proto", used by gRPC,
// gRPC-Web and Connect), which reports message sizes to an optional
// MessageSizeObserver and hands the buffer of a range encoded by
// storage.Store.RangeWire back to the store once the reply is marshaled.
type protoCodec struct{ o MessageSizeObserver }

func (protoCodec) Name() string   { return "proto" }
func (protoCodec) IsBinary() bool { return true }

func (c protoCodec) Marshal(m any) ([]byte, error) {
	return c.MarshalAppend(nil, m)
}

// MarshalAppend lets connect reuse its buffers, as with its own codec.
func (c protoCodec) MarshalAppend(dst []byte, m any) ([]byte, error) {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("gateway: %T is not a protobuf message", m)
	}
	out, err := proto.MarshalOptions{}.MarshalAppend(dst, pm)
	if rr, ok := pm.(*pb.RangeResponse); ok {
		// A unary reply is marshaled once and not read after.
		storage.RecycleWire(rr)
	}
	if err == nil && c.o != nil {
		c.o.Sent(len(out) - len(dst))
	}
	return out, err
}

func (c protoCodec) MarshalStable(m any) ([]byte, error) {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("gateway: %T is not a protobuf message", m)
	}
	out, err := proto.MarshalOptions{Deterministic: true}.Marshal(pm)
	if err == nil && c.o != nil {
		c.o.Sent(len(out))
	}
	return out, err
}

func (c protoCodec) Unmarshal(data []byte, m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("gateway: %T is not a protobuf message", m)
	}
	if c.o != nil {
		c.o.Received(len(data))
	}
	if err := proto.Unmarshal(data, pm); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", m, err)
	}
	return nil
}

// observerInterceptor feeds a CallObserver from connect's interceptor chain.
type observerInterceptor struct{ o CallObserver }

func (i observerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		spec := req.Spec()
		done := i.o.Started(spec.Procedure, spec.StreamType)
		mc, counts := done.(MessageCounter)
		if counts {
			mc.Received()
		}
		resp, err := next(ctx, req)
		if counts {
			mc.Sent()
		}
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
		if mc, ok := done.(MessageCounter); ok {
			conn = countingConn{conn, mc}
		}
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
