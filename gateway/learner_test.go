package gateway_test

import (
	"errors"
	"io"
	"sync/atomic"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/concord-kv/concord/gateway"
)

// learnerBackend is the fake backend as a member that may be a learner.
type learnerBackend struct {
	*fakeBackend
	learner atomic.Bool
}

func (l *learnerBackend) IsLearner() bool { return l.learner.Load() }

// TestLearnerRefusals checks the RPCs a learner's gateway serves and refuses
// against etcd 3.7's interceptors: serializable Range and Status only;
// everything else, streams included and whatever service would have
// answered it (Watch and the lease service are served here, Lock and
// Election are not), is refused with ErrGRPCNotSupportedForLearner before
// reaching the backend. The calls go over a plain gRPC connection, so no
// client retry hides an answer.
func TestLearnerRefusals(t *testing.T) {
	b := &learnerBackend{fakeBackend: newFake()}
	b.learner.Store(true)
	addr := startGateway(t, gateway.Config{}, b, gateway.WithWatch(oneEventWatch{}), gateway.WithLease(newFakeLease()))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx := testCtx(t)
	kv, lease, maint, cluster := pb.NewKVClient(conn), pb.NewLeaseClient(conn), pb.NewMaintenanceClient(conn), pb.NewClusterClient(conn)
	lock, election := v3lockpb.NewLockClient(conn), v3electionpb.NewElectionClient(conn)
	// A stream the server has already ended makes Send return io.EOF; the
	// status the server ended it with is what RecvMsg returns.
	stream := func(open func() (interface{ RecvMsg(any) error }, error), m any) error {
		s, err := open()
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		return s.RecvMsg(m)
	}

	served := map[string]func() error{
		"serializable Range": func() error {
			_, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("a"), Serializable: true})
			return err
		},
		"Status": func() error { _, err := maint.Status(ctx, &pb.StatusRequest{}); return err },
	}
	refused := map[string]func() error{
		"linearizable Range": func() error { _, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("a")}); return err },
		// Refused before validation, as in etcd: the key is missing.
		"invalid linearizable Range": func() error { _, err := kv.Range(ctx, &pb.RangeRequest{}); return err },
		"Put":                        func() error { _, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("a")}); return err },
		"DeleteRange":                func() error { _, err := kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("a")}); return err },
		"read-only Txn": func() error {
			_, err := kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{
				RequestRange: &pb.RangeRequest{Key: []byte("a"), Serializable: true}}}}})
			return err
		},
		"Compact":         func() error { _, err := kv.Compact(ctx, &pb.CompactionRequest{Revision: 1}); return err },
		"LeaseGrant":      func() error { _, err := lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 10}); return err },
		"LeaseRevoke":     func() error { _, err := lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: 1}); return err },
		"LeaseTimeToLive": func() error { _, err := lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: 1}); return err },
		"LeaseLeases":     func() error { _, err := lease.LeaseLeases(ctx, &pb.LeaseLeasesRequest{}); return err },
		"LeaseKeepAlive": func() error {
			return stream(func() (interface{ RecvMsg(any) error }, error) {
				s, err := lease.LeaseKeepAlive(ctx)
				if err == nil {
					err = s.Send(&pb.LeaseKeepAliveRequest{ID: 1})
				}
				return s, err
			}, &pb.LeaseKeepAliveResponse{})
		},
		"Watch": func() error {
			return stream(func() (interface{ RecvMsg(any) error }, error) {
				s, err := pb.NewWatchClient(conn).Watch(ctx)
				if err == nil {
					err = s.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
						CreateRequest: &pb.WatchCreateRequest{Key: []byte("a")}}})
				}
				return s, err
			}, &pb.WatchResponse{})
		},
		"MemberList": func() error { _, err := cluster.MemberList(ctx, &pb.MemberListRequest{}); return err },
		"MemberAdd":  func() error { _, err := cluster.MemberAdd(ctx, &pb.MemberAddRequest{}); return err },
		"Alarm GET":  func() error { _, err := maint.Alarm(ctx, &pb.AlarmRequest{}); return err },
		"HashKV":     func() error { _, err := maint.HashKV(ctx, &pb.HashKVRequest{}); return err },
		"Defragment": func() error { _, err := maint.Defragment(ctx, &pb.DefragmentRequest{}); return err },
		"MoveLeader": func() error { _, err := maint.MoveLeader(ctx, &pb.MoveLeaderRequest{TargetID: 2}); return err },
		"Lock":       func() error { _, err := lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("l")}); return err },
		"Campaign": func() error {
			_, err := election.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("e")})
			return err
		},
		"Leader": func() error {
			_, err := election.Leader(ctx, &v3electionpb.LeaderRequest{Name: []byte("e")})
			return err
		},
		"AuthStatus": func() error { _, err := pb.NewAuthClient(conn).AuthStatus(ctx, &pb.AuthStatusRequest{}); return err },
		"RangeStream": func() error {
			return stream(func() (interface{ RecvMsg(any) error }, error) {
				return kv.RangeStream(ctx, &pb.RangeRequest{Key: []byte("a")})
			}, &pb.RangeStreamResponse{})
		},
	}
	want := status.Convert(rpctypes.ErrGRPCNotSupportedForLearner)
	for name, call := range served {
		if err := call(); err != nil {
			t.Errorf("%s on a learner: %v, want it served", name, err)
		}
	}
	before := b.calls.Load()
	for name, call := range refused {
		st := status.Convert(call())
		if st.Code() != want.Code() || st.Message() != want.Message() {
			t.Errorf("%s on a learner: %v, want %v", name, st.Err(), want.Err())
		}
	}
	if n := b.calls.Load() - before; n != 0 {
		t.Errorf("%d refused calls reached the backend", n)
	}

	// Promoted: the same gateway serves everything.
	b.learner.Store(false)
	for _, name := range []string{"linearizable Range", "Put", "read-only Txn"} {
		if err := refused[name](); err != nil {
			t.Errorf("%s after promotion: %v", name, err)
		}
	}
}
