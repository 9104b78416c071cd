package consensus

// Authentication and authorization state (package auth). Every auth
// request, reads included, goes through raft and is executed at apply, as
// in etcd, so all members hold the same auth state at the same log index.
// The state is stored as one metadata blob in the apply batch; the loop
// keeps the current auth.State and publishes it after the batch commits.

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/storage"
)

// metaAuth is the storage metadata key of the auth state.
var metaAuth = []byte("auth")

// ErrAuthEnableUnsupported is AuthEnable's answer while concord does not
// enforce permissions: enabling auth must never make a user believe that
// keys are protected when they are not.
var ErrAuthEnableUnsupported = errors.New("concord: auth enable is not supported yet: permissions are not enforced")

func loadAuth(s *storage.Store) (*auth.State, error) {
	v, err := s.Meta(metaAuth)
	if err != nil {
		return nil, fmt.Errorf("consensus: read auth state: %w", err)
	}
	st, err := auth.Unmarshal(v)
	if err != nil {
		return nil, fmt.Errorf("consensus: %w", err)
	}
	return st, nil
}

// AuthState is the auth state as of this member's applied index.
func (n *Node) AuthState() *auth.State { return n.authPub.Load() }

// applyAuth executes r if it is an auth request (handled reports it).
func (n *Node) applyAuth(b *storage.Batch, r *pb.InternalRaftRequest, out *applyOutput) (res result, handled bool, fatal error) {
	next, resp, handled, err := n.auth.Apply(r)
	if !handled {
		return result{}, false, nil
	}
	if err != nil {
		return result{err: err}, true, nil
	}
	if next != n.auth {
		data, err := next.Marshal()
		if err != nil {
			return result{}, true, err
		}
		b.SetMeta(metaAuth, data)
		n.auth = next
		out.auth = next
	}
	return result{resp: resp}, true, nil
}

// proposeAuth proposes an auth request and returns its response with a
// complete header.
func proposeAuth[T interface {
	proto.Message
	GetHeader() *pb.ResponseHeader
}](ctx context.Context, n *Node, r *pb.InternalRaftRequest, setHeader func(T, *pb.ResponseHeader)) (T, error) {
	var zero T
	if err := n.learnerGuard(); err != nil {
		return zero, err
	}
	resp, err := proposeAs[T](ctx, n, r)
	if err != nil {
		return zero, err
	}
	setHeader(resp, n.header(resp.GetHeader()))
	return resp, nil
}

// hashPassword is etcd's server-side hashing: the log carries the bcrypt
// hash, never the password.
func (n *Node) hashPassword(pw string) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(pw), n.cfg.BcryptCost)
	if err != nil {
		return "", fmt.Errorf("consensus: hash password: %w", err)
	}
	return base64.StdEncoding.EncodeToString(h), nil
}

// AuthEnable refuses, after etcd's checks of the root user and role on the
// applied state, until permissions are enforced.
func (n *Node) AuthEnable(ctx context.Context, _ *pb.AuthEnableRequest) (*pb.AuthEnableResponse, error) {
	if err := n.learnerGuard(); err != nil {
		return nil, err
	}
	if err := n.linearizableReadNotify(ctx); err != nil {
		return nil, err
	}
	st := n.AuthState()
	if st.User(auth.RootUser) == nil {
		return nil, auth.ErrRootUserNotExist
	}
	if !st.HasRootRole(auth.RootUser) {
		return nil, auth.ErrRootRoleNotExist
	}
	return nil, ErrAuthEnableUnsupported
}

// AuthDisable turns auth off (a no-op while it is off).
func (n *Node) AuthDisable(ctx context.Context, r *pb.AuthDisableRequest) (*pb.AuthDisableResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthDisable: r}, func(m *pb.AuthDisableResponse, h *pb.ResponseHeader) { m.Header = h })
}

// AuthStatus reports whether auth is enabled and the auth revision.
func (n *Node) AuthStatus(ctx context.Context, r *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthStatus: r}, func(m *pb.AuthStatusResponse, h *pb.ResponseHeader) { m.Header = h })
}

// Authenticate checks a user's password and issues a token. Auth cannot be
// enabled yet, so it answers etcd's "authentication is not enabled".
func (n *Node) Authenticate(ctx context.Context, r *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	if err := n.linearizableReadNotify(ctx); err != nil {
		return nil, err
	}
	if _, err := n.AuthState().CheckPassword(r.GetName(), r.GetPassword(), bcrypt.CompareHashAndPassword); err != nil {
		return nil, err
	}
	return nil, ErrAuthEnableUnsupported
}

