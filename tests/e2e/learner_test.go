package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// checkLearnerRefusals calls every client RPC on the learner at endpoint
// over a plain gRPC connection (no client retries hide an answer): etcd's
// learner serves serializable Range and Status, and refuses everything
// else, streams included, with "etcdserver: rpc not supported for learner".
func checkLearnerRefusals(t *testing.T, endpoint string) {
	t.Helper()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	kv, lease, maint, cluster := pb.NewKVClient(conn), pb.NewLeaseClient(conn), pb.NewMaintenanceClient(conn), pb.NewClusterClient(conn)
	lock, election := v3lockpb.NewLockClient(conn), v3electionpb.NewElectionClient(conn)

	if _, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("before"), Serializable: true}); err != nil {
		t.Errorf("serializable range on the learner: %v", err)
	}
	if st, err := maint.Status(ctx, &pb.StatusRequest{}); err != nil || !st.IsLearner {
		t.Errorf("status on the learner: %v, %v; want IsLearner", st, err)
	}
	// etcd's /readyz has a non_learner check that a learner fails.
	if code, body := httpGet(t, "http://"+endpoint+"/readyz/non_learner"); code != http.StatusServiceUnavailable ||
		body != "[-]non_learner failed: not supported for learner\n\n" {
		t.Errorf("/readyz/non_learner on the learner: %d %q", code, body)
	}

	key := []byte("k")
	refused := map[string]func() error{
		"linearizable Range": func() error { _, err := kv.Range(ctx, &pb.RangeRequest{Key: key}); return err },
		"Put":                func() error { _, err := kv.Put(ctx, &pb.PutRequest{Key: key}); return err },
		"DeleteRange":        func() error { _, err := kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: key}); return err },
		"serializable read-only Txn": func() error {
			_, err := kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{
				RequestRange: &pb.RangeRequest{Key: key, Serializable: true}}}}})
			return err
		},
		"Compact":         func() error { _, err := kv.Compact(ctx, &pb.CompactionRequest{Revision: 1}); return err },
		"LeaseGrant":      func() error { _, err := lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 10}); return err },
		"LeaseRevoke":     func() error { _, err := lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: 1}); return err },
		"LeaseTimeToLive": func() error { _, err := lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: 1}); return err },
		"LeaseLeases":     func() error { _, err := lease.LeaseLeases(ctx, &pb.LeaseLeasesRequest{}); return err },
		"LeaseKeepAlive": func() error {
			s, err := lease.LeaseKeepAlive(ctx)
			if err == nil {
				err = s.Send(&pb.LeaseKeepAliveRequest{ID: 1})
			}
			// Send returns io.EOF once the server has ended the stream;
			// Recv returns the status it ended it with.
			if err == nil || errors.Is(err, io.EOF) {
				_, err = s.Recv()
			}
			return err
		},
		"Watch": func() error {
			s, err := pb.NewWatchClient(conn).Watch(ctx)
			if err == nil {
				err = s.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
					CreateRequest: &pb.WatchCreateRequest{Key: key}}})
			}
			// Send returns io.EOF once the server has ended the stream;
			// Recv returns the status it ended it with.
			if err == nil || errors.Is(err, io.EOF) {
				_, err = s.Recv()
			}
			return err
		},
		"MemberList": func() error { _, err := cluster.MemberList(ctx, &pb.MemberListRequest{}); return err },
		"Alarm":      func() error { _, err := maint.Alarm(ctx, &pb.AlarmRequest{}); return err },
		"HashKV":     func() error { _, err := maint.HashKV(ctx, &pb.HashKVRequest{}); return err },
		"Lock":       func() error { _, err := lock.Lock(ctx, &v3lockpb.LockRequest{Name: key}); return err },
		"Campaign": func() error {
			_, err := election.Campaign(ctx, &v3electionpb.CampaignRequest{Name: key, Lease: 1})
			return err
		},
		"Election Leader": func() error { _, err := election.Leader(ctx, &v3electionpb.LeaderRequest{Name: key}); return err },
	}
	want := status.Convert(rpctypes.ErrGRPCNotSupportedForLearner)
	for name, call := range refused {
		if st := status.Convert(call()); st.Code() != want.Code() || st.Message() != want.Message() {
			t.Errorf("%s on the learner: %v; want %v", name, st.Err(), want.Err())
		}
	}
}
