package gateway_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/internal/tracing"
	"github.com/concord-kv/concord/internal/tracing/tracingtest"
)

// With tracing, a streamed range has etcd's "range_streaming" span, with
// etcd's attributes, below the RPC's SERVER span.
func TestRangeStreamSpan(t *testing.T) {
	col := tracingtest.Start(t)
	p, err := tracing.Start(context.Background(), tracing.Config{Enabled: true, Address: col.Addr(), ServiceName: "gw",
		SamplingRatePerMillion: tracing.MaxSamplingRatePerMillion})
	if err != nil {
		t.Fatal(err)
	}
	addr := startGateway(t, gateway.Config{}, newFake(), gateway.WithTracing(p))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := pb.NewKVClient(conn).RangeStream(ctx, &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("b"), Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := st.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var server, op *tracingtest.Span
	spans := col.Spans()
	for i, s := range spans {
		switch {
		case s.Kind == tracepb.Span_SPAN_KIND_SERVER && s.Name == "etcdserverpb.KV/RangeStream":
			server = &spans[i]
		case s.Name == "range_streaming":
			op = &spans[i]
		}
	}
	if server == nil || op == nil {
		t.Fatalf("want a RangeStream SERVER span and a range_streaming span; got %s", tracingtest.Dump(spans))
	}
	want := map[string]string{"range_begin": `"a"`, "range_end": `"b"`, "rev": "0", "limit": "5", "count_only": "false"}
	if op.ParentID != server.SpanID || op.Kind != tracepb.Span_SPAN_KIND_INTERNAL || tracingtest.RenderMap(op.Attrs) != tracingtest.RenderMap(want) {
		t.Errorf("range_streaming span %s; want INTERNAL, child of %s, attributes %s", op, server, tracingtest.RenderMap(want))
	}
}
