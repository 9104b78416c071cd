package gateway_test

import (
	"bytes"
	gogzip "compress/gzip"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/storage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeBackend is a tiny in-memory etcd: enough KV semantics for round
// trips, plus knobs to inject errors, leaders and alarms.
type fakeBackend struct {
	mu     sync.Mutex
	rev    int64
	kvs    map[string]*mvccpb.KeyValue
	leases map[int64]int64
	alarms []*pb.AlarmMember
	err    error // when set, every backend call fails with it

	leader atomic.Uint64
	calls  atomic.Int64 // backend calls, to prove bad requests never arrive
}

func newFake() *fakeBackend {
	f := &fakeBackend{rev: 1, kvs: map[string]*mvccpb.KeyValue{}, leases: map[int64]int64{}}
	f.leader.Store(1)
	return f
}

func (f *fakeBackend) setErr(err error) { f.mu.Lock(); f.err = err; f.mu.Unlock() }

// enter counts the call, takes the lock and returns the injected error.
func (f *fakeBackend) enter() error {
	f.calls.Add(1)
	f.mu.Lock()
	return f.err
}

func (f *fakeBackend) hdr() *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: 7, MemberId: 1, Revision: f.rev, RaftTerm: 2}
}

func inRange(k, key, end string) bool {
	switch end {
	case "":
		return k == key
	case "\x00":
		return k >= key
	}
	return k >= key && k < end
}

func (f *fakeBackend) rangeLocked(r *pb.RangeRequest) *pb.RangeResponse {
	resp := &pb.RangeResponse{Header: f.hdr()}
	var keys []string
	for k := range f.kvs {
		if inRange(k, string(r.Key), string(r.RangeEnd)) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	resp.Count = int64(len(keys))
	for _, k := range keys {
		if r.Limit > 0 && int64(len(resp.Kvs)) == r.Limit {
			resp.More = true
			break
		}
		resp.Kvs = append(resp.Kvs, f.kvs[k])
	}
	return resp
}

func (f *fakeBackend) putLocked(r *pb.PutRequest) *pb.PutResponse {
	f.rev++
	kv := &mvccpb.KeyValue{Key: r.Key, Value: r.Value, CreateRevision: f.rev, ModRevision: f.rev, Version: 1, Lease: r.Lease}
	if old, ok := f.kvs[string(r.Key)]; ok {
		kv.CreateRevision, kv.Version = old.CreateRevision, old.Version+1
	}
	f.kvs[string(r.Key)] = kv
	return &pb.PutResponse{Header: f.hdr()}
}

func (f *fakeBackend) deleteLocked(r *pb.DeleteRangeRequest) *pb.DeleteRangeResponse {
	var n int64
	for k := range f.kvs {
		if inRange(k, string(r.Key), string(r.RangeEnd)) {
			delete(f.kvs, k)
			n++
		}
	}
	if n > 0 {
		f.rev++
	}
	return &pb.DeleteRangeResponse{Header: f.hdr(), Deleted: n}
}

func (f *fakeBackend) Range(_ context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f.rangeLocked(r), nil
}

func (f *fakeBackend) Put(_ context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f.putLocked(r), nil
}

func (f *fakeBackend) DeleteRange(_ context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f.deleteLocked(r), nil
}

// Txn ignores compares (always takes the success branch) and does not
// nest: enough to see that a valid txn reaches the backend.
func (f *fakeBackend) Txn(_ context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	resp := &pb.TxnResponse{Succeeded: true}
	for _, op := range r.Success {
		switch v := op.Request.(type) {
		case *pb.RequestOp_RequestPut:
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: f.putLocked(v.RequestPut)}})
		case *pb.RequestOp_RequestRange:
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: f.rangeLocked(v.RequestRange)}})
		case *pb.RequestOp_RequestDeleteRange:
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: f.deleteLocked(v.RequestDeleteRange)}})
		case *pb.RequestOp_RequestTxn:
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: &pb.TxnResponse{Header: f.hdr()}}})
		}
	}
	resp.Header = f.hdr()
	return resp, nil
}

func (f *fakeBackend) Compact(_ context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &pb.CompactionResponse{Header: f.hdr()}, nil
}

func (f *fakeBackend) LeaseGrant(_ context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if r.ID == 0 {
		r.ID = int64(len(f.leases) + 100)
	}
	if _, ok := f.leases[r.ID]; ok {
		return nil, fmt.Errorf("grant %d: %w", r.ID, storage.ErrLeaseExists)
	}
	f.leases[r.ID] = r.TTL
	return &pb.LeaseGrantResponse{Header: f.hdr(), ID: r.ID, TTL: r.TTL}, nil
}

func (f *fakeBackend) LeaseRevoke(_ context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if _, ok := f.leases[r.ID]; !ok {
		return nil, fmt.Errorf("revoke %d: %w", r.ID, storage.ErrLeaseNotFound)
	}
	delete(f.leases, r.ID)
	return &pb.LeaseRevokeResponse{Header: f.hdr()}, nil
}

func (f *fakeBackend) LeaseLeases(context.Context, *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	resp := &pb.LeaseLeasesResponse{Header: f.hdr()}
	for id := range f.leases {
		resp.Leases = append(resp.Leases, &pb.LeaseStatus{ID: id})
	}
	return resp, nil
}

