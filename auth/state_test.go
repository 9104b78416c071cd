package auth

import (
	"encoding/base64"
	"errors"
	"slices"
	"testing"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/protobuf/proto"
)

// apply runs one request and fails the test on an unexpected outcome.
func apply(t *testing.T, s *State, r *pb.InternalRaftRequest, want error) (*State, proto.Message) {
	t.Helper()
	next, resp, handled, err := s.Apply(r)
	if !handled {
		t.Fatalf("%v not handled", r)
	}
	if !errors.Is(err, want) || (want == nil) != (err == nil) {
		t.Fatalf("%v: err %v, want %v", r, err, want)
	}
	if err != nil && next != s {
		t.Fatalf("%v failed but changed the state", r)
	}
	return next, resp
}

func hashed(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(h)
}

func addUser(t *testing.T, s *State, name, pw string) *State {
	t.Helper()
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthUserAdd: &pb.AuthUserAddRequest{Name: name, HashedPassword: hashed(t, pw)}}, nil)
	return s
}

func TestUserAndRoleErrors(t *testing.T) {
	s := New()
	if s.Revision() != 1 || s.Enabled() {
		t.Fatalf("new state: revision %d enabled %v", s.Revision(), s.Enabled())
	}
	apply(t, s, &pb.InternalRaftRequest{AuthUserAdd: &pb.AuthUserAddRequest{}}, ErrUserEmpty)
	apply(t, s, &pb.InternalRaftRequest{AuthRoleAdd: &pb.AuthRoleAddRequest{}}, ErrRoleEmpty)
	apply(t, s, &pb.InternalRaftRequest{AuthUserGet: &pb.AuthUserGetRequest{Name: "nobody"}}, ErrUserNotFound)
	apply(t, s, &pb.InternalRaftRequest{AuthUserDelete: &pb.AuthUserDeleteRequest{Name: "nobody"}}, ErrUserNotFound)
	apply(t, s, &pb.InternalRaftRequest{AuthRoleGet: &pb.AuthRoleGetRequest{Role: "r"}}, ErrRoleNotFound)
	apply(t, s, &pb.InternalRaftRequest{AuthRoleDelete: &pb.AuthRoleDeleteRequest{Role: "r"}}, ErrRoleNotFound)
	apply(t, s, &pb.InternalRaftRequest{AuthEnable: &pb.AuthEnableRequest{}}, ErrRootUserNotExist)

	s = addUser(t, s, "root", "pw")
	if s.Revision() != 2 {
		t.Fatalf("revision after user add = %d, want 2", s.Revision())
	}
	apply(t, s, &pb.InternalRaftRequest{AuthUserAdd: &pb.AuthUserAddRequest{Name: "root", HashedPassword: hashed(t, "x")}}, ErrUserAlreadyExist)
	apply(t, s, &pb.InternalRaftRequest{AuthEnable: &pb.AuthEnableRequest{}}, ErrRootRoleNotExist)
	apply(t, s, &pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "root", Role: "nope"}}, ErrRoleNotFound)
	apply(t, s, &pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "nobody", Role: "root"}}, ErrUserNotFound)
	apply(t, s, &pb.InternalRaftRequest{AuthUserRevokeRole: &pb.AuthUserRevokeRoleRequest{Name: "root", Role: "root"}}, ErrRoleNotGranted)
	// etcd grants the root role even before it was added.
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}}, nil)
	rev := s.Revision()
	again, _ := apply(t, s, &pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}}, nil)
	if again.Revision() != rev {
		t.Fatalf("a repeated grant changed the revision")
	}
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthRoleAdd: &pb.AuthRoleAddRequest{Name: "root"}}, nil)
	apply(t, s, &pb.InternalRaftRequest{AuthRoleAdd: &pb.AuthRoleAddRequest{Name: "root"}}, ErrRoleAlreadyExist)
	_, resp := apply(t, s, &pb.InternalRaftRequest{AuthRoleGet: &pb.AuthRoleGetRequest{Role: "root"}}, nil)
	if p := resp.(*pb.AuthRoleGetResponse).Perm; len(p) != 1 || !proto.Equal(p[0], rootPerm) {
		t.Fatalf("root role perms = %v", p)
	}

	rev = s.Revision()
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthEnable: &pb.AuthEnableRequest{}}, nil)
	if !s.Enabled() || s.Revision() != rev {
		t.Fatalf("after enable: enabled %v revision %d (was %d)", s.Enabled(), s.Revision(), rev)
	}
	apply(t, s, &pb.InternalRaftRequest{AuthUserRevokeRole: &pb.AuthUserRevokeRoleRequest{Name: "root", Role: "root"}}, ErrInvalidAuthMgmt)
	apply(t, s, &pb.InternalRaftRequest{AuthUserDelete: &pb.AuthUserDeleteRequest{Name: "root"}}, ErrInvalidAuthMgmt)
	apply(t, s, &pb.InternalRaftRequest{AuthRoleDelete: &pb.AuthRoleDeleteRequest{Role: "root"}}, ErrInvalidAuthMgmt)
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthDisable: &pb.AuthDisableRequest{}}, nil)
	if s.Enabled() || s.Revision() != rev+1 {
		t.Fatalf("after disable: enabled %v revision %d, want %d", s.Enabled(), s.Revision(), rev+1)
	}
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthUserRevokeRole: &pb.AuthUserRevokeRoleRequest{Name: "root", Role: "root"}}, nil)
	_, resp = apply(t, s, &pb.InternalRaftRequest{AuthUserGet: &pb.AuthUserGetRequest{Name: "root"}}, nil)
	if r := resp.(*pb.AuthUserGetResponse).Roles; len(r) != 0 {
		t.Fatalf("roles after revoke = %v", r)
	}
}

