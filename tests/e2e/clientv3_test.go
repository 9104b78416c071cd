package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// testTimeout bounds the RPCs of one subtest.
const testTimeout = 90 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// forEachImpl runs fn as subtest "etcd" and "concord", each with its own fresh server.
func forEachImpl(t *testing.T, opts serverOptions, fn func(t *testing.T, s *Server)) {
	t.Parallel()
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			fn(t, startServer(t, im, opts))
		})
	}
}

// must turns a (value, error) result into the value, failing the test on error:
// must(c.Get(ctx, "k"))(t). Curried because Go cannot pass t alongside a multi-value call.
func must[T any](v T, err error) func(t testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// wantErr fails unless err is the typed clientv3 error want.
func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: got error %v, want %v", what, err, want)
	}
}

// currentRev reads the store's revision.
func currentRev(ctx context.Context, t *testing.T, c *clientv3.Client) int64 {
	t.Helper()
	return must(c.Get(ctx, "any"))(t).Header.Revision
}

func TestClientKV(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)

		put := must(c.Put(ctx, "k1", "v1"))(t)
		if h := put.Header; h.Revision != 2 || h.ClusterId == 0 || h.MemberId == 0 || h.RaftTerm == 0 {
			t.Errorf("first put header = %v, want revision 2 and non-zero cluster_id, member_id, raft_term", h)
		}
		put = must(c.Put(ctx, "k1", "v2", clientv3.WithPrevKV()))(t)
		if put.Header.Revision != 3 || put.PrevKv == nil || string(put.PrevKv.Value) != "v1" || put.PrevKv.ModRevision != 2 {
			t.Errorf("put with prev kv = %v", put)
		}
		must(c.Put(ctx, "k2", "x"))(t)
		must(c.Put(ctx, "k3", "y"))(t)

		get := must(c.Get(ctx, "k1"))(t)
		if len(get.Kvs) != 1 || get.Count != 1 {
			t.Fatalf("get k1 = %v", get)
		}
		if kv := get.Kvs[0]; string(kv.Value) != "v2" || kv.CreateRevision != 2 || kv.ModRevision != 3 || kv.Version != 2 || kv.Lease != 0 {
			t.Errorf("k1 = %v, want v2 created at 2, modified at 3, version 2", kv)
		}
		get = must(c.Get(ctx, "k", clientv3.WithPrefix(), clientv3.WithLimit(2), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend)))(t)
		if len(get.Kvs) != 2 || !get.More || get.Count != 3 || string(get.Kvs[0].Key) != "k3" || string(get.Kvs[1].Key) != "k2" {
			t.Errorf("sorted limited get = %v", get)
		}
		get = must(c.Get(ctx, "k1", clientv3.WithRev(2)))(t)
		if len(get.Kvs) != 1 || string(get.Kvs[0].Value) != "v1" || get.Header.Revision != 5 {
			t.Errorf("get k1 at rev 2 = %v", get)
		}
		get = must(c.Get(ctx, "k", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithSerializable()))(t)
		if get.Count != 3 || len(get.Kvs) != 0 {
			t.Errorf("serializable count = %v", get)
		}

		del := must(c.Delete(ctx, "k2", clientv3.WithFromKey(), clientv3.WithPrevKV()))(t)
		if del.Deleted != 2 || len(del.PrevKvs) != 2 || del.Header.Revision != 6 {
			t.Errorf("delete from k2 = %v, want 2 deleted at revision 6", del)
		}
		del = must(c.Delete(ctx, "nothing"))(t)
		if del.Deleted != 0 || del.Header.Revision != 6 {
			t.Errorf("delete of a missing key = %v, want nothing at revision 6", del)
		}

		txn := must(c.Txn(ctx).If(
			clientv3.Compare(clientv3.Value("k1"), "=", "v2"),
			clientv3.Compare(clientv3.Version("k1"), ">", 1),
			clientv3.Compare(clientv3.CreateRevision("k1"), "=", 2),
			clientv3.Compare(clientv3.ModRevision("k1"), "<", 4),
		).Then(
			clientv3.OpPut("t1", "a"),
			clientv3.OpGet("k1"),
			clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("t2", "b")}, nil),
		).Else(clientv3.OpDelete("k1")).Commit())(t)
		if !txn.Succeeded || txn.Header.Revision != 7 || len(txn.Responses) != 3 {
			t.Fatalf("txn = %v, want success at revision 7 with 3 responses", txn)
		}
		if r := txn.Responses[1].GetResponseRange(); r == nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v2" {
			t.Errorf("txn get response = %v", txn.Responses[1])
		}
		if r := txn.Responses[2].GetResponseTxn(); r == nil || !r.Succeeded || len(r.Responses) != 1 {
			t.Errorf("nested txn response = %v", txn.Responses[2])
		}
		// etcd fills only the outer header: a nested txn's header is present but empty, and
		// the responses inside it carry just a revision.
		if r := txn.Responses[2].GetResponseTxn(); r != nil && len(r.Responses) == 1 {
			if h := r.Header; h == nil || h.Revision != 0 || h.ClusterId != 0 || h.MemberId != 0 || h.RaftTerm != 0 {
				t.Errorf("nested txn header = %v, want present and empty", h)
			}
			if h := r.Responses[0].GetResponsePut().GetHeader(); h == nil || h.Revision != 7 || h.ClusterId != 0 || h.MemberId != 0 || h.RaftTerm != 0 {
				t.Errorf("nested put header = %v, want revision 7 only", h)
			}
		}
		if h := txn.Responses[0].GetResponsePut().GetHeader(); h == nil || h.Revision != 7 || h.ClusterId != 0 || h.MemberId != 0 || h.RaftTerm != 0 {
			t.Errorf("put header inside a txn = %v, want revision 7 only", h)
		}
		get = must(c.Get(ctx, "t", clientv3.WithPrefix()))(t)
		if len(get.Kvs) != 2 || get.Kvs[0].ModRevision != 7 || get.Kvs[1].ModRevision != 7 {
			t.Errorf("both puts of the txn (one nested) must share revision 7: %v", get.Kvs)
		}
		txn = must(c.Txn(ctx).If(clientv3.Compare(clientv3.Value("k1"), "=", "nope")).
			Then(clientv3.OpPut("never", "x")).Else(clientv3.OpGet("k1")).Commit())(t)
		if txn.Succeeded || txn.Header.Revision != 7 || len(txn.Responses) != 1 {
			t.Errorf("failing read-only txn = %v, want failure at revision 7", txn)
		}
	})
}

