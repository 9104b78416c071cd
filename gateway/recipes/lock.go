package recipes

import (
	"context"
	"errors"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// Lock is etcd's v3lock Lock: concurrency.NewMutex(session(req.Lease),
// req.Name).Lock. It returns once the caller's key
// "<name>/<lease hex>" is the oldest of the prefix, and answers with that
// key. Locking again with the same lease is the same acquisition.
func (s *Service) Lock(ctx context.Context, req *v3lockpb.LockRequest) (*v3lockpb.LockResponse, error) {
	ctx, end, err := s.begin(ctx)
	if err != nil {
		return nil, wireError(err)
	}
	defer end()
	resp, err := s.lock(ctx, req)
	return resp, wireError(err)
}

func (s *Service) lock(ctx context.Context, req *v3lockpb.LockRequest) (*v3lockpb.LockResponse, error) {
	lease, err := s.sessionLease(ctx, req.GetLease())
	if err != nil {
		return nil, err
	}
	pfx := string(req.GetName()) + "/"
	key := waiterKey(pfx, lease)

	// Mutex.tryAcquire: join the waiters unless this lease already has a key
	// (then reuse it), and fetch the holder in the same round trip.
	tresp, err := s.txn(ctx, &pb.TxnRequest{
		Compare: []*pb.Compare{createRevIs(key, 0)},
		Success: []*pb.RequestOp{opPut(key, nil, lease), opRange(firstCreate(pfx))},
		Failure: []*pb.RequestOp{opGet(key), opRange(firstCreate(pfx))},
	})
	if err != nil {
		return nil, err
	}
	myRev := tresp.GetHeader().GetRevision()
	if !tresp.GetSucceeded() {
		mine := rangeKvs(tresp, 0)
		if len(mine) == 0 {
			// Impossible for a correct backend: the compare failed, so
			// the key existed when the txn ran.
			return nil, errors.New("recipes: lock key vanished inside a txn")
		}
		myRev = mine[0].GetCreateRevision()
	}
	if owner := rangeKvs(tresp, 1); len(owner) == 0 || owner[0].GetCreateRevision() == myRev {
		return &v3lockpb.LockResponse{Header: tresp.GetHeader(), Key: []byte(key)}, nil
	}

	// Mutex.Lock: wait for every older waiter to go, then make sure our
	// own key survived the wait (the lease may have expired meanwhile).
	if err := s.waitDeletes(ctx, pfx, myRev-1); err != nil {
		s.release(key)
		return nil, err
	}
	gresp, err := s.kv.Range(ctx, &pb.RangeRequest{Key: []byte(key)})
	if err != nil {
		s.release(key)
		return nil, err
	}
	if len(gresp.GetKvs()) == 0 {
		return nil, ErrSessionExpired
	}
	return &v3lockpb.LockResponse{Header: gresp.GetHeader(), Key: []byte(key)}, nil
}

// release is Mutex.Unlock(client.Ctx()) after a failed wait: it deletes
// the caller's key under the service's lifetime, not the caller's context,
// which may be what ended.
func (s *Service) release(key string) {
	ctx, cancel := s.cleanupContext()
	defer cancel()
	if _, err := s.deleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte(key)}); err != nil {
		s.lg.Warn("removing an abandoned lock waiter failed; its lease will remove it", "key", key, "error", err)
	}
}

// Unlock is etcd's v3lock Unlock: it deletes the key Lock returned.
func (s *Service) Unlock(ctx context.Context, req *v3lockpb.UnlockRequest) (*v3lockpb.UnlockResponse, error) {
	ctx, end, err := s.begin(ctx)
	if err != nil {
		return nil, wireError(err)
	}
	defer end()
	if len(req.GetKey()) == 0 {
		// etcd's handler sends the delete through its own KV service,
		// which rejects an empty key.
		return nil, wireError(rpctypes.ErrGRPCEmptyKey)
	}
	resp, err := s.deleteRange(ctx, &pb.DeleteRangeRequest{Key: req.GetKey()})
	if err != nil {
		return nil, wireError(err)
	}
	return &v3lockpb.UnlockResponse{Header: resp.GetHeader()}, nil
}
