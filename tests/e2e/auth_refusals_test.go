package e2e

import (
	"context"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/prototext"
)

// TestAuthRefusalsMatchEtcd sends requests with auth enabled, as a user who
// may read only key "a" and without a token, to etcd, concord and the split
// topology, and requires the same answers: watch creations (created, or
// canceled with etcd's reason, in etcd's order of checks: a negative start
// revision is "compacted" before permissions are looked at; an empty key
// is "\x00"), and every Cluster and Maintenance call and the Auth calls a
// user may make about itself (which need a user, which the root role).
func TestAuthRefusalsMatchEtcd(t *testing.T) {
	t.Parallel()
	flags := []string{"--bcrypt-cost=4"}
	// A split consensus enables auth only with an internal secret (or
	// verified client certificates) its other processes present.
	split := func(t *testing.T) *splitCluster {
		return startSplitWith(t, flags, "--internal-secret-file", writeInternalSecret(t, t.TempDir(), "secret"))
	}
	transcriptsMatchEtcd(t, flags, split, authRefusalsTranscript)
}

func authRefusalsTranscript(t *testing.T, ep string) []string {
	for _, args := range [][]string{
		{"user", "add", "root:pw"}, {"user", "add", "alice:pw"}, {"role", "add", "r"},
		{"role", "grant-permission", "r", "read", "a"}, {"user", "grant-role", "alice", "r"}, {"auth", "enable"},
	} {
		mustCtl(t, ep, args...)
	}
	ctx := testCtx(t)
	conn, err := grpc.NewClient(ep, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ar, err := pb.NewAuthClient(conn).Authenticate(ctx, &pb.AuthenticateRequest{Name: "alice", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	alice := metadata.AppendToOutgoingContext(ctx, "token", ar.Token)
	var lines []string
	for _, c := range []struct {
		name string
		ctx  context.Context
		req  *pb.WatchCreateRequest
	}{
		{"permitted key", alice, &pb.WatchCreateRequest{Key: []byte("a"), PrevKv: true, Fragment: true}},
		{"permitted key from a future revision", alice, &pb.WatchCreateRequest{Key: []byte("a"), StartRevision: 1000}},
		{"permitted key from a negative revision", alice, &pb.WatchCreateRequest{Key: []byte("a"), StartRevision: -1}},
		{"other key", alice, &pb.WatchCreateRequest{Key: []byte("b")}},
		{"other key from a negative revision", alice, &pb.WatchCreateRequest{Key: []byte("b"), StartRevision: -1}},
		{"range over the permitted key", alice, &pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("c")}},
		{"empty key", alice, &pb.WatchCreateRequest{}},
		{"no token", ctx, &pb.WatchCreateRequest{Key: []byte("a")}},
		{"no token from a negative revision", ctx, &pb.WatchCreateRequest{Key: []byte("a"), StartRevision: -1}},
		{"bad token", metadata.AppendToOutgoingContext(ctx, "token", "bogustoken"), &pb.WatchCreateRequest{Key: []byte("a")}},
	} {
		lines = append(lines, "watch, "+c.name+": "+firstWatchAnswer(c.ctx, conn, c.req))
	}
	cl, mt, au := pb.NewClusterClient(conn), pb.NewMaintenanceClient(conn), pb.NewAuthClient(conn)
	for _, who := range []struct {
		name string
		ctx  context.Context
	}{{"no token", ctx}, {"alice", alice}} {
		c := who.ctx
		for _, call := range []struct {
			name string
			call func() error
		}{
			{"member list", func() error { _, err := cl.MemberList(c, &pb.MemberListRequest{}); return err }},
			{"member add", func() error {
				_, err := cl.MemberAdd(c, &pb.MemberAddRequest{PeerURLs: []string{"http://127.0.0.1:1"}, IsLearner: true})
				return err
			}},
			{"member remove", func() error { _, err := cl.MemberRemove(c, &pb.MemberRemoveRequest{ID: 5}); return err }},
			{"status", func() error { _, err := mt.Status(c, &pb.StatusRequest{}); return err }},
			{"alarm list", func() error { _, err := mt.Alarm(c, &pb.AlarmRequest{}); return err }},
			{"alarm activate", func() error {
				_, err := mt.Alarm(c, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: 5, Alarm: pb.AlarmType_NOSPACE})
				return err
			}},
			{"defragment", func() error { _, err := mt.Defragment(c, &pb.DefragmentRequest{}); return err }},
			{"hash", func() error { _, err := mt.Hash(c, &pb.HashRequest{}); return err }},
			{"hash kv", func() error { _, err := mt.HashKV(c, &pb.HashKVRequest{}); return err }},
			{"move leader", func() error { _, err := mt.MoveLeader(c, &pb.MoveLeaderRequest{TargetID: 5}); return err }},
			{"downgrade cancel", func() error {
				_, err := mt.Downgrade(c, &pb.DowngradeRequest{Action: pb.DowngradeRequest_CANCEL})
				return err
			}},
			{"snapshot", func() error {
				// Only its first message: the stream ends with the call.
				sctx, cancel := context.WithCancel(c)
				defer cancel()
				s, err := mt.Snapshot(sctx, &pb.SnapshotRequest{})
				if err == nil {
					_, err = s.Recv()
				}
				return err
			}},
			{"auth status", func() error { _, err := au.AuthStatus(c, &pb.AuthStatusRequest{}); return err }},
			{"user get of itself", func() error { _, err := au.UserGet(c, &pb.AuthUserGetRequest{Name: "alice"}); return err }},
			{"user get of root", func() error { _, err := au.UserGet(c, &pb.AuthUserGetRequest{Name: "root"}); return err }},
			{"role get of its role", func() error { _, err := au.RoleGet(c, &pb.AuthRoleGetRequest{Role: "r"}); return err }},
			{"user list", func() error { _, err := au.UserList(c, &pb.AuthUserListRequest{}); return err }},
			{"password change of itself", func() error {
				_, err := au.UserChangePassword(c, &pb.AuthUserChangePasswordRequest{Name: "alice", Password: "pw"})
				return err
			}},
		} {
			line := "ok"
			if err := call.call(); err != nil {
				line = outcome(err)
			}
			lines = append(lines, who.name+", "+call.name+": "+line)
		}
	}
	return lines
}

// firstWatchAnswer opens a stream, creates one watch and returns the first
// answer without its header (whose revision is the server's), or the
// stream's error.
func firstWatchAnswer(ctx context.Context, conn *grpc.ClientConn, req *pb.WatchCreateRequest) string {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ws, err := pb.NewWatchClient(conn).Watch(ctx)
	if err == nil {
		err = ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: req}})
	}
	var resp *pb.WatchResponse
	if err == nil {
		resp, err = ws.Recv()
	}
	if err != nil {
		return outcome(err)
	}
	resp.Header = nil
	return prototext.MarshalOptions{}.Format(resp)
}
