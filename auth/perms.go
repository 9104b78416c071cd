package auth

import (
	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/pkg/v3/adt"
)

// unifiedPerms are the key ranges one user may read and write, merged over
// all of the user's roles (etcd's unifiedRangePermissions).
type unifiedPerms struct {
	read, write adt.IntervalTree
}

func (s *State) refreshPerms() {
	s.perms = make(map[string]*unifiedPerms, len(s.users))
	for name, u := range s.users {
		up := &unifiedPerms{read: adt.NewIntervalTree(), write: adt.NewIntervalTree()}
		for _, rn := range u.Roles {
			role := s.roles[rn]
			if role == nil {
				continue
			}
			for _, p := range role.KeyPermission {
				var ivl adt.Interval
				switch {
				case len(p.RangeEnd) == 0:
					ivl = adt.NewBytesAffinePoint(p.Key)
				case isOpenEnded(p.RangeEnd):
					// An empty end is +infinity to BytesAffineComparable.
					ivl = adt.NewBytesAffineInterval(p.Key, nil)
				default:
					ivl = adt.NewBytesAffineInterval(p.Key, p.RangeEnd)
				}
				switch p.PermType {
				case authpb.Permission_READWRITE:
					up.read.Insert(ivl, struct{}{})
					up.write.Insert(ivl, struct{}{})
				case authpb.Permission_READ:
					up.read.Insert(ivl, struct{}{})
				case authpb.Permission_WRITE:
					up.write.Insert(ivl, struct{}{})
				}
			}
		}
		s.perms[name] = up
	}
}

// RangePermitted reports whether the named user's roles grant typ (READ or
// WRITE) on key, or on all of [key, end) when end is set ("\x00" meaning to
// the end of the keyspace). The root role is not considered here; see
// HasRootRole.
func (s *State) RangePermitted(user string, key, end []byte, typ authpb.Permission_Type) bool {
	up := s.perms[user]
	if up == nil {
		return false
	}
	tree := up.read
	switch typ {
	case authpb.Permission_READ:
	case authpb.Permission_WRITE:
		tree = up.write
	default:
		return false
	}
	if len(end) == 0 {
		return tree.Intersects(adt.NewBytesAffinePoint(key))
	}
	if isOpenEnded(end) {
		end = nil
	}
	return tree.Contains(adt.NewBytesAffineInterval(key, end))
}
