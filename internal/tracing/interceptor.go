package tracing

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Interceptor makes a SERVER span of every RPC a connect handler serves,
// as etcd's otelgrpc stats handler does (its default, current semantic
// conventions, and its instrumentation scope): named by the procedure
// without its leading slash, with rpc.method, rpc.system.name,
// server.address and server.port, and rpc.response.status_code, in error
// for the codes otelgrpc counts as the server's failures. A call the client
// cancelled ends CANCELLED, as grpc-go reports it. The caller's
// traceparent, when it sent one, makes the span its child (otelgrpc trusts
// it; connect's own otelconnect, which would link it instead, serves only
// connect-go v2). Nil-safe: a nil p gives nil, which
// connect.WithInterceptors cannot take, so callers add it only when p.On().
func (p *Provider) Interceptor() connect.Interceptor {
	if p == nil {
		return nil
	}
	return interceptor{p: p, tracer: p.tp.Tracer(grpcScope)}
}

// grpcScope is otelgrpc's instrumentation scope, which etcd's RPC spans
// carry.
const grpcScope = "go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"

type interceptor struct {
	p      *Provider
	tracer trace.Tracer
}

func (i interceptor) start(ctx context.Context, spec connect.Spec, peer connect.Peer, h http.Header) (context.Context, trace.Span) {
	ctx = propagator.Extract(ctx, propagation.HeaderCarrier(h))
	if i.p.unsampled(ctx) {
		return ctx, noSpan
	}
	name := strings.TrimPrefix(spec.Procedure, "/")
	system := "grpc"
	if peer.Protocol == connect.ProtocolConnect {
		system = "connectrpc"
	}
	attrs := []attribute.KeyValue{attribute.String("rpc.method", name), attribute.String("rpc.system.name", system)}
	if a, ok := ctx.Value(http.LocalAddrContextKey).(net.Addr); ok {
		if host, port, err := net.SplitHostPort(a.String()); err == nil {
			attrs = append(attrs, attribute.String("server.address", host))
			if p, err := strconv.Atoi(port); err == nil {
				attrs = append(attrs, attribute.Int("server.port", p))
			}
		}
	}
	return i.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
}

// end ends the span of a call that returned err on ctx.
func (interceptor) end(ctx context.Context, span trace.Span, err error) {
	if span.IsRecording() {
		setStatus(ctx, span, err)
	}
	span.End()
}

// setStatus records the call's gRPC status on span as otelgrpc does.
func setStatus(ctx context.Context, span trace.Span, err error) {
	if err == nil && errors.Is(ctx.Err(), context.Canceled) {
		err = connect.NewError(connect.CodeCanceled, ctx.Err())
	}
	if err == nil {
		span.SetAttributes(attribute.String("rpc.response.status_code", "OK"))
		return
	}
	code := connect.CodeOf(err)
	span.SetAttributes(attribute.String("rpc.response.status_code", statusName(code)))
	switch code {
	case connect.CodeUnknown, connect.CodeDeadlineExceeded, connect.CodeUnimplemented,
		connect.CodeInternal, connect.CodeUnavailable, connect.CodeDataLoss:
		msg := err.Error()
		var ce *connect.Error
		if errors.As(err, &ce) {
			msg = ce.Message()
		}
		span.SetStatus(codes.Error, msg)
	}
}

// statusName is gRPC's canonical name of code ("INVALID_ARGUMENT").
func statusName(code connect.Code) string {
	if code == connect.CodeCanceled {
		return "CANCELLED" // connect spells it "canceled"
	}
	return strings.ToUpper(code.String())
}

func (i interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		ctx, span := i.start(ctx, req.Spec(), req.Peer(), req.Header())
		resp, err := next(ctx, req)
		i.end(ctx, span, err)
		return resp, err
	}
}

func (interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, span := i.start(ctx, conn.Spec(), conn.Peer(), conn.RequestHeader())
		err := next(ctx, conn)
		i.end(ctx, span, err)
		return err
	}
}
