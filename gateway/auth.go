package gateway

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/watchfanout"
)

// Auth is etcd's Auth service on the backend: users, roles, permissions
// and the auth switch, replicated through raft (consensus/auth.go). A
// Backend that does not implement it leaves the Auth service answering
// Unimplemented.
type Auth interface {
	AuthEnable(ctx context.Context, r *pb.AuthEnableRequest) (*pb.AuthEnableResponse, error)
	AuthDisable(ctx context.Context, r *pb.AuthDisableRequest) (*pb.AuthDisableResponse, error)
	AuthStatus(ctx context.Context, r *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error)
	Authenticate(ctx context.Context, r *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error)
	UserAdd(ctx context.Context, r *pb.AuthUserAddRequest) (*pb.AuthUserAddResponse, error)
	UserGet(ctx context.Context, r *pb.AuthUserGetRequest) (*pb.AuthUserGetResponse, error)
	UserList(ctx context.Context, r *pb.AuthUserListRequest) (*pb.AuthUserListResponse, error)
	UserDelete(ctx context.Context, r *pb.AuthUserDeleteRequest) (*pb.AuthUserDeleteResponse, error)
	UserChangePassword(ctx context.Context, r *pb.AuthUserChangePasswordRequest) (*pb.AuthUserChangePasswordResponse, error)
	UserGrantRole(ctx context.Context, r *pb.AuthUserGrantRoleRequest) (*pb.AuthUserGrantRoleResponse, error)
	UserRevokeRole(ctx context.Context, r *pb.AuthUserRevokeRoleRequest) (*pb.AuthUserRevokeRoleResponse, error)
	RoleAdd(ctx context.Context, r *pb.AuthRoleAddRequest) (*pb.AuthRoleAddResponse, error)
	RoleGet(ctx context.Context, r *pb.AuthRoleGetRequest) (*pb.AuthRoleGetResponse, error)
	RoleList(ctx context.Context, r *pb.AuthRoleListRequest) (*pb.AuthRoleListResponse, error)
	RoleDelete(ctx context.Context, r *pb.AuthRoleDeleteRequest) (*pb.AuthRoleDeleteResponse, error)
	RoleGrantPermission(ctx context.Context, r *pb.AuthRoleGrantPermissionRequest) (*pb.AuthRoleGrantPermissionResponse, error)
	RoleRevokePermission(ctx context.Context, r *pb.AuthRoleRevokePermissionRequest) (*pb.AuthRoleRevokePermissionResponse, error)
}

// authHandler serves etcdserverpb.Auth from b when it implements Auth.
func authHandler(b Backend) etcdserverpbconnect.AuthHandler {
	a, ok := b.(Auth)
	if !ok {
		return etcdserverpbconnect.UnimplementedAuthHandler{}
	}
	return authService{a: a}
}

// authService serves etcdserverpb.Auth: like etcd's v3rpc AuthServer, it
// only translates the backend's errors.
type authService struct{ a Auth }

// call runs one backend method and translates its error.
func call[Req, Resp any](ctx context.Context, r Req, f func(context.Context, Req) (Resp, error)) (Resp, error) {
	resp, err := f(ctx, r)
	if err != nil {
		var zero Resp
		return zero, TranslateError(err)
	}
	return resp, nil
}

func (s authService) AuthEnable(ctx context.Context, r *pb.AuthEnableRequest) (*pb.AuthEnableResponse, error) {
	return call(ctx, r, s.a.AuthEnable)
}

func (s authService) AuthDisable(ctx context.Context, r *pb.AuthDisableRequest) (*pb.AuthDisableResponse, error) {
	return call(ctx, r, s.a.AuthDisable)
}

func (s authService) AuthStatus(ctx context.Context, r *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	return call(ctx, r, s.a.AuthStatus)
}

func (s authService) Authenticate(ctx context.Context, r *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	return call(ctx, r, s.a.Authenticate)
}

func (s authService) UserAdd(ctx context.Context, r *pb.AuthUserAddRequest) (*pb.AuthUserAddResponse, error) {
	return call(ctx, r, s.a.UserAdd)
}

func (s authService) UserGet(ctx context.Context, r *pb.AuthUserGetRequest) (*pb.AuthUserGetResponse, error) {
	return call(ctx, r, s.a.UserGet)
}

