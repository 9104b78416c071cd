package consensus

// Authentication and authorization (package auth). Every auth management
// request, reads included, goes through raft and is executed at apply, as
// in etcd, so all members hold the same auth state at the same log index;
// AuthEnable is a concord RaftCommand because it carries the token key.
// The state is stored as one metadata blob in the apply batch; the loop
// keeps the current auth.State and publishes it after the batch commits.
//
// Permission checks follow etcd's layering: the identity comes from the
// credentials the gateway put in the request's context (a token, or a
// client certificate's common name); reads are checked when served, writes
// and lease revokes at apply against the auth state of that log position
// (the proposal's header carries user and auth revision), admin calls
// before anything is done. A context without credentials is the member's
// own work (health checks, the compactor) and is not checked.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"iter"
	"math"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/auth"
	concordv1 "github.com/concord-kv/concord/proto/gen/concord/v1"
	"github.com/concord-kv/concord/storage"
)

// metaAuth is the storage metadata key of the auth state.
var metaAuth = []byte("auth")

// ErrAuthEnableUnsupported is AuthEnable's answer where concord could not
// run with auth enabled (Config.RefuseAuthEnable: a split consensus that
// neither verifies client certificates nor shares an internal secret with
// the other processes, by which they would identify themselves to it).
var ErrAuthEnableUnsupported = errors.New("concord: auth enable is not supported in the split topology without verified client certificates (--client-cert-auth) or an internal secret (--internal-secret-file): its watch, lease and gateway processes call consensus as the root-role user their certificate names, or with the secret")

// internalAuth is who requests without client credentials run as: the
// member's own components (health checks, the compactor) are trusted, as
// etcd's internal requests run as root. Auth can only be enabled while root
// has the root role, and neither can be removed while it is enabled.
var internalAuth = &auth.AuthInfo{Username: auth.RootUser, Revision: math.MaxUint64}

// authInfo is who the request of ctx runs as under st, etcd's
// AuthInfoFromCtx: nil (no credentials; checks then fail with
// ErrUserEmpty) or the user of a valid token, or, when no token was given,
// the root user for a process of the split topology that presented the
// internal secret, else the user of the verified client certificate, else,
// for a call a split process forwarded, the user of its client's
// certificate if concord's own processes alone vouch for it
// (auth.State.TrustedForwardedUser).
// Requests that did not come from a client (no credentials in ctx at all)
// run as internalAuth.
func (n *Node) authInfo(ctx context.Context, st *auth.State) (*auth.AuthInfo, error) {
	if !st.Enabled() {
		return nil, nil
	}
	c, ok := auth.CredentialsFrom(ctx)
	if !ok {
		return internalAuth, nil
	}
	if c.Token != "" {
		ai, err := n.tokens.Verify(st, c.Token, time.Now())
		if err != nil {
			return nil, err
		}
		return &ai, nil
	}
	if c.Internal {
		// As a verified certificate naming a root-role user: root has the
		// root role as long as auth is enabled (neither can be removed).
		return &auth.AuthInfo{Username: auth.RootUser, Revision: st.Revision()}, nil
	}
	if c.CommonName != "" {
		return &auth.AuthInfo{Username: c.CommonName, Revision: st.Revision()}, nil
	}
	if name, ok := st.TrustedForwardedUser(c.Forwarded); ok {
		// A split gateway's client, named by its certificate, as every
		// process the call went through (all concord's own) says.
		return &auth.AuthInfo{Username: name, Revision: st.Revision()}, nil
	}
	return nil, nil
}

// proposer is the identity a proposal carries in its header.
func (n *Node) proposer(ctx context.Context) (*auth.AuthInfo, error) {
	return n.authInfo(ctx, n.AuthState())
}

// requireAdmin is etcd's AuthAdmin.isPermitted: root only, once enabled.
func (n *Node) requireAdmin(ctx context.Context) error {
	st := n.AuthState()
	ai, err := n.authInfo(ctx, st)
	if err != nil {
		return err
	}
	return st.IsAdminPermitted(ai)
}

// requireAuthInfo is etcd's AuthAdmin.requireAuthInfo: any authenticated
// user, once enabled.
func (n *Node) requireAuthInfo(ctx context.Context) error {
	st := n.AuthState()
	ai, err := n.authInfo(ctx, st)
	if err != nil {
		return err
	}
	if st.Enabled() && ai == nil {
		return auth.ErrUserEmpty
	}
	return nil
}

// checkRead checks read permission on [key, end) for a locally served read
// (etcd's doSerialize with IsRangePermitted).
func (n *Node) checkRead(ctx context.Context, key, end []byte) error {
	st := n.AuthState()
	ai, err := n.authInfo(ctx, st)
	if err != nil {
		return err
	}
	return st.IsOpPermitted(ai, key, end, authpb.Permission_READ)
}

