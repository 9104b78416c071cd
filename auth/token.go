package auth

// Tokens. etcd's default "simple" token is a random string remembered in
// one member's memory, which cannot work behind concord's stateless
// gateways and split processes: a token issued through one member would be
// unknown to the next. concord's simple tokens are instead self-contained
// and verifiable by any member: the user name and an expiry
// (--auth-token-ttl), signed with HMAC-SHA256 under a random key that is
// chosen when auth is enabled and replicated in the auth state. A token is refused once it expires, once
// auth is disabled (the key is dropped) or re-enabled (a new key).
//
// Otherwise it is valid as long as etcd's simple token is: etcd forgets
// the tokens of a user whose password changes or who is deleted
// (tokenProvider.invalidateUser) and answers ErrInvalidAuthToken for them,
// and takes every other token to run at the current auth revision
// (tokenSimple.info), so a change of roles or permissions does not make a
// token stale: requests are checked against the new permissions. A
// token's signature therefore also covers its user's stored password hash
// (which the token does not carry): a new password (bcrypt salts every
// hash anew) or a deleted user, even one added again, no longer matches it. (Only a user given the very same
// hash again through hashed_password keeps its tokens, which etcd would
// forget.) JWT tokens (provider.go) carry their revision instead, as
// etcd's, and fail with ErrAuthOldRevision once it is old.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
)

// tokenPrefix marks concord's signed tokens (and their format version:
// c1 tokens carried an auth revision and signed no password hash).
const tokenPrefix = "c2."

// TokenKeySize is the size of the HMAC key chosen when auth is enabled.
const TokenKeySize = 32

// Permission is READ, WRITE or READWRITE.
type Permission = authpb.Permission_Type

// AuthInfo is who a request runs as: the user and the auth revision its
// token was issued at (etcd's auth.AuthInfo).
type AuthInfo struct {
	Username string
	Revision uint64
}

// SignToken issues a token for user, whose stored password hash is
// password, valid until expiry.
func SignToken(key []byte, user string, password []byte, expiry time.Time) string {
	p := base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(expiry.Unix(), 10) + "." + user))
	return tokenPrefix + p + "." + base64.RawURLEncoding.EncodeToString(mac(key, p, password))
}

// mac signs a token's encoded payload and the password hash of the user
// it names.
func mac(key []byte, payload string, password []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(payload))
	h.Write([]byte{0})
	h.Write(password)
	return h.Sum(nil)
}

// VerifyToken checks a token against s's key and its user's password and
// returns whom it names, at s's revision, as etcd's simple tokens run at
// the current one. Any failure is ErrInvalidAuthToken, as etcd answers
// unknown tokens.
func (s *State) VerifyToken(token string, now time.Time) (AuthInfo, error) {
	if !s.enabled || len(s.tokenKey) == 0 {
		return AuthInfo{}, ErrInvalidAuthToken
	}
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok {
		return AuthInfo{}, ErrInvalidAuthToken
	}
	p, sig, ok := strings.Cut(rest, ".")
	if !ok {
		return AuthInfo{}, ErrInvalidAuthToken
	}
	raw, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return AuthInfo{}, ErrInvalidAuthToken
	}
	expiry, user, ok := strings.Cut(string(raw), ".")
	if !ok {
		return AuthInfo{}, ErrInvalidAuthToken
	}
	exp, err := strconv.ParseInt(expiry, 10, 64)
	if err != nil || now.Unix() >= exp {
		return AuthInfo{}, ErrInvalidAuthToken
	}
	// The signature is checked for a user that does not exist too, so
	// that the time taken tells nothing of which users do.
	var password []byte
	u := s.users[user]
	if u != nil {
		password = u.Password
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, mac(s.tokenKey, p, password)) || u == nil {
		return AuthInfo{}, ErrInvalidAuthToken
	}
	return AuthInfo{Username: user, Revision: s.revision}, nil
}

// IssueToken signs a token for user with s's key.
func (s *State) IssueToken(user string, expiry time.Time) (string, error) {
	if !s.enabled || len(s.tokenKey) == 0 {
		return "", ErrAuthNotEnabled
	}
	u := s.users[user]
	if u == nil {
		return "", ErrAuthFailed
	}
	return SignToken(s.tokenKey, user, u.Password, expiry), nil
}

// Credentials are what a request presented: a token (gRPC metadata
// "token", or the JSON gateway's Authorization header), the common name
// of a verified client certificate, and whether it proved to come from a
// process of the split topology acting for itself, by the internal secret
// they share (Internal; never for a call a process forwards for a client).
// A call forwarded for a client has neither CommonName nor Internal (they
// would be the forwarding process's), only the client's token or, without
// one, the claim naming the client's certificate user (Forwarded).
type Credentials struct {
	Token      string
	CommonName string
	// Internal: the caller presented the split topology's internal secret
	// (--internal-secret-file). It is trusted as a root-role user, as a
	// verified client certificate naming one is.
	Internal bool
	// Forwarded is, on a call forwarded for a client that presented no
	// token, the user its verified certificate names, as the processes it
	// went through claim: believed only by State.TrustedForwardedUser.
	// nil otherwise.
	Forwarded *ForwardedUser
}

type credentialsKey struct{}

// WithCredentials returns ctx carrying c: the context of a client's
// request, whose permissions are checked once auth is enabled, even when c
// is empty.
func WithCredentials(ctx context.Context, c Credentials) context.Context {
	return context.WithValue(ctx, credentialsKey{}, c)
}

// CredentialsFrom returns the credentials ctx carries; ok is false for a
// context that did not come from a client request (a member's own work).
func CredentialsFrom(ctx context.Context) (c Credentials, ok bool) {
	c, ok = ctx.Value(credentialsKey{}).(Credentials)
	return c, ok
}

// IsOpPermitted is etcd's isOpPermitted: with auth enabled, ai (nil for a
// request without credentials) must be current and grant typ on key, or
// on [key, end).
func (s *State) IsOpPermitted(ai *AuthInfo, key, end []byte, typ Permission) error {
	if !s.enabled {
		return nil
	}
	if ai == nil || ai.Revision == 0 {
		return ErrUserEmpty
	}
	if ai.Revision < s.revision {
		return ErrAuthOldRevision
	}
	u := s.users[ai.Username]
	if u == nil {
		return ErrPermissionDenied
	}
	if hasRootRole(u) || s.RangePermitted(ai.Username, key, end, typ) {
		return nil
	}
	return ErrPermissionDenied
}

// IsAdminPermitted is etcd's IsAdminPermitted: with auth enabled, ai must
// name an existing user with the root role.
func (s *State) IsAdminPermitted(ai *AuthInfo) error {
	if !s.enabled {
		return nil
	}
	if ai == nil || ai.Username == "" {
		return ErrUserEmpty
	}
	u := s.users[ai.Username]
	if u == nil {
		return ErrUserNotFound
	}
	if !hasRootRole(u) {
		return ErrPermissionDenied
	}
	return nil
}

// HasRole reports whether the named user has role.
func (s *State) HasRole(user, role string) bool {
	u := s.users[user]
	if u == nil {
		return false
	}
	i := sort.SearchStrings(u.Roles, role)
	return i < len(u.Roles) && u.Roles[i] == role
}
