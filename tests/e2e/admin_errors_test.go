package e2e

import (
	"context"
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

// TestAdminRequestsMatchEtcd sends the Cluster and Maintenance services
// requests that fail or change what later requests may do (unknown members,
// bad peer URLs, alarms of other members, a CORRUPT alarm and the writes it
// refuses, hashes of compacted and future revisions, leader moves to no
// one, bad downgrades) to etcd and to concord, one after the other on a
// fresh single member each and on the split topology, and requires the same transcript: the same
// code and message for every error, the same response where it does not
// name a member or a hash.
//
// Left out: an Alarm with an action etcd does not know, which ends etcd
// v3.7.3 (its alarm store dereferences a nil alarm).
func TestAdminRequestsMatchEtcd(t *testing.T) {
	t.Parallel()
	transcriptsMatchEtcd(t, nil, func(t *testing.T) *splitCluster { return startSplit(t) }, adminTranscript)
}

// transcriptsMatchEtcd runs transcript against a fresh etcd and concord,
// each started with flags, and against the split topology split starts
// (whose gateway answers for consensus members in other processes), and
// requires concord's and split's transcripts to be etcd's.
func transcriptsMatchEtcd(t *testing.T, flags []string, split func(*testing.T) *splitCluster, transcript func(*testing.T, string) []string) {
	transcripts := map[string][]string{}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			transcripts[im.name] = transcript(t, startServer(t, im, serverOptions{extra: flags}).Endpoint())
		})
	}
	t.Run("split", func(t *testing.T) {
		transcripts["split"] = transcript(t, split(t).gateways[0].endpoint())
	})
	for _, name := range []string{concordImpl.name, "split"} {
		compareTranscripts(t, name, transcripts[etcdImpl.name], transcripts[name])
	}
}

// outcome is a transcript's word for an error: its gRPC code and message.
func outcome(err error) string {
	st := status.Convert(err)
	return fmt.Sprintf("%v: %s", st.Code(), st.Message())
}