func (s authService) UserList(ctx context.Context, r *pb.AuthUserListRequest) (*pb.AuthUserListResponse, error) {
	return call(ctx, r, s.a.UserList)
}

func (s authService) UserDelete(ctx context.Context, r *pb.AuthUserDeleteRequest) (*pb.AuthUserDeleteResponse, error) {
	return call(ctx, r, s.a.UserDelete)
}

func (s authService) UserChangePassword(ctx context.Context, r *pb.AuthUserChangePasswordRequest) (*pb.AuthUserChangePasswordResponse, error) {
	return call(ctx, r, s.a.UserChangePassword)
}

func (s authService) UserGrantRole(ctx context.Context, r *pb.AuthUserGrantRoleRequest) (*pb.AuthUserGrantRoleResponse, error) {
	return call(ctx, r, s.a.UserGrantRole)
}

func (s authService) UserRevokeRole(ctx context.Context, r *pb.AuthUserRevokeRoleRequest) (*pb.AuthUserRevokeRoleResponse, error) {
	return call(ctx, r, s.a.UserRevokeRole)
}

func (s authService) RoleAdd(ctx context.Context, r *pb.AuthRoleAddRequest) (*pb.AuthRoleAddResponse, error) {
	return call(ctx, r, s.a.RoleAdd)
}

func (s authService) RoleGet(ctx context.Context, r *pb.AuthRoleGetRequest) (*pb.AuthRoleGetResponse, error) {
	return call(ctx, r, s.a.RoleGet)
}

func (s authService) RoleList(ctx context.Context, r *pb.AuthRoleListRequest) (*pb.AuthRoleListResponse, error) {
	return call(ctx, r, s.a.RoleList)
}

func (s authService) RoleDelete(ctx context.Context, r *pb.AuthRoleDeleteRequest) (*pb.AuthRoleDeleteResponse, error) {
	return call(ctx, r, s.a.RoleDelete)
}

func (s authService) RoleGrantPermission(ctx context.Context, r *pb.AuthRoleGrantPermissionRequest) (*pb.AuthRoleGrantPermissionResponse, error) {
	return call(ctx, r, s.a.RoleGrantPermission)
}

func (s authService) RoleRevokePermission(ctx context.Context, r *pb.AuthRoleRevokePermissionRequest) (*pb.AuthRoleRevokePermissionResponse, error) {
	return call(ctx, r, s.a.RoleRevokePermission)
}

// Header names of the credentials etcd accepts: gRPC metadata "token"
// (clientv3, etcdctl) and, from its JSON gateway, "authorization".
var (
	tokenHeader         = http.CanonicalHeaderKey(rpctypes.TokenFieldNameGRPC)
	authorizationHeader = http.CanonicalHeaderKey(rpctypes.TokenFieldNameSwagger)
)

// ForwardedHeader marks a request that a concord process (a split
// gateway, watch fan-out or lease service) sends for one of its clients
// (gateway/remote): the certificate on its connection is the process's, not
// the client's, so its common name names no user. Only the client's token,
// forwarded, does, or, for a client that presented none, the user its
// verified certificate named (ForwardedUserHeader), when concord's own
// processes alone passed that on. A client that sets it itself can only
// lose the identity of its own certificate.
const ForwardedHeader = "Concord-Forwarded"

// ForwardedUserHeader and ForwardedViaHeader carry, on a forwarded request
// without a token, the common name of the client's verified certificate
// and the processes the claim went through before the sender (each added
// by the process that verified it: "internal" for the internal secret's
// proof, "cn:" and the common name of a verified certificate), all
// query-escaped. The receiver adds the sender as its connection proved it
// (forwardedUser); consensus believes the claim only if every hop is one of
// concord's processes (auth.State.TrustedForwardedUser). A client that
// sends these headers is a hop itself, and no process it is not.
const (
	ForwardedUserHeader = "Concord-Forwarded-User"
	ForwardedViaHeader  = "Concord-Forwarded-Via"
)

// hopInternal is a hop that presented the internal secret's proof;
// hopCertPrefix starts one known by its certificate's common name.
const (
	hopInternal   = "internal"
	hopCertPrefix = "cn:"
)