func TestPermissionGrantRevoke(t *testing.T) {
	s := addUser(t, New(), "alice", "pw")
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthRoleAdd: &pb.AuthRoleAddRequest{Name: "r"}}, nil)
	apply(t, s, &pb.InternalRaftRequest{AuthRoleGrantPermission: &pb.AuthRoleGrantPermissionRequest{Name: "r"}}, ErrPermissionNotGiven)
	apply(t, s, &pb.InternalRaftRequest{AuthRoleGrantPermission: &pb.AuthRoleGrantPermissionRequest{Name: "r",
		Perm: &authpb.Permission{Key: []byte("b"), RangeEnd: []byte("a")}}}, ErrInvalidAuthMgmt)
	apply(t, s, &pb.InternalRaftRequest{AuthRoleGrantPermission: &pb.AuthRoleGrantPermissionRequest{Name: "r",
		Perm: &authpb.Permission{}}}, ErrInvalidAuthMgmt)
	apply(t, s, &pb.InternalRaftRequest{AuthRoleGrantPermission: &pb.AuthRoleGrantPermissionRequest{Name: "x",
		Perm: &authpb.Permission{Key: []byte("a")}}}, ErrRoleNotFound)
	grant := func(s *State, key, end string, typ authpb.Permission_Type) *State {
		var e []byte
		if end != "" {
			e = []byte(end)
		}
		s, _ = apply(t, s, &pb.InternalRaftRequest{AuthRoleGrantPermission: &pb.AuthRoleGrantPermissionRequest{Name: "r",
			Perm: &authpb.Permission{Key: []byte(key), RangeEnd: e, PermType: typ}}}, nil)
		return s
	}
	s = grant(s, "foo", "", authpb.Permission_READ)
	s = grant(s, "dir/", "dir0", authpb.Permission_READWRITE) // --prefix dir/
	s = grant(s, "w", "", authpb.Permission_WRITE)
	s = grant(s, "z", "\x00", authpb.Permission_READ) // --from-key z
	s = grant(s, "foo", "", authpb.Permission_READWRITE)
	_, resp := apply(t, s, &pb.InternalRaftRequest{AuthRoleGet: &pb.AuthRoleGetRequest{Role: "r"}}, nil)
	var keys []string
	for _, p := range resp.(*pb.AuthRoleGetResponse).Perm {
		keys = append(keys, string(p.Key)+"/"+p.PermType.String())
	}
	if want := []string{"dir//READWRITE", "foo/READWRITE", "w/WRITE", "z/READ"}; !slices.Equal(keys, want) {
		t.Fatalf("role perms %v, want %v (sorted by key, regrant replaces)", keys, want)
	}

	// Not granted to alice yet.
	if s.RangePermitted("alice", []byte("foo"), nil, authpb.Permission_READ) {
		t.Fatal("permitted before the role was granted")
	}
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "alice", Role: "r"}}, nil)
	R, W := authpb.Permission_READ, authpb.Permission_WRITE
	for _, c := range []struct {
		key, end string
		typ      authpb.Permission_Type
		want     bool
	}{
		{"foo", "", R, true}, {"foo", "", W, true}, {"foo1", "", R, false},
		{"dir/a", "", W, true}, {"dir/", "dir0", R, true}, {"dir/", "dir1", R, false}, {"dir", "", R, false},
		{"w", "", W, true}, {"w", "", R, false},
		{"z", "\x00", R, true}, {"zzz", "", R, true}, {"z", "\x00", W, false}, {"y", "\x00", R, false},
		{"a", "\x00", R, false}, {"nope", "", R, false},
	} {
		var end []byte
		if c.end != "" {
			end = []byte(c.end)
		}
		if got := s.RangePermitted("alice", []byte(c.key), end, c.typ); got != c.want {
			t.Errorf("RangePermitted(%q, %q, %v) = %v, want %v", c.key, c.end, c.typ, got, c.want)
		}
	}

	apply(t, s, &pb.InternalRaftRequest{AuthRoleRevokePermission: &pb.AuthRoleRevokePermissionRequest{Role: "r", Key: []byte("nope")}}, ErrPermissionNotGranted)
	apply(t, s, &pb.InternalRaftRequest{AuthRoleRevokePermission: &pb.AuthRoleRevokePermissionRequest{Role: "x", Key: []byte("foo")}}, ErrRoleNotFound)
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthRoleRevokePermission: &pb.AuthRoleRevokePermissionRequest{Role: "r", Key: []byte("foo")}}, nil)
	if s.RangePermitted("alice", []byte("foo"), nil, R) {
		t.Fatal("permitted after revoke")
	}
	// Deleting the role revokes it from alice.
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthRoleDelete: &pb.AuthRoleDeleteRequest{Role: "r"}}, nil)
	_, resp = apply(t, s, &pb.InternalRaftRequest{AuthUserGet: &pb.AuthUserGetRequest{Name: "alice"}}, nil)
	if r := resp.(*pb.AuthUserGetResponse).Roles; len(r) != 0 {
		t.Fatalf("alice's roles after role delete = %v", r)
	}
	if s.RangePermitted("alice", []byte("dir/a"), nil, R) {
		t.Fatal("permitted after role delete")
	}
}

