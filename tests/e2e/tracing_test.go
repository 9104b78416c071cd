package e2e

// Distributed tracing (etcd's --enable-distributed-tracing): both servers
// export OpenTelemetry spans over OTLP/gRPC to a collector that runs inside
// the test, and the spans are compared.
//
// What etcd v3.7.3 exports (embed/config_tracing.go, etcdserver/v3_server.go,
// etcdserver/api/v3rpc/grpc.go): a resource with service.name (the
// --distributed-tracing-service-name flag, "etcd" by default) and, only when
// the flag is not empty, service.instance.id; a sampler
// ParentBased(TraceIDRatioBased(rate/1e6)), where rate 0 is NeverSample, so
// that only requests whose W3C traceparent says "sampled" are traced; one
// SERVER span per RPC from otelgrpc's stats handler, named after the full
// gRPC method without its leading slash ("etcdserverpb.KV/Put"); below it
// one INTERNAL span of scope "go.etcd.io/etcd" per operation, with the
// request's fields as attributes and, when the request goes through raft,
// the events "Send raft proposal" and "Receive raft result" (raftRequestOnce;
// not on range, read-only txn and lease_renew). Only name, kind and
// parentage of the SERVER spans are compared (concord makes them with its
// own interceptor); the INTERNAL spans are compared attribute by attribute.
//
// The processes export with the OpenTelemetry SDK's batch span processor,
// every 5 s by default; the harness starts every process with the same
// environment (cleanEnv), so the test cannot shorten that with
// OTEL_BSP_SCHEDULE_DELAY and waits up to spanWait for the spans instead.

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/metadata"

	"github.com/concord-kv/concord/internal/tracing/tracingtest"
)

const (
	// spanWait bounds the wait for exported spans: the batch span
	// processor's default schedule delay is 5 s, and the machine may be
	// busy.
	spanWait = 30 * time.Second
	// etcdScope is the instrumentation scope of etcd's INTERNAL spans
	// (pkg/traceutil).
	etcdScope = "go.etcd.io/etcd"
	// leaseValue stands for the lease the script granted, in attributes
	// that carry a lease ID: the IDs differ between servers.
	leaseValue = "<lease>"
	// absent renders an attribute that is not there.
	absent = "(absent)"
)

// q renders a string attribute value as tracingtest.Render does.
func q(s string) string { return strconv.Quote(s) }

// --- Span trees ------------------------------------------------------------

// treeSpan is a descendant of a SERVER span, with the names on the way
// down to it ("txn", or "txn > range" for a grandchild).
type treeSpan struct {
	path string
	span tracingtest.Span
}

// descendants returns every span of root's trace below root, parents
// before children, siblings in start order.
func descendants(spans []tracingtest.Span, root tracingtest.Span) []treeSpan {
	var out []treeSpan
	var walk func(parent tracingtest.Span, prefix string)
	walk = func(parent tracingtest.Span, prefix string) {
		var kids []tracingtest.Span
		for _, s := range spans {
			if s.TraceID == parent.TraceID && s.ParentID == parent.SpanID && s.SpanID != parent.SpanID {
				kids = append(kids, s)
			}
		}
		sort.SliceStable(kids, func(i, j int) bool { return kids[i].Start < kids[j].Start })
		for _, k := range kids {
			p := prefix + k.Name
			out = append(out, treeSpan{path: p, span: k})
			walk(k, p+" > ")
		}
	}
	walk(root, "")
	return out
}

// ancestry returns the chain from s up to its root as far as the spans
// received go, and whether it reached a root (a span without parent).
func ancestry(spans []tracingtest.Span, s tracingtest.Span) ([]tracingtest.Span, bool) {
	byID := map[string]tracingtest.Span{}
	for _, x := range spans {
		if x.TraceID == s.TraceID {
			byID[x.SpanID] = x
		}
	}
	chain := []tracingtest.Span{s}
	for cur := s; cur.ParentID != ""; {
		p, ok := byID[cur.ParentID]
		if !ok || len(chain) > len(byID) {
			return chain, false
		}
		chain = append(chain, p)
		cur = p
	}
	return chain, true
}

// --- The single-server script -----------------------------------------------

// traceOpState carries what later steps of the script need from earlier
// ones, per server.
type traceOpState struct {
	lease    clientv3.LeaseID // the lease granted
	firstRev int64            // revision of the first put
	rev      int64            // revision after the latest write
}

// traceOp is one client request of the script, the RPC it is and the
// INTERNAL span etcd makes for it.
type traceOp struct {
	desc   string
	method string // full gRPC method without the leading slash
	span   string // name of etcd's INTERNAL span
	// want are etcd's attributes of span (etcdserver/v3_server.go), lease
	// IDs as leaseValue.
	want map[string]string
	// raft: etcd proposes the request through raft and adds the events
	// raftEvents to span (raftRequestOnce).
	raft bool
	run  func(ctx context.Context, cli *clientv3.Client, st *traceOpState) error
}

