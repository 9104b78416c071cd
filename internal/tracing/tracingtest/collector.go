// Package tracingtest is an OpenTelemetry collector for tests: a real OTLP
// gRPC trace service on loopback that keeps every span it is sent, so tests
// check what a process (concord's or etcd's) exports over the wire.
package tracingtest

import (
	"context"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // an exporter may compress its batches
	"google.golang.org/protobuf/encoding/prototext"
)

// Span is one exported span with its resource and scope. Attribute values
// (of the span and of the resource) are rendered by Render: strings quoted,
// so that "5" and 5 differ.
type Span struct {
	TraceID, SpanID, ParentID string // lower-case hex; ParentID "" for a root
	Name                      string
	Kind                      tracepb.Span_SpanKind
	Scope                     string
	Start                     uint64 // unix nanoseconds
	Attrs                     map[string]string
	Events                    []string // event names
	Status                    tracepb.Status_StatusCode
	Resource                  map[string]string
}

func (s Span) String() string {
	return fmt.Sprintf("trace %s span %s parent %s %s %q scope=%q attrs=%s events=%v status=%v resource=%s",
		short(s.TraceID), short(s.SpanID), short(s.ParentID), KindName(s.Kind), s.Name, s.Scope,
		RenderMap(s.Attrs), s.Events, s.Status, RenderMap(s.Resource))
}

func short(id string) string {
	if id == "" {
		return "-"
	}
	return id[:min(len(id), 8)]
}

// KindName is "SERVER", "INTERNAL", ...
func KindName(k tracepb.Span_SpanKind) string {
	return strings.TrimPrefix(k.String(), "SPAN_KIND_")
}

// Collector is an OTLP/gRPC TraceService on loopback that keeps every span
// it is sent.
type Collector struct {
	collectorpb.UnimplementedTraceServiceServer
	addr string

	mu      sync.Mutex
	spans   []Span
	changed chan struct{} // closed (and replaced) when spans arrive
}

// Start serves a collector on 127.0.0.1:0 until the test ends (after the
// processes started later, whose cleanups run first).
func Start(t testing.TB) *Collector {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("collector listen: %v", err)
	}
	c := &Collector{addr: l.Addr().String(), changed: make(chan struct{})}
	srv := grpc.NewServer()
	collectorpb.RegisterTraceServiceServer(srv, c)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(l) // returns when srv.Stop closes l
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return c
}

// Addr is the collector's host:port, for --distributed-tracing-address.
func (c *Collector) Addr() string { return c.addr }

// Export records the spans of one batch.
func (c *Collector) Export(_ context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	var got []Span
	for _, rs := range req.GetResourceSpans() {
		res := attrMap(rs.GetResource().GetAttributes())
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				var events []string
				for _, e := range sp.GetEvents() {
					events = append(events, e.GetName())
				}
				got = append(got, Span{
					TraceID:  hex.EncodeToString(sp.GetTraceId()),
					SpanID:   hex.EncodeToString(sp.GetSpanId()),
					ParentID: hex.EncodeToString(sp.GetParentSpanId()),
					Name:     sp.GetName(),
					Kind:     sp.GetKind(),
					Scope:    ss.GetScope().GetName(),
					Start:    sp.GetStartTimeUnixNano(),
					Attrs:    attrMap(sp.GetAttributes()),
					Events:   events,
					Status:   sp.GetStatus().GetCode(),
					Resource: maps.Clone(res),
				})
			}
		}
	}
	c.mu.Lock()
	c.spans = append(c.spans, got...)
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	return &collectorpb.ExportTraceServiceResponse{}, nil
}

// snapshot returns a copy of the spans so far and a channel closed when
// more arrive.
func (c *Collector) snapshot() ([]Span, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.spans), c.changed
}

// Spans returns a copy of the spans received so far.
func (c *Collector) Spans() []Span {
	spans, _ := c.snapshot()
	return spans
}

// WaitFor waits until cond holds for the spans received, at most timeout;
// it returns the spans and whether cond held. cond is evaluated on every
// export, never on a timer.
func (c *Collector) WaitFor(timeout time.Duration, cond func([]Span) bool) ([]Span, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		spans, changed := c.snapshot()
		if cond(spans) {
			return spans, true
		}
		select {
		case <-changed:
		case <-deadline.C:
			spans, _ = c.snapshot()
			return spans, cond(spans)
		}
	}
}

func attrMap(kvs []*commonpb.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = Render(kv.GetValue())
	}
	return m
}

// Render renders an attribute value: a string quoted, an integer or a
// boolean bare, anything else with its type.
func Render(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return strconv.Quote(x.StringValue)
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return "double:" + strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	default:
		return fmt.Sprintf("%T:%s", x, prototext.Format(v))
	}
}

// RenderMap renders attributes sorted by key.
func RenderMap(m map[string]string) string {
	var b strings.Builder
	b.WriteString("{")
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s=%s", k, m[k])
	}
	b.WriteString("}")
	return b.String()
}

// Dump lists spans by trace and start time, for failure messages.
func Dump(spans []Span) string {
	sorted := slices.Clone(spans)
	sort.SliceStable(sorted, func(i, j int) bool {
		if sorted[i].TraceID != sorted[j].TraceID {
			return sorted[i].TraceID < sorted[j].TraceID
		}
		return sorted[i].Start < sorted[j].Start
	})
	var b strings.Builder
	fmt.Fprintf(&b, "%d spans received:\n", len(sorted))
	for _, s := range sorted {
		fmt.Fprintf(&b, "  %s\n", s)
	}
	return b.String()
}
