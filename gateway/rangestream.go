package gateway

import (
	"bytes"
	"context"
	"errors"
	"math"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/internal/tracing"
)

// RangeStream is etcd 3.7's streamed range (`etcdctl get --stream`,
// clientv3's GetStream): the range is read in chunks at one pinned
// revision, so a large result never has to fit in one response. It follows
// etcd's chunking (etcdserver.rangeStream): the first chunk holds up to 10
// keys, each next limit doubles while a chunk stays under half of
// --max-request-bytes and halves above twice it; only the last chunk
// carries the header (revision = the pinned one), More and Count (the
// total, counted at the pinned revision).
//
// Each chunk is a Range on the backend with the client's consistency, so a
// linearizable stream stays linearizable in the split topology, where the
// next chunk may be served by another consensus member.
func (s kvService) RangeStream(ctx context.Context, r *pb.RangeRequest, out *connect.ServerStream[pb.RangeStreamResponse]) error {
	if err := validRangeRequest(r); err != nil {
		return rpcError(err)
	}
	if !(r.SortOrder == pb.RangeRequest_NONE || (r.SortTarget == pb.RangeRequest_KEY && r.SortOrder == pb.RangeRequest_ASCEND)) {
		return connect.NewError(connect.CodeUnimplemented, errors.New("RangeStream does not support custom sort orders"))
	}
	if r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0 {
		return connect.NewError(connect.CodeUnimplemented, errors.New("RangeStream does not support revision filters"))
	}
	// etcd's span of a streamed range (EtcdServer.RangeStream); each chunk's
	// read is a "range" span below it, made where the read runs.
	ctx, span := s.g.tracing.Start(ctx, "range_streaming", func() []attribute.KeyValue { return tracing.RangeStreamAttrs(r) })
	defer span.End()
	send := func(resp *pb.RangeResponse) error {
		return out.Send(&pb.RangeStreamResponse{RangeResponse: resp})
	}
	if r.CountOnly {
		resp, err := s.g.b.Range(ctx, r)
		if err != nil {
			return TranslateError(err)
		}
		return send(&pb.RangeResponse{Header: resp.Header, Count: resp.Count})
	}

	chunk := proto.CloneOf(r)
	total := r.Limit
	if total == 0 {
		total = math.MaxInt64
	}
	chunk.Limit = min(initialStreamChunk, total)
	var sent, headerRev int64
	for {
		resp, err := s.g.b.Range(ctx, chunk)
		if err != nil {
			return TranslateError(err)
		}
		// The store's revision when the stream started is the header's for
		// the whole stream and, unless the client chose one, the revision
		// every chunk is read at.
		if headerRev == 0 {
			headerRev = resp.Header.GetRevision()
			if chunk.Revision == 0 {
				chunk.Revision = headerRev
			}
		}
		sent += int64(len(resp.Kvs))
		done := !resp.More || sent == total
		last := &pb.RangeResponse{Kvs: resp.Kvs}
		if done {
			hdr := &pb.ResponseHeader{}
			if resp.Header != nil {
				hdr = proto.CloneOf(resp.Header)
			}
			hdr.Revision = headerRev
			last.Header, last.More, last.Count = hdr, resp.More, sent
			if resp.More {
				rest := &pb.RangeRequest{
					Key:          append(bytes.Clone(resp.Kvs[len(resp.Kvs)-1].Key), 0),
					RangeEnd:     chunk.RangeEnd,
					Revision:     chunk.Revision,
					Serializable: chunk.Serializable,
					CountOnly:    true,
				}
				cr, err := s.g.b.Range(ctx, rest)
				if err != nil {
					return TranslateError(err)
				}
				last.Count += cr.Count
			}
		}
		if err := send(last); err != nil {
			return err
		}
		if done {
			return nil
		}
		chunk.Key = append(bytes.Clone(resp.Kvs[len(resp.Kvs)-1].Key), 0)
		chunk.Limit = min(nextStreamChunk(chunk.Limit, proto.Size(resp), s.g.cfg.MaxRequestBytes), total-sent)
	}
}

// initialStreamChunk is the key count of RangeStream's first chunk (etcd's).
const initialStreamChunk = 10

// nextStreamChunk doubles a chunk's limit while chunks stay under half the
// target size and halves it above twice the target, as etcd does, never
// below one (a zero limit would mean no limit).
func nextStreamChunk(limit int64, size, target int) int64 {
	switch {
	case size < target/2:
		limit *= 2
	case size > target*2:
		limit /= 2
	}
	return max(limit, 1)
}
