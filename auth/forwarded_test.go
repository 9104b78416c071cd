package auth

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// A forwarded certificate user is believed only when every process it
// went through is concord's own: the internal secret, or a verified
// certificate naming a root-role user.
func TestTrustedForwardedUser(t *testing.T) {
	s := New()
	for _, u := range []string{"root", "proc", "alice"} {
		s = addUser(t, s, u, "pw")
	}
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "root", Role: RootRole}}, nil)
	s, _ = apply(t, s, &pb.InternalRaftRequest{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "proc", Role: RootRole}}, nil)
	var err error
	if s, err = s.Enable(make([]byte, TokenKeySize)); err != nil {
		t.Fatal(err)
	}
	secret, proc, alice := Hop{Internal: true}, Hop{CommonName: "proc"}, Hop{CommonName: "alice"}
	for _, tc := range []struct {
		name string
		f    *ForwardedUser
		want bool
	}{
		{"no claim", nil, false},
		{"no hop", &ForwardedUser{Name: "alice"}, false},
		{"no name", &ForwardedUser{Via: []Hop{secret}}, false},
		{"through a process with the secret", &ForwardedUser{Name: "alice", Via: []Hop{secret}}, true},
		{"through a root-role certificate", &ForwardedUser{Name: "alice", Via: []Hop{proc}}, true},
		{"gateway then fan-out", &ForwardedUser{Name: "alice", Via: []Hop{proc, secret}}, true},
		{"claimed by a client", &ForwardedUser{Name: "root", Via: []Hop{alice}}, false},
		{"claimed by a client, then a gateway", &ForwardedUser{Name: "root", Via: []Hop{alice, proc}}, false},
		{"claimed by a client, then a gateway and a fan-out", &ForwardedUser{Name: "root", Via: []Hop{alice, proc, secret}}, false},
		{"a caller that proved nothing", &ForwardedUser{Name: "alice", Via: []Hop{{}, proc}}, false},
		{"a certificate naming no user", &ForwardedUser{Name: "alice", Via: []Hop{{CommonName: "nobody"}}}, false},
		{"too many hops", &ForwardedUser{Name: "alice", Via: []Hop{secret, secret, secret, secret}}, false},
	} {
		name, ok := s.TrustedForwardedUser(tc.f)
		if ok != tc.want || (ok && name != tc.f.Name) || (!ok && name != "") {
			t.Errorf("%s: %q %v, want %v", tc.name, name, ok, tc.want)
		}
	}
}