func (f *fakeBackend) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &pb.StatusResponse{Header: f.hdr(), Version: "3.7.3", Leader: f.leader.Load()}, nil
}

func (f *fakeBackend) HashKV(context.Context, *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &pb.HashKVResponse{Header: f.hdr(), Hash: 42}, nil
}

func (f *fakeBackend) Alarm(_ context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if r.Action == pb.AlarmRequest_ACTIVATE {
		f.alarms = append(f.alarms, &pb.AlarmMember{MemberID: r.MemberID, Alarm: r.Alarm})
	}
	return &pb.AlarmResponse{Header: f.hdr(), Alarms: f.alarms}, nil
}

func (f *fakeBackend) Defragment(context.Context, *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &pb.DefragmentResponse{Header: f.hdr()}, nil
}

func (f *fakeBackend) MemberList(context.Context, *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &pb.MemberListResponse{Header: f.hdr(), Members: []*pb.Member{{ID: 1, Name: "m1", ClientURLs: []string{"http://x"}}}}, nil
}

func (f *fakeBackend) Leader() uint64 { return f.leader.Load() }

// startGateway serves a gateway for b on a loopback port until the test ends.
func startGateway(t testing.TB, cfg gateway.Config, b gateway.Backend, opts ...gateway.Option) string {
	t.Helper()
	g, err := gateway.New(cfg, b, opts...)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveOn(t, g, g.Serve)
	t.Cleanup(func() {
		// serveOn's cleanup (run first) closed it: Close is idempotent.
		if err := g.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
	return addr
}

// serveOn runs serve (g.Serve or g.ServeTLS) on a loopback listener until
// the test ends, then checks that it returns and that g closes; it returns
// the listener's address.
func serveOn(t testing.TB, g *gateway.Gateway, serve func(context.Context, net.Listener) error) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Serve did not return after cancel")
		}
		if err := g.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return ln.Addr().String()
}

