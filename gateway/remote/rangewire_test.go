package remote_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// fixedRangeKV answers every range with its response.
type fixedRangeKV struct {
	etcdserverpbconnect.UnimplementedKVHandler
	resp *pb.RangeResponse
}

func (k fixedRangeKV) Range(context.Context, *pb.RangeRequest) (*pb.RangeResponse, error) {
	return k.resp, nil
}

// wantRange is a response with every RangeResponse field and a field this
// build does not know (as a newer member could send).
func wantRange() *pb.RangeResponse {
	resp := &pb.RangeResponse{Header: hdr, More: true, Count: 1000}
	for i := range 300 {
		resp.Kvs = append(resp.Kvs, &mvccpb.KeyValue{Key: fmt.Appendf(nil, "k%03d", i), Value: []byte("v"), CreateRevision: 2, ModRevision: int64(3 + i), Version: 1, Lease: int64(i % 2)})
	}
	resp.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 7))
	return resp
}

// RangeWire relays a member's KeyValues without decoding them: what it
// returns marshals to the member's response, while Range decodes them.
func TestRangeWireRelaysKVs(t *testing.T) {
	want := wantRange()
	path, h := etcdserverpbconnect.NewKVHandler(fixedRangeKV{resp: want})
	c := dialConsensus(t, h2cServer(t, path, h))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	relayed, err := c.RangeWire(ctx, &pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l")})
	if err != nil {
		t.Fatal(err)
	}
	if len(relayed.Kvs) != 0 || relayed.Count != 1000 || !relayed.More || !proto.Equal(relayed.Header, hdr) {
		t.Fatalf("relayed response decoded %d kvs, count %d, more %v, header %v", len(relayed.Kvs), relayed.Count, relayed.More, relayed.Header)
	}
	b, err := proto.Marshal(relayed)
	if err != nil {
		t.Fatal(err)
	}
	var got pb.RangeResponse
	if err := proto.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&got, want) {
		t.Fatalf("relayed response re-marshaled to %d kvs, %v; want %d", len(got.Kvs), got.Header, len(want.Kvs))
	}

	decoded, err := c.Range(ctx, &pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l")})
	if err != nil || !proto.Equal(decoded, want) || len(decoded.Kvs) != 300 {
		t.Fatalf("Range = %d kvs, %v", len(decoded.GetKvs()), err)
	}
}

// Bytes proto refuses fail the relay's decoding too, in the framing of the
// kvs entries it keeps as in the fields it decodes.
func TestRangeWireRefusesMalformed(t *testing.T) {
	good, err := proto.Marshal(wantRange())
	if err != nil {
		t.Fatal(err)
	}
	var header []byte
	header = protowire.AppendTag(header, 1, protowire.BytesType)
	header = protowire.AppendBytes(header, []byte{0x08}) // cluster_id without its value
	for name, data := range map[string][]byte{
		"truncated":     good[:len(good)/2],
		"bad tag":       append([]byte{0x00}, good...),
		"long length":   append(protowire.AppendTag(nil, 2, protowire.BytesType), 0xff, 0xff, 0x03, 'x'),
		"broken header": header,
	} {
		if proto.Unmarshal(data, &pb.RangeResponse{}) == nil {
			t.Fatalf("%s: not malformed for proto either", name)
		}
		var rr pb.RangeResponse
		if err := remote.UnmarshalKeepingKVsForTest(data, &rr); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	var rr pb.RangeResponse
	if err := remote.UnmarshalKeepingKVsForTest(good, &rr); err != nil {
		t.Fatalf("well-formed: %v", err)
	}
}

// Whatever proto decodes as a RangeResponse, the relay decodes too, and
// what it relays re-encodes to the same message.
func FuzzRangeWireRelay(f *testing.F) {
	good, err := proto.Marshal(wantRange())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var want pb.RangeResponse
		if proto.Unmarshal(data, &want) != nil {
			return
		}
		var relayed pb.RangeResponse
		if err := remote.UnmarshalKeepingKVsForTest(data, &relayed); err != nil {
			t.Fatalf("proto decodes %x, the relay does not: %v", data, err)
		}
		b, err := proto.Marshal(&relayed)
		if err != nil {
			t.Fatal(err)
		}
		var got pb.RangeResponse
		if err := proto.Unmarshal(b, &got); err != nil || !proto.Equal(&got, &want) {
			t.Fatalf("relayed %x as %x: %v", data, b, err)
		}
	})
}