// adminTranscript runs the steps against endpoint and returns one line
// each: its name and its outcome.
func adminTranscript(t *testing.T, endpoint string) []string {
	ctx := testCtx(t)
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl, mt, kv, lease := pb.NewClusterClient(conn), pb.NewMaintenanceClient(conn), pb.NewKVClient(conn), pb.NewLeaseClient(conn)
	const other = 12345 // a member ID neither server has
	alarm := func(action pb.AlarmRequest_AlarmAction, a pb.AlarmType) func(context.Context) (proto.Message, error) {
		return func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(mt.Alarm(ctx, &pb.AlarmRequest{Action: action, MemberID: other, Alarm: a}))
		}
	}
	put := func(k string) func(context.Context) (proto.Message, error) {
		return func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(kv.Put(ctx, &pb.PutRequest{Key: []byte(k), Value: []byte("v")}))
		}
	}
	steps := []struct {
		name string
		// outcomeOnly: the response names a member or a hash, which
		// differ; only success is compared.
		outcomeOnly bool
		call        func(context.Context) (proto.Message, error)
	}{
		{"put a", false, put("a")},
		{"put a again", false, put("a")},
		{"put b", false, put("b")},
		{"compact at 3", false, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(kv.Compact(ctx, &pb.CompactionRequest{Revision: 3}))
		}},
		{"member add without URLs", true, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(cl.MemberAdd(ctx, &pb.MemberAddRequest{}))
		}},
		{"member add of a URL without a scheme", true, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(cl.MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: []string{"127.0.0.1:1"}}))
		}},
		{"member add of an ftp URL", true, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(cl.MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: []string{"ftp://127.0.0.1:1"}}))
		}},
		{"member add of a URL with a path", true, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(cl.MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: []string{"http://127.0.0.1:1/path"}}))
		}},
		{"member remove of an unknown member", true, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(cl.MemberRemove(ctx, &pb.MemberRemoveRequest{ID: other}))
		}},
		{"member update of an unknown member", true, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(cl.MemberUpdate(ctx, &pb.MemberUpdateRequest{ID: other, PeerURLs: []string{"http://127.0.0.1:1"}}))
		}},
		{"member update of an unknown member without URLs", true, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(cl.MemberUpdate(ctx, &pb.MemberUpdateRequest{ID: other}))
		}},
		{"member promote of an unknown member", true, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(cl.MemberPromote(ctx, &pb.MemberPromoteRequest{ID: other}))
		}},
		{"alarm list", false, alarm(pb.AlarmRequest_GET, pb.AlarmType_NONE)},
		{"NOSPACE of another member", false, alarm(pb.AlarmRequest_ACTIVATE, pb.AlarmType_NOSPACE)},
		{"put with NOSPACE", false, put("c")},
		{"alarm list with NOSPACE", false, alarm(pb.AlarmRequest_GET, pb.AlarmType_NONE)},
		{"NOSPACE cleared", false, alarm(pb.AlarmRequest_DEACTIVATE, pb.AlarmType_NOSPACE)},
		{"alarm NONE", false, alarm(pb.AlarmRequest_ACTIVATE, pb.AlarmType_NONE)},
		{"CORRUPT of another member", false, alarm(pb.AlarmRequest_ACTIVATE, pb.AlarmType_CORRUPT)},
		{"put with CORRUPT", false, put("c")},
		{"range with CORRUPT", false, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(kv.Range(ctx, &pb.RangeRequest{Key: []byte("a")}))
		}},
		{"lease grant with CORRUPT", false, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 7, TTL: 60}))
		}},
		{"compact with CORRUPT", false, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(kv.Compact(ctx, &pb.CompactionRequest{Revision: 4}))
		}},
		{"CORRUPT cleared", false, alarm(pb.AlarmRequest_DEACTIVATE, pb.AlarmType_CORRUPT)},
		{"put after CORRUPT", false, put("c")},
		{"alarm of an unknown type", false, alarm(pb.AlarmRequest_ACTIVATE, 9)},
		{"alarm list at the end", false, alarm(pb.AlarmRequest_GET, pb.AlarmType_NONE)},
		{"hash of a compacted revision", true, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(mt.HashKV(ctx, &pb.HashKVRequest{Revision: 1}))
		}},
		{"hash of a future revision", true, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(mt.HashKV(ctx, &pb.HashKVRequest{Revision: 100}))
		}},
		{"hash of a negative revision", true, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(mt.HashKV(ctx, &pb.HashKVRequest{Revision: -1}))
		}},
		{"leader move to an unknown member", false, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(mt.MoveLeader(ctx, &pb.MoveLeaderRequest{TargetID: other}))
		}},
		{"leader move to member 0", false, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(mt.MoveLeader(ctx, &pb.MoveLeaderRequest{}))
		}},
		{"downgrade with an unknown action", false, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(mt.Downgrade(ctx, &pb.DowngradeRequest{Action: 5}))
		}},
		{"downgrade to a bad version", false, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(mt.Downgrade(ctx, &pb.DowngradeRequest{Action: pb.DowngradeRequest_VALIDATE, Version: "x"}))
		}},
		{"downgrade cancel with none", false, func(ctx context.Context) (proto.Message, error) {
			return nilOnErr(mt.Downgrade(ctx, &pb.DowngradeRequest{Action: pb.DowngradeRequest_CANCEL}))
		}},
	}
	lines := make([]string, 0, len(steps))
	for _, s := range steps {
		resp, err := s.call(ctx)
		line := "ok"
		switch {
		case err != nil:
			line = outcome(err)
		case !s.outcomeOnly:
			if h, ok := resp.(interface{ GetHeader() *pb.ResponseHeader }); ok && h.GetHeader() != nil {
				h.GetHeader().ClusterId, h.GetHeader().MemberId, h.GetHeader().RaftTerm = 0, 0, 0
			}
			line = "ok " + prototext.MarshalOptions{}.Format(resp)
		}
		lines = append(lines, s.name+": "+line)
	}
	return lines
}