// AuthorizeInternal admits a caller of the member's internal API (the
// split topology's watch fan-outs and lease services): once auth is
// enabled, a process that presented the internal secret, or a root-role
// user, named by the common name of its verified client certificate or by
// a token, since that API serves the history of every key and decides
// lease expiries.
func (n *Node) AuthorizeInternal(ctx context.Context) error {
	st := n.AuthState()
	if !st.Enabled() {
		return nil
	}
	c, _ := auth.CredentialsFrom(ctx)
	if c.Internal {
		return nil
	}
	if c.CommonName != "" {
		err := st.IsAdminPermitted(&auth.AuthInfo{Username: c.CommonName, Revision: st.Revision()})
		if err == nil || c.Token == "" {
			return err
		}
	}
	return n.requireAdmin(auth.WithCredentials(ctx, auth.Credentials{Token: c.Token}))
}

// AuthorizeWatch is etcd's isWatchPermitted: read permission on the
// watched range. It returns the header of the refusal etcd sends. An empty
// key is checked as "\x00", the smallest key, which etcd's watch server
// (serverWatchStream.recvLoop) puts in its place before the check.
func (n *Node) AuthorizeWatch(ctx context.Context, key, end []byte) (*pb.ResponseHeader, error) {
	if len(key) == 0 {
		key = []byte{0}
	}
	return n.header(nil), n.checkRead(ctx, key, end)
}

// AuthorizeLease is etcd's checkLeaseRenew (write, for keep-alives) and
// checkLeaseTimeToLive (read, for TimeToLive with keys): root, or the
// permission on every key attached to the lease.
func (n *Node) AuthorizeLease(ctx context.Context, id int64, write bool) error {
	typ := authpb.Permission_READ
	if write {
		typ = authpb.Permission_WRITE
	}
	return n.checkLeaseKeys(ctx, typ, func(yield func([]byte) bool) {
		if l, ok := n.store.Lease(id); ok {
			for _, k := range l.Keys {
				if !yield(k) {
					return
				}
			}
		}
	})
}

// checkLeaseLeases is etcd's checkLeaseLeases: once auth is enabled, the
// list is for a user (ErrUserEmpty without one) with the root role or with
// read permission on every key attached to any lease.
func (n *Node) checkLeaseLeases(ctx context.Context, ls []storage.LeaseInfo) error {
	return n.checkLeaseKeys(ctx, authpb.Permission_READ, func(yield func([]byte) bool) {
		for _, l := range ls {
			for _, k := range l.Keys {
				if !yield(k) {
					return
				}
			}
		}
	})
}

// checkLeaseKeys is the check etcd's lease calls share once auth is
// enabled: a user (ErrUserEmpty without one) with the root role or typ
// permission on every key of keys, which is listed only for a user
// without the root role.
func (n *Node) checkLeaseKeys(ctx context.Context, typ authpb.Permission_Type, keys iter.Seq[[]byte]) error {
	st := n.AuthState()
	if !st.Enabled() {
		return nil
	}
	ai, err := n.authInfo(ctx, st)
	if err != nil {
		return err
	}
	if ai == nil {
		return auth.ErrUserEmpty
	}
	if st.IsAdminPermitted(ai) == nil {
		return nil
	}
	for k := range keys {
		if err := st.IsOpPermitted(ai, k, nil, typ); err != nil {
			return err
		}
	}
	return nil
}

// checkApply runs etcd's apply-time permission checks for r, as the user
// its header names.
func (n *Node) checkApply(b *storage.Batch, r *pb.InternalRaftRequest) error {
	if !n.auth.Enabled() {
		return nil
	}
	var ai *auth.AuthInfo
	if h := r.GetHeader(); h.GetUsername() != "" || h.GetAuthRevision() != 0 {
		ai = &auth.AuthInfo{Username: h.GetUsername(), Revision: h.GetAuthRevision()}
	}
	var keysErr error
	err := n.auth.CheckApply(r, ai, func(id int64) [][]byte {
		ks, err := b.LeaseKeys(id)
		if err != nil && keysErr == nil {
			keysErr = err
		}
		return ks
	})
	if keysErr != nil {
		// A store that cannot list a lease's keys cannot decide: refuse.
		return fmt.Errorf("consensus: lease keys for an auth check: %w", keysErr)
	}
	return err
}

// applyAuthEnable applies a concord AuthEnable command.
func (n *Node) applyAuthEnable(b *storage.Batch, c *concordv1.AuthEnable, out *applyOutput) (result, error) {
	next, err := n.auth.Enable(c.GetTokenKey())
	if err != nil {
		return result{err: err}, nil
	}
	if err := n.setAuth(b, next, out); err != nil {
		return result{}, err
	}
	return result{resp: &pb.AuthEnableResponse{}}, nil
}

// setAuth records a new auth state in the batch and the loop's copy; it is
// published once the batch is committed.
func (n *Node) setAuth(b *storage.Batch, next *auth.State, out *applyOutput) error {
	if next == n.auth {
		return nil
	}
	data, err := next.Marshal()
	if err != nil {
		return err
	}
	b.SetMeta(metaAuth, data)
	n.auth = next
	out.auth = next
	return nil
}

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