func TestClientErrors(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		for i := range 5 {
			must(c.Put(ctx, "a", fmt.Sprint(i)))(t)
		}
		rev := currentRev(ctx, t, c) // 6

		_, err := c.Get(ctx, "a", clientv3.WithRev(rev+1))
		wantErr(t, "get at a future revision", err, rpctypes.ErrFutureRev)
		_, err = c.Txn(ctx).Then(clientv3.OpGet("a", clientv3.WithRev(rev+5))).Commit()
		wantErr(t, "txn get at a future revision", err, rpctypes.ErrFutureRev)
		_, err = c.Compact(ctx, rev+1)
		wantErr(t, "compact at a future revision", err, rpctypes.ErrFutureRev)

		must(c.Compact(ctx, 4))(t)
		_, err = c.Get(ctx, "a", clientv3.WithRev(3))
		wantErr(t, "get below the compacted revision", err, rpctypes.ErrCompacted)
		_, err = c.Compact(ctx, 4)
		wantErr(t, "compact at the compacted revision", err, rpctypes.ErrCompacted)
		if get := must(c.Get(ctx, "a", clientv3.WithRev(4)))(t); len(get.Kvs) != 1 || string(get.Kvs[0].Value) != "2" {
			t.Errorf("get at the compacted revision = %v", get)
		}

		_, err = c.Put(ctx, "", "v")
		wantErr(t, "put of an empty key", err, rpctypes.ErrEmptyKey)
		_, err = c.Get(ctx, "")
		wantErr(t, "get of an empty key", err, rpctypes.ErrEmptyKey)
		_, err = c.Delete(ctx, "")
		wantErr(t, "delete of an empty key", err, rpctypes.ErrEmptyKey)

		_, err = c.Put(ctx, "big", strings.Repeat("x", tooLargeValue))
		wantErr(t, "put of a value over 1.5 MiB", err, rpctypes.ErrRequestTooLarge)

		var ops []clientv3.Op
		for i := range 129 {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("op%d", i), "v"))
		}
		_, err = c.Txn(ctx).Then(ops...).Commit()
		wantErr(t, "txn with 129 ops", err, rpctypes.ErrTooManyOps)
		must(c.Txn(ctx).Then(ops[:128]...).Commit())(t)
		rev = currentRev(ctx, t, c)

		_, err = c.Txn(ctx).Then(clientv3.OpPut("d", "1"), clientv3.OpPut("d", "2")).Commit()
		wantErr(t, "txn putting one key twice", err, rpctypes.ErrDuplicateKey)
		_, err = c.Txn(ctx).Then(clientv3.OpPut("d/1", "1"), clientv3.OpDelete("d/", clientv3.WithPrefix())).Commit()
		wantErr(t, "txn putting a key it deletes", err, rpctypes.ErrDuplicateKey)

		_, err = c.Put(ctx, "leased", "v", clientv3.WithLease(0x1234))
		wantErr(t, "put with an unknown lease", err, rpctypes.ErrLeaseNotFound)
		_, err = c.Txn(ctx).Then(clientv3.OpPut("leased", "v", clientv3.WithLease(0x1234))).Commit()
		wantErr(t, "txn put with an unknown lease", err, rpctypes.ErrLeaseNotFound)
		_, err = c.Revoke(ctx, 0x1234)
		wantErr(t, "revoke of an unknown lease", err, rpctypes.ErrLeaseNotFound)

		_, err = c.Put(ctx, "missing", "", clientv3.WithIgnoreValue())
		wantErr(t, "put ignoring the value of a missing key", err, rpctypes.ErrKeyNotFound)

		if got := currentRev(ctx, t, c); got != rev {
			t.Errorf("failed requests changed the revision from %d to %d", rev, got)
		}
		if get := must(c.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithCountOnly()))(t); get.Count != 129 {
			t.Errorf("store holds %d keys, want a and op0..op127 (failed requests must write nothing)", get.Count)
		}
	})
}

