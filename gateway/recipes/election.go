package recipes

import (
	"context"
	"errors"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

// Campaign is etcd's v3election Campaign:
// concurrency.NewElection(session(req.Lease), req.Name).Campaign(req.Value).
// It returns once the caller's key is the oldest of the election's prefix.
// Its header is that of the campaign's first txn, as etcd's is.
func (s *Service) Campaign(ctx context.Context, req *v3electionpb.CampaignRequest) (*v3electionpb.CampaignResponse, error) {
	ctx, end, err := s.begin(ctx)
	if err != nil {
		return nil, wireError(err)
	}
	defer end()
	resp, err := s.campaign(ctx, req)
	return resp, wireError(err)
}

func (s *Service) campaign(ctx context.Context, req *v3electionpb.CampaignRequest) (*v3electionpb.CampaignResponse, error) {
	lease, err := s.sessionLease(ctx, req.GetLease())
	if err != nil {
		return nil, err
	}
	pfx := string(req.GetName()) + "/"
	key := waiterKey(pfx, lease)
	tresp, err := s.txn(ctx, &pb.TxnRequest{
		Compare: []*pb.Compare{createRevIs(key, 0)},
		Success: []*pb.RequestOp{opPut(key, req.GetValue(), lease)},
		Failure: []*pb.RequestOp{opGet(key)},
	})
	if err != nil {
		return nil, err
	}
	rev := tresp.GetHeader().GetRevision()
	if !tresp.GetSucceeded() {
		// This lease already campaigns: keep its place, and proclaim the
		// new value if it differs.
		kvs := rangeKvs(tresp, 0)
		if len(kvs) == 0 {
			return nil, errors.New("recipes: election key vanished inside a txn")
		}
		rev = kvs[0].GetCreateRevision()
		if string(kvs[0].GetValue()) != string(req.GetValue()) {
			if _, err := s.proclaim(ctx, key, rev, lease, req.GetValue()); err != nil {
				// concurrency resigns after a failed proclamation, but
				// "not leader" has already cleared its key, so then the
				// resignation does nothing.
				if !errors.Is(err, ErrElectionNotLeader) {
					_, _ = s.resign(ctx, key, rev)
				}
				return nil, err
			}
		}
	}
	if err := s.waitDeletes(ctx, pfx, rev-1); err != nil {
		if ctx.Err() != nil {
			// The caller gave up: withdraw its candidacy under the
			// service's lifetime. Other failures leave the key, as etcd.
			cctx, cancel := s.cleanupContext()
			if _, rerr := s.resign(cctx, key, rev); rerr != nil {
				s.lg.Warn("withdrawing an abandoned candidacy failed; its lease will remove it", "key", key, "error", rerr)
			}
			cancel()
		}
		return nil, err
	}
	return &v3electionpb.CampaignResponse{
		Header: tresp.GetHeader(),
		Leader: &v3electionpb.LeaderKey{Name: req.GetName(), Key: []byte(key), Rev: rev, Lease: lease},
	}, nil
}

// Proclaim is etcd's v3election Proclaim: it overwrites the leader key's
// value if the key still has the creation revision of the leadership, and
// fails with "election: not leader" otherwise.
func (s *Service) Proclaim(ctx context.Context, req *v3electionpb.ProclaimRequest) (*v3electionpb.ProclaimResponse, error) {
	ctx, end, err := s.begin(ctx)
	if err != nil {
		return nil, wireError(err)
	}
	defer end()
	l := req.GetLeader()
	if l == nil {
		return nil, wireError(ErrMissingLeaderKey)
	}
	if len(l.GetKey()) == 0 {
		return nil, wireError(rpctypes.ErrGRPCEmptyKey)
	}
	// etcd resumes the election in a session of the leader's lease, which
	// grants a new lease when the leader key names none.
	lease, err := s.sessionLease(ctx, l.GetLease())
	if err != nil {
		return nil, wireError(err)
	}
	hdr, err := s.proclaim(ctx, string(l.GetKey()), l.GetRev(), lease, req.GetValue())
	if err != nil {
		return nil, wireError(err)
	}
	return &v3electionpb.ProclaimResponse{Header: hdr}, nil
}

func (s *Service) proclaim(ctx context.Context, key string, rev, lease int64, value []byte) (*pb.ResponseHeader, error) {
	tresp, err := s.txn(ctx, &pb.TxnRequest{
		Compare: []*pb.Compare{createRevIs(key, rev)},
		Success: []*pb.RequestOp{opPut(key, value, lease)},
	})
	if err != nil {
		return nil, err
	}
	if !tresp.GetSucceeded() {
		return nil, ErrElectionNotLeader
	}
	return tresp.GetHeader(), nil
}

// Resign is etcd's v3election Resign: it deletes the leader key if it
// still has the creation revision of the leadership, and succeeds either
// way.
func (s *Service) Resign(ctx context.Context, req *v3electionpb.ResignRequest) (*v3electionpb.ResignResponse, error) {
	ctx, end, err := s.begin(ctx)
	if err != nil {
		return nil, wireError(err)
	}
	defer end()
	l := req.GetLeader()
	if l == nil {
		return nil, wireError(ErrMissingLeaderKey)
	}
	if len(l.GetKey()) == 0 {
		return nil, wireError(rpctypes.ErrGRPCEmptyKey)
	}
	// As in Proclaim, the session etcd opens grants a lease when the leader
	// key names none, although resigning does not use it.
	if _, err := s.sessionLease(ctx, l.GetLease()); err != nil {
		return nil, wireError(err)
	}
	hdr, err := s.resign(ctx, string(l.GetKey()), l.GetRev())
	if err != nil {
		return nil, wireError(err)
	}
	return &v3electionpb.ResignResponse{Header: hdr}, nil
}

func (s *Service) resign(ctx context.Context, key string, rev int64) (*pb.ResponseHeader, error) {
	tresp, err := s.txn(ctx, &pb.TxnRequest{
		Compare: []*pb.Compare{createRevIs(key, rev)},
		Success: []*pb.RequestOp{opDelete(key)},
	})
	if err != nil {
		return nil, err
	}
	return tresp.GetHeader(), nil
}

// Leader is etcd's v3election Leader: the oldest key of the election's
// prefix, or "election: no leader".
func (s *Service) Leader(ctx context.Context, req *v3electionpb.LeaderRequest) (*v3electionpb.LeaderResponse, error) {
	ctx, end, err := s.begin(ctx)
	if err != nil {
		return nil, wireError(err)
	}
	defer end()
	resp, err := s.kv.Range(ctx, firstCreate(string(req.GetName())+"/"))
	if err != nil {
		return nil, wireError(err)
	}
	if len(resp.GetKvs()) == 0 {
		return nil, wireError(ErrElectionNoLeader)
	}
	return &v3electionpb.LeaderResponse{Header: resp.GetHeader(), Kv: resp.Kvs[0]}, nil
}

// Observe is etcd's v3election Observe: it streams the leader's key-value,
// then every proclamation of that leader, then the next leader, and so on.
// As in etcd, the stream ends without an error when the backend fails
// (clients see the end of the stream), and with the context's error when
// the client goes away.
func (s *Service) Observe(ctx context.Context, req *v3electionpb.LeaderRequest, stream *connect.ServerStream[v3electionpb.LeaderResponse]) error {
	ctx, end, err := s.begin(ctx)
	if err != nil {
		return wireError(err)
	}
	defer end()
	return wireError(s.observe(ctx, req.GetName(), stream.Send))
}

// observe is concurrency's Election.observe feeding send.
func (s *Service) observe(ctx context.Context, name []byte, send func(*v3electionpb.LeaderResponse) error) error {
	pfx := string(name) + "/"
	// ended is the end of the stream after a backend failure.
	ended := func(err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.lg.Debug("election observe ended", "election", pfx, "error", err)
		return nil
	}
	for {
		resp, err := s.kv.Range(ctx, firstCreate(pfx))
		if err != nil {
			return ended(err)
		}
		var hdr *pb.ResponseHeader
		var kv *mvccpb.KeyValue
		if len(resp.GetKvs()) == 0 {
			hdr, kv, err = s.firstPut(ctx, pfx, resp.GetHeader().GetRevision())
			if err != nil {
				return ended(err)
			}
		} else {
			hdr, kv = resp.GetHeader(), resp.Kvs[0]
		}
		if err := send(&v3electionpb.LeaderResponse{Header: hdr, Kv: kv}); err != nil {
			return err
		}
		// Follow this leader's proclamations until its key is deleted.
		if err := s.followLeader(ctx, kv.GetKey(), hdr.GetRevision()+1, send); err != nil {
			var se sendError
			if errors.As(err, &se) {
				return se.err
			}
			return ended(err)
		}
	}
}

// firstPut waits, from revision rev on, for the first put on the prefix of
// an election without candidates. Its header is the watch response's with
// the put's revision, as concurrency reports it.
func (s *Service) firstPut(ctx context.Context, pfx string, rev int64) (*pb.ResponseHeader, *mvccpb.KeyValue, error) {
	w := s.startWatch(ctx, &pb.WatchCreateRequest{Key: []byte(pfx), RangeEnd: prefixEnd(pfx), StartRevision: rev})
	defer w.stop()
	for {
		r, err := w.next(ctx)
		if err != nil {
			return nil, nil, err
		}
		for _, ev := range r.Events {
			// Only a put names a leader; a delete would make observe spin.
			if ev.GetType() == mvccpb.Event_PUT {
				h := r.GetHeader()
				return &pb.ResponseHeader{
					ClusterId: h.GetClusterId(),
					MemberId:  h.GetMemberId(),
					Revision:  ev.GetKv().GetModRevision(),
					RaftTerm:  h.GetRaftTerm(),
				}, ev.Kv, nil
			}
		}
	}
}

// sendError marks a failure to send to the client, which ends Observe
// with that error rather than as a backend failure.
type sendError struct{ err error }

func (e sendError) Error() string { return e.err.Error() }

// followLeader sends every put of key from revision rev on, and returns
// nil once the key is deleted.
func (s *Service) followLeader(ctx context.Context, key []byte, rev int64, send func(*v3electionpb.LeaderResponse) error) error {
	w := s.startWatch(ctx, &pb.WatchCreateRequest{Key: key, StartRevision: rev})
	defer w.stop()
	for {
		r, err := w.next(ctx)
		if err != nil {
			return err
		}
		for _, ev := range r.Events {
			if ev.GetType() == mvccpb.Event_DELETE {
				return nil
			}
			if err := send(&v3electionpb.LeaderResponse{Header: r.GetHeader(), Kv: ev.Kv}); err != nil {
				return sendError{err}
			}
		}
	}
}
