package tracing_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.opentelemetry.io/otel/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/concord-kv/concord/internal/tracing"
	"github.com/concord-kv/concord/internal/tracing/tracingtest"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  tracing.Config
		want string // "" valid
	}{
		{tracing.Config{}, ""},
		{tracing.Config{SamplingRatePerMillion: -1}, ""}, // off: not checked, as in etcd
		{tracing.Config{Enabled: true, Address: "c:4317"}, ""},
		{tracing.Config{Enabled: true, Address: "c:4317", SamplingRatePerMillion: tracing.MaxSamplingRatePerMillion}, ""},
		{tracing.Config{Enabled: true, Address: "c:4317", SamplingRatePerMillion: -1}, "tracing sampling rate must be positive"},
		{tracing.Config{Enabled: true, Address: "c:4317", SamplingRatePerMillion: 1_000_001}, "tracing sampling rate must be less than 1000000"},
		{tracing.Config{Enabled: true}, "collector address must not be empty"},
	} {
		err := c.cfg.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v", c.cfg, err)
		case c.want != "" && (!errors.Is(err, tracing.ErrInvalidConfig) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: err %v, want ErrInvalidConfig with %q", c.cfg, err, c.want)
		}
	}
}

// Off, the provider is nil and every method is a no-op.
func TestOffIsNil(t *testing.T) {
	p, err := tracing.Start(context.Background(), tracing.Config{Address: "c:4317"})
	if err != nil || p != nil {
		t.Fatalf("Start(off) = %v, %v; want nil, nil", p, err)
	}
	ctx, span := p.Start(context.Background(), "put", nil)
	span.End()
	h := http.Header{}
	p.Inject(ctx, h)
	if p.On() || span.SpanContext().IsValid() || len(h) != 0 || p.Interceptor() != nil || p.Close(ctx) != nil {
		t.Error("a nil provider made a span, wrote headers or gave an interceptor")
	}
}

type kv struct {
	etcdserverpbconnect.UnimplementedKVHandler
	p *tracing.Provider
}

// Range answers by key: "unavailable" and "invalid" fail with those codes;
// otherwise it makes an operation span, as consensus does.
func (k kv) Range(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	switch string(req.Key) {
	case "unavailable":
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("etcdserver: no leader"))
	case "invalid":
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("etcdserver: key is not provided"))
	}
	_, span := k.p.Start(ctx, "range", nil)
	span.End()
	return &pb.RangeResponse{}, nil
}

// serve serves etcd's KV service with the provider's interceptor over
// HTTP/2 and returns a gRPC client of it and the server's port.
func serve(t *testing.T, p *tracing.Provider) (etcdserverpbconnect.KVClient, string) {
	t.Helper()
	path, h := etcdserverpbconnect.NewKVHandler(kv{p: p}, connect.WithInterceptors(p.Interceptor()))
	mux := http.NewServeMux()
	mux.Handle(path, h)
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return etcdserverpbconnect.NewKVClient(srv.Client(), srv.URL, connect.WithGRPC()), srv.URL[strings.LastIndex(srv.URL, ":")+1:]
}