func TestClientLease(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)

		lease := must(c.Grant(ctx, 600))(t)
		if lease.ID == 0 || lease.TTL != 600 {
			t.Fatalf("grant = %v", lease)
		}
		must(c.Put(ctx, "l/1", "a", clientv3.WithLease(lease.ID)))(t)
		must(c.Put(ctx, "l/2", "b", clientv3.WithLease(lease.ID)))(t)
		must(c.Put(ctx, "l/1", "c", clientv3.WithIgnoreLease()))(t)
		must(c.Put(ctx, "plain", "x"))(t)
		get := must(c.Get(ctx, "l/", clientv3.WithPrefix()))(t)
		if len(get.Kvs) != 2 || get.Kvs[0].Lease != int64(lease.ID) || get.Kvs[1].Lease != int64(lease.ID) || string(get.Kvs[0].Value) != "c" {
			t.Errorf("leased keys = %v, want both attached to lease %x", get.Kvs, lease.ID)
		}
		txn := must(c.Txn(ctx).If(
			clientv3.Compare(clientv3.LeaseValue("l/1"), "=", lease.ID),
			clientv3.Compare(clientv3.LeaseValue("plain"), "=", clientv3.NoLease),
		).Commit())(t)
		if !txn.Succeeded {
			t.Errorf("lease compares failed: %v", txn)
		}
		leases := must(c.Leases(ctx))(t)
		if len(leases.Leases) != 1 || leases.Leases[0].ID != lease.ID {
			t.Errorf("leases = %v", leases.Leases)
		}
		_, err := c.Grant(ctx, 60)
		if err != nil {
			t.Errorf("second grant: %v", err)
		}

		rev := currentRev(ctx, t, c)
		must(c.Revoke(ctx, lease.ID))(t)
		if got := currentRev(ctx, t, c); got != rev+1 {
			t.Errorf("revoking a lease with two keys moved the revision from %d to %d, want one revision", rev, got)
		}
		if get := must(c.Get(ctx, "l/", clientv3.WithPrefix()))(t); len(get.Kvs) != 0 {
			t.Errorf("keys of a revoked lease survive: %v", get.Kvs)
		}
		_, err = c.Put(ctx, "l/3", "v", clientv3.WithLease(lease.ID))
		wantErr(t, "put with a revoked lease", err, rpctypes.ErrLeaseNotFound)
	})
}

