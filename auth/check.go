package auth

import (
	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// CheckApply is etcd's authApplierV3: whether the request r, proposed as
// ai (from its header; nil without credentials), may be applied to s.
// leaseKeys lists the keys attached to a lease, for LeaseRevoke and for
// puts that attach keys to a lease. It runs at apply, against the auth
// state of that log position, so a permission revoked before a write is
// applied is honoured even if it was granted when the write was proposed.
func (s *State) CheckApply(r *pb.InternalRaftRequest, ai *AuthInfo, leaseKeys func(id int64) [][]byte) error {
	if !s.enabled {
		return nil
	}
	switch {
	case needAdminPermission(r):
		return s.IsAdminPermitted(ai)
	case r.AuthUserGet != nil:
		// A user may read its own roles. As in etcd, a request without a
		// user is the user "" here: its UserGet of "" is not refused but
		// finds no user.
		name := ""
		if ai != nil {
			name = ai.Username
		}
		if err := s.IsAdminPermitted(ai); err != nil && r.AuthUserGet.Name != name {
			return err
		}
	case r.AuthRoleGet != nil:
		// A user may read the roles it has.
		if err := s.IsAdminPermitted(ai); err != nil && (ai == nil || !s.HasRole(ai.Username, r.AuthRoleGet.Role)) {
			return err
		}
	case r.Put != nil:
		return s.checkPut(ai, r.Put, leaseKeys)
	case r.DeleteRange != nil:
		return s.checkDelete(ai, r.DeleteRange)
	case r.Txn != nil:
		return s.CheckTxn(ai, r.Txn, leaseKeys)
	case r.LeaseRevoke != nil:
		return s.checkLeaseKeys(ai, r.LeaseRevoke.ID, leaseKeys)
	}
	return nil
}

// needAdminPermission lists the auth requests only root may make (etcd's).
func needAdminPermission(r *pb.InternalRaftRequest) bool {
	return r.AuthEnable != nil || r.AuthDisable != nil || r.AuthUserAdd != nil || r.AuthUserDelete != nil ||
		r.AuthUserChangePassword != nil || r.AuthUserGrantRole != nil || r.AuthUserRevokeRole != nil ||
		r.AuthRoleAdd != nil || r.AuthRoleGrantPermission != nil || r.AuthRoleRevokePermission != nil ||
		r.AuthRoleDelete != nil || r.AuthUserList != nil || r.AuthRoleList != nil
}

func (s *State) checkPut(ai *AuthInfo, r *pb.PutRequest, leaseKeys func(int64) [][]byte) error {
	if err := s.IsOpPermitted(ai, r.Key, nil, authpb.Permission_WRITE); err != nil {
		return err
	}
	if err := s.checkLeaseKeys(ai, r.Lease, leaseKeys); err != nil {
		return err
	}
	if r.PrevKv {
		return s.IsOpPermitted(ai, r.Key, nil, authpb.Permission_READ)
	}
	return nil
}

func (s *State) checkDelete(ai *AuthInfo, r *pb.DeleteRangeRequest) error {
	if err := s.IsOpPermitted(ai, r.Key, r.RangeEnd, authpb.Permission_WRITE); err != nil {
		return err
	}
	if r.PrevKv {
		return s.IsOpPermitted(ai, r.Key, r.RangeEnd, authpb.Permission_READ)
	}
	return nil
}

// checkLeaseKeys is etcd's checkLeasePuts: root, or write permission on
// every key attached to the lease.
func (s *State) checkLeaseKeys(ai *AuthInfo, id int64, leaseKeys func(int64) [][]byte) error {
	if id == 0 || s.IsAdminPermitted(ai) == nil {
		return nil
	}
	for _, k := range leaseKeys(id) {
		if err := s.IsOpPermitted(ai, k, nil, authpb.Permission_WRITE); err != nil {
			return err
		}
	}
	return nil
}

// CheckTxn is etcd's checkTxnAuth: read permission on every compare,
// and every operation of both branches (nested txns included) permitted.
func (s *State) CheckTxn(ai *AuthInfo, r *pb.TxnRequest, leaseKeys func(int64) [][]byte) error {
	if !s.enabled {
		return nil
	}
	for _, c := range r.Compare {
		if err := s.IsOpPermitted(ai, c.Key, c.RangeEnd, authpb.Permission_READ); err != nil {
			return err
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			var err error
			switch {
			case op.GetRequestRange() != nil:
				rr := op.GetRequestRange()
				err = s.IsOpPermitted(ai, rr.Key, rr.RangeEnd, authpb.Permission_READ)
			case op.GetRequestPut() != nil:
				err = s.checkPut(ai, op.GetRequestPut(), leaseKeys)
			case op.GetRequestDeleteRange() != nil:
				err = s.checkDelete(ai, op.GetRequestDeleteRange())
			case op.GetRequestTxn() != nil:
				err = s.CheckTxn(ai, op.GetRequestTxn(), leaseKeys)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}
