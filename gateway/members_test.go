package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"connectrpc.com/connect"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// The fake's membership: it answers with what it was asked, so a test sees
// the request arrived intact.

func (f *fakeBackend) MemberAdd(_ context.Context, r *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	m := &pb.Member{ID: 99, PeerURLs: r.PeerURLs, IsLearner: r.IsLearner}
	return &pb.MemberAddResponse{Header: f.hdr(), Member: m, Members: []*pb.Member{{ID: 1, Name: "m1"}, m}}, nil
}

func (f *fakeBackend) MemberRemove(_ context.Context, r *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &pb.MemberRemoveResponse{Header: f.hdr(), Members: []*pb.Member{{ID: 1, Name: "m1"}}}, nil
}

func (f *fakeBackend) MemberUpdate(_ context.Context, r *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &pb.MemberUpdateResponse{Header: f.hdr(), Members: []*pb.Member{{ID: r.ID, PeerURLs: r.PeerURLs}}}, nil
}

func (f *fakeBackend) MemberPromote(_ context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &pb.MemberPromoteResponse{Header: f.hdr(), Members: []*pb.Member{{ID: r.ID}}}, nil
}

func (f *fakeBackend) MoveLeader(_ context.Context, r *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	f.leader.Store(r.TargetID)
	return &pb.MoveLeaderResponse{Header: f.hdr()}, nil
}

func TestMembershipRoundTrips(t *testing.T) {
	f, cli, _ := setup(t, gateway.Config{})
	ctx := testCtx(t)
	add, err := cli.MemberAddAsLearner(ctx, []string{"http://127.0.0.1:2380"})
	if err != nil || add.Member.ID != 99 || !add.Member.IsLearner || len(add.Members) != 2 {
		t.Fatalf("member add = %v, %v", add, err)
	}
	if up, err := cli.MemberUpdate(ctx, 99, []string{"https://h:1", "unix://sock"}); err != nil || len(up.Members[0].PeerURLs) != 2 {
		t.Fatalf("member update = %v, %v", up, err)
	}
	if p, err := cli.MemberPromote(ctx, 99); err != nil || p.Members[0].ID != 99 {
		t.Fatalf("member promote = %v, %v", p, err)
	}
	if rm, err := cli.MemberRemove(ctx, 99); err != nil || len(rm.Members) != 1 {
		t.Fatalf("member remove = %v, %v", rm, err)
	}
	if _, err := cli.MoveLeader(ctx, 5); err != nil || f.leader.Load() != 5 {
		t.Fatalf("move leader: %v (leader %d)", err, f.leader.Load())
	}
}

func TestMembershipBadPeerURLsNeverReachTheBackend(t *testing.T) {
	// clientv3 checks URLs itself, so the raw Cluster service is called.
	f, _, addr := setup(t, gateway.Config{})
	ctx := testCtx(t)
	cl := etcdserverpbconnect.NewClusterClient(http.DefaultClient, "http://"+addr)
	want := status.Convert(rpctypes.ErrGRPCMemberBadURLs)
	check := func(what string, err error) {
		t.Helper()
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.Code(want.Code()) || ce.Message() != want.Message() {
			t.Errorf("%s: %v, want %v", what, err, want.Message())
		}
	}
	// MemberUpdate's URLs are the backend's to check, after the member's
	// existence, as etcd answers an unknown member first.
	for _, urls := range [][]string{nil, {"127.0.0.1:2380"}, {"http://h"}, {"ftp://h:1"}, {"http://h:1/path"}, {"http://h:1", "::"}} {
		_, err := cl.MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: urls})
		check(fmt.Sprintf("member add %q", urls), err)
	}
	if n := f.calls.Load(); n != 0 {
		t.Fatalf("%d bad requests reached the backend", n)
	}
}

func TestMembershipErrorsAreEtcds(t *testing.T) {
	f, cli, _ := setup(t, gateway.Config{})
	ctx := testCtx(t)
	for _, tc := range []struct {
		from error
		want error // clientv3's typed error
	}{
		{consensus.ErrMemberNotFound, rpctypes.ErrMemberNotFound},
		{consensus.ErrIDRemoved, rpctypes.ErrMemberNotFound},
		{consensus.ErrMemberExists, rpctypes.ErrMemberExist},
		{consensus.ErrPeerURLExists, rpctypes.ErrPeerURLExist},
		{consensus.ErrMemberNotLearner, rpctypes.ErrMemberNotLearner},
		{consensus.ErrLearnerNotReady, rpctypes.ErrMemberLearnerNotReady},
		{consensus.ErrTooManyLearners, rpctypes.ErrTooManyLearners},
		{consensus.ErrNotEnoughStartedMembers, rpctypes.ErrMemberNotEnoughStarted},
		{consensus.ErrUnhealthy, rpctypes.ErrUnhealthy},
		{consensus.ErrNotLeader, rpctypes.ErrNotLeader},
		{consensus.ErrBadLeaderTransferee, rpctypes.ErrBadLeaderTransferee},
		{consensus.ErrNotSupportedForLearner, rpctypes.Error(rpctypes.ErrGRPCNotSupportedForLearner)},
	} {
		f.setErr(fmt.Errorf("apply: %w", tc.from))
		var err error
		switch {
		case errors.Is(tc.from, consensus.ErrBadLeaderTransferee), errors.Is(tc.from, consensus.ErrNotLeader):
			_, err = cli.MoveLeader(ctx, 2)
		case errors.Is(tc.from, consensus.ErrMemberNotLearner), errors.Is(tc.from, consensus.ErrLearnerNotReady):
			_, err = cli.MemberPromote(ctx, 2)
		case errors.Is(tc.from, consensus.ErrMemberNotFound):
			_, err = cli.MemberRemove(ctx, 2)
		default:
			_, err = cli.MemberAdd(ctx, []string{"http://h:1"})
		}
		if err == nil || err.Error() != tc.want.Error() {
			t.Errorf("%v: client got %v, want %v", tc.from, err, tc.want)
		}
	}
	// etcd has no typed error for a transfer that timed out: Unknown with
	// the server's text.
	f.setErr(consensus.ErrTimeoutLeaderTransfer)
	_, err := cli.MoveLeader(ctx, 2)
	if s, _ := status.FromError(err); s.Code() != codes.Unknown || s.Message() != "etcdserver: request timed out, leader transfer took too long" {
		t.Errorf("move leader timeout: %v", err)
	}
}

// Downgrade refuses as concord's consensus does for ENABLE; the real
// behaviour is compared with etcd in tests/e2e (TestDowngrade).
func (f *fakeBackend) Downgrade(context.Context, *pb.DowngradeRequest) (*pb.DowngradeResponse, error) {
	return nil, consensus.ErrDowngradeUnsupported
}

func (f *fakeBackend) Hash(context.Context, *pb.HashRequest) (*pb.HashResponse, error) {
	err := f.enter()
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &pb.HashResponse{Header: f.hdr(), Hash: uint32(f.rev)}, nil
}