// raftEvents are the events etcd adds to the INTERNAL span of a request it
// proposes through raft.
var raftEvents = []string{"Send raft proposal", "Receive raft result"}

// traceScript covers every INTERNAL span etcd makes for a unary KV or lease
// request: ranges with default and non-default fields, a read-write and a
// read-only txn, a txn whose put carries a lease, a prefix delete, a lease
// grant, renew (keep-alive stream) and revoke, and a physical compaction.
// The revisions are those of a fresh server: puts at 2 and 3, delete at 4,
// leased put at 5, leased txn put at 6, revoke at 7.
func traceScript() []traceOp {
	return []traceOp{
		{
			desc: "Put trace/a", method: "etcdserverpb.KV/Put", span: "put",
			want: map[string]string{"key": q("trace/a")},
			raft: true,
			run: func(ctx context.Context, cli *clientv3.Client, st *traceOpState) error {
				r, err := cli.Put(ctx, "trace/a", "1")
				if err == nil {
					st.firstRev, st.rev = r.Header.Revision, r.Header.Revision
				}
				return err
			},
		},
		{
			desc: "Get trace/a", method: "etcdserverpb.KV/Range", span: "range",
			want: map[string]string{"range_begin": q("trace/a"), "range_end": q(""), "rev": "0", "limit": "0", "count_only": "false", "keys_only": "false"},
			run: func(ctx context.Context, cli *clientv3.Client, _ *traceOpState) error {
				_, err := cli.Get(ctx, "trace/a")
				return err
			},
		},
		{
			desc: "Get trace/ prefix, rev 2, limit 2, keys only", method: "etcdserverpb.KV/Range", span: "range",
			want: map[string]string{"range_begin": q("trace/"), "range_end": q("trace0"), "rev": "2", "limit": "2", "count_only": "false", "keys_only": "true"},
			run: func(ctx context.Context, cli *clientv3.Client, st *traceOpState) error {
				_, err := cli.Get(ctx, "trace/", clientv3.WithPrefix(), clientv3.WithRev(st.firstRev), clientv3.WithLimit(2), clientv3.WithKeysOnly())
				return err
			},
		},
		{
			desc: "Get trace/ prefix, count only, serializable", method: "etcdserverpb.KV/Range", span: "range",
			want: map[string]string{"range_begin": q("trace/"), "range_end": q("trace0"), "rev": "0", "limit": "0", "count_only": "true", "keys_only": "false"},
			run: func(ctx context.Context, cli *clientv3.Client, _ *traceOpState) error {
				_, err := cli.Get(ctx, "trace/", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithSerializable())
				return err
			},
		},
		{
			desc: "Txn if value(trace/a)=1 then put trace/b else get trace/a", method: "etcdserverpb.KV/Txn", span: "txn",
			want: map[string]string{
				"compare_first_key": q("trace/a"), "success_first_key": q("trace/b"), "success_first_type": q("put"),
				"success_first_lease": "0", "compare_len": "1", "success_len": "1", "failure_len": "1", "read_only": "false",
			},
			raft: true,
			run: func(ctx context.Context, cli *clientv3.Client, st *traceOpState) error {
				r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("trace/a"), "=", "1")).
					Then(clientv3.OpPut("trace/b", "2")).Else(clientv3.OpGet("trace/a")).Commit()
				if err == nil {
					if !r.Succeeded {
						return fmt.Errorf("txn: the compare failed")
					}
					st.rev = r.Header.Revision
				}
				return err
			},
		},
		{
			desc: "read-only Txn then get trace/a, get trace/b", method: "etcdserverpb.KV/Txn", span: "txn",
			want: map[string]string{
				"compare_first_key": q(""), "success_first_key": q("trace/a"), "success_first_type": q("range"),
				"success_first_lease": "-1", "compare_len": "0", "success_len": "2", "failure_len": "0", "read_only": "true",
			},
			run: func(ctx context.Context, cli *clientv3.Client, _ *traceOpState) error {
				_, err := cli.Txn(ctx).Then(clientv3.OpGet("trace/a"), clientv3.OpGet("trace/b")).Commit()
				return err
			},
		},
		{
			desc: "Delete trace/b prefix", method: "etcdserverpb.KV/DeleteRange", span: "delete_range",
			want: map[string]string{"range_begin": q("trace/b"), "range_end": q("trace/c")},
			raft: true,
			run: func(ctx context.Context, cli *clientv3.Client, st *traceOpState) error {
				r, err := cli.Delete(ctx, "trace/b", clientv3.WithPrefix())
				if err == nil {
					if r.Deleted != 1 {
						return fmt.Errorf("delete: %d keys deleted, want 1", r.Deleted)
					}
					st.rev = r.Header.Revision
				}
				return err
			},
		},
		{
			desc: "Grant TTL 60", method: "etcdserverpb.Lease/LeaseGrant", span: "lease_grant",
			want: map[string]string{"id": leaseValue, "ttl": "60"},
			raft: true,
			run: func(ctx context.Context, cli *clientv3.Client, st *traceOpState) error {
				r, err := cli.Grant(ctx, 60)
				if err == nil {
					st.lease = r.ID
				}
				return err
			},
		},
		{
			desc: "Put trace/leased with the lease", method: "etcdserverpb.KV/Put", span: "put",
			want: map[string]string{"key": q("trace/leased")},
			raft: true,
			run: func(ctx context.Context, cli *clientv3.Client, st *traceOpState) error {
				r, err := cli.Put(ctx, "trace/leased", "v", clientv3.WithLease(st.lease))
				if err == nil {
					st.rev = r.Header.Revision
				}
				return err
			},
		},
		{
			desc: "Txn if version(trace/leased)>0 then put trace/c with the lease", method: "etcdserverpb.KV/Txn", span: "txn",
			want: map[string]string{
				"compare_first_key": q("trace/leased"), "success_first_key": q("trace/c"), "success_first_type": q("put"),
				"success_first_lease": leaseValue, "compare_len": "1", "success_len": "1", "failure_len": "0", "read_only": "false",
			},
			raft: true,
			run: func(ctx context.Context, cli *clientv3.Client, st *traceOpState) error {
				r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Version("trace/leased"), ">", 0)).
					Then(clientv3.OpPut("trace/c", "3", clientv3.WithLease(st.lease))).Commit()
				if err == nil {
					if !r.Succeeded {
						return fmt.Errorf("leased txn: the compare failed")
					}
					st.rev = r.Header.Revision
				}
				return err
			},
		},
		{
			desc: "KeepAliveOnce", method: "etcdserverpb.Lease/LeaseKeepAlive", span: "lease_renew",
			want: map[string]string{"id": leaseValue},
			run: func(ctx context.Context, cli *clientv3.Client, st *traceOpState) error {
				_, err := cli.KeepAliveOnce(ctx, st.lease)
				return err
			},
		},
		{
			desc: "Revoke", method: "etcdserverpb.Lease/LeaseRevoke", span: "lease_revoke",
			want: map[string]string{"id": leaseValue},
			raft: true,
			run: func(ctx context.Context, cli *clientv3.Client, st *traceOpState) error {
				r, err := cli.Revoke(ctx, st.lease)
				if err == nil {
					st.rev = r.Header.Revision
				}
				return err
			},
		},
		{
			desc: "Compact at the latest revision, physical", method: "etcdserverpb.KV/Compact", span: "compact",
			want: map[string]string{"is_physical": "true", "rev": "7"},
			raft: true,
			run: func(ctx context.Context, cli *clientv3.Client, st *traceOpState) error {
				_, err := cli.Compact(ctx, st.rev, clientv3.WithCompactPhysical())
				return err
			},
		},
	}
}