func start(t *testing.T, col *tracingtest.Collector, rate int) *tracing.Provider {
	t.Helper()
	p, err := tracing.Start(context.Background(), tracing.Config{Enabled: true, Address: col.Addr(),
		ServiceName: "svc", InstanceID: "i1", SamplingRatePerMillion: rate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

// Close sends what is batched: the spans are at the collector after it.
func closeProvider(t *testing.T, p *tracing.Provider) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestServerSpans(t *testing.T) {
	col := tracingtest.Start(t)
	p := start(t, col, tracing.MaxSamplingRatePerMillion)
	cli, port := serve(t, p)
	ctx := context.Background()
	if _, err := cli.Range(ctx, &pb.RangeRequest{Key: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"unavailable", "invalid"} {
		if _, err := cli.Range(ctx, &pb.RangeRequest{Key: []byte(key)}); err == nil {
			t.Fatalf("Range(%s) succeeded", key)
		}
	}
	closeProvider(t, p)
	spans := col.Spans()
	var servers []tracingtest.Span
	var op *tracingtest.Span
	for i, s := range spans {
		// etcd's scopes: otelgrpc's for RPCs, its own for operations.
		scope := "go.etcd.io/etcd"
		if s.Kind == tracepb.Span_SPAN_KIND_SERVER {
			scope = "go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
		}
		if s.Resource["service.name"] != `"svc"` || s.Resource["service.instance.id"] != `"i1"` || s.Scope != scope {
			t.Errorf("span %s: resource %v, scope %s; want svc/i1, %s", s.Name, s.Resource, s.Scope, scope)
		}
		switch s.Kind {
		case tracepb.Span_SPAN_KIND_SERVER:
			servers = append(servers, s)
		case tracepb.Span_SPAN_KIND_INTERNAL:
			op = &spans[i]
		}
	}
	if len(servers) != 3 || op == nil {
		t.Fatalf("got %v; want 3 server spans and 1 internal", spans)
	}
	wantStatus := []struct {
		code  string
		error bool
	}{{"OK", false}, {"UNAVAILABLE", true}, {"INVALID_ARGUMENT", false}}
	for i, s := range servers {
		if s.Name != "etcdserverpb.KV/Range" || s.Attrs["rpc.method"] != `"etcdserverpb.KV/Range"` || s.Attrs["rpc.system.name"] != `"grpc"` ||
			s.Attrs["server.address"] != `"127.0.0.1"` || s.Attrs["server.port"] != port {
			t.Errorf("server span %+v: want etcdserverpb.KV/Range, rpc.method, rpc.system.name grpc and the server's address 127.0.0.1:%s", s, port)
		}
		isError := s.Status == tracepb.Status_STATUS_CODE_ERROR
		if s.Attrs["rpc.response.status_code"] != strconv.Quote(wantStatus[i].code) || isError != wantStatus[i].error {
			t.Errorf("call %d: status code %s error %v, want %q %v", i, s.Attrs["rpc.response.status_code"], isError, wantStatus[i].code, wantStatus[i].error)
		}
	}
	if op.Name != "range" || op.TraceID != servers[0].TraceID || op.ParentID != servers[0].SpanID {
		t.Errorf("operation span %+v is not the child of the first call's %+v", *op, servers[0])
	}
}

// With a rate of 0 only calls whose caller's trace is sampled are traced,
// as children of the caller's span.
func TestParentBasedSampling(t *testing.T) {
	col := tracingtest.Start(t)
	p := start(t, col, 0)
	cli, _ := serve(t, p)
	ctx := context.Background()
	if _, err := cli.Range(ctx, &pb.RangeRequest{Key: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	callCtx, call := connect.NewClientContext(ctx)
	call.RequestHeader().Set("traceparent", "00-"+traceID+"-"+parentID+"-01")
	if _, err := cli.Range(callCtx, &pb.RangeRequest{Key: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	closeProvider(t, p)
	var server []tracingtest.Span
	for _, s := range col.Spans() {
		if s.Kind == tracepb.Span_SPAN_KIND_SERVER {
			server = append(server, s)
		}
	}
	if len(server) != 1 || server[0].TraceID != traceID || server[0].ParentID != parentID {
		t.Fatalf("server spans %+v; want one, in trace %s under %s", server, traceID, parentID)
	}
}

// Inject writes the trace of the context's span, which a server continues.
func TestInjectContinuesTrace(t *testing.T) {
	col := tracingtest.Start(t)
	caller := start(t, col, tracing.MaxSamplingRatePerMillion)
	ctx, span := caller.Start(context.Background(), "call", nil)
	h := http.Header{}
	caller.Inject(ctx, h)
	span.End()
	sc := span.SpanContext()
	if want := "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"; h.Get("traceparent") != want {
		t.Fatalf("traceparent %q, want %q", h.Get("traceparent"), want)
	}
}

// A call made for no traced request carries a parent that is not sampled,
// so the process called records nothing for it even at the full rate.
func TestInjectWithoutSpanIsNotSampled(t *testing.T) {
	col := tracingtest.Start(t)
	caller := start(t, col, tracing.MaxSamplingRatePerMillion)
	h := http.Header{}
	caller.Inject(context.Background(), h)
	tp := h.Get("traceparent")
	if len(tp) != 55 || !strings.HasPrefix(tp, "00-") || !strings.HasSuffix(tp, "-00") {
		t.Fatalf("traceparent %q, want a valid one with the sampled flag off", tp)
	}
	callee := start(t, col, tracing.MaxSamplingRatePerMillion)
	cli, _ := serve(t, callee)
	ctx, call := connect.NewClientContext(context.Background())
	call.RequestHeader().Set("traceparent", tp)
	if _, err := cli.Range(ctx, &pb.RangeRequest{Key: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	closeProvider(t, callee)
	if spans := col.Spans(); len(spans) != 0 {
		t.Fatalf("the callee recorded %v for an unsampled parent", spans)
	}
}

// Handler gives a plain handler's request the caller's trace context.
func TestHandlerExtractsTraceContext(t *testing.T) {
	col := tracingtest.Start(t)
	p := start(t, col, 0)
	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	var got trace.SpanContext
	h := p.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = trace.SpanContextFromContext(r.Context())
	}))
	req := httptest.NewRequest(http.MethodPost, "/internal", nil)
	req.Header.Set("traceparent", traceparent)
	h.ServeHTTP(httptest.NewRecorder(), req)
	if got.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || got.SpanID().String() != "00f067aa0ba902b7" || !got.IsSampled() || !got.IsRemote() {
		t.Fatalf("handler saw %+v; want the caller's sampled span", got)
	}
	var off *tracing.Provider
	if off.Handler(h) == nil {
		t.Fatal("a nil provider's Handler is nil")
	}
}