// TestPermissionGrantOnSameKeyIsEtcds: a grant replaces only the first
// permission on its key (etcd's sort.Search), and only if the range end
// matches too; otherwise it is appended, a second time if need be, and a
// revoke removes every copy, as etcd's authStore does.
func TestPermissionGrantOnSameKeyIsEtcds(t *testing.T) {
	s, _ := apply(t, New(), &pb.InternalRaftRequest{AuthRoleAdd: &pb.AuthRoleAddRequest{Name: "r"}}, nil)
	grant := func(key, end string, typ authpb.Permission_Type) {
		t.Helper()
		s, _ = apply(t, s, &pb.InternalRaftRequest{AuthRoleGrantPermission: &pb.AuthRoleGrantPermissionRequest{Name: "r",
			Perm: &authpb.Permission{Key: []byte(key), RangeEnd: []byte(end), PermType: typ}}}, nil)
	}
	perms := func() []string {
		t.Helper()
		_, resp := apply(t, s, &pb.InternalRaftRequest{AuthRoleGet: &pb.AuthRoleGetRequest{Role: "r"}}, nil)
		var out []string
		for _, p := range resp.(*pb.AuthRoleGetResponse).Perm {
			out = append(out, string(p.Key)+","+string(p.RangeEnd)+","+p.PermType.String())
		}
		return out
	}
	grant("c", "\x00", authpb.Permission_READ)
	grant("c", "foo0", authpb.Permission_READ)
	grant("c", "\x00", authpb.Permission_WRITE) // the first on "c": replaced
	grant("c", "foo0", authpb.Permission_WRITE) // not the first: appended again
	if got, want := perms(), []string{"c,\x00,WRITE", "c,foo0,READ", "c,foo0,WRITE"}; !slices.Equal(got, want) {
		t.Fatalf("perms %q, want %q", got, want)
	}
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthRoleRevokePermission: &pb.AuthRoleRevokePermissionRequest{Role: "r", Key: []byte("c"), RangeEnd: []byte("foo0")}}, nil)
	if got, want := perms(), []string{"c,\x00,WRITE"}; !slices.Equal(got, want) {
		t.Fatalf("perms after revoke %q, want %q", got, want)
	}
}

