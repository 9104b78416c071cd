package auth

import (
	"bytes"
	"encoding/base64"
	"slices"
	"sort"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/pkg/v3/adt"
	"google.golang.org/protobuf/proto"
)

// The user and role that etcd treats specially: auth can be enabled only
// when RootUser exists and has RootRole, and RootRole grants everything.
const (
	RootUser = "root"
	RootRole = "root"
)

// rootPerm is what RoleGet reports for the root role (etcd's rootPerm).
var rootPerm = &authpb.Permission{PermType: authpb.Permission_READWRITE, Key: []byte{}, RangeEnd: []byte{0}}

// State is one version of the auth state. The zero value is not usable;
// start from New or Unmarshal.
type State struct {
	enabled  bool
	revision uint64
	users    map[string]*authpb.User
	roles    map[string]*authpb.Role
	// tokenKey signs and verifies tokens (token.go); chosen when auth is
	// enabled, dropped when it is disabled.
	tokenKey []byte
	// perms are the merged key permissions of each user, rebuilt whenever
	// users or roles change (etcd's rangePermCache).
	perms map[string]*unifiedPerms
}

// New is the state of a store that never changed its auth settings: auth
// disabled, no users or roles, revision 1.
func New() *State {
	s := &State{revision: 1, users: map[string]*authpb.User{}, roles: map[string]*authpb.Role{}}
	s.refreshPerms()
	return s
}

// Enabled reports whether auth is enabled.
func (s *State) Enabled() bool { return s.enabled }

// Revision is the auth revision.
func (s *State) Revision() uint64 { return s.revision }

// User returns the named user, nil if there is none. The result must not be
// modified.
func (s *State) User(name string) *authpb.User { return s.users[name] }

// HasRootRole reports whether the named user exists and has the root role.
func (s *State) HasRootRole(name string) bool {
	u := s.users[name]
	return u != nil && hasRootRole(u)
}

func hasRootRole(u *authpb.User) bool {
	i := sort.SearchStrings(u.Roles, RootRole)
	return i < len(u.Roles) && u.Roles[i] == RootRole
}

// clone is a copy whose maps may be changed; the values are shared and
// must be replaced, not modified.
func (s *State) clone() *State {
	n := *s
	n.users = make(map[string]*authpb.User, len(s.users))
	for k, v := range s.users {
		n.users[k] = v
	}
	n.roles = make(map[string]*authpb.Role, len(s.roles))
	for k, v := range s.roles {
		n.roles[k] = v
	}
	return &n
}

// commit bumps the revision and rebuilds the permission cache of a changed
// clone (etcd's commitRevision + refreshRangePermCache).
func (n *State) commit() *State {
	n.revision++
	n.refreshPerms()
	return n
}

// CheckPassword verifies a user's password as etcd's CheckPassword does and
// returns the auth revision it was checked against. It is slow (bcrypt);
// callers run it outside the apply loop.
func (s *State) CheckPassword(name, password string, compare func(hash, password []byte) error) (uint64, error) {
	if !s.enabled {
		return 0, ErrAuthNotEnabled
	}
	u := s.users[name]
	if u == nil {
		return 0, ErrAuthFailed
	}
	if u.Options != nil && u.Options.NoPassword {
		return 0, ErrNoPasswordUser
	}
	if compare(u.Password, []byte(password)) != nil {
		return 0, ErrAuthFailed
	}
	return s.revision, nil
}