// opSpans are the spans of one request of the script on one server: its
// SERVER span (nil when none was found) and everything below it.
type opSpans struct {
	server *tracingtest.Span
	tree   []treeSpan
}

// has reports whether the tree has a span at path.
func (o opSpans) has(path string) bool {
	return slices.ContainsFunc(o.tree, func(ts treeSpan) bool { return ts.path == path })
}

// scriptRun is what one server did with the script.
type scriptRun struct {
	name  string // "etcd" or "concord"
	lease clientv3.LeaseID
	spans []tracingtest.Span
	ops   []opSpans
	// roots counts the root SERVER spans per method.
	roots map[string]int
}

// matchScript gives each request its SERVER span: the root SERVER spans
// named after its method, in start order, go to the requests of that
// method in script order (the client sends no trace context, so the
// SERVER span of a request is a root).
func matchScript(spans []tracingtest.Span, ops []traceOp) ([]opSpans, map[string]int) {
	byMethod := map[string][]tracingtest.Span{}
	for _, s := range spans {
		if s.Kind == tracepb.Span_SPAN_KIND_SERVER && s.ParentID == "" {
			byMethod[s.Name] = append(byMethod[s.Name], s)
		}
	}
	roots := map[string]int{}
	for m, ss := range byMethod {
		sort.SliceStable(ss, func(i, j int) bool { return ss[i].Start < ss[j].Start })
		roots[m] = len(ss)
	}
	out := make([]opSpans, len(ops))
	used := map[string]int{}
	for i, op := range ops {
		ss := byMethod[op.method]
		k := used[op.method]
		used[op.method]++
		if k >= len(ss) {
			continue
		}
		srv := ss[k]
		out[i] = opSpans{server: &srv, tree: descendants(spans, srv)}
	}
	return out, roots
}

