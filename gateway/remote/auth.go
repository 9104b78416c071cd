package remote

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// The Auth service implements gateway.Auth by forwarding to consensus.
// Like clientv3's retry policy, only the reads (AuthStatus, UserGet,
// UserList, RoleGet, RoleList) are repeated on another member after a
// failure that may have reached the first.

// AuthEnable implements gateway.Auth.
func (c *Consensus) AuthEnable(ctx context.Context, r *pb.AuthEnableRequest) (*pb.AuthEnableResponse, error) {
	return unary(c, ctx, false, authOf, etcdserverpbconnect.AuthClient.AuthEnable, r, (*pb.AuthEnableResponse).GetHeader)
}

// AuthDisable implements gateway.Auth.
func (c *Consensus) AuthDisable(ctx context.Context, r *pb.AuthDisableRequest) (*pb.AuthDisableResponse, error) {
	return unary(c, ctx, false, authOf, etcdserverpbconnect.AuthClient.AuthDisable, r, (*pb.AuthDisableResponse).GetHeader)
}

// AuthStatus implements gateway.Auth.
func (c *Consensus) AuthStatus(ctx context.Context, r *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	return unary(c, ctx, true, authOf, etcdserverpbconnect.AuthClient.AuthStatus, r, (*pb.AuthStatusResponse).GetHeader)
}

// Authenticate implements gateway.Auth.
func (c *Consensus) Authenticate(ctx context.Context, r *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	return unary(c, ctx, false, authOf, etcdserverpbconnect.AuthClient.Authenticate, r, (*pb.AuthenticateResponse).GetHeader)
}

// UserAdd implements gateway.Auth.
func (c *Consensus) UserAdd(ctx context.Context, r *pb.AuthUserAddRequest) (*pb.AuthUserAddResponse, error) {
	return unary(c, ctx, false, authOf, etcdserverpbconnect.AuthClient.UserAdd, r, (*pb.AuthUserAddResponse).GetHeader)
}

// UserGet implements gateway.Auth.
func (c *Consensus) UserGet(ctx context.Context, r *pb.AuthUserGetRequest) (*pb.AuthUserGetResponse, error) {
	return unary(c, ctx, true, authOf, etcdserverpbconnect.AuthClient.UserGet, r, (*pb.AuthUserGetResponse).GetHeader)
}

// UserList implements gateway.Auth.
func (c *Consensus) UserList(ctx context.Context, r *pb.AuthUserListRequest) (*pb.AuthUserListResponse, error) {
	return unary(c, ctx, true, authOf, etcdserverpbconnect.AuthClient.UserList, r, (*pb.AuthUserListResponse).GetHeader)
}

// UserDelete implements gateway.Auth.
func (c *Consensus) UserDelete(ctx context.Context, r *pb.AuthUserDeleteRequest) (*pb.AuthUserDeleteResponse, error) {
	return unary(c, ctx, false, authOf, etcdserverpbconnect.AuthClient.UserDelete, r, (*pb.AuthUserDeleteResponse).GetHeader)
}

// UserChangePassword implements gateway.Auth.
func (c *Consensus) UserChangePassword(ctx context.Context, r *pb.AuthUserChangePasswordRequest) (*pb.AuthUserChangePasswordResponse, error) {
	return unary(c, ctx, false, authOf, etcdserverpbconnect.AuthClient.UserChangePassword, r, (*pb.AuthUserChangePasswordResponse).GetHeader)
}

// UserGrantRole implements gateway.Auth.
func (c *Consensus) UserGrantRole(ctx context.Context, r *pb.AuthUserGrantRoleRequest) (*pb.AuthUserGrantRoleResponse, error) {
	return unary(c, ctx, false, authOf, etcdserverpbconnect.AuthClient.UserGrantRole, r, (*pb.AuthUserGrantRoleResponse).GetHeader)
}

// UserRevokeRole implements gateway.Auth.
func (c *Consensus) UserRevokeRole(ctx context.Context, r *pb.AuthUserRevokeRoleRequest) (*pb.AuthUserRevokeRoleResponse, error) {
	return unary(c, ctx, false, authOf, etcdserverpbconnect.AuthClient.UserRevokeRole, r, (*pb.AuthUserRevokeRoleResponse).GetHeader)
}

// RoleAdd implements gateway.Auth.
func (c *Consensus) RoleAdd(ctx context.Context, r *pb.AuthRoleAddRequest) (*pb.AuthRoleAddResponse, error) {
	return unary(c, ctx, false, authOf, etcdserverpbconnect.AuthClient.RoleAdd, r, (*pb.AuthRoleAddResponse).GetHeader)
}

// RoleGet implements gateway.Auth.
func (c *Consensus) RoleGet(ctx context.Context, r *pb.AuthRoleGetRequest) (*pb.AuthRoleGetResponse, error) {
	return unary(c, ctx, true, authOf, etcdserverpbconnect.AuthClient.RoleGet, r, (*pb.AuthRoleGetResponse).GetHeader)
}

// RoleList implements gateway.Auth.
func (c *Consensus) RoleList(ctx context.Context, r *pb.AuthRoleListRequest) (*pb.AuthRoleListResponse, error) {
	return unary(c, ctx, true, authOf, etcdserverpbconnect.AuthClient.RoleList, r, (*pb.AuthRoleListResponse).GetHeader)
}

// RoleDelete implements gateway.Auth.
func (c *Consensus) RoleDelete(ctx context.Context, r *pb.AuthRoleDeleteRequest) (*pb.AuthRoleDeleteResponse, error) {
	return unary(c, ctx, false, authOf, etcdserverpbconnect.AuthClient.RoleDelete, r, (*pb.AuthRoleDeleteResponse).GetHeader)
}

// RoleGrantPermission implements gateway.Auth.
func (c *Consensus) RoleGrantPermission(ctx context.Context, r *pb.AuthRoleGrantPermissionRequest) (*pb.AuthRoleGrantPermissionResponse, error) {
	return unary(c, ctx, false, authOf, etcdserverpbconnect.AuthClient.RoleGrantPermission, r, (*pb.AuthRoleGrantPermissionResponse).GetHeader)
}

// RoleRevokePermission implements gateway.Auth.
func (c *Consensus) RoleRevokePermission(ctx context.Context, r *pb.AuthRoleRevokePermissionRequest) (*pb.AuthRoleRevokePermissionResponse, error) {
	return unary(c, ctx, false, authOf, etcdserverpbconnect.AuthClient.RoleRevokePermission, r, (*pb.AuthRoleRevokePermissionResponse).GetHeader)
}
