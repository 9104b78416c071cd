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
			discovery := func(token string) serverOptions {
				return serverOptions{discovered: true, extra: []string{"--discovery-endpoints", reg.Endpoint(), "--discovery-token", token}}
			}
			members := make([]*Server, 3)
			errs := make([]error, 3)
			var wg sync.WaitGroup
			for i := range members {
				members[i] = newServer(t, c.members, fmt.Sprintf("m%d", i+1), discovery(token))
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
				s := newServer(t, c.members, "m4", discovery(r.token))
				if err := s.start(); err == nil {
					t.Errorf("%s: a fourth member started", r.token)
				} else if !strings.Contains(s.log.String(), r.want) {
					t.Errorf("%s: fourth member's output lacks %q:\n%s", r.token, r.want, s.log.Tail(logTail))
				}
			}
		})
	}
}

// newServer prepares a server named name on free ports, killed at the
// end of the test, without starting it.
func newServer(t *testing.T, im *impl, name string, opts serverOptions) *Server {
	t.Helper()
	requireBinary(t, im)
	opts.name = name
	s := &Server{t: t, impl: im, opts: opts, dataDir: t.TempDir(), log: &syncBuffer{}}
	var err error
	if s.clientPort, s.peerPort, err = freePorts(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			t.Logf("%s %s output (last %d bytes):\n%s", im.name, name, logTail, s.log.Tail(logTail))
		}
	})
	return s
}
