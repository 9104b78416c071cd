package remote

import (
	"context"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/storage"
)

// RangeWire is Range for a caller that only marshals the response to the
// protobuf binary format (the gateway, for a gRPC or Connect client): the
// response's KeyValues stay as the member encoded them, in its unknown
// fields, as storage.Store.RangeWire leaves them, so a large range is
// relayed without being decoded and encoded again.
func (c *Consensus) RangeWire(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return unary(c, ctx, true, kvWireOf, etcdserverpbconnect.KVClient.Range, r, (*pb.RangeResponse).GetHeader)
}

func kvWireOf(m *endpointClients) etcdserverpbconnect.KVClient { return m.kvWire }

// kvRelayCodec is the protobuf codec of the KV client behind RangeWire: it
// decodes a RangeResponse but for its kvs entries, which it keeps as they
// came, and everything else as proto does.
type kvRelayCodec struct{}

func (kvRelayCodec) Name() string { return "proto" }

func (kvRelayCodec) Marshal(m any) ([]byte, error) {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("remote: %T is not a protobuf message", m)
	}
	return proto.Marshal(pm)
}

func (kvRelayCodec) Unmarshal(data []byte, m any) error {
	rr, ok := m.(*pb.RangeResponse)
	if !ok {
		pm, ok := m.(proto.Message)
		if !ok {
			return fmt.Errorf("remote: %T is not a protobuf message", m)
		}
		return proto.Unmarshal(data, pm)
	}
	return unmarshalKeepingKVs(data, rr)
}

// unmarshalKeepingKVs decodes a RangeResponse whose kvs entries (field 2)
// go to its unknown fields unparsed; the other fields are decoded, so a
// malformed header still fails here. The entries are copied: connect reuses
// data.
func unmarshalKeepingKVs(data []byte, rr *pb.RangeResponse) error {
	rr.Reset()
	var kvs []byte
	merge := proto.UnmarshalOptions{Merge: true}
	for b := data; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("unmarshal into %T: %w", rr, protowire.ParseError(n))
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return fmt.Errorf("unmarshal into %T: %w", rr, protowire.ParseError(m))
		}
		field := b[:n+m]
		b = b[n+m:]
		if num == 2 && typ == protowire.BytesType {
			if kvs == nil {
				kvs = storage.WireBuffer()
			}
			kvs = append(kvs, field...)
			continue
		}
		if err := merge.Unmarshal(field, rr); err != nil {
			return fmt.Errorf("unmarshal into %T: %w", rr, err)
		}
	}
	if len(kvs) > 0 {
		if other := rr.ProtoReflect().GetUnknown(); len(other) > 0 {
			kvs = append(other, kvs...) // fields unknown to this build too
		}
		rr.ProtoReflect().SetUnknown(kvs)
	}
	return nil
}
