package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
)

// rawBytes is a gRPC codec that sends and receives message bytes as they
// are, so a test can send what no generated client would build.
type rawBytes struct{}

func (rawBytes) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawBytes) Unmarshal(b []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), b...)
	return nil
}
func (rawBytes) Name() string { return "proto" }

// malformedMessages are request messages as bytes: ones that decode into no
// message type (broken), and ones that decode into some types although no
// client would send them (unknown fields, a known field with another wire
// type, which protobuf keeps as unknown).
var malformedMessages = []struct {
	name, msg string
	broken    bool
}{
	{"empty", "", false},
	{"garbage", "\xff\xff\xff", true},
	{"truncated length", "\x0a\x05a", true},
	{"truncated varint", "\x08\xff", true},
	{"group end", "\x0c", true},
	{"field number 0", "\x00\x01", true},
	{"invalid UTF-8", "\x0a\x01\xff", false},
	{"unknown field", "\x0a\x01a\xf8\x07\x01", false},
	{"other wire type", "\x08\x01", false},
	// Over the transport's limit (--max-request-bytes + 512 KiB): refused
	// before it is decoded.
	{"too large", strings.Repeat("\x00", 2<<20+1), true},
}

// malformedCallTimeout bounds one call, so that a server that does not
// answer one shows as that call's difference, not as every later call's.
const malformedCallTimeout = 20 * time.Second

// malformedMethods are the methods the messages go to: unary ones of each
// service (with a string field for the UTF-8 check: AuthUserAdd's name),
// the streams, and names no server knows.
var malformedMethods = []struct {
	method         string
	server, client bool // streaming sides
}{
	{method: "/etcdserverpb.KV/Put"},
	{method: "/etcdserverpb.KV/Range"},
	{method: "/etcdserverpb.KV/Txn"},
	{method: "/etcdserverpb.Lease/LeaseRevoke"},
	{method: "/etcdserverpb.Auth/UserAdd"},
	{method: "/etcdserverpb.Cluster/MemberList"},
	{method: "/etcdserverpb.Watch/Watch", server: true, client: true},
	{method: "/etcdserverpb.Lease/LeaseKeepAlive", server: true, client: true},
	{method: "/etcdserverpb.KV/Nope"},
	{method: "/nope.Service/Method"},
}

// TestMalformedRequests sends request messages that do not decode, or
// decode only as unknown fields, to unary methods and streams of etcd and
// concord (unary ones also gzip-compressed), and to methods that do not
// exist, and requires the same outcome
// from both: the same gRPC code and message for an error (grpc-go's own
// wording in etcd), success for what decodes.
func TestMalformedRequests(t *testing.T) {
	t.Parallel()
	transcripts := map[string][]string{}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			s := startServer(t, im, serverOptions{})
			transcripts[im.name] = malformedTranscript(t, s.Endpoint())
		})
	}
	compareTranscripts(t, concordImpl.name, transcripts[etcdImpl.name], transcripts[concordImpl.name])
}

// malformedTranscript calls every method with every message and returns
// one line per call: the method, the message's name and the outcome ("ok",
// or the error's code and message). A stream gets one broken message (a
// stream's server answers a message that decodes only when it means
// something); the outcome is what the first receive returns.
func malformedTranscript(t *testing.T, endpoint string) []string {
	ctx := testCtx(t)
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawBytes{}), grpc.MaxCallSendMsgSize(4<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var lines []string
	for _, m := range malformedMethods {
		for _, msg := range malformedMessages {
			stream := m.server || m.client
			if stream && !msg.broken {
				continue
			}
			in := []byte(msg.msg)
			if stream {
				lines = append(lines, malformedLine(m.method, msg.name, firstStreamAnswer(ctx, conn, m.method, in)))
				continue
			}
			// Unary calls also gzip-compressed: grpc-go words a message
			// over the limit once decompressed in its own way.
			for _, opts := range [][]grpc.CallOption{nil, {grpc.UseCompressor(gzip.Name)}} {
				callCtx, cancel := context.WithTimeout(ctx, malformedCallTimeout)
				var out []byte
				err := conn.Invoke(callCtx, m.method, &in, &out, opts...)
				cancel()
				name := msg.name
				if opts != nil {
					name += " (gzip)"
				}
				lines = append(lines, malformedLine(m.method, name, err))
			}
		}
	}
	return lines
}

// malformedLine is a transcript line: the method, the message's name and
// the outcome ("ok", or the error's code and message).
func malformedLine(method, name string, err error) string {
	line := "ok"
	if err != nil {
		// protobuf-go words its errors with a space or a no-break space,
		// chosen per binary, so that nobody matches them.
		line = strings.ReplaceAll(outcome(err), "\u00a0", " ")
	}
	return fmt.Sprintf("%s %s: %s", method, name, line)
}

func firstStreamAnswer(ctx context.Context, conn *grpc.ClientConn, method string, msg []byte) error {
	ctx, cancel := context.WithTimeout(ctx, malformedCallTimeout)
	defer cancel()
	s, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method)
	if err != nil {
		return err
	}
	if err := s.SendMsg(&msg); err != nil {
		// The server's answer, if it ended the stream, comes from RecvMsg.
		var out []byte
		return s.RecvMsg(&out)
	}
	var out []byte
	return s.RecvMsg(&out)
}