func newClient(t testing.TB, addr string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{addr},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func setup(t *testing.T, cfg gateway.Config) (*fakeBackend, *clientv3.Client, string) {
	f := newFake()
	addr := startGateway(t, cfg, f)
	return f, newClient(t, addr), addr
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestPutGetRoundTrip(t *testing.T) {
	_, cli, _ := setup(t, gateway.Config{})
	ctx := testCtx(t)
	put, err := cli.Put(ctx, "foo", "bar")
	if err != nil {
		t.Fatal(err)
	}
	if put.Header.Revision != 2 || put.Header.ClusterId != 7 {
		t.Fatalf("put header = %v", put.Header)
	}
	if _, err := cli.Put(ctx, "foo2", "baz"); err != nil {
		t.Fatal(err)
	}
	get, err := cli.Get(ctx, "foo", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if get.Count != 2 || string(get.Kvs[0].Value) != "bar" || string(get.Kvs[1].Value) != "baz" {
		t.Fatalf("get = %v", get)
	}
	del, err := cli.Delete(ctx, "foo2")
	if err != nil || del.Deleted != 1 {
		t.Fatalf("delete = %v, %v", del, err)
	}
	txn, err := cli.Txn(ctx).Then(clientv3.OpPut("t1", "v1"), clientv3.OpGet("foo")).Commit()
	if err != nil || !txn.Succeeded || len(txn.Responses) != 2 {
		t.Fatalf("txn = %v, %v", txn, err)
	}
	if _, err := cli.Compact(ctx, 2); err != nil {
		t.Fatal(err)
	}
	lg, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if leases, err := cli.Leases(ctx); err != nil || len(leases.Leases) != 1 {
		t.Fatalf("leases = %v, %v", leases, err)
	}
	if _, err := cli.Revoke(ctx, lg.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Revoke(ctx, lg.ID); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("second revoke: %v, want ErrLeaseNotFound", err)
	}
	if ms, err := cli.MemberList(ctx); err != nil || len(ms.Members) != 1 {
		t.Fatalf("member list = %v, %v", ms, err)
	}
	if st, err := cli.Status(ctx, cli.Endpoints()[0]); err != nil || st.Version != "3.7.3" {
		t.Fatalf("status = %v, %v", st, err)
	}
	if h, err := cli.HashKV(ctx, cli.Endpoints()[0], 0); err != nil || h.Hash != 42 {
		t.Fatalf("hashkv = %v, %v", h, err)
	}
	if _, err := cli.Defragment(ctx, cli.Endpoints()[0]); err != nil {
		t.Fatal(err)
	}
	if a, err := cli.AlarmList(ctx); err != nil || len(a.Alarms) != 0 {
		t.Fatalf("alarms = %v, %v", a, err)
	}
}

func TestValidationErrors(t *testing.T) {
	f, cli, _ := setup(t, gateway.Config{})
	ctx := testCtx(t)
	rawKV := pb.NewKVClient(cli.ActiveConnection())
	put := func(k string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k)}}}
	}
	del := func(k, end string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: []byte(end)}}}
	}
	nested := func(then, els []*pb.RequestOp) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: then, Failure: els}}}
	}
	rawTxn := func(ops ...*pb.RequestOp) error {
		_, err := rawKV.Txn(ctx, &pb.TxnRequest{Success: ops})
		return rpctypes.Error(err)
	}
	many := func(n int) []clientv3.Op {
		ops := make([]clientv3.Op, n)
		for i := range ops {
			ops[i] = clientv3.OpPut(fmt.Sprintf("k%d", i), "v")
		}
		return ops
	}
	cases := []struct {
		name string
		call func() error
		want error
	}{
		{"get empty key", func() error { _, err := cli.Get(ctx, ""); return err }, rpctypes.ErrEmptyKey},
		{"put empty key", func() error { _, err := cli.Put(ctx, "", "v"); return err }, rpctypes.ErrEmptyKey},
		{"delete empty key", func() error { _, err := cli.Delete(ctx, ""); return err }, rpctypes.ErrEmptyKey},
		{"bad sort order", func() error {
			_, err := cli.Get(ctx, "a", clientv3.WithSort(clientv3.SortByKey, clientv3.SortOrder(9)))
			return err
		}, rpctypes.ErrInvalidSortOption},
		{"bad sort target", func() error {
			_, err := cli.Get(ctx, "a", clientv3.WithSort(clientv3.SortTarget(9), clientv3.SortAscend))
			return err
		}, rpctypes.ErrInvalidSortOption},
		{"ignore value with value", func() error {
			_, err := rawKV.Put(ctx, &pb.PutRequest{Key: []byte("a"), Value: []byte("v"), IgnoreValue: true})
			return rpctypes.Error(err)
		}, rpctypes.ErrValueProvided},
		{"ignore lease with lease", func() error {
			_, err := cli.Put(ctx, "a", "", clientv3.WithLease(5), clientv3.WithIgnoreLease())
			return err
		}, rpctypes.ErrLeaseProvided},
		{"txn compare empty key", func() error {
			_, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(""), "=", "x")).Commit()
			return err
		}, rpctypes.ErrEmptyKey},
		{"txn empty op", func() error { return rawTxn(&pb.RequestOp{}) }, rpctypes.ErrKeyNotFound},
		{"txn nested empty key", func() error { return rawTxn(nested([]*pb.RequestOp{put("")}, nil)) }, rpctypes.ErrEmptyKey},
		{"txn too many ops", func() error { _, err := cli.Txn(ctx).Then(many(129)...).Commit(); return err }, rpctypes.ErrTooManyOps},
		{"txn too many compares", func() error {
			cmps := make([]clientv3.Cmp, 129)
			for i := range cmps {
				cmps[i] = clientv3.Compare(clientv3.Version("a"), "=", 0)
			}
			_, err := cli.Txn(ctx).If(cmps...).Commit()
			return err
		}, rpctypes.ErrTooManyOps},
		{"txn nested ops share the budget", func() error {
			// 100 outer ops leave 28 for a nested txn; it has 29.
			ops := make([]*pb.RequestOp, 0, 100)
			for i := range 99 {
				ops = append(ops, put(fmt.Sprintf("o%d", i)))
			}
			inner := make([]*pb.RequestOp, 29)
			for i := range inner {
				inner[i] = put(fmt.Sprintf("i%d", i))
			}
			return rawTxn(append(ops, nested(inner, nil))...)
		}, rpctypes.ErrTooManyOps},
		{"txn duplicate put", func() error {
			_, err := cli.Txn(ctx).Then(clientv3.OpPut("a", "1"), clientv3.OpPut("a", "2")).Commit()
			return err
		}, rpctypes.ErrDuplicateKey},
		{"txn put in deleted range", func() error { return rawTxn(del("a", "c"), put("b")) }, rpctypes.ErrDuplicateKey},
		{"txn put and delete same key", func() error { return rawTxn(put("a"), del("a", "")) }, rpctypes.ErrDuplicateKey},
		{"txn nested put duplicates outer", func() error { return rawTxn(put("a"), nested([]*pb.RequestOp{put("a")}, nil)) }, rpctypes.ErrDuplicateKey},
		{"txn nested else duplicates outer", func() error { return rawTxn(put("a"), nested(nil, []*pb.RequestOp{put("a")})) }, rpctypes.ErrDuplicateKey},
		{"txn nested delete covers outer put", func() error { return rawTxn(put("b"), nested([]*pb.RequestOp{del("a", "z")}, nil)) }, rpctypes.ErrDuplicateKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := f.calls.Load()
			err := tc.call()
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v (%T), want %v", err, err, tc.want)
			}
			if n := f.calls.Load() - before; n != 0 {
				t.Fatalf("invalid request reached the backend (%d calls)", n)
			}
		})
	}

	// Requests etcd accepts must reach the backend.
	ok := []struct {
		name string
		call func() error
	}{
		{"then and else of one nested txn may write the same key", func() error {
			return rawTxn(nested([]*pb.RequestOp{put("a")}, []*pb.RequestOp{put("a")}))
		}},
		{"128 ops", func() error { _, err := cli.Txn(ctx).Then(many(128)...).Commit(); return err }},
		{"puts next to a deleted range", func() error { return rawTxn(del("b", "c"), put("a"), put("c")) }},
		{"read-only txn with repeated keys", func() error {
			_, err := cli.Txn(ctx).Then(clientv3.OpGet("a"), clientv3.OpGet("a")).Commit()
			return err
		}},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			before := f.calls.Load()
			if err := tc.call(); err != nil {
				t.Fatal(err)
			}
			if f.calls.Load() == before {
				t.Fatal("valid request did not reach the backend")
			}
		})
	}
}

