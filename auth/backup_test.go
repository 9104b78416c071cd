package auth

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	"golang.org/x/crypto/bcrypt"
)

// TestRestored: a state built from a backup's users and roles answers as
// the original: roles and permissions in any stored order, a user's
// bcrypt hash checks, permissions apply; it has no token key until Enable
// gives it one, which changes nothing else.
func TestRestored(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("alicepw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users := []*authpb.User{
		{Name: []byte("root"), Password: hash, Roles: []string{"root"}},
		{Name: []byte("alice"), Password: hash, Roles: []string{"w", "r", "r"}},
	}
	roles := []*authpb.Role{
		{Name: []byte("r"), KeyPermission: []*authpb.Permission{
			{PermType: authpb.Permission_READ, Key: []byte("z")},
			{PermType: authpb.Permission_READ, Key: []byte("a/"), RangeEnd: []byte("a0")},
		}},
		{Name: []byte("w"), KeyPermission: []*authpb.Permission{{PermType: authpb.Permission_WRITE, Key: []byte("w"), RangeEnd: []byte{0}}}},
	}
	s, err := Restored(true, 9, users, roles)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Enabled() || s.Revision() != 9 || !s.NeedsTokenKey() {
		t.Fatalf("restored: enabled %v revision %d needs key %v", s.Enabled(), s.Revision(), s.NeedsTokenKey())
	}
	if got := s.User("alice").Roles; !slices.Equal(got, []string{"r", "w"}) {
		t.Fatalf("alice's roles %v, want [r w]", got)
	}
	if p := s.Roles()[0].KeyPermission; string(p[0].Key) != "a/" || string(p[1].Key) != "z" {
		t.Fatalf("r's permissions not in key order: %v", p)
	}
	if !s.RangePermitted("alice", []byte("a/1"), nil, authpb.Permission_READ) || s.RangePermitted("alice", []byte("b"), nil, authpb.Permission_READ) ||
		!s.RangePermitted("alice", []byte("x"), nil, authpb.Permission_WRITE) {
		t.Fatal("restored permissions differ from the roles'")
	}
	if rev, err := s.CheckPassword("alice", "alicepw", bcrypt.CompareHashAndPassword); err != nil || rev != 9 {
		t.Fatalf("CheckPassword: %d, %v", rev, err)
	}
	if _, err := s.IssueToken("alice", time.Now().Add(time.Minute)); !errors.Is(err, ErrAuthNotEnabled) {
		t.Fatalf("token without a key: %v", err)
	}
	key := bytes.Repeat([]byte{7}, TokenKeySize)
	k, err := s.Enable(key)
	if err != nil || k.NeedsTokenKey() || k.Revision() != 9 || !k.Enabled() {
		t.Fatalf("Enable with a key: needs key %v revision %d, %v", k.NeedsTokenKey(), k.Revision(), err)
	}
	tok, err := k.IssueToken("alice", time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := k.Enable(bytes.Repeat([]byte{8}, TokenKeySize)); again != k {
		t.Fatal("Enable replaced an existing key")
	}
	if ai, err := k.VerifyToken(tok, time.Now()); err != nil || ai.Username != "alice" {
		t.Fatalf("VerifyToken: %v, %v", ai, err)
	}

	for name, bad := range map[string]func() error{
		"duplicate user": func() error { _, err := Restored(false, 1, append(users, users[0]), nil); return err },
		"empty role":     func() error { _, err := Restored(false, 1, nil, []*authpb.Role{{}}); return err },
		"bad range": func() error {
			_, err := Restored(false, 1, nil, []*authpb.Role{{Name: []byte("x"), KeyPermission: []*authpb.Permission{{Key: []byte("b"), RangeEnd: []byte("a")}}}})
			return err
		},
	} {
		if err := bad(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
	if s, err := Restored(false, 0, nil, nil); err != nil || s.Revision() != 1 || s.Enabled() {
		t.Fatalf("empty backup: %v, %v", s, err)
	}
}
