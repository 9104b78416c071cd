package auth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// enabled is a state with root (root role), alice (READ on [a, b)) and
// auth enabled with key.
func enabled(t *testing.T, key []byte) *State {
	t.Helper()
	s := addUser(t, New(), "root", "pw")
	s = addUser(t, s, "alice", "pw")
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}}, nil)
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthRoleAdd: &pb.AuthRoleAddRequest{Name: "r"}}, nil)
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthRoleGrantPermission: &pb.AuthRoleGrantPermissionRequest{Name: "r",
		Perm: &authpb.Permission{Key: []byte("a"), RangeEnd: []byte("b"), PermType: authpb.Permission_READ}}}, nil)
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "alice", Role: "r"}}, nil)
	s, err := s.Enable(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTokens(t *testing.T) {
	key := []byte(strings.Repeat("k", TokenKeySize))
	s := enabled(t, key)
	now := time.Unix(1_000_000, 0)
	tok, err := s.IssueToken("alice", now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	ai, err := s.VerifyToken(tok, now)
	if err != nil || ai.Username != "alice" || ai.Revision != s.Revision() {
		t.Fatalf("VerifyToken = %+v, %v", ai, err)
	}
	// The key survives storage, so another member verifies the token.
	data, _ := s.Marshal()
	other, err := Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.VerifyToken(tok, now); err != nil {
		t.Fatalf("token refused after a storage round trip: %v", err)
	}
	for name, bad := range map[string]string{
		"expired":   "",
		"forged":    tok[:len(tok)-2] + "AA",
		"truncated": tok[:len(tok)/2],
		"other key": SignToken([]byte(strings.Repeat("x", TokenKeySize)), "alice", s.User("alice").Password, now.Add(time.Minute)),
		// alice's signature on a payload naming root.
		"renamed": tokenPrefix + strings.SplitN(SignToken(key, "root", s.User("root").Password, now.Add(time.Minute)), ".", 3)[1] + "." + strings.SplitN(tok, ".", 3)[2],
		// Signed with another password hash.
		"other password": SignToken(key, "alice", []byte("another hash"), now.Add(time.Minute)),
		"garbage":        "c2.!!.!!",
	} {
		at := now
		if name == "expired" {
			bad, at = tok, now.Add(time.Minute)
		}
		if _, err := s.VerifyToken(bad, at); !errors.Is(err, ErrInvalidAuthToken) {
			t.Errorf("%s token: %v, want ErrInvalidAuthToken", name, err)
		}
	}
	// Disabling drops the key: the token stops working, and enabling again
	// with a new key does not revive it.
	off, _ := apply(t, s, &pb.InternalRaftRequest{AuthDisable: &pb.AuthDisableRequest{}}, nil)
	if _, err := off.VerifyToken(tok, now); !errors.Is(err, ErrInvalidAuthToken) {
		t.Errorf("token after disable: %v", err)
	}
	on, _ := off.Enable([]byte(strings.Repeat("n", TokenKeySize)))
	if _, err := on.VerifyToken(tok, now); !errors.Is(err, ErrInvalidAuthToken) {
		t.Errorf("token after re-enable: %v", err)
	}
	if _, err := off.IssueToken("alice", now); !errors.Is(err, ErrAuthNotEnabled) {
		t.Errorf("IssueToken while disabled: %v", err)
	}
}

func TestCheckApply(t *testing.T) {
	s := enabled(t, []byte("key"))
	rev := s.Revision()
	alice := &AuthInfo{Username: "alice", Revision: rev}
	root := &AuthInfo{Username: "root", Revision: rev}
	noKeys := func(int64) [][]byte { return nil }
	secretLease := func(id int64) [][]byte {
		if id == 7 {
			return [][]byte{[]byte("secret")}
		}
		return nil
	}
	put := func(k string, prev bool) *pb.InternalRaftRequest {
		return &pb.InternalRaftRequest{Put: &pb.PutRequest{Key: []byte(k), PrevKv: prev}}
	}
	txn := func(cmp string, op *pb.RequestOp) *pb.InternalRaftRequest {
		return &pb.InternalRaftRequest{Txn: &pb.TxnRequest{
			Compare: []*pb.Compare{{Key: []byte(cmp)}},
			Success: []*pb.RequestOp{op},
		}}
	}
	rangeOp := func(k string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(k)}}}
	}
	for _, c := range []struct {
		name string
		r    *pb.InternalRaftRequest
		ai   *AuthInfo
		keys func(int64) [][]byte
		want error
	}{
		{"no credentials", put("a1", false), nil, noKeys, ErrUserEmpty},
		{"old revision", put("a1", false), &AuthInfo{Username: "root", Revision: rev - 1}, noKeys, ErrAuthOldRevision},
		{"root put", put("z", true), root, noKeys, nil},
		{"read-only user put", put("a1", false), alice, noKeys, ErrPermissionDenied},
		{"unknown user", put("a1", false), &AuthInfo{Username: "ghost", Revision: rev}, noKeys, ErrPermissionDenied},
		{"txn reading within", txn("a1", rangeOp("a2")), alice, noKeys, nil},
		{"txn compare outside", txn("c", rangeOp("a2")), alice, noKeys, ErrPermissionDenied},
		{"txn op outside", txn("a1", rangeOp("c")), alice, noKeys, ErrPermissionDenied},
		{"nested txn op outside", txn("a1", &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: txn("a1", rangeOp("c")).Txn}}), alice, noKeys, ErrPermissionDenied},
		{"delete", &pb.InternalRaftRequest{DeleteRange: &pb.DeleteRangeRequest{Key: []byte("a")}}, alice, noKeys, ErrPermissionDenied},
		{"lease revoke with secret key", &pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: 7}}, alice, secretLease, ErrPermissionDenied},
		{"lease revoke without keys", &pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: 8}}, alice, secretLease, nil},
		{"root lease revoke", &pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: 7}}, root, secretLease, nil},
		{"user add by non-root", &pb.InternalRaftRequest{AuthUserAdd: &pb.AuthUserAddRequest{Name: "x"}}, alice, noKeys, ErrPermissionDenied},
		{"user list without credentials", &pb.InternalRaftRequest{AuthUserList: &pb.AuthUserListRequest{}}, nil, noKeys, ErrUserEmpty},
		{"user get self", &pb.InternalRaftRequest{AuthUserGet: &pb.AuthUserGetRequest{Name: "alice"}}, alice, noKeys, nil},
		{"user get other", &pb.InternalRaftRequest{AuthUserGet: &pb.AuthUserGetRequest{Name: "root"}}, alice, noKeys, ErrPermissionDenied},
		// etcd compares the name with the user "" of a request without
		// one: not refused (the apply finds no user "").
		{"user get \"\" without credentials", &pb.InternalRaftRequest{AuthUserGet: &pb.AuthUserGetRequest{}}, nil, noKeys, nil},
		{"user get without credentials", &pb.InternalRaftRequest{AuthUserGet: &pb.AuthUserGetRequest{Name: "alice"}}, nil, noKeys, ErrUserEmpty},
		{"role get without credentials", &pb.InternalRaftRequest{AuthRoleGet: &pb.AuthRoleGetRequest{Role: "r"}}, nil, noKeys, ErrUserEmpty},
		{"role get own", &pb.InternalRaftRequest{AuthRoleGet: &pb.AuthRoleGetRequest{Role: "r"}}, alice, noKeys, nil},
		{"role get other", &pb.InternalRaftRequest{AuthRoleGet: &pb.AuthRoleGetRequest{Role: "root"}}, alice, noKeys, ErrPermissionDenied},
		{"status", &pb.InternalRaftRequest{AuthStatus: &pb.AuthStatusRequest{}}, nil, noKeys, nil},
	} {
		if err := s.CheckApply(c.r, c.ai, c.keys); !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// Disabled, nothing is checked.
	off, _ := apply(t, s, &pb.InternalRaftRequest{AuthDisable: &pb.AuthDisableRequest{}}, nil)
	if err := off.CheckApply(put("a1", false), nil, noKeys); err != nil {
		t.Errorf("disabled: %v", err)
	}
}