func TestRequestTooLarge(t *testing.T) {
	const limit = 4096
	f, cli, _ := setup(t, gateway.Config{MaxRequestBytes: limit})
	ctx := testCtx(t)

	if _, err := cli.Put(ctx, "k", strings.Repeat("x", limit-100)); err != nil {
		t.Fatalf("put below the limit: %v", err)
	}
	before := f.calls.Load()
	if _, err := cli.Put(ctx, "k", strings.Repeat("x", limit+1)); !errors.Is(err, rpctypes.ErrRequestTooLarge) {
		t.Fatalf("put above the limit: %v, want ErrRequestTooLarge", err)
	}
	if _, err := cli.Txn(ctx).Then(clientv3.OpPut("k", strings.Repeat("x", limit))).Commit(); !errors.Is(err, rpctypes.ErrRequestTooLarge) {
		t.Fatalf("txn above the limit: %v, want ErrRequestTooLarge", err)
	}
	if f.calls.Load() != before {
		t.Fatal("too large request reached the backend")
	}
	// A range request is not proposed, so only the transport limit applies.
	if _, err := cli.Get(ctx, strings.Repeat("k", limit+1)); err != nil {
		t.Fatalf("large range key: %v", err)
	}
	// Beyond MaxRequestBytes + 512 KiB the transport refuses the message.
	_, err := cli.Put(ctx, "k", strings.Repeat("x", limit+512*1024+1))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("put above the read limit: %v, want ResourceExhausted", err)
	}
}

// etcd checks --max-request-bytes on the raft request it wraps a write in
// (a header with a request ID: 17 or 18 bytes more for a put of this
// size), so a put whose request alone is just under the limit is refused.
func TestRequestTooLargeCountsEtcdsWrapping(t *testing.T) {
	const limit = 4096
	f, cli, _ := setup(t, gateway.Config{MaxRequestBytes: limit})
	ctx := testCtx(t)
	// The PutRequest's size is 1+1+len(key) + 1+2+len(value) = len(value)+6.
	if _, err := cli.Put(ctx, "k", strings.Repeat("x", limit-6-8)); !errors.Is(err, rpctypes.ErrRequestTooLarge) {
		t.Fatalf("put 8 bytes under the limit: %v, want ErrRequestTooLarge", err)
	}
	before := f.calls.Load()
	if _, err := cli.Put(ctx, "k", strings.Repeat("x", limit-6-18)); err != nil {
		t.Fatalf("put 18 bytes under the limit: %v", err)
	}
	if f.calls.Load() != before+1 {
		t.Fatal("the put within the limit did not reach the backend")
	}
}

func TestUnimplemented(t *testing.T) {
	_, cli, _ := setup(t, gateway.Config{})
	ctx := testCtx(t)
	conn := cli.ActiveConnection()
	calls := map[string]func() error{
		"LeaseTimeToLive": func() error { _, err := cli.TimeToLive(ctx, 1); return err },
		"AuthStatus":      func() error { _, err := cli.AuthStatus(ctx); return err },
		"Lock": func() error {
			_, err := v3lockpb.NewLockClient(conn).Lock(ctx, &v3lockpb.LockRequest{Name: []byte("l")})
			return err
		},
		"Campaign": func() error {
			_, err := v3electionpb.NewElectionClient(conn).Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("e")})
			return err
		},
		"Watch": func() error {
			w, err := pb.NewWatchClient(conn).Watch(ctx)
			if err != nil {
				return err
			}
			_, err = w.Recv()
			return err
		},
		"unknown method": func() error {
			return conn.Invoke(ctx, "/etcdserverpb.KV/Nope", &pb.RangeRequest{}, &pb.RangeResponse{})
		},
		"unknown service": func() error {
			return conn.Invoke(ctx, "/nope.Service/Method", &pb.RangeRequest{}, &pb.RangeResponse{})
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			if err := call(); status.Code(err) != codes.Unimplemented {
				t.Fatalf("err = %v, want code Unimplemented", err)
			}
		})
	}
}

// receiveOnceWatch ends a Watch stream with what its first Receive returns,
// as the watch fan-out's stream does with an error.
type receiveOnceWatch struct {
	etcdserverpbconnect.UnimplementedWatchHandler
}

func (receiveOnceWatch) Watch(_ context.Context, s *connect.BidiStream[pb.WatchRequest, pb.WatchResponse]) error {
	_, err := s.Receive()
	return err
}

