package e2e

import (
	"context"
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
)

// TestWatchAuthMatchesEtcd creates watches with auth enabled, as a user who
// may read only key "a" and without a token, on etcd, on concord and on the
// split topology, and requires the same first answer to each: created, or
// canceled with etcd's reason, in etcd's order of checks (a negative start
// revision is "compacted" before permissions are looked at; an empty key
// is "\x00").
func TestWatchAuthMatchesEtcd(t *testing.T) {
	t.Parallel()
	flags := []string{"--bcrypt-cost=4"}
	transcripts := map[string][]string{}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			transcripts[im.name] = watchAuthTranscript(t, startServer(t, im, serverOptions{extra: flags}).Endpoint())
		})
	}
	t.Run("split", func(t *testing.T) {
		secret := writeInternalSecret(t, t.TempDir(), "secret")
		c := startSplitWith(t, flags, "--internal-secret-file", secret)
		transcripts["split"] = watchAuthTranscript(t, c.gateways[0].endpoint())
	})
	for _, name := range []string{concordImpl.name, "split"} {
		compareTranscripts(t, name, transcripts[etcdImpl.name], transcripts[name])
	}
}

func watchAuthTranscript(t *testing.T, ep string) []string {
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
		lines = append(lines, c.name+": "+firstWatchAnswer(c.ctx, conn, c.req))
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
		st := status.Convert(err)
		return fmt.Sprintf("%v: %s", st.Code(), st.Message())
	}
	resp.Header = nil
	return prototext.MarshalOptions{}.Format(resp)
}