func TestClientMaintenance(t *testing.T) {
	forEachImpl(t, serverOptions{name: "m1"}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		must(c.Put(ctx, "a", "1"))(t)

		st := must(c.Status(ctx, s.Endpoint()))(t)
		if !strings.HasPrefix(st.Version, "3.7") {
			t.Errorf("status version %q, want 3.7.x (clientv3 3.7 checks it)", st.Version)
		}
		if st.Header.MemberId == 0 || st.Leader != st.Header.MemberId {
			t.Errorf("status leader %x, member %x: a single member must lead", st.Leader, st.Header.MemberId)
		}
		if st.DbSizeQuota != 2<<30 || st.DbSize <= 0 || st.RaftIndex == 0 || st.RaftTerm == 0 || st.IsLearner || len(st.Errors) != 0 {
			t.Errorf("status = %v", st)
		}
		if st.Header.Revision != 2 {
			t.Errorf("status revision %d, want 2", st.Header.Revision)
		}

		members := must(c.MemberList(ctx))(t)
		if len(members.Members) != 1 {
			t.Fatalf("members = %v", members.Members)
		}
		m := members.Members[0]
		if m.ID != st.Header.MemberId || m.Name != "m1" || len(m.PeerURLs) != 1 || m.PeerURLs[0] != s.peerURL() ||
			len(m.ClientURLs) != 1 || m.ClientURLs[0] != s.clientURL() || m.IsLearner {
			t.Errorf("member = %v", m)
		}

		// WithRequireLeader: works while there is a leader.
		lctx := clientv3.WithRequireLeader(ctx)
		must(c.Put(lctx, "b", "2"))(t)
		if get := must(c.Get(lctx, "b"))(t); len(get.Kvs) != 1 {
			t.Errorf("get with require-leader = %v", get)
		}

		h1 := must(c.HashKV(ctx, s.Endpoint(), 0))(t)
		h2 := must(c.HashKV(ctx, s.Endpoint(), 0))(t)
		if h1.Hash != h2.Hash || h1.HashRevision != 3 || h1.CompactRevision != -1 {
			t.Errorf("hashkv = %v then %v, want a stable hash at revision 3, compact revision -1", h1, h2)
		}
		must(c.Put(ctx, "c", "3"))(t)
		h3 := must(c.HashKV(ctx, s.Endpoint(), 3))(t)
		if h3.Hash != h1.Hash || h3.HashRevision != 3 {
			t.Errorf("hashkv at revision 3 after a later put = %v, want %v", h3, h1)
		}

		alarms := must(c.AlarmList(ctx))(t)
		if len(alarms.Alarms) != 0 {
			t.Errorf("alarms = %v", alarms.Alarms)
		}
		must(c.Defragment(ctx, s.Endpoint()))(t)
		if get := must(c.Get(ctx, "", clientv3.WithFromKey()))(t); get.Count != 3 {
			t.Errorf("after defragment: %v", get)
		}
	})
}

// TestClientNoSpace checks the typed error and the alarm through clientv3 (the etcdctl
// scenario checks the outputs).
func TestClientNoSpace(t *testing.T) {
	forEachImpl(t, serverOptions{extra: []string{fmt.Sprintf("--quota-backend-bytes=%d", noSpaceQuota)}}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		must(c.Put(ctx, "small", "1"))(t)
		_, err := c.Put(ctx, "big", strings.Repeat("z", overQuotaValueSz))
		wantErr(t, "put over the quota", err, rpctypes.ErrNoSpace)
		alarms := must(c.AlarmList(ctx))(t)
		if len(alarms.Alarms) != 1 || alarms.Alarms[0].Alarm != pb.AlarmType_NOSPACE {
			t.Fatalf("alarms = %v, want one NOSPACE", alarms.Alarms)
		}
		_, err = c.Put(ctx, "small2", "1")
		wantErr(t, "small put while NOSPACE is raised", err, rpctypes.ErrNoSpace)
		_, err = c.Grant(ctx, 60)
		wantErr(t, "lease grant while NOSPACE is raised", err, rpctypes.ErrNoSpace)
		st := must(c.Status(ctx, s.Endpoint()))(t)
		if st.DbSizeQuota != noSpaceQuota || len(st.Errors) != 1 || !strings.Contains(st.Errors[0], "NOSPACE") {
			t.Errorf("status = %v, want quota %d and a NOSPACE error", st, noSpaceQuota)
		}
		disarm := must(c.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: alarms.Alarms[0].MemberID, Alarm: pb.AlarmType_NOSPACE}))(t)
		if len(disarm.Alarms) != 1 {
			t.Errorf("disarm = %v", disarm.Alarms)
		}
		must(c.Put(ctx, "small2", "1"))(t)
	})
}