// scriptComplete reports whether every request has its SERVER span and
// the INTERNAL span etcd makes for it right below.
func scriptComplete(spans []tracingtest.Span, ops []traceOp) bool {
	matched, _ := matchScript(spans, ops)
	for i, op := range ops {
		if matched[i].server == nil || !matched[i].has(op.span) {
			return false
		}
	}
	return true
}

// runScript runs the script against s and waits for its spans at c.
func runScript(t *testing.T, name string, s *Server, c *tracingtest.Collector, ops []traceOp) *scriptRun {
	t.Helper()
	cli := newClient(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var st traceOpState
	for _, op := range ops {
		if err := op.run(ctx, cli, &st); err != nil {
			t.Fatalf("%s: %s: %v", name, op.desc, err)
		}
	}
	spans, ok := c.WaitFor(spanWait, func(sp []tracingtest.Span) bool { return scriptComplete(sp, ops) })
	if !ok {
		t.Errorf("%s: within %v, not every request's SERVER span with its INTERNAL span arrived", name, spanWait)
	}
	r := &scriptRun{name: name, lease: st.lease, spans: spans}
	r.ops, r.roots = matchScript(spans, ops)
	return r
}

// normAttrs replaces the lease ID of the run (when one was granted) in the
// attributes that carry one by leaseValue.
func normAttrs(attrs map[string]string, lease clientv3.LeaseID) map[string]string {
	m := maps.Clone(attrs)
	if lease == clientv3.NoLease {
		return m
	}
	id := strconv.FormatInt(int64(lease), 10)
	for _, k := range []string{"id", "success_first_lease"} {
		if v, ok := m[k]; ok && v == id {
			m[k] = leaseValue
		}
	}
	return m
}

// attrDiffs lists the attributes of a and b that differ.
func attrDiffs(a, b map[string]string) []string {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		av, aok := a[k]
		bv, bok := b[k]
		if !aok {
			av = absent
		}
		if !bok {
			bv = absent
		}
		if av != bv {
			out = append(out, fmt.Sprintf("%s: %s vs %s", k, av, bv))
		}
	}
	return out
}

// checkResources checks that every span has the wanted service.name and
// service.instance.id (instance "" wants it absent); each distinct wrong
// resource is reported once.
func checkResources(t *testing.T, who string, spans []tracingtest.Span, service, instance string) {
	t.Helper()
	wantInstance := absent
	if instance != "" {
		wantInstance = q(instance)
	}
	seen := map[string]bool{}
	for _, s := range spans {
		name, ok := s.Resource["service.name"]
		if !ok {
			name = absent
		}
		inst, ok := s.Resource["service.instance.id"]
		if !ok {
			inst = absent
		}
		if name == q(service) && inst == wantInstance {
			continue
		}
		key := tracingtest.RenderMap(s.Resource)
		if seen[key] {
			continue
		}
		seen[key] = true
		t.Errorf("%s: span %q has resource %s: want service.name=%s service.instance.id=%s", who, s.Name, key, q(service), wantInstance)
	}
}

// checkStructure checks one server's spans of the script: one root SERVER
// span per request, named after its method; the INTERNAL span etcd makes
// right below it, of etcd's scope; with checkWant, also that span's
// attributes and events against the script's.
func checkStructure(t *testing.T, r *scriptRun, ops []traceOp, checkWant bool) {
	t.Helper()
	want := map[string]int{}
	for _, op := range ops {
		want[op.method]++
	}
	for _, m := range slices.Sorted(maps.Keys(want)) {
		if r.roots[m] != want[m] {
			t.Errorf("%s: %d root SERVER spans named %q, want %d (one per request)", r.name, r.roots[m], m, want[m])
		}
	}
	for i, op := range ops {
		o := r.ops[i]
		if o.server == nil {
			t.Errorf("%s: %s: no root SERVER span named %q", r.name, op.desc, op.method)
			continue
		}
		var found []tracingtest.Span
		for _, ts := range o.tree {
			if ts.path == op.span {
				found = append(found, ts.span)
			}
		}
		if len(found) != 1 {
			t.Errorf("%s: %s: %d spans named %q right below the SERVER span %q, want 1", r.name, op.desc, len(found), op.span, op.method)
			continue
		}
		s := found[0]
		if s.Kind != tracepb.Span_SPAN_KIND_INTERNAL {
			t.Errorf("%s: %s: span %q is %s, want INTERNAL", r.name, op.desc, op.span, tracingtest.KindName(s.Kind))
		}
		if s.Scope != etcdScope {
			t.Errorf("%s: %s: span %q has scope %q, want %q", r.name, op.desc, op.span, s.Scope, etcdScope)
		}
		if s.TraceID != o.server.TraceID || s.ParentID != o.server.SpanID {
			t.Errorf("%s: %s: span %q is not the child of the SERVER span: %s; SERVER span: %s", r.name, op.desc, op.span, s, *o.server)
		}
		if checkWant {
			if d := attrDiffs(op.want, normAttrs(s.Attrs, r.lease)); len(d) > 0 {
				t.Errorf("%s: %s: span %q attributes differ from the expected ones (expected vs %s): %s", r.name, op.desc, op.span, r.name, strings.Join(d, "; "))
			}
			var wantEvents []string
			if op.raft {
				wantEvents = raftEvents
			}
			if !slices.Equal(s.Events, wantEvents) {
				t.Errorf("%s: %s: span %q has events %q, want %q", r.name, op.desc, op.span, s.Events, wantEvents)
			}
		}
	}
}

