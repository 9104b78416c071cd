// Package tracing exports OpenTelemetry traces of the requests a process
// serves, as etcd's --enable-distributed-tracing does: spans go to an OTLP
// collector over gRPC, sampled per trace at a rate per million (and always
// when the caller's W3C traceparent says its trace is sampled), with etcd's
// span names, so dashboards built on etcd's traces read concord's.
//
// A process makes one Provider (Start) and hands it to what creates spans:
//   - Interceptor: a SERVER span per RPC, named like etcd's (otelgrpc's)
//     "etcdserverpb.KV/Put", the child of the caller's span when the request
//     carries one;
//   - Provider.Start: etcd's INTERNAL spans of the operations ("put",
//     "range", "txn", ...; etcd.go has the attributes of the larger
//     requests), made by the component that runs them;
//   - Inject: the trace context on a call to another concord process, so a
//     split topology's gateway and consensus member share one trace.
//
// Invariant: a nil *Provider is tracing turned off; every method works on it
// and costs a nil check, so hot paths need no other condition.
package tracing

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// MaxSamplingRatePerMillion samples every trace.
const MaxSamplingRatePerMillion = 1_000_000

// Defaults of etcd's flags.
const (
	DefaultAddress     = "localhost:4317"
	DefaultServiceName = "etcd"
)

// scope is the instrumentation scope of the spans, etcd's (traceutil).
const scope = "go.etcd.io/etcd"

// ErrInvalidConfig is wrapped by Validate's errors.
var ErrInvalidConfig = errors.New("tracing: invalid config")

// Config is etcd's --enable-distributed-tracing and --distributed-tracing-*.
type Config struct {
	Enabled bool
	// Address is the OTLP collector's host:port (gRPC, cleartext).
	Address string
	// ServiceName and InstanceID are the resource's service.name and
	// service.instance.id ("": not set).
	ServiceName string
	InstanceID  string
	// SamplingRatePerMillion is how many traces in a million are sampled
	// when the caller's are not (0: only those).
	SamplingRatePerMillion int
}

// Validate reports a sampling rate out of range, with etcd's messages, when
// tracing is enabled.
func (c Config) Validate() error {
	switch {
	case !c.Enabled:
		return nil
	case c.SamplingRatePerMillion < 0:
		return fmt.Errorf("%w: tracing sampling rate must be positive", ErrInvalidConfig)
	case c.SamplingRatePerMillion > MaxSamplingRatePerMillion:
		return fmt.Errorf("%w: tracing sampling rate must be less than %d", ErrInvalidConfig, MaxSamplingRatePerMillion)
	case c.Address == "":
		return fmt.Errorf("%w: the collector address must not be empty", ErrInvalidConfig)
	}
	return nil
}

// propagator reads and writes the caller's trace (traceparent, tracestate)
// and baggage, as etcd's otelgrpc options do.
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// Provider is a process's tracing: nil when tracing is off.
type Provider struct {
	tp     *sdktrace.TracerProvider
	tracer trace.Tracer
	// neverRoot: the sampling rate is 0, so only a sampled caller's
	// requests are traced.
	neverRoot bool

	closeOnce sync.Once
	closeErr  error
}

// Start returns the Provider of c, or nil when c is not Enabled. It does not
// wait for the collector: spans are batched and sent in the background,
// and dropped while it cannot be reached.
func Start(ctx context.Context, c Config) (*Provider, error) {
	if err := c.Validate(); err != nil || !c.Enabled {
		return nil, err
	}
	exporter, err := otlptracegrpc.New(ctx, otlptracegrpc.WithInsecure(), otlptracegrpc.WithEndpoint(c.Address))
	if err != nil {
		return nil, fmt.Errorf("tracing: exporter for %s: %w", c.Address, err)
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", c.ServiceName)}
	if c.InstanceID != "" {
		attrs = append(attrs, attribute.String("service.instance.id", c.InstanceID))
	}
	sampler := sdktrace.NeverSample()
	if c.SamplingRatePerMillion > 0 {
		sampler = sdktrace.TraceIDRatioBased(float64(c.SamplingRatePerMillion) / MaxSamplingRatePerMillion)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exporter),
		sdktrace.WithResource(resource.NewSchemaless(attrs...)),
		sdktrace.WithSampler(sdktrace.ParentBased(sampler)),
	)
	return &Provider{tp: tp, tracer: tp.Tracer(scope), neverRoot: c.SamplingRatePerMillion == 0}, nil
}

// Close sends the spans not sent yet (bounded by ctx) and stops the
// exporter. Idempotent; nil-safe.
func (p *Provider) Close(ctx context.Context) error {
	if p == nil {
		return nil
	}
	p.closeOnce.Do(func() { p.closeErr = p.tp.Shutdown(ctx) })
	return p.closeErr
}

// Start begins an INTERNAL span of an operation (etcd's names and
// attributes, which attrs, if not nil, returns; it is called only when the
// span records), the child of ctx's span. With tracing off, or a span the
// sampler would not record, it returns ctx and a span that records nothing.
func (p *Provider) Start(ctx context.Context, name string, attrs func() []attribute.KeyValue) (context.Context, trace.Span) {
	if p == nil || p.unsampled(ctx) {
		return ctx, noSpan
	}
	var kvs []attribute.KeyValue
	if attrs != nil {
		kvs = attrs()
	}
	return p.tracer.Start(ctx, name, trace.WithAttributes(kvs...))
}

// noSpan records nothing; one value, so returning it allocates nothing.
var noSpan trace.Span = noop.Span{}

// unsampled reports whether a span started on ctx is certain not to be
// sampled, so making it can be skipped: its parent was not sampled, or it
// has none and the rate is 0 (the sampler is ParentBased). A process
// called from here learns the same from Inject.
func (p *Provider) unsampled(ctx context.Context) bool {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return !sc.IsSampled()
	}
	return p.neverRoot
}

// On reports whether tracing is on.
func (p *Provider) On() bool { return p != nil }

// Inject writes ctx's trace context into h, for a call to another process.
// A call made for no traced request (a split process's own background
// calls: health polling, lease expiries, history reads) gets a parent that
// is not sampled, so the process called does not start a trace for it:
// etcd has no such calls, and at a high sampling rate they would bury the
// clients' traces. Nil-safe: with tracing off nothing is written.
func (p *Provider) Inject(ctx context.Context, h http.Header) {
	if p == nil {
		return
	}
	if !trace.SpanContextFromContext(ctx).IsValid() {
		var tid trace.TraceID
		var sid trace.SpanID
		binary.LittleEndian.PutUint64(tid[:8], rand.Uint64())
		binary.LittleEndian.PutUint64(tid[8:], rand.Uint64())
		binary.LittleEndian.PutUint64(sid[:], rand.Uint64()|1)
		ctx = trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))
	}
	propagator.Inject(ctx, propagation.HeaderCarrier(h))
}

// Handler makes h's requests carry their caller's trace context, so the
// spans made while serving them continue the caller's trace: concord's
// internal services (a lease service's keep-alive stream, consensus's
// internal API) are plain handlers, outside the RPC interceptor. Nil-safe:
// with tracing off it is h.
func (p *Provider) Handler(h http.Handler) http.Handler {
	if p == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))))
	})
}
