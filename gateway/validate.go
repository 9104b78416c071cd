package gateway

import (
	"context"
	"net"
	"net/url"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/pkg/v3/adt"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Request validation with etcd's v3rpc semantics (key.go, lease.go): the
// same checks in the same order, returning the same rpctypes errors, so
// that a bad request gets exactly the error etcd gives it and never
// reaches the backend.

func validRangeRequest(r *pb.RangeRequest) error {
	if len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	return nil
}

func validPutRequest(r *pb.PutRequest) error {
	switch {
	case len(r.Key) == 0:
		return rpctypes.ErrGRPCEmptyKey
	case r.IgnoreValue && len(r.Value) != 0:
		return rpctypes.ErrGRPCValueProvided
	case r.IgnoreLease && r.Lease != 0:
		return rpctypes.ErrGRPCLeaseProvided
	}
	return nil
}

func validDeleteRequest(r *pb.DeleteRangeRequest) error {
	if len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	return nil
}

// validTxnRequest checks the op counts against maxOps (each branch and the
// compare list separately; nested txns get what the outer level left over)
// and every op recursively.
func validTxnRequest(r *pb.TxnRequest, maxOps int) error {
	n := max(len(r.Compare), len(r.Success), len(r.Failure))
	if n > maxOps {
		return rpctypes.ErrGRPCTooManyOps
	}
	for _, c := range r.Compare {
		if len(c.Key) == 0 {
			return rpctypes.ErrGRPCEmptyKey
		}
	}
	for _, branch := range [2][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			if err := validRequestOp(op, maxOps-n); err != nil {
				return err
			}
		}
	}
	return nil
}

func validRequestOp(op *pb.RequestOp, maxOps int) error {
	switch v := op.GetRequest().(type) {
	case *pb.RequestOp_RequestRange:
		return validRangeRequest(v.RequestRange)
	case *pb.RequestOp_RequestPut:
		return validPutRequest(v.RequestPut)
	case *pb.RequestOp_RequestDeleteRange:
		return validDeleteRequest(v.RequestDeleteRange)
	case *pb.RequestOp_RequestTxn:
		return validTxnRequest(v.RequestTxn, maxOps)
	default:
		// An empty op (or a nil entry) is what etcd calls "key not found".
		return rpctypes.ErrGRPCKeyNotFound
	}
}

// checkTxnIntervals rejects a txn whose branches write the same key twice
// (put+put, or a put inside a deleted range), looking through nested txns;
// then and else branches of one nested txn may write the same key because
// only one of them runs. It is called after validTxnRequest has bounded the
// size, like etcd, so the interval work stays bounded too.
func checkTxnIntervals(r *pb.TxnRequest) error {
	if !hasWrites(r) {
		return nil
	}
	if _, _, err := writeSets(r.Success); err != nil {
		return err
	}
	_, _, err := writeSets(r.Failure)
	return err
}

// allKeys is the interval covering every key, used to copy whole trees.
var allKeys = adt.NewStringAffineInterval("\x00", "")