// rawCodec sends and receives message bytes as they are, so a test can send
// what no generated client would.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(b []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), b...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// TestGRPCGoAnswers checks the answers that come from grpc-go itself in
// etcd, not from etcd's code, word for word: an unknown service or method,
// and a request message that does not decode or is over the transport's
// size limit, in a unary call and in a stream (tests/e2e compares them with
// a real etcd).
func TestGRPCGoAnswers(t *testing.T) {
	addr := startGateway(t, gateway.Config{}, newFake(), gateway.WithWatch(receiveOnceWatch{}))
	cli := newClient(t, addr)
	ctx := testCtx(t)
	conn := cli.ActiveConnection()
	unary := func(method string, msg []byte) error {
		var out []byte
		return conn.Invoke(ctx, method, &msg, &out, grpc.ForceCodec(rawCodec{}))
	}
	watch := func(msg []byte) error {
		s, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
			etcdserverpbconnect.WatchWatchProcedure, grpc.ForceCodec(rawCodec{}))
		if err != nil {
			return err
		}
		if err := s.SendMsg(&msg); err != nil {
			return err
		}
		var out []byte
		return s.RecvMsg(&out)
	}
	garbage := []byte{0xff, 0xff, 0xff}
	badUTF8 := []byte{0x0a, 0x01, 0xff} // AuthUserAddRequest.name is a string
	// The transport's limit is etcd's: the request limit plus 512 KiB.
	limit := gateway.DefaultMaxRequestBytes + 512<<10
	huge := make([]byte, limit+1)
	incompressible := make([]byte, limit+1)
	rand.NewChaCha8([32]byte{1}).Read(incompressible)
	unaryCompressed := func(method string, msg []byte) error {
		var out []byte
		return conn.Invoke(ctx, method, &msg, &out, grpc.ForceCodec(rawCodec{}), grpc.UseCompressor(gzip.Name))
	}
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{
		{"unknown service", unary("/nope.Service/Method", nil), codes.Unimplemented, "unknown service nope.Service"},
		{"unknown method", unary("/etcdserverpb.KV/Nope", nil), codes.Unimplemented, "unknown method Nope for service etcdserverpb.KV"},
		{"malformed unary", unary(etcdserverpbconnect.KVPutProcedure, garbage), codes.Internal,
			"grpc: error unmarshalling request: proto: cannot parse invalid wire-format data"},
		{"invalid UTF-8", unary(etcdserverpbconnect.AuthUserAddProcedure, badUTF8), codes.Internal,
			"grpc: error unmarshalling request: string field contains invalid UTF-8"},
		{"malformed stream message", watch(garbage), codes.Internal,
			"grpc: failed to unmarshal the received message: proto: cannot parse invalid wire-format data"},
		{"too large", unary(etcdserverpbconnect.KVPutProcedure, huge), codes.ResourceExhausted,
			fmt.Sprintf("grpc: received message larger than max (%d vs. %d)", len(huge), limit)},
		{"too large in a stream", watch(huge), codes.ResourceExhausted,
			fmt.Sprintf("grpc: received message larger than max (%d vs. %d)", len(huge), limit)},
		// Compressed: within the limit on the wire, over it decompressed
		// (grpc-go words it without the size, which it stops reading at).
		{"too large decompressed", unaryCompressed(etcdserverpbconnect.KVPutProcedure, huge), codes.ResourceExhausted,
			fmt.Sprintf("grpc: received message after decompression larger than max %d", limit)},
		{"too large compressed", unaryCompressed(etcdserverpbconnect.KVPutProcedure, incompressible), codes.ResourceExhausted,
			fmt.Sprintf("grpc: received message larger than max (%d vs. %d)", len(incompressible)+gzipOverhead(t, incompressible), limit)},
	} {
		// protobuf-go words its errors with a space or a no-break space,
		// chosen per binary, so that nobody matches them; etcd's too.
		st := status.Convert(tc.err)
		if msg := strings.ReplaceAll(st.Message(), "\u00a0", " "); st.Code() != tc.code || msg != tc.msg {
			t.Errorf("%s: got %v %q, want %v %q", tc.name, st.Code(), st.Message(), tc.code, tc.msg)
		}
	}
	// gRPC-Web (trailers-only response: the status is in the headers).
	frame := append([]byte{0, 0, 0, 0, byte(len(garbage))}, garbage...)
	req, err := http.NewRequestWithContext(ctx, "POST", "http://"+addr+etcdserverpbconnect.KVRangeProcedure, bytes.NewReader(frame))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc-web+proto")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if code, msg := resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message"); code != "13" ||
		strings.ReplaceAll(msg, "%C2%A0", " ") != "grpc: error unmarshalling request: proto: cannot parse invalid wire-format data" {
		t.Errorf("gRPC-Web: grpc-status %q, grpc-message %q", code, msg)
	}
	// A request that decodes is not touched, and neither is another error
	// with InvalidArgument.
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put after malformed requests: %v", err)
	}
	if _, err := cli.Put(ctx, "", "v"); !errors.Is(err, rpctypes.ErrEmptyKey) {
		t.Fatalf("empty key: %v, want %v", err, rpctypes.ErrEmptyKey)
	}
}