// diffScript compares got's spans below each SERVER span with ref's (etcd's):
// the same spans at the same paths, of the same kind, scope, attributes
// (lease IDs as leaseValue), event names and status.
func diffScript(t *testing.T, ref, got *scriptRun, ops []traceOp) {
	t.Helper()
	for i, op := range ops {
		if ref.ops[i].server == nil || got.ops[i].server == nil {
			continue // reported by checkStructure
		}
		refBy, gotBy := map[string][]tracingtest.Span{}, map[string][]tracingtest.Span{}
		var paths []string
		for _, ts := range ref.ops[i].tree {
			if _, ok := refBy[ts.path]; !ok {
				paths = append(paths, ts.path)
			}
			refBy[ts.path] = append(refBy[ts.path], ts.span)
		}
		for _, ts := range got.ops[i].tree {
			if _, ok := refBy[ts.path]; !ok {
				if _, ok := gotBy[ts.path]; !ok {
					paths = append(paths, ts.path)
				}
			}
			gotBy[ts.path] = append(gotBy[ts.path], ts.span)
		}
		for _, p := range paths {
			rs, gs := refBy[p], gotBy[p]
			if len(rs) != len(gs) {
				t.Errorf("%s: %d spans %q below the SERVER span on %s, %d on %s\n  %s: %v\n  %s: %v",
					op.desc, len(rs), p, ref.name, len(gs), got.name, ref.name, rs, got.name, gs)
			}
			for j := range min(len(rs), len(gs)) {
				r, g := rs[j], gs[j]
				if r.Kind != g.Kind {
					t.Errorf("%s: span %q: kind %s on %s, %s on %s", op.desc, p, tracingtest.KindName(r.Kind), ref.name, tracingtest.KindName(g.Kind), got.name)
				}
				if r.Scope != g.Scope {
					t.Errorf("%s: span %q: scope %q on %s, %q on %s", op.desc, p, r.Scope, ref.name, g.Scope, got.name)
				}
				if d := attrDiffs(normAttrs(r.Attrs, ref.lease), normAttrs(g.Attrs, got.lease)); len(d) > 0 {
					t.Errorf("%s: span %q: attributes differ (%s vs %s): %s", op.desc, p, ref.name, got.name, strings.Join(d, "; "))
				}
				if !slices.Equal(r.Events, g.Events) {
					t.Errorf("%s: span %q: events %v on %s, %v on %s", op.desc, p, r.Events, ref.name, g.Events, got.name)
				}
				if r.Status != g.Status {
					t.Errorf("%s: span %q: status %v on %s, %v on %s", op.desc, p, r.Status, ref.name, g.Status, got.name)
				}
			}
		}
	}
}

// tracingFlags are the tracing flags of a process exporting to addr;
// service and instance "" leave those flags out (their defaults).
func tracingFlags(addr string, rate int, service, instance string) []string {
	f := []string{
		"--enable-distributed-tracing=true",
		"--distributed-tracing-address=" + addr,
		"--distributed-tracing-sampling-rate=" + strconv.Itoa(rate),
	}
	if service != "" {
		f = append(f, "--distributed-tracing-service-name="+service)
	}
	if instance != "" {
		f = append(f, "--distributed-tracing-instance-id="+instance)
	}
	return f
}

// --- The W3C trace context ---------------------------------------------------

// withTraceparent adds a W3C traceparent to the request's gRPC metadata.
func withTraceparent(ctx context.Context, traceID, spanID string, sampled bool) context.Context {
	flags := "00"
	if sampled {
		flags = "01"
	}
	return metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+traceID+"-"+spanID+"-"+flags)
}

// The trace contexts of the "parent" subtest: one sampled, one not.
const (
	sampledTraceID   = "4bf92f3577b34da6a3ce929d0e0e4736"
	sampledParentID  = "00f067aa0ba902b7"
	unsampledTraceID = "0af7651916cd43dd8448eb211c80319c"
	unsampledParent  = "b7ad6b7169203331"
)

// --- The split topology ------------------------------------------------------