// writeSets returns the keys put and the ranges deleted by ops (nested txns
// included), or ErrGRPCDuplicateKey if two of them collide.
func writeSets(ops []*pb.RequestOp) (map[string]struct{}, adt.IntervalTree, error) {
	dels := adt.NewIntervalTree()
	for _, op := range ops {
		d := op.GetRequestDeleteRange()
		if d == nil {
			continue
		}
		if len(d.RangeEnd) == 0 {
			dels.Insert(adt.NewStringAffinePoint(string(d.Key)), struct{}{})
		} else {
			dels.Insert(adt.NewStringAffineInterval(string(d.Key), string(d.RangeEnd)), struct{}{})
		}
	}

	puts := make(map[string]struct{})
	deleted := func(k string) bool { return dels.Intersects(adt.NewStringAffinePoint(k)) }
	for _, op := range ops {
		t := op.GetRequestTxn()
		if t == nil {
			continue
		}
		thenPuts, thenDels, err := writeSets(t.Success)
		if err != nil {
			return nil, dels, err
		}
		elsePuts, elseDels, err := writeSets(t.Failure)
		if err != nil {
			return nil, dels, err
		}
		for k := range thenPuts {
			if _, dup := puts[k]; dup || deleted(k) {
				return nil, dels, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
		for k := range elsePuts {
			if _, dup := puts[k]; dup {
				// Only a collision with another op, not with this txn's
				// own then-branch, counts: then and else exclude each other.
				if _, sameTxn := thenPuts[k]; !sameTxn {
					return nil, dels, rpctypes.ErrGRPCDuplicateKey
				}
			}
			if deleted(k) {
				return nil, dels, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
		dels.Union(thenDels, allKeys)
		dels.Union(elseDels, allKeys)
	}

	for _, op := range ops {
		p := op.GetRequestPut()
		if p == nil {
			continue
		}
		k := string(p.Key)
		if _, dup := puts[k]; dup || deleted(k) {
			return nil, dels, rpctypes.ErrGRPCDuplicateKey
		}
		puts[k] = struct{}{}
	}
	return puts, dels, nil
}

// hasWrites reports whether any branch (nested too) contains a put or a
// delete; read-only txns cannot collide, so they skip the interval trees.
func hasWrites(r *pb.TxnRequest) bool {
	for _, branch := range [2][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			switch v := op.GetRequest().(type) {
			case *pb.RequestOp_RequestPut, *pb.RequestOp_RequestDeleteRange:
				return true
			case *pb.RequestOp_RequestTxn:
				if hasWrites(v.RequestTxn) {
					return true
				}
			}
		}
	}
	return false
}

// tooLarge reports whether a request that is proposed to raft exceeds
// MaxRequestBytes, which etcd checks on the proposal it builds from it
// (etcdRaftSize), not on the request alone. A backend that checks the
// proposals it builds (RequestSizeChecker) does so exactly, auth header
// included, and in etcd's order (after the token): it is left to do so.
func (g *Gateway) tooLarge(ctx context.Context, m proto.Message) error {
	if c, ok := g.b.(RequestSizeChecker); ok && c.ChecksRequestSize(ctx) {
		return nil
	}
	if etcdRaftSize(m) > g.cfg.MaxRequestBytes {
		return rpctypes.ErrGRPCRequestTooLarge
	}
	return nil
}

// etcdRaftSize is the size of the raft request etcd builds from a Put,
// DeleteRange or Txn, and checks against --max-request-bytes: the request
// in an InternalRaftRequest with a header holding a request ID
// (EtcdServer.processInternalRaftRequestOnce). With auth enabled etcd also
// puts the user name and auth revision in that header; that is not
// counted here (so this is a lower bound then): a backend that knows the
// user counts it (RequestSizeChecker; consensus.proposalSize). Other
// messages count as themselves. It is computed rather
// than built, to keep the write path free of allocations; a test checks it
// against the message etcd builds.
func etcdRaftSize(m proto.Message) int {
	n := proto.Size(m)
	switch m.(type) {
	case *pb.PutRequest, *pb.DeleteRangeRequest, *pb.TxnRequest:
		// Field 4, 5 or 6: a one-byte tag, the length, the request.
		return etcdRaftHeaderSize + 1 + protowire.SizeVarint(uint64(n)) + n
	default:
		return n
	}
}

// etcdRaftHeaderSize is the size of the InternalRaftRequest's header field
// (number 100: a two-byte tag, a one-byte length) holding a RequestHeader
// with only an ID (a one-byte tag and the ID's varint). etcd's request IDs
// begin with the low 16 bits of its member ID, so their varint takes 9 or
// (with the top bit set) 10 bytes: 10 is counted, so a write etcd refuses
// is refused here too, whatever its member ID; one a byte smaller than that
// may be refused here and not by etcd.
const etcdRaftHeaderSize = 2 + 1 + 1 + 10

// validPeerURLs is etcd's types.NewURLs check of MemberAdd: at least one
// URL, each http(s) with host:port or unix(s), without a path.
func validPeerURLs(urls []string) error {
	if len(urls) == 0 {
		return rpctypes.ErrGRPCMemberBadURLs
	}
	for _, s := range urls {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil {
			return rpctypes.ErrGRPCMemberBadURLs
		}
		switch u.Scheme {
		case "http", "https":
			if _, _, err := net.SplitHostPort(u.Host); err != nil {
				return rpctypes.ErrGRPCMemberBadURLs
			}
		case "unix", "unixs":
		default:
			return rpctypes.ErrGRPCMemberBadURLs
		}
		if u.Path != "" {
			return rpctypes.ErrGRPCMemberBadURLs
		}
	}
	return nil
}