func TestRequireLeader(t *testing.T) {
	f, cli, _ := setup(t, gateway.Config{})
	ctx := testCtx(t)
	f.leader.Store(0)
	lctx := clientv3.WithRequireLeader(ctx)

	// Put: clientv3 does not retry Unavailable for mutating calls.
	if _, err := cli.Put(lctx, "a", "1"); !errors.Is(err, rpctypes.ErrNoLeader) {
		t.Fatalf("put with hasleader and no leader: %v, want ErrNoLeader", err)
	}
	// Without the metadata the request goes through.
	if _, err := cli.Put(ctx, "a", "1"); err != nil {
		t.Fatalf("put without hasleader: %v", err)
	}
	// Streams are gated too (Watch itself is unimplemented, so a leader
	// turns the error into Unimplemented).
	watch := func() error {
		w, err := pb.NewWatchClient(cli.ActiveConnection()).Watch(metadata.AppendToOutgoingContext(ctx, rpctypes.MetadataRequireLeaderKey, rpctypes.MetadataHasLeader))
		if err != nil {
			return err
		}
		_, err = w.Recv()
		return rpctypes.Error(err)
	}
	if err := watch(); !errors.Is(err, rpctypes.ErrNoLeader) {
		t.Fatalf("watch with hasleader and no leader: %v, want ErrNoLeader", err)
	}
	f.leader.Store(3)
	if _, err := cli.Put(lctx, "a", "2"); err != nil {
		t.Fatalf("put with hasleader and a leader: %v", err)
	}
	if err := watch(); status.Code(err) != codes.Unimplemented {
		t.Fatalf("watch with a leader: %v, want Unimplemented", err)
	}
}

