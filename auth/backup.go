package auth

import (
	"bytes"
	"fmt"
	"slices"
	"sort"

	"go.etcd.io/etcd/api/v3/authpb"
	"google.golang.org/protobuf/proto"
)

// Backups carry the auth state in etcd's schema (users, roles, the enabled
// flag and the revision) but never the token key: tokens issued before a
// backup must not work on what is restored from it, as etcd's in-memory
// simple tokens do not. A state restored with auth enabled therefore has
// no key until one is proposed (NeedsTokenKey, Enable).

// Users returns copies of every user, in name order.
func (s *State) Users() []*authpb.User {
	out := make([]*authpb.User, 0, len(s.users))
	for _, name := range sortedKeys(s.users) {
		out = append(out, proto.CloneOf(s.users[name]))
	}
	return out
}

// Roles returns copies of every role, in name order.
func (s *State) Roles() []*authpb.Role {
	out := make([]*authpb.Role, 0, len(s.roles))
	for _, name := range sortedKeys(s.roles) {
		out = append(out, proto.CloneOf(s.roles[name]))
	}
	return out
}

// NeedsTokenKey reports whether auth is enabled without a key to sign
// tokens with: a restored state, or one enabled by an etcd-style entry.
func (s *State) NeedsTokenKey() bool { return s.enabled && len(s.tokenKey) == 0 }

// Restored builds the state a backup describes, without a token key.
// Revision 0 (a database that never stored one) is taken as 1, where every
// auth store starts. Users' roles and roles' permissions are put in the
// order the state keeps them (etcd keeps the same), so a backup written
// by any tool restores to a state that answers as the original did.
func Restored(enabled bool, revision uint64, users []*authpb.User, roles []*authpb.Role) (*State, error) {
	s := New()
	s.enabled = enabled
	s.revision = max(revision, 1)
	for _, u := range users {
		if len(u.Name) == 0 {
			return nil, fmt.Errorf("%w: user with an empty name", ErrCorrupt)
		}
		if s.users[string(u.Name)] != nil {
			return nil, fmt.Errorf("%w: user %q twice", ErrCorrupt, u.Name)
		}
		u = proto.CloneOf(u)
		sort.Strings(u.Roles)
		u.Roles = slices.Compact(u.Roles)
		s.users[string(u.Name)] = u
	}
	for _, r := range roles {
		if len(r.Name) == 0 {
			return nil, fmt.Errorf("%w: role with an empty name", ErrCorrupt)
		}
		if s.roles[string(r.Name)] != nil {
			return nil, fmt.Errorf("%w: role %q twice", ErrCorrupt, r.Name)
		}
		r = proto.CloneOf(r)
		for _, p := range r.KeyPermission {
			if !isValidPermissionRange(p.Key, p.RangeEnd) {
				return nil, fmt.Errorf("%w: role %q grants the invalid range [%q, %q)", ErrCorrupt, r.Name, p.Key, p.RangeEnd)
			}
		}
		slices.SortStableFunc(r.KeyPermission, func(a, b *authpb.Permission) int { return bytes.Compare(a.Key, b.Key) })
		s.roles[string(r.Name)] = r
	}
	s.refreshPerms()
	return s, nil
}