// ForwardedUserHeaders are the values of ForwardedUserHeader and
// ForwardedViaHeader (empty: not sent) that pass f on.
func ForwardedUserHeaders(f *auth.ForwardedUser) (user, via string) {
	hops := make([]string, len(f.Via))
	for i, h := range f.Via {
		if h.Internal {
			hops[i] = hopInternal
		} else {
			hops[i] = hopCertPrefix + url.QueryEscape(h.CommonName)
		}
	}
	return url.QueryEscape(f.Name), strings.Join(hops, ",")
}

// forwardedUser is the claim of a forwarded request's headers, with its
// sender added as who proved it: nil without a claim, or when it cannot
// be believed anyway (a sender that proved nothing, a malformed header, too
// many hops), so that nothing passes it on.
func forwardedUser(h http.Header, who caller) *auth.ForwardedUser {
	v := h[forwardedUserHeaderKey]
	if len(v) != 1 || (who.certName == "" && !who.internal) {
		return nil
	}
	name, err := url.QueryUnescape(v[0])
	if err != nil || name == "" {
		return nil
	}
	f := &auth.ForwardedUser{Name: name}
	if vv := h[forwardedViaHeaderKey]; len(vv) > 1 {
		return nil
	} else if len(vv) == 1 && vv[0] != "" {
		for hop := range strings.SplitSeq(vv[0], ",") {
			if len(f.Via) == auth.MaxForwardHops {
				return nil
			}
			switch cn, ok := strings.CutPrefix(hop, hopCertPrefix); {
			case hop == hopInternal:
				f.Via = append(f.Via, auth.Hop{Internal: true})
			case ok:
				n, err := url.QueryUnescape(cn)
				if err != nil || n == "" {
					return nil
				}
				f.Via = append(f.Via, auth.Hop{CommonName: n})
			default:
				return nil
			}
		}
	}
	if len(f.Via) == auth.MaxForwardHops {
		return nil
	}
	// The secret's proof is enough: the certificate then adds nothing.
	if who.internal {
		f.Via = append(f.Via, auth.Hop{Internal: true})
	} else {
		f.Via = append(f.Via, auth.Hop{CommonName: who.certName})
	}
	return f
}

// withCredentials marks ctx as a client request carrying the credentials
// of h, which the backend checks once auth is enabled (consensus/auth.go).
// What the connection proves (a certificate's name, the internal secret)
// is the caller's own identity, which a request forwarded for a client
// does not carry: it carries the client's token, or the claim naming its
// certificate's user (forwardedCredentials).
func withCredentials(ctx context.Context, h http.Header) context.Context {
	if h.Get(ForwardedHeader) != "" {
		return auth.WithCredentials(ctx, forwardedCredentials(ctx, h))
	}
	c := tokenCredentials(h)
	who := callerOf(ctx)
	c.CommonName, c.Internal = who.certName, who.internal
	return auth.WithCredentials(ctx, c)
}

// forwardedCredentials are the credentials of a request forwarded for a
// client: its token, which takes precedence as in etcd, else the claim of
// the user its certificate names, with the sender ctx's connection proved.
func forwardedCredentials(ctx context.Context, h http.Header) auth.Credentials {
	c := tokenCredentials(h)
	if c.Token == "" && h.Get(ForwardedHeader) != "" {
		c.Forwarded = forwardedUser(h, callerOf(ctx))
	}
	return c
}

// tokenCredentials are the token of h's request, no common name.
func tokenCredentials(h http.Header) auth.Credentials {
	var c auth.Credentials
	if v := h[tokenHeader]; len(v) > 0 {
		c.Token = v[0]
	} else if v := h[authorizationHeader]; len(v) > 0 {
		c.Token = strings.TrimPrefix(v[0], "Bearer ")
	}
	return c
}

// ForwardedCredentials is a handler option for concord's internal services
// (served with WithHTTPHandler, outside the client API's interceptors): the
// context of each unary call to one of procedures carries the credentials
// its caller forwarded for a client, the token or the claim of the client's
// certificate user (forwardedCredentials), and never a certificate's
// common name, since their callers are concord processes calling for their
// clients. Other procedures are the callers' own work and get no client
// credentials.
func ForwardedCredentials(procedures ...string) connect.HandlerOption {
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if slices.Contains(procedures, req.Spec().Procedure) {
				ctx = auth.WithCredentials(ctx, forwardedCredentials(ctx, req.Header()))
			}
			return next(ctx, req)
		}
	}))
}