func httpGet(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func TestHTTPEndpoints(t *testing.T) {
	f, cli, addr := setup(t, gateway.Config{})
	ctx := testCtx(t)
	base := "http://" + addr
	t.Cleanup(http.DefaultClient.CloseIdleConnections)

	wantHealth := func(url string, code int, health, reason string) {
		t.Helper()
		got, body, _ := httpGet(t, url)
		var h struct{ Health, Reason string }
		if err := json.Unmarshal([]byte(body), &h); err != nil {
			t.Fatalf("%s: body %q: %v", url, body, err)
		}
		if got != code || h.Health != health || h.Reason != reason {
			t.Fatalf("%s = %d %q, want %d health=%s reason=%q", url, got, body, code, health, reason)
		}
	}
	code, body, _ := httpGet(t, base+"/health")
	if code != 200 || body != `{"health":"true","reason":""}` {
		t.Fatalf("/health = %d %q", code, body)
	}

	f.leader.Store(0)
	wantHealth(base+"/health", 503, "false", "RAFT NO LEADER")
	wantHealth(base+"/health?serializable=true", 200, "true", "")
	f.leader.Store(1)

	if _, err := cli.AlarmDisarm(ctx, &clientv3.AlarmMember{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pb.NewMaintenanceClient(cli.ActiveConnection()).Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: 1, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	wantHealth(base+"/health", 503, "false", "ALARM NOSPACE")
	wantHealth(base+"/health?exclude=NOSPACE", 200, "true", "")

	f.setErr(consensus.ErrTimeout)
	wantHealth(base+"/health?exclude=NOSPACE", 503, "false", "ALARM ERROR:etcdserver: request timed out")
	f.setErr(nil)

	if code, body, _ := httpGet(t, base+"/livez"); code != 200 || body != "ok\n" {
		t.Fatalf("/livez = %d %q", code, body)
	}
	if code, body, _ := httpGet(t, base+"/readyz?verbose"); code != 200 || !strings.Contains(body, "[+]linearizable_read ok") {
		t.Fatalf("/readyz?verbose = %d %q", code, body)
	}
	if code, body, _ := httpGet(t, base+"/readyz/serializable_read"); code != 200 || body != "ok\n" {
		t.Fatalf("/readyz/serializable_read = %d %q", code, body)
	}
	f.setErr(consensus.ErrNoLeader)
	if code, body, _ := httpGet(t, base+"/readyz"); code != 503 || !strings.Contains(body, "[-]linearizable_read failed: etcdserver: no leader") {
		t.Fatalf("/readyz with failing reads = %d %q", code, body)
	}
	f.setErr(nil)

	code, body, hdr := httpGet(t, base+"/version")
	if code != 200 || body != `{"etcdserver":"3.7.3","etcdcluster":"3.7.0","storage":"3.7.0"}` || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("/version = %d %q %v", code, body, hdr)
	}
	resp, err := http.Post(base+"/health", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /health = %d", resp.StatusCode)
	}
}

func TestConnectJSON(t *testing.T) {
	_, cli, addr := setup(t, gateway.Config{})
	ctx := testCtx(t)
	t.Cleanup(http.DefaultClient.CloseIdleConnections)
	if _, err := cli.Put(ctx, "foo", "bar"); err != nil {
		t.Fatal(err)
	}
	post := func(path, body string) (int, []byte) {
		resp, err := http.Post("http://"+addr+path, "application/json", bytes.NewBufferString(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	code, body := post("/etcdserverpb.KV/Range", `{"key":"Zm9v"}`) // "foo"
	if code != 200 {
		t.Fatalf("range = %d %s", code, body)
	}
	var rr pb.RangeResponse
	if err := protojson.Unmarshal(body, &rr); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	if len(rr.Kvs) != 1 || string(rr.Kvs[0].Value) != "bar" || rr.Header.Revision != 2 {
		t.Fatalf("range response = %v", &rr)
	}

	code, body = post("/etcdserverpb.KV/Range", `{}`)
	var ce struct{ Code, Message string }
	if err := json.Unmarshal(body, &ce); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	if code != 400 || ce.Code != "invalid_argument" || ce.Message != "etcdserver: key is not provided" {
		t.Fatalf("empty key = %d %s", code, body)
	}

	code, body = post("/etcdserverpb.Lease/LeaseTimeToLive", `{"ID":"1"}`)
	if err := json.Unmarshal(body, &ce); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	if code != 501 || ce.Code != "unimplemented" {
		t.Fatalf("unimplemented = %d %s", code, body)
	}
}

// errorTable restates the contract: backend sentinel -> the typed error
// clientv3 must see.
var errorTable = []struct {
	from error
	grpc error // rpctypes.ErrGRPC*
	want error // what clientv3 returns
}{
	{storage.ErrCompacted, rpctypes.ErrGRPCCompacted, rpctypes.ErrCompacted},
	{storage.ErrFutureRev, rpctypes.ErrGRPCFutureRev, rpctypes.ErrFutureRev},
	{storage.ErrLeaseNotFound, rpctypes.ErrGRPCLeaseNotFound, rpctypes.ErrLeaseNotFound},
	{storage.ErrLeaseExists, rpctypes.ErrGRPCLeaseExist, rpctypes.ErrLeaseExist},
	{storage.ErrKeyNotFound, rpctypes.ErrGRPCKeyNotFound, rpctypes.ErrKeyNotFound},
	{storage.ErrClosed, rpctypes.ErrGRPCStopped, rpctypes.ErrStopped},
	{consensus.ErrNoSpace, rpctypes.ErrGRPCNoSpace, rpctypes.ErrNoSpace},
	{consensus.ErrCorrupt, rpctypes.ErrGRPCCorrupt, rpctypes.ErrCorrupt},
	{consensus.ErrNoLeader, rpctypes.ErrGRPCNoLeader, rpctypes.ErrNoLeader},
	{consensus.ErrTimeout, rpctypes.ErrGRPCTimeout, rpctypes.ErrTimeout},
	{consensus.ErrStopped, rpctypes.ErrGRPCStopped, rpctypes.ErrStopped},
	{consensus.ErrTooManyRequests, rpctypes.ErrGRPCRequestTooManyRequests, rpctypes.ErrTooManyRequests},
	{consensus.ErrLeaseTTLTooLarge, rpctypes.ErrGRPCLeaseTTLTooLarge, rpctypes.ErrLeaseTTLTooLarge},
}

func TestTranslateError(t *testing.T) {
	check := func(t *testing.T, err error, code connect.Code, msg string) {
		t.Helper()
		var ce *connect.Error
		if !errors.As(err, &ce) {
			t.Fatalf("%v (%T) is not a *connect.Error", err, err)
		}
		if ce.Code() != code || ce.Message() != msg {
			t.Fatalf("got %v %q, want %v %q", ce.Code(), ce.Message(), code, msg)
		}
	}
	for _, e := range errorTable {
		t.Run(e.from.Error(), func(t *testing.T) {
			s := status.Convert(e.grpc)
			check(t, gateway.TranslateError(fmt.Errorf("layer: %w", e.from)), connect.Code(s.Code()), s.Message())
		})
	}
	t.Run("nil", func(t *testing.T) {
		if err := gateway.TranslateError(nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("context", func(t *testing.T) {
		check(t, gateway.TranslateError(fmt.Errorf("wait: %w", context.Canceled)), connect.CodeCanceled, "wait: context canceled")
		check(t, gateway.TranslateError(context.DeadlineExceeded), connect.CodeDeadlineExceeded, "context deadline exceeded")
	})
	t.Run("grpc status passes through", func(t *testing.T) {
		s := status.Convert(rpctypes.ErrGRPCPermissionDenied)
		check(t, gateway.TranslateError(rpctypes.ErrGRPCPermissionDenied), connect.Code(s.Code()), s.Message())
	})
	t.Run("connect error passes through", func(t *testing.T) {
		in := connect.NewError(connect.CodeAborted, errors.New("x"))
		if out := gateway.TranslateError(fmt.Errorf("w: %w", in)); out != in {
			t.Fatalf("got %v", out)
		}
	})
	t.Run("other", func(t *testing.T) {
		check(t, gateway.TranslateError(errors.New("disk on fire")), connect.CodeUnknown, "disk on fire")
	})
}

// TestErrorsOverTheWire sends every table sentinel through a real
// clientv3 call and checks the typed error it arrives as.
func TestErrorsOverTheWire(t *testing.T) {
	f, cli, _ := setup(t, gateway.Config{})
	ctx := testCtx(t)
	for _, e := range errorTable {
		t.Run(e.from.Error(), func(t *testing.T) {
			f.setErr(fmt.Errorf("backend: %w", e.from))
			defer f.setErr(nil)
			// Put: clientv3 does not retry mutating calls, so Unavailable
			// errors arrive as they are.
			if _, err := cli.Put(ctx, "k", "v"); !errors.Is(err, e.want) {
				t.Fatalf("put: %v, want %v", err, e.want)
			}
		})
	}
	// (Context errors are covered by TestTranslateError: clientv3 retries a
	// server-sent DeadlineExceeded/Canceled until its own context ends.)
	f.setErr(errors.New("disk on fire"))
	if _, err := cli.Put(ctx, "k", "v"); status.Code(err) != codes.Unknown || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("put: %v, want Unknown", err)
	}
}

func TestConfig(t *testing.T) {
	var c gateway.Config
	c.SetDefaults()
	if c.MaxRequestBytes != 1572864 || c.MaxTxnOps != 128 || c.MaxConcurrentStreams != 1<<32-1 || c.Logger == nil {
		t.Fatalf("defaults = %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := c
	bad.MaxTxnOps = -1
	if err := bad.Validate(); !errors.Is(err, gateway.ErrInvalidConfig) {
		t.Fatalf("Validate = %v", err)
	}
	if _, err := gateway.New(bad, newFake()); !errors.Is(err, gateway.ErrInvalidConfig) {
		t.Fatalf("New = %v", err)
	}
	if _, err := gateway.New(gateway.Config{}, nil); !errors.Is(err, gateway.ErrInvalidConfig) {
		t.Fatalf("New(nil backend) = %v", err)
	}
}

func TestServeAfterClose(t *testing.T) {
	g, err := gateway.New(gateway.Config{}, newFake())
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Serve(context.Background(), ln); !errors.Is(err, gateway.ErrClosed) {
		t.Fatalf("Serve after Close = %v", err)
	}
}

// TestCloseStopsServe: Close ends a running Serve, which returns nil.
func TestCloseStopsServe(t *testing.T) {
	f := newFake()
	g, err := gateway.New(gateway.Config{}, f)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.Serve(context.Background(), ln) }()
	cli := newClient(t, ln.Addr().String())
	if _, err := cli.Put(testCtx(t), "a", "b"); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
}

// consensus.Node is the production backend.
var _ gateway.Backend = (*consensus.Node)(nil)

// oneEventWatch answers every create request with "created" and one put
// event of the watched key.
type oneEventWatch struct {
	etcdserverpbconnect.UnimplementedWatchHandler
}

func (oneEventWatch) Watch(_ context.Context, s *connect.BidiStream[pb.WatchRequest, pb.WatchResponse]) error {
	for id := int64(0); ; id++ {
		req, err := s.Receive()
		if err != nil {
			return nil // client closed its side
		}
		cr := req.GetCreateRequest()
		if cr == nil {
			continue
		}
		hdr := &pb.ResponseHeader{Revision: 5}
		if err := s.Send(&pb.WatchResponse{Header: hdr, WatchId: id, Created: true}); err != nil {
			return err
		}
		ev := &mvccpb.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: cr.Key, Value: []byte("v"), ModRevision: 5}}
		if err := s.Send(&pb.WatchResponse{Header: hdr, WatchId: id, Events: []*mvccpb.Event{ev}}); err != nil {
			return err
		}
	}
}

func TestWithWatch(t *testing.T) {
	f := newFake()
	g, err := gateway.New(gateway.Config{}, f, gateway.WithWatch(oneEventWatch{}))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	cli := newClient(t, ln.Addr().String())
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	wr, ok := <-cli.Watch(wctx, "a")
	if !ok || wr.Err() != nil || len(wr.Events) != 1 || string(wr.Events[0].Kv.Key) != "a" {
		t.Fatalf("watch response = %+v ok=%v", wr, ok)
	}
	wcancel()
	cli.Close()
}

// gzipOverhead is what gzip adds to b as grpc-go's compressor writes it.
func gzipOverhead(t *testing.T, b []byte) int {
	var buf bytes.Buffer
	w := gogzip.NewWriter(&buf)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Len() - len(b)
}

// A gRPC response is compressed only when its request was, as grpc-go
// (etcd) answers: a client that merely accepts gzip gets plain messages.
func TestResponseCompressedOnlyForCompressedRequest(t *testing.T) {
	addr := startGateway(t, gateway.Config{}, newFake())
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	msg, err := proto.Marshal(&pb.RangeRequest{Key: []byte("k")})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name       string
		compressed bool
	}{{"plain request", false}, {"gzip request", true}} {
		flag, payload := byte(0), msg
		if c.compressed {
			var buf bytes.Buffer
			w := gogzip.NewWriter(&buf)
			w.Write(msg)
			w.Close()
			flag, payload = 1, buf.Bytes()
		}
		body := append([]byte{flag, 0, 0, 0, 0}, payload...)
		binary.BigEndian.PutUint32(body[1:5], uint32(len(payload)))
		req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/etcdserverpb.KV/Range", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		req.Header.Set("Grpc-Accept-Encoding", "gzip")
		if c.compressed {
			req.Header.Set("Grpc-Encoding", "gzip")
		}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || len(out) < 5 || resp.Trailer.Get("Grpc-Status") != "0" {
			t.Fatalf("%s: %d bytes, err %v, grpc-status %q", c.name, len(out), err, resp.Trailer.Get("Grpc-Status"))
		}
		gotCompressed := out[0] == 1 && resp.Header.Get("Grpc-Encoding") == "gzip"
		if gotCompressed != c.compressed || (out[0] == 0) != (resp.Header.Get("Grpc-Encoding") == "") {
			t.Errorf("%s: response flag %d, grpc-encoding %q; want compressed %v", c.name, out[0], resp.Header.Get("Grpc-Encoding"), c.compressed)
		}
	}
}
