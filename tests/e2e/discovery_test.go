package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestV3Discovery bootstraps three-member clusters with etcd's v3
// discovery (--discovery-endpoints, --discovery-token), etcd's members
// through a concord registry and concord's through an etcd one, so each
// side reads what the other writes: each cluster lists its three members
// under their names and advertised peer URLs, with the IDs under which
// they registered (/_etcd/registry/TOKEN/members/ID). A fourth member is
// refused as "cluster is full" and a token without a size key as "size key
// not found", by both.
func TestV3Discovery(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ members, registry *impl }{{etcdImpl, concordImpl}, {concordImpl, etcdImpl}} {
		t.Run(c.members.name, func(t *testing.T) {
			reg := startServer(t, c.registry, serverOptions{name: "registry"})
			cli := newClient(t, reg)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			const token = "e2e-discovery"
			if _, err := cli.Put(ctx, "/_etcd/registry/"+token+"/_config/size", "3"); err != nil {
				t.Fatal(err)
			}
			// member prepares a member bootstrapped by discovery with token.
			member := func(name, token string) *Server {
				s := newJoiner(t, c.members, name)
				s.opts.discovered = true
				s.opts.extra = []string{"--discovery-endpoints", reg.Endpoint(), "--discovery-token", token}
				return s
			}
			members := make([]*Server, 3)
			errs := make([]error, 3)
			var wg sync.WaitGroup
			for i := range members {
				members[i] = member(fmt.Sprintf("m%d", i+1), token)
				wg.Go(func() { errs[i] = members[i].start() })
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}

			resp, err := cli.Get(ctx, "/_etcd/registry/"+token+"/members/", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			registered := map[uint64]string{}
			for _, kv := range resp.Kvs {
				id, err := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), "/_etcd/registry/"+token+"/members/"), 16, 64)
				if err != nil {
					t.Fatalf("registry key %q: %v", kv.Key, err)
				}
				registered[id] = string(kv.Value)
			}
			list, err := newClient(t, members[0]).MemberList(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Members) != 3 || len(registered) != 3 {
				t.Fatalf("members %v, registered %v: want 3 of each", list.Members, registered)
			}
			for _, m := range list.Members {
				i := slices.IndexFunc(members, func(s *Server) bool { return s.opts.name == m.Name })
				if i < 0 || !slices.Equal(m.PeerURLs, []string{members[i].peerURL()}) {
					t.Errorf("member %x %s %v: not one of the three started", m.ID, m.Name, m.PeerURLs)
					continue
				}
				if want := m.Name + "=" + members[i].peerURL(); registered[m.ID] != want {
					t.Errorf("member %s has ID %x, registered as %q there, want %q", m.Name, m.ID, registered[m.ID], want)
				}
			}
			if _, err := newClient(t, members[2]).Put(ctx, "k", "v"); err != nil {
				t.Errorf("put through m3: %v", err)
			}

			for _, r := range []struct{ token, want string }{
				{token, "discovery: cluster is full"},
				{"no-size", "discovery: size key not found"},
			} {
				s := member("m4", r.token)
				if err := s.start(); err == nil {
					t.Errorf("%s: a fourth member started", r.token)
				} else if !strings.Contains(s.log.String(), r.want) {
					t.Errorf("%s: fourth member's output lacks %q:\n%s", r.token, r.want, s.log.Tail(logTail))
				}
			}
		})
	}
}