func TestPasswordsAndCodec(t *testing.T) {
	s := addUser(t, New(), "root", "secret")
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthUserAdd: &pb.AuthUserAddRequest{Name: "np", Options: &authpb.UserAddOptions{NoPassword: true}}}, nil)
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}}, nil)
	cmp := bcrypt.CompareHashAndPassword
	if _, err := s.CheckPassword("root", "secret", cmp); !errors.Is(err, ErrAuthNotEnabled) {
		t.Fatalf("CheckPassword while disabled: %v", err)
	}
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthEnable: &pb.AuthEnableRequest{}}, nil)

	data, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := got.Marshal()
	if string(again) != string(data) || got.Revision() != s.Revision() || !got.Enabled() {
		t.Fatalf("round trip changed the state")
	}
	if _, err := Unmarshal(data[:len(data)-1]); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("truncated state: %v", err)
	}
	if rev, err := got.CheckPassword("root", "secret", cmp); err != nil || rev != got.Revision() {
		t.Fatalf("CheckPassword = %d, %v", rev, err)
	}
	for _, c := range []struct {
		user, pw string
		want     error
	}{{"root", "wrong", ErrAuthFailed}, {"nobody", "x", ErrAuthFailed}, {"np", "x", ErrNoPasswordUser}} {
		if _, err := got.CheckPassword(c.user, c.pw, cmp); !errors.Is(err, c.want) {
			t.Errorf("CheckPassword(%s, %s) = %v, want %v", c.user, c.pw, err, c.want)
		}
	}
	got, _ = apply(t, got, &pb.InternalRaftRequest{AuthUserChangePassword: &pb.AuthUserChangePasswordRequest{Name: "root", HashedPassword: hashed(t, "new")}}, nil)
	if _, err := got.CheckPassword("root", "secret", cmp); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("old password still accepted: %v", err)
	}
	if _, err := got.CheckPassword("root", "new", cmp); err != nil {
		t.Fatalf("new password: %v", err)
	}
	apply(t, got, &pb.InternalRaftRequest{AuthUserChangePassword: &pb.AuthUserChangePasswordRequest{Name: "x"}}, ErrUserNotFound)
	if _, _, handled, _ := got.Apply(&pb.InternalRaftRequest{Put: &pb.PutRequest{}}); handled {
		t.Fatal("a Put was handled as an auth request")
	}
}