// Apply executes the auth request r carries, if any (handled reports
// whether it carried one). next is the state afterwards, s itself when
// nothing changed; err is the request's failure, which leaves s unchanged.
// Passwords must arrive hashed (HashedPassword, base64 of a bcrypt hash),
// as etcd's server layer sends them.
func (s *State) Apply(r *pb.InternalRaftRequest) (next *State, resp proto.Message, handled bool, err error) {
	handled = true
	switch {
	case r.AuthEnable != nil:
		// concord proposes enables as Enable commands carrying the token
		// key; an etcd-style entry enables auth without one, so no token
		// can be issued or verified until the leader proposes a key
		// (NeedsTokenKey).
		next, err = s.Enable(nil)
		resp = &pb.AuthEnableResponse{}
	case r.AuthDisable != nil:
		next = s.authDisable()
		resp = &pb.AuthDisableResponse{}
	case r.AuthStatus != nil:
		next, resp = s, &pb.AuthStatusResponse{Enabled: s.enabled, AuthRevision: s.revision}
	case r.AuthUserAdd != nil:
		next, err = s.userAdd(r.AuthUserAdd)
		resp = &pb.AuthUserAddResponse{}
	case r.AuthUserDelete != nil:
		next, err = s.userDelete(r.AuthUserDelete)
		resp = &pb.AuthUserDeleteResponse{}
	case r.AuthUserChangePassword != nil:
		next, err = s.userChangePassword(r.AuthUserChangePassword)
		resp = &pb.AuthUserChangePasswordResponse{}
	case r.AuthUserGrantRole != nil:
		next, err = s.userGrantRole(r.AuthUserGrantRole)
		resp = &pb.AuthUserGrantRoleResponse{}
	case r.AuthUserRevokeRole != nil:
		next, err = s.userRevokeRole(r.AuthUserRevokeRole)
		resp = &pb.AuthUserRevokeRoleResponse{}
	case r.AuthUserGet != nil:
		next = s
		u := s.users[r.AuthUserGet.Name]
		if u == nil {
			err = ErrUserNotFound
		} else {
			resp = &pb.AuthUserGetResponse{Roles: slices.Clone(u.Roles)}
		}
	case r.AuthUserList != nil:
		next, resp = s, &pb.AuthUserListResponse{Users: sortedKeys(s.users)}
	case r.AuthRoleAdd != nil:
		next, err = s.roleAdd(r.AuthRoleAdd)
		resp = &pb.AuthRoleAddResponse{}
	case r.AuthRoleDelete != nil:
		next, err = s.roleDelete(r.AuthRoleDelete)
		resp = &pb.AuthRoleDeleteResponse{}
	case r.AuthRoleGrantPermission != nil:
		next, err = s.roleGrantPermission(r.AuthRoleGrantPermission)
		resp = &pb.AuthRoleGrantPermissionResponse{}
	case r.AuthRoleRevokePermission != nil:
		next, err = s.roleRevokePermission(r.AuthRoleRevokePermission)
		resp = &pb.AuthRoleRevokePermissionResponse{}
	case r.AuthRoleGet != nil:
		next = s
		role := s.roles[r.AuthRoleGet.Role]
		switch {
		case role == nil:
			err = ErrRoleNotFound
		case string(role.Name) == RootRole:
			resp = &pb.AuthRoleGetResponse{Perm: []*authpb.Permission{proto.CloneOf(rootPerm)}}
		default:
			perms := make([]*authpb.Permission, len(role.KeyPermission))
			for i, p := range role.KeyPermission {
				perms[i] = proto.CloneOf(p)
			}
			resp = &pb.AuthRoleGetResponse{Perm: perms}
		}
	case r.AuthRoleList != nil:
		next, resp = s, &pb.AuthRoleListResponse{Roles: sortedKeys(s.roles)}
	default:
		return s, nil, false, nil
	}
	if err != nil {
		return s, nil, true, err
	}
	return next, resp, true, nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Enable is etcd's AuthEnable: a no-op when enabled, else it needs the
// root user with the root role. Enabling does not change the revision.
// tokenKey (TokenKeySize random bytes chosen by the proposer, so that every
// member applies the same one) signs the tokens issued from now on. An
// enabled state without a key (NeedsTokenKey) takes the key and stays as
// it is otherwise.
func (s *State) Enable(tokenKey []byte) (*State, error) {
	if s.enabled {
		if len(s.tokenKey) > 0 || len(tokenKey) == 0 {
			return s, nil
		}
		n := s.clone()
		n.tokenKey = bytes.Clone(tokenKey)
		return n, nil
	}
	u := s.users[RootUser]
	if u == nil {
		return nil, ErrRootUserNotExist
	}
	if !hasRootRole(u) {
		return nil, ErrRootRoleNotExist
	}
	n := s.clone()
	n.enabled = true
	n.tokenKey = bytes.Clone(tokenKey)
	return n, nil
}

// authDisable is etcd's AuthDisable: disabling bumps the revision, so
// tokens issued before are stale if auth is enabled again.
func (s *State) authDisable() *State {
	if !s.enabled {
		return s
	}
	n := s.clone()
	n.enabled = false
	n.tokenKey = nil
	return n.commit()
}

// password decodes the hash a request carries, as etcd's selectPassword
// does for requests its server layer hashed.
func password(hashed string) ([]byte, error) {
	p, err := base64.StdEncoding.DecodeString(hashed)
	if err != nil {
		return nil, ErrNoPasswordUser
	}
	return p, nil
}

func (s *State) userAdd(r *pb.AuthUserAddRequest) (*State, error) {
	if r.Name == "" {
		return nil, ErrUserEmpty
	}
	if s.users[r.Name] != nil {
		return nil, ErrUserAlreadyExist
	}
	opts := r.Options
	if opts == nil {
		opts = &authpb.UserAddOptions{}
	}
	u := &authpb.User{Name: []byte(r.Name), Options: proto.CloneOf(opts)}
	if !opts.NoPassword {
		p, err := password(r.HashedPassword)
		if err != nil {
			return nil, err
		}
		u.Password = p
	}
	n := s.clone()
	n.users[r.Name] = u
	return n.commit(), nil
}

func (s *State) userDelete(r *pb.AuthUserDeleteRequest) (*State, error) {
	if s.enabled && r.Name == RootUser {
		return nil, ErrInvalidAuthMgmt
	}
	if s.users[r.Name] == nil {
		return nil, ErrUserNotFound
	}
	n := s.clone()
	delete(n.users, r.Name)
	return n.commit(), nil
}

func (s *State) userChangePassword(r *pb.AuthUserChangePasswordRequest) (*State, error) {
	u := s.users[r.Name]
	if u == nil {
		return nil, ErrUserNotFound
	}
	nu := &authpb.User{Name: u.Name, Roles: u.Roles, Options: u.Options}
	if u.Options == nil || !u.Options.NoPassword {
		p, err := password(r.HashedPassword)
		if err != nil {
			return nil, err
		}
		nu.Password = p
	}
	n := s.clone()
	n.users[r.Name] = nu
	return n.commit(), nil
}

func (s *State) userGrantRole(r *pb.AuthUserGrantRoleRequest) (*State, error) {
	u := s.users[r.User]
	if u == nil {
		return nil, ErrUserNotFound
	}
	// As in etcd, the root role can be granted before it was added.
	if r.Role != RootRole && s.roles[r.Role] == nil {
		return nil, ErrRoleNotFound
	}
	i := sort.SearchStrings(u.Roles, r.Role)
	if i < len(u.Roles) && u.Roles[i] == r.Role {
		return s, nil // etcd ignores a repeated grant without a new revision
	}
	nu := &authpb.User{Name: u.Name, Password: u.Password, Options: u.Options, Roles: slices.Insert(slices.Clone(u.Roles), i, r.Role)}
	n := s.clone()
	n.users[r.User] = nu
	return n.commit(), nil
}

func (s *State) userRevokeRole(r *pb.AuthUserRevokeRoleRequest) (*State, error) {
	if s.enabled && r.Name == RootUser && r.Role == RootRole {
		return nil, ErrInvalidAuthMgmt
	}
	u := s.users[r.Name]
	if u == nil {
		return nil, ErrUserNotFound
	}
	nu := &authpb.User{Name: u.Name, Password: u.Password, Options: u.Options}
	for _, role := range u.Roles {
		if role != r.Role {
			nu.Roles = append(nu.Roles, role)
		}
	}
	if len(nu.Roles) == len(u.Roles) {
		return nil, ErrRoleNotGranted
	}
	n := s.clone()
	n.users[r.Name] = nu
	return n.commit(), nil
}

func (s *State) roleAdd(r *pb.AuthRoleAddRequest) (*State, error) {
	if r.Name == "" {
		return nil, ErrRoleEmpty
	}
	if s.roles[r.Name] != nil {
		return nil, ErrRoleAlreadyExist
	}
	n := s.clone()
	n.roles[r.Name] = &authpb.Role{Name: []byte(r.Name)}
	return n.commit(), nil
}

func (s *State) roleDelete(r *pb.AuthRoleDeleteRequest) (*State, error) {
	if s.enabled && r.Role == RootRole {
		return nil, ErrInvalidAuthMgmt
	}
	if s.roles[r.Role] == nil {
		return nil, ErrRoleNotFound
	}
	n := s.clone()
	delete(n.roles, r.Role)
	// Like etcd, deleting a role revokes it from every user.
	for name, u := range n.users {
		if i := sort.SearchStrings(u.Roles, r.Role); i < len(u.Roles) && u.Roles[i] == r.Role {
			n.users[name] = &authpb.User{Name: u.Name, Password: u.Password, Options: u.Options,
				Roles: slices.Delete(slices.Clone(u.Roles), i, i+1)}
		}
	}
	return n.commit(), nil
}

// permSlice is etcd's: permissions by key alone.
type permSlice []*authpb.Permission

func (p permSlice) Len() int           { return len(p) }
func (p permSlice) Less(i, j int) bool { return bytes.Compare(p[i].Key, p[j].Key) < 0 }
func (p permSlice) Swap(i, j int)      { p[i], p[j] = p[j], p[i] }

func (s *State) roleGrantPermission(r *pb.AuthRoleGrantPermissionRequest) (*State, error) {
	if r.Perm == nil {
		return nil, ErrPermissionNotGiven
	}
	if !isValidPermissionRange(r.Perm.Key, r.Perm.RangeEnd) {
		return nil, ErrInvalidAuthMgmt
	}
	role := s.roles[r.Name]
	if role == nil {
		return nil, ErrRoleNotFound
	}
	// etcd's authStore.RoleGrantPermission, step for step, since the
	// order RoleGet lists is its: only the first permission on the key
	// (sort.Search) is replaced if its range end matches too; otherwise the
	// new one is appended (a second one on the same range if another on
	// the same key came first) and the list sorted by key with sort.Sort,
	// which orders permissions on the same key as etcd's does.
	perms := slices.Clone(role.KeyPermission)
	idx := sort.Search(len(perms), func(i int) bool { return bytes.Compare(perms[i].Key, r.Perm.Key) >= 0 })
	if idx < len(perms) && bytes.Equal(perms[idx].Key, r.Perm.Key) && bytes.Equal(perms[idx].RangeEnd, r.Perm.RangeEnd) {
		p := perms[idx]
		perms[idx] = &authpb.Permission{Key: p.Key, RangeEnd: p.RangeEnd, PermType: r.Perm.PermType}
	} else {
		perms = append(perms, &authpb.Permission{
			Key: bytes.Clone(r.Perm.Key), RangeEnd: bytes.Clone(r.Perm.RangeEnd), PermType: r.Perm.PermType,
		})
		sort.Sort(permSlice(perms))
	}
	n := s.clone()
	n.roles[r.Name] = &authpb.Role{Name: role.Name, KeyPermission: perms}
	return n.commit(), nil
}

func (s *State) roleRevokePermission(r *pb.AuthRoleRevokePermissionRequest) (*State, error) {
	role := s.roles[r.Role]
	if role == nil {
		return nil, ErrRoleNotFound
	}
	nr := &authpb.Role{Name: role.Name}
	for _, p := range role.KeyPermission {
		if !bytes.Equal(p.Key, r.Key) || !bytes.Equal(p.RangeEnd, r.RangeEnd) {
			nr.KeyPermission = append(nr.KeyPermission, p)
		}
	}
	if len(nr.KeyPermission) == len(role.KeyPermission) {
		return nil, ErrPermissionNotGranted
	}
	n := s.clone()
	n.roles[r.Role] = nr
	return n.commit(), nil
}

// isValidPermissionRange is etcd's rule for a granted range: a non-empty
// key, and no range end, an end after the key, or "\x00" (to the end).
func isValidPermissionRange(key, end []byte) bool {
	if len(key) == 0 {
		return false
	}
	if len(end) == 0 {
		return true
	}
	if adt.BytesAffineComparable(key).Compare(adt.BytesAffineComparable(end)) < 0 {
		return true
	}
	return isOpenEnded(end)
}

func isOpenEnded(end []byte) bool { return len(end) == 1 && end[0] == 0 }