// proposeTokenKey has the leader choose the token key of an auth state that
// is enabled without one (restored from a backup, or enabled by an
// etcd-style entry), once in each term it leads: the key must be the same
// on every member, so it travels through the log like the one AuthEnable
// chooses. Until it is applied, Authenticate answers that auth is not
// enabled. Called from the raft loop.
func (n *Node) proposeTokenKey() {
	if !n.auth.NeedsTokenKey() || n.leader.Load() != n.memberID {
		return
	}
	term := n.term.Load()
	if n.tokenKeyTerm == term {
		return
	}
	n.tokenKeyTerm = term
	key := make([]byte, auth.TokenKeySize)
	if _, err := rand.Read(key); err != nil {
		n.lg.Error("choose a token key", "error", err)
		return
	}
	id := n.ids.next()
	data, err := proto.MarshalOptions{}.MarshalAppend([]byte{commandPrefix}, &concordv1.RaftCommand{Id: id,
		Command: &concordv1.RaftCommand_AuthEnable{AuthEnable: &concordv1.AuthEnable{TokenKey: key}}})
	if err != nil {
		n.lg.Error("encode the token key command", "error", err)
		return
	}
	n.lg.Info("auth is enabled without a token key; proposing one", "term", term)
	n.proposeOne(proposal{id: id, data: data, internal: true})
}

// AuthState is the auth state as of this member's applied index.
func (n *Node) AuthState() *auth.State { return n.authPub.Load() }

// AuthEnabled tells whether auth is enabled in the applied state.
func (n *Node) AuthEnabled() bool { return n.AuthState().Enabled() }

// applyAuth executes r if it is an auth request (handled reports it).
func (n *Node) applyAuth(b *storage.Batch, r *pb.InternalRaftRequest, out *applyOutput) (res result, handled bool, fatal error) {
	next, resp, handled, err := n.auth.Apply(r)
	if !handled {
		return result{}, false, nil
	}
	if err != nil {
		return result{err: err}, true, nil
	}
	if err := n.setAuth(b, next, out); err != nil {
		return result{}, true, err
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

// AuthEnable turns auth on, with etcd's checks (root user with the root
// role; root only once enabled), choosing the key that signs tokens.
func (n *Node) AuthEnable(ctx context.Context, _ *pb.AuthEnableRequest) (*pb.AuthEnableResponse, error) {
	if err := n.learnerGuard(); err != nil {
		return nil, err
	}
	if n.cfg.RefuseAuthEnable {
		return nil, ErrAuthEnableUnsupported
	}
	if err := n.requireAdmin(ctx); err != nil {
		return nil, err
	}
	key := make([]byte, auth.TokenKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("consensus: token key: %w", err)
	}
	m, err := n.proposeCommand(ctx, &concordv1.RaftCommand{Command: &concordv1.RaftCommand_AuthEnable{
		AuthEnable: &concordv1.AuthEnable{TokenKey: key},
	}})
	if err != nil {
		return nil, err
	}
	resp, ok := m.(*pb.AuthEnableResponse)
	if !ok {
		return nil, fmt.Errorf("consensus: unexpected apply response %T", m)
	}
	resp.Header = n.header(resp.Header)
	return resp, nil
}

// AuthDisable turns auth off (a no-op while it is off).
func (n *Node) AuthDisable(ctx context.Context, r *pb.AuthDisableRequest) (*pb.AuthDisableResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthDisable: r}, func(m *pb.AuthDisableResponse, h *pb.ResponseHeader) { m.Header = h })
}

// AuthStatus reports whether auth is enabled and the auth revision.
func (n *Node) AuthStatus(ctx context.Context, r *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	return proposeAuth(ctx, n, &pb.InternalRaftRequest{AuthStatus: r}, func(m *pb.AuthStatusResponse, h *pb.ResponseHeader) { m.Header = h })
}

// Authenticate checks a user's password (bcrypt, outside the apply loop)
// and issues a token for the auth revision it was checked at.
func (n *Node) Authenticate(ctx context.Context, r *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	if err := n.linearizableReadNotify(ctx); err != nil {
		return nil, err
	}
	st := n.AuthState()
	rev, err := st.CheckPassword(r.GetName(), r.GetPassword(), bcrypt.CompareHashAndPassword)
	if err != nil {
		if !errors.Is(err, auth.ErrAuthNotEnabled) {
			n.lg.Warn("invalid authentication was requested", "user", r.GetName(), "error", err)
		}
		return nil, err
	}
	token, err := n.tokens.Assign(st, r.GetName(), rev, time.Now())
	if err != nil {
		return nil, err
	}
	return &pb.AuthenticateResponse{Header: n.header(nil), Token: token}, nil
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

// checkReadTxn checks a txn served locally (no writes): etcd's checkTxnAuth.
func (n *Node) checkReadTxn(ctx context.Context, r *pb.TxnRequest) error {
	st := n.AuthState()
	ai, err := n.authInfo(ctx, st)
	if err != nil {
		return err
	}
	return st.CheckTxn(ai, r, func(int64) [][]byte { return nil })
}