// WatchAuthorizer checks the creation of a watch (etcd's
// isWatchPermitted); consensus.Node implements it. With a backend that
// does, the gateway's watch service refuses the watches it denies.
type WatchAuthorizer interface {
	// AuthorizeWatch returns the header of a refusal and nil when the
	// caller may watch [key, end).
	AuthorizeWatch(ctx context.Context, key, end []byte) (*pb.ResponseHeader, error)
}

// LeaseAuthorizer checks keep-alives (write) and TimeToLive with keys
// (read) against the permissions on the lease's keys, as etcd does;
// consensus.Node implements it.
type LeaseAuthorizer interface {
	AuthorizeLease(ctx context.Context, id int64, write bool) error
}

// watchCancelReason is the cancel reason etcd gives a refused watch.
func watchCancelReason(err error) string {
	switch {
	case errors.Is(err, auth.ErrInvalidAuthToken):
		return rpctypes.ErrGRPCInvalidAuthToken.Error()
	case errors.Is(err, auth.ErrAuthOldRevision):
		return rpctypes.ErrGRPCAuthOldRevision.Error()
	case errors.Is(err, auth.ErrUserEmpty):
		return rpctypes.ErrGRPCUserEmpty.Error()
	default:
		return rpctypes.ErrGRPCPermissionDenied.Error()
	}
}

// authWatchStream answers the watch creations its authorizer refuses
// itself, as etcd does (created and canceled at once, watch ID -1), and
// passes everything else to the fan-out. Sends are serialized because the
// refusals are sent from Recv's goroutine.
type authWatchStream struct {
	ctx   context.Context
	inner watchfanout.Stream
	authz WatchAuthorizer
	mu    sync.Mutex
}

func (s *authWatchStream) Recv() (*pb.WatchRequest, error) {
	for {
		req, err := s.inner.Recv()
		if err != nil {
			return nil, err
		}
		cr := req.GetCreateRequest()
		// etcd refuses a negative start revision (as compacted) before
		// it checks permissions; the fan-out answers that.
		if cr == nil || cr.GetStartRevision() < 0 {
			return req, nil
		}
		h, aerr := s.authz.AuthorizeWatch(s.ctx, cr.GetKey(), cr.GetRangeEnd())
		if aerr == nil {
			return req, nil
		}
		if err := s.Send(&pb.WatchResponse{
			Header: h, WatchId: -1, Created: true, Canceled: true, CancelReason: watchCancelReason(aerr),
		}); err != nil {
			return nil, err
		}
	}
}

func (s *authWatchStream) Send(r *pb.WatchResponse) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inner.Send(r)
}

// RequireInternalCaller is a handler option for concord's internal
// services: every unary call to a procedure other than exempt runs only if
// authorize admits the credentials of its caller, the token it presents,
// the common name of its verified client certificate and whether it
// presented the internal secret (all the calling process's own: no
// ForwardedHeader applies here, see WithClientCertName and Config.InternalSecrets).
// Refusals are etcd's errors. The call itself runs with the context it came
// with, as the member's own work.
func RequireInternalCaller(authorize func(context.Context) error, exempt ...string) connect.HandlerOption {
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if !slices.Contains(exempt, req.Spec().Procedure) {
				c := tokenCredentials(req.Header())
				who := callerOf(ctx)
				c.CommonName, c.Internal = who.certName, who.internal
				if err := authorize(auth.WithCredentials(ctx, c)); err != nil {
					return nil, TranslateError(err)
				}
			}
			return next(ctx, req)
		}
	}))
}

// WithClientCertName serves h with the common name of each request's
// verified client certificate recorded for RequireInternalCaller (the
// client API records it itself). Mounted on a Gateway (WithHTTPHandler),
// h also sees whether a request presented the gateway's internal secret
// (Config.InternalSecrets); alone, that header is dropped and proves
// nothing.
func WithClientCertName(h http.Handler) http.Handler {
	return (*callers)(nil).wrap(h)
}