// TestTokenLifetime: as etcd's simple tokens, a token survives changes of
// roles and permissions and then runs at the new auth revision (etcd's
// tokenSimple.info), and is invalid once its user's password changes or
// the user is deleted, even if added again with the same password
// (etcd's invalidateUser).
func TestTokenLifetime(t *testing.T) {
	key := []byte(strings.Repeat("k", TokenKeySize))
	s := enabled(t, key)
	now := time.Unix(1_000_000, 0)
	issue := func(s *State, user string) string {
		t.Helper()
		tok, err := s.IssueToken(user, now.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tok := issue(s, "alice")
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthUserRevokeRole: &pb.AuthUserRevokeRoleRequest{Name: "alice", Role: "r"}}, nil)
	ai, err := s.VerifyToken(tok, now)
	if err != nil || ai.Username != "alice" || ai.Revision != s.Revision() {
		t.Fatalf("token after a role revoke: %+v, %v; want alice at revision %d", ai, err, s.Revision())
	}
	if err := s.IsOpPermitted(&ai, []byte("a"), nil, authpb.Permission_READ); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("read with the role revoked: %v, want ErrPermissionDenied", err)
	}
	changed, _ := apply(t, s, &pb.InternalRaftRequest{AuthUserChangePassword: &pb.AuthUserChangePasswordRequest{Name: "alice", HashedPassword: hashed(t, "pw")}}, nil)
	if _, err := changed.VerifyToken(tok, now); !errors.Is(err, ErrInvalidAuthToken) {
		t.Errorf("token after a password change: %v, want ErrInvalidAuthToken", err)
	}
	if _, err := changed.VerifyToken(issue(changed, "alice"), now); err != nil {
		t.Errorf("token issued after the password change: %v", err)
	}
	deleted, _ := apply(t, s, &pb.InternalRaftRequest{AuthUserDelete: &pb.AuthUserDeleteRequest{Name: "alice"}}, nil)
	if _, err := deleted.VerifyToken(tok, now); !errors.Is(err, ErrInvalidAuthToken) {
		t.Errorf("token of a deleted user: %v, want ErrInvalidAuthToken", err)
	}
	if _, err := addUser(t, deleted, "alice", "pw").VerifyToken(tok, now); !errors.Is(err, ErrInvalidAuthToken) {
		t.Errorf("token of a deleted user added again: %v, want ErrInvalidAuthToken", err)
	}
}
