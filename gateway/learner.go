package gateway

import (
	"context"
	"net/http"

	"connectrpc.com/connect"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// Learner is implemented by a backend that may be a raft learner
// (consensus.Node). A gateway over such a backend refuses, while it is a
// learner, every RPC etcd's learners refuse.
type Learner interface {
	IsLearner() bool
}

// The member's own gateway must see its node as a Learner, or the refusals
// silently stop.
var _ Learner = (*consensus.Node)(nil)

// learnerServes are the RPCs etcd 3.7 lets a learner serve: its v3rpc
// interceptors (isRPCSupportedForLearner for unary calls, Snapshot alone
// among streams) refuse every other one with ErrGRPCNotSupportedForLearner
// before the request reaches a handler. Range is served only when
// serializable, which needs the decoded request: kvService.Range checks it.
var learnerServes = map[string]bool{
	etcdserverpbconnect.KVRangeProcedure:             true,
	etcdserverpbconnect.MaintenanceStatusProcedure:   true,
	etcdserverpbconnect.MaintenanceSnapshotProcedure: true,
}

// learnerRefusal is the wire form of etcd's refusal, computed once.
var learnerRefusal = grpcWire(rpctypes.ErrGRPCNotSupportedForLearner)

// isLearner reports whether the backend is a learner now; false for a
// backend that never is one (the split gateway's remote consensus, whose
// members refuse for themselves).
func (g *Gateway) isLearner() bool {
	return g.learner != nil && g.learner.IsLearner()
}

// gate runs before any request is decoded: the learner refusal first, then
// require-leader, in etcd's interceptor order.
func (g *Gateway) gate(ctx context.Context, spec connect.Spec, peer connect.Peer, h http.Header) (context.Context, error) {
	if g.isLearner() && !learnerServes[spec.Procedure] {
		return ctx, learnerRefusal.err()
	}
	return g.requireLeader(withCredentials(ctx, h), spec, peer, h)
}