// startTracedSplit starts one consensus member, a watch fan-out, a lease
// service and a gateway as startSplitWith does, each with flags(instance),
// instance being the process's own service.instance.id; it returns the
// gateway.
func startTracedSplit(t *testing.T, flags func(instance string) []string) *proc {
	t.Helper()
	_, curl, natsAddr := startSingleConsensus(t, flags("consensus-1")...)
	wport, lport, gport := freePort(t), freePort(t), freePort(t)
	wf := startProc(t, "watchfanout", wport, append([]string{"watchfanout", "--name", "wf1",
		"--consensus-endpoints", curl, "--nats-url", "nats://" + natsAddr,
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", wport)}, flags("watchfanout-1")...)...)
	ls := startProc(t, "leasesvc", lport, append([]string{"leasesvc", "--name", "ls1",
		"--consensus-endpoints", curl, "--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", lport)}, flags("leasesvc-1")...)...)
	return startProc(t, "gateway-1", gport, append([]string{"gateway",
		"--consensus-endpoints", curl, "--watchfanout-endpoints", wf.url(),
		"--leasesvc-endpoints", ls.url(), "--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", gport)}, flags("gateway-1")...)...)
}

// --- The test ----------------------------------------------------------------

// TestDistributedTracing checks concord's OpenTelemetry tracing against
// etcd's (see the top of this file):
//
//   - single: the same requests against etcd and concord all in one, both
//     sampling every trace: per request one root SERVER span named after the
//     gRPC method and below it etcd's INTERNAL span with etcd's attributes
//     (etcd's checked against the attributes etcd's source sets, concord's
//     against etcd's), and the resource's service.name and
//     service.instance.id as the flags say;
//   - parent: sampling rate 0: a request without trace context and one whose
//     traceparent is not sampled export nothing, one whose traceparent is
//     sampled exports its SERVER span as the child of the caller's span in
//     the caller's trace, with the "put" span below; the resource has the
//     default service.name "etcd" and no service.instance.id;
//   - split: concord's split topology, every process tracing to one
//     collector with its own service.instance.id: a Put, a Get, a lease
//     Grant and a keep-alive through the gateway each give one trace in
//     which the gateway's SERVER span is an ancestor of etcd's INTERNAL span
//     (for the put, made by the consensus member; for the keep-alive, by the
//     lease service), with no span of the chain missing, and no RPC between
//     the processes starts a trace of its own.
func TestDistributedTracing(t *testing.T) {
	t.Parallel()

	t.Run("single", func(t *testing.T) {
		t.Parallel()
		const service, instance = "concord-e2e", "member-a"
		ops := traceScript()
		var ref *scriptRun // etcd's, for concord's subtest
		t.Run("etcd", func(t *testing.T) {
			c := tracingtest.Start(t)
			s := startServer(t, etcdImpl, serverOptions{extra: tracingFlags(c.Addr(), 1000000, service, instance)})
			ref = runScript(t, "etcd", s, c, ops)
			checkStructure(t, ref, ops, true)
			checkResources(t, "etcd", ref.spans, service, instance)
			for i, op := range ops {
				if o := ref.ops[i]; o.server != nil {
					t.Logf("etcd: %s:\n  %s", op.desc, *o.server)
					for _, ts := range o.tree {
						t.Logf("    %s: %s", ts.path, ts.span)
					}
				}
			}
			if t.Failed() {
				t.Log("etcd: " + tracingtest.Dump(ref.spans))
			}
		})
		t.Run("concord", func(t *testing.T) {
			if ref == nil {
				t.Fatal("etcd's spans, the reference, are missing: see the etcd subtest")
			}
			c := tracingtest.Start(t)
			s := startServer(t, concordImpl, serverOptions{extra: tracingFlags(c.Addr(), 1000000, service, instance)})
			got := runScript(t, "concord", s, c, ops)
			checkStructure(t, got, ops, false)
			checkResources(t, "concord", got.spans, service, instance)
			diffScript(t, ref, got, ops)
			if t.Failed() {
				t.Log("etcd: " + tracingtest.Dump(ref.spans))
				t.Log("concord: " + tracingtest.Dump(got.spans))
			}
		})
	})

	t.Run("parent", func(t *testing.T) {
		t.Parallel()
		for _, im := range impls {
			t.Run(im.name, func(t *testing.T) {
				t.Parallel()
				c := tracingtest.Start(t)
				s := startServer(t, im, serverOptions{extra: tracingFlags(c.Addr(), 0, "", "")})
				cli := newClient(t, s)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				// The unsampled requests go first. etcd ends a request's
				// INTERNAL span before it answers, and the batch span
				// processor exports spans in the order they end, so once
				// the sampled request's spans arrived, any span of the
				// earlier requests would have too.
				if _, err := cli.Put(ctx, "trace/plain", "v"); err != nil {
					t.Fatalf("put without trace context: %v", err)
				}
				if _, err := cli.Put(withTraceparent(ctx, unsampledTraceID, unsampledParent, false), "trace/unsampled", "v"); err != nil {
					t.Fatalf("put with an unsampled traceparent: %v", err)
				}
				if _, err := cli.Put(withTraceparent(ctx, sampledTraceID, sampledParentID, true), "trace/sampled", "v"); err != nil {
					t.Fatalf("put with a sampled traceparent: %v", err)
				}
				findServer := func(spans []tracingtest.Span) *tracingtest.Span {
					for _, sp := range spans {
						if sp.TraceID == sampledTraceID && sp.Kind == tracepb.Span_SPAN_KIND_SERVER && sp.Name == "etcdserverpb.KV/Put" {
							return &sp
						}
					}
					return nil
				}
				spans, ok := c.WaitFor(spanWait, func(spans []tracingtest.Span) bool {
					srv := findServer(spans)
					return srv != nil && slices.ContainsFunc(descendants(spans, *srv), func(ts treeSpan) bool { return ts.path == "put" })
				})
				if !ok {
					t.Errorf("%s: within %v, no SERVER span \"etcdserverpb.KV/Put\" of trace %s with a \"put\" span below it arrived", im.name, spanWait, sampledTraceID)
				}
				for _, sp := range spans {
					if sp.TraceID != sampledTraceID {
						t.Errorf("%s: sampling rate 0 exported a span of a trace no sampled traceparent started: %s", im.name, sp)
					}
				}
				if srv := findServer(spans); srv != nil {
					if srv.ParentID != sampledParentID {
						t.Errorf("%s: the SERVER span's parent is %q, want the traceparent's span %q", im.name, srv.ParentID, sampledParentID)
					}
					var puts []tracingtest.Span
					for _, ts := range descendants(spans, *srv) {
						if ts.path == "put" {
							puts = append(puts, ts.span)
						}
					}
					if len(puts) != 1 {
						t.Errorf("%s: %d \"put\" spans right below the SERVER span, want 1", im.name, len(puts))
					} else {
						p := puts[0]
						if p.Kind != tracepb.Span_SPAN_KIND_INTERNAL || p.Scope != etcdScope {
							t.Errorf("%s: \"put\" span is %s of scope %q, want INTERNAL of %q", im.name, tracingtest.KindName(p.Kind), p.Scope, etcdScope)
						}
						if d := attrDiffs(map[string]string{"key": q("trace/sampled")}, p.Attrs); len(d) > 0 {
							t.Errorf("%s: \"put\" span attributes (expected vs %s): %s", im.name, im.name, strings.Join(d, "; "))
						}
						if !slices.Equal(p.Events, raftEvents) {
							t.Errorf("%s: \"put\" span has events %q, want %q", im.name, p.Events, raftEvents)
						}
					}
				}
				checkResources(t, im.name, spans, "etcd", "")
				if t.Failed() {
					t.Log(im.name + ": " + tracingtest.Dump(spans))
				}
			})
		}
	})

	t.Run("split", func(t *testing.T) {
		t.Parallel()
		const service = "concord-split"
		c := tracingtest.Start(t)
		gw := startTracedSplit(t, func(instance string) []string {
			return tracingFlags(c.Addr(), 1000000, service, instance)
		})
		cli := splitClient(t, gw.endpoint())
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := cli.Put(ctx, "split/a", "1"); err != nil {
			t.Fatalf("put through the gateway: %v", err)
		}
		if _, err := cli.Get(ctx, "split/a"); err != nil {
			t.Fatalf("get through the gateway: %v", err)
		}
		grant, err := cli.Grant(ctx, 60)
		if err != nil {
			t.Fatalf("lease grant through the gateway: %v", err)
		}
		if _, err := cli.KeepAliveOnce(ctx, grant.ID); err != nil {
			t.Fatalf("lease keep-alive through the gateway: %v", err)
		}
		// Each request: the gateway's SERVER span, the INTERNAL span etcd
		// makes for it with etcd's attributes, and which process must make
		// that span ("" for any).
		checks := []struct {
			method, span string
			want         map[string]string
			from         string
			events       []string // nil: not checked
		}{
			{"etcdserverpb.KV/Put", "put", map[string]string{"key": q("split/a")}, "consensus-1", raftEvents},
			{"etcdserverpb.KV/Range", "range", map[string]string{"range_begin": q("split/a"), "range_end": q(""), "rev": "0", "limit": "0", "count_only": "false", "keys_only": "false"}, "", nil},
			{"etcdserverpb.Lease/LeaseGrant", "lease_grant", map[string]string{"id": leaseValue, "ttl": "60"}, "", nil},
			// Renewed by the lease service, under its internal keep-alive
			// call, which is no RPC span of its own.
			{"etcdserverpb.Lease/LeaseKeepAlive", "lease_renew", map[string]string{"id": leaseValue}, "leasesvc-1", nil},
		}
		isGatewayServer := func(s tracingtest.Span, method string) bool {
			return s.Kind == tracepb.Span_SPAN_KIND_SERVER && s.Name == method && s.ParentID == "" && s.Resource["service.instance.id"] == q("gateway-1")
		}
		// found returns the gateway's SERVER span of method and the spans
		// named name in its trace below it.
		found := func(spans []tracingtest.Span, method, name string) (*tracingtest.Span, []tracingtest.Span) {
			for _, s := range spans {
				if !isGatewayServer(s, method) {
					continue
				}
				var below []tracingtest.Span
				for _, ts := range descendants(spans, s) {
					if ts.span.Name == name {
						below = append(below, ts.span)
					}
				}
				return &s, below
			}
			return nil, nil
		}
		spans, ok := c.WaitFor(spanWait, func(spans []tracingtest.Span) bool {
			for _, ch := range checks {
				if _, below := found(spans, ch.method, ch.span); len(below) == 0 {
					return false
				}
			}
			return true
		})
		if !ok {
			t.Errorf("within %v, not every request's trace arrived with the gateway's SERVER span and the INTERNAL span below it", spanWait)
		}
		for _, ch := range checks {
			srv, below := found(spans, ch.method, ch.span)
			if srv == nil {
				var named []tracingtest.Span
				for _, s := range spans {
					if s.Name == ch.method || s.Name == ch.span {
						named = append(named, s)
					}
				}
				t.Errorf("%s: no root SERVER span of the gateway (service.instance.id %q); spans so named: %v", ch.method, "gateway-1", named)
				continue
			}
			if len(below) != 1 {
				// Maybe the span is in the trace but cut off from the
				// gateway's: say where it is.
				var sameName []string
				for _, s := range spans {
					if s.Name == ch.span {
						chain, complete := ancestry(spans, s)
						sameName = append(sameName, fmt.Sprintf("%s (ancestry %v, complete %v)", s, chain[1:], complete))
					}
				}
				t.Errorf("%s: %d spans %q below the gateway's SERVER span %s, want 1; every span %q: %v", ch.method, len(below), ch.span, *srv, ch.span, sameName)
				continue
			}
			s := below[0]
			if s.Kind != tracepb.Span_SPAN_KIND_INTERNAL || s.Scope != etcdScope {
				t.Errorf("%s: span %q is %s of scope %q, want INTERNAL of %q", ch.method, ch.span, tracingtest.KindName(s.Kind), s.Scope, etcdScope)
			}
			if d := attrDiffs(ch.want, normAttrs(s.Attrs, grant.ID)); len(d) > 0 {
				t.Errorf("%s: span %q attributes (expected vs concord): %s", ch.method, ch.span, strings.Join(d, "; "))
			}
			if ch.events != nil && !slices.Equal(s.Events, ch.events) {
				t.Errorf("%s: span %q has events %q, want %q", ch.method, ch.span, s.Events, ch.events)
			}
			if ch.from != "" && s.Resource["service.instance.id"] != q(ch.from) {
				t.Errorf("%s: span %q comes from service.instance.id %s, want %q", ch.method, ch.span, s.Resource["service.instance.id"], ch.from)
			}
			chain, _ := ancestry(spans, s)
			var links []string
			for _, a := range chain {
				links = append(links, fmt.Sprintf("%s %q (%s)", tracingtest.KindName(a.Kind), a.Name, a.Resource["service.instance.id"]))
			}
			t.Logf("%s: %s", ch.method, strings.Join(links, " <- "))
		}
		// The consensus member exported spans of its own, the gateway too.
		for _, inst := range []string{"gateway-1", "consensus-1"} {
			if !slices.ContainsFunc(spans, func(s tracingtest.Span) bool { return s.Resource["service.instance.id"] == q(inst) }) {
				t.Errorf("no span from the process with service.instance.id %q", inst)
			}
		}
		for _, s := range spans {
			if s.Resource["service.name"] != q(service) {
				t.Errorf("span %s: service.name %s, want %q", s, s.Resource["service.name"], service)
				break
			}
		}
		// Every RPC span is of a client's request: the processes' own calls
		// to each other (status and member polling, history reads) carry a
		// parent that is not sampled, so they start no trace of their own.
		// (A /health probe's read is a root INTERNAL span, as in etcd.)
		clientTraces := map[string]bool{}
		for _, s := range spans {
			if s.ParentID == "" && s.Resource["service.instance.id"] == q("gateway-1") {
				clientTraces[s.TraceID] = true
			}
		}
		for _, s := range spans {
			if s.Kind == tracepb.Span_SPAN_KIND_SERVER && !clientTraces[s.TraceID] {
				t.Errorf("span %s belongs to no request of the client", s)
			}
		}
		if t.Failed() {
			t.Log("split: " + tracingtest.Dump(spans))
		}
	})
}