// UserAdd adds a user, hashing its password first.
func (n *Node) UserAdd(ctx context.Context, r *pb.AuthUserAddRequest) (*pb.AuthUserAddResponse, error) {
	req := &pb.AuthUserAddRequest{Name: r.GetName(), Options: r.GetOptions()}
	if !r.GetOptions().GetNoPassword() {
		h, err := n.hashPassword(r.GetPassword())
		if err != nil {
			return nil, err
		}
		req.HashedPassword = h
	}
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthUserAdd: req}, func(m *pb.AuthUserAddResponse, h *pb.ResponseHeader) { m.Header = h })
}

// UserGet lists a user's roles.
func (n *Node) UserGet(ctx context.Context, r *pb.AuthUserGetRequest) (*pb.AuthUserGetResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthUserGet: r}, func(m *pb.AuthUserGetResponse, h *pb.ResponseHeader) { m.Header = h })
}

// UserList lists the users.
func (n *Node) UserList(ctx context.Context, r *pb.AuthUserListRequest) (*pb.AuthUserListResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthUserList: r}, func(m *pb.AuthUserListResponse, h *pb.ResponseHeader) { m.Header = h })
}

// UserDelete deletes a user.
func (n *Node) UserDelete(ctx context.Context, r *pb.AuthUserDeleteRequest) (*pb.AuthUserDeleteResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthUserDelete: r}, func(m *pb.AuthUserDeleteResponse, h *pb.ResponseHeader) { m.Header = h })
}

// UserChangePassword replaces a user's password (hashed here).
func (n *Node) UserChangePassword(ctx context.Context, r *pb.AuthUserChangePasswordRequest) (*pb.AuthUserChangePasswordResponse, error) {
	req := &pb.AuthUserChangePasswordRequest{Name: r.GetName(), HashedPassword: r.GetHashedPassword()}
	if r.GetPassword() != "" {
		h, err := n.hashPassword(r.GetPassword())
		if err != nil {
			return nil, err
		}
		req.HashedPassword = h
	}
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthUserChangePassword: req}, func(m *pb.AuthUserChangePasswordResponse, h *pb.ResponseHeader) { m.Header = h })
}

// UserGrantRole grants a role to a user.
func (n *Node) UserGrantRole(ctx context.Context, r *pb.AuthUserGrantRoleRequest) (*pb.AuthUserGrantRoleResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthUserGrantRole: r}, func(m *pb.AuthUserGrantRoleResponse, h *pb.ResponseHeader) { m.Header = h })
}

// UserRevokeRole revokes a role from a user.
func (n *Node) UserRevokeRole(ctx context.Context, r *pb.AuthUserRevokeRoleRequest) (*pb.AuthUserRevokeRoleResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthUserRevokeRole: r}, func(m *pb.AuthUserRevokeRoleResponse, h *pb.ResponseHeader) { m.Header = h })
}

// RoleAdd adds a role.
func (n *Node) RoleAdd(ctx context.Context, r *pb.AuthRoleAddRequest) (*pb.AuthRoleAddResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthRoleAdd: r}, func(m *pb.AuthRoleAddResponse, h *pb.ResponseHeader) { m.Header = h })
}

// RoleGet lists a role's permissions.
func (n *Node) RoleGet(ctx context.Context, r *pb.AuthRoleGetRequest) (*pb.AuthRoleGetResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthRoleGet: r}, func(m *pb.AuthRoleGetResponse, h *pb.ResponseHeader) { m.Header = h })
}

// RoleList lists the roles.
func (n *Node) RoleList(ctx context.Context, r *pb.AuthRoleListRequest) (*pb.AuthRoleListResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthRoleList: r}, func(m *pb.AuthRoleListResponse, h *pb.ResponseHeader) { m.Header = h })
}

// RoleDelete deletes a role and revokes it from every user.
func (n *Node) RoleDelete(ctx context.Context, r *pb.AuthRoleDeleteRequest) (*pb.AuthRoleDeleteResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthRoleDelete: r}, func(m *pb.AuthRoleDeleteResponse, h *pb.ResponseHeader) { m.Header = h })
}

// RoleGrantPermission grants (or changes) a key permission of a role.
func (n *Node) RoleGrantPermission(ctx context.Context, r *pb.AuthRoleGrantPermissionRequest) (*pb.AuthRoleGrantPermissionResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthRoleGrantPermission: r}, func(m *pb.AuthRoleGrantPermissionResponse, h *pb.ResponseHeader) { m.Header = h })
}

// RoleRevokePermission revokes a key permission from a role.
func (n *Node) RoleRevokePermission(ctx context.Context, r *pb.AuthRoleRevokePermissionRequest) (*pb.AuthRoleRevokePermissionResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthRoleRevokePermission: r}, func(m *pb.AuthRoleRevokePermissionResponse, h *pb.ResponseHeader) { m.Header = h })
}
