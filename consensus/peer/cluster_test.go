package peer

// consensus members connected by this transport over loopback TCP: what the
// in-memory network tests in consensus check, once more over the real wire.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/consensus"
)

type netCluster struct {
	t     *testing.T
	eps   []*endpoint
	cfgs  []consensus.Config
	nodes []*consensus.Node
}

func newNetCluster(t *testing.T, size int, mutate func(*consensus.Config)) *netCluster {
	t.Helper()
	c := &netCluster{t: t, nodes: make([]*consensus.Node, size)}
	var spec []string
	for i := range size {
		e := newEndpoint(t)
		c.eps = append(c.eps, e)
		spec = append(spec, fmt.Sprintf("n%d=%s", i+1, e.url))
	}
	for i := range size {
		cfg := consensus.Config{
			Name:              fmt.Sprintf("n%d", i+1),
			DataDir:           t.TempDir(),
			PeerURLs:          []string{c.eps[i].url},
			ClientURLs:        []string{fmt.Sprintf("http://127.0.0.1:%d", 23790+i)},
			InitialCluster:    strings.Join(spec, ","),
			HeartbeatInterval: 20 * time.Millisecond,
			ElectionTimeout:   200 * time.Millisecond,
			Logger:            quiet,
		}
		if mutate != nil {
			mutate(&cfg)
		}
		c.cfgs = append(c.cfgs, cfg)
	}
	t.Cleanup(func() {
		for i := range c.nodes {
			c.stop(i)
		}
	})
	var wg sync.WaitGroup
	errs := make([]error, size)
	for i := range size {
		wg.Go(func() { errs[i] = c.startErr(i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *netCluster) startErr(i int) error {
	tr, err := New(Config{Logger: quiet, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		return err
	}
	c.eps[i].serve(tr)
	cfg := c.cfgs[i]
	cfg.Transport = tr
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := consensus.Start(ctx, cfg)
	if err != nil {
		return fmt.Errorf("member %d: %w", i+1, err)
	}
	c.nodes[i] = n
	return nil
}

func (c *netCluster) stop(i int) {
	if c.nodes[i] != nil {
		if err := c.nodes[i].Close(); err != nil {
			c.t.Errorf("close member %d: %v", i+1, err)
		}
		c.nodes[i] = nil
	}
}

// leader waits for the running members to agree on a running leader.
func (c *netCluster) leader() int {
	c.t.Helper()
	lead := -1
	waitFor(c.t, "an agreed leader", func() bool {
		var id uint64
		for _, n := range c.nodes {
			if n == nil {
				continue
			}
			if id == 0 {
				id = n.Leader()
			}
			if n.Leader() == 0 || n.Leader() != id {
				return false
			}
		}
		for i, n := range c.nodes {
			if n != nil && n.MemberID() == id {
				lead = i
				return true
			}
		}
		return false
	})
	return lead
}

func (c *netCluster) converged() {
	c.t.Helper()
	waitFor(c.t, "members to converge", func() bool {
		var rev int64 = -1
		var hash uint32
		for _, n := range c.nodes {
			if n == nil {
				continue
			}
			h, _, _, err := n.Store().HashKV(0)
			if err != nil {
				return false
			}
			if rev == -1 {
				rev, hash = n.Store().Rev(), h
			} else if n.Store().Rev() != rev || h != hash {
				return false
			}
		}
		return true
	})
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// retryTimeouts runs call until it returns anything but a timeout, for at
// most 10 s. With a 200 ms election timeout, a loaded machine can change the
// leader under a request, which is then answered as etcd does ("request timed
// out, possibly due to previous leader failure") and which a client retries.
// A retried put may be applied twice; callers read only the latest version.
func retryTimeouts(t *testing.T, call func(context.Context) error) error {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := call(ctx)
		cancel()
		if !errors.Is(err, consensus.ErrTimeout) || time.Now().After(deadline) {
			return err
		}
		t.Logf("retrying after: %v", err)
	}
}

func TestClusterOverTheNetwork(t *testing.T) {
	c := newNetCluster(t, 3, func(cfg *consensus.Config) {
		cfg.SnapshotCount = 30
		cfg.SnapshotCatchUpEntries = 5
	})
	lead := c.leader()
	follower := (lead + 1) % 3
	other := (lead + 2) % 3

	// A write through a follower, read linearizably through the other one.
	var put *pb.PutResponse
	err := retryTimeouts(t, func(ctx context.Context) (err error) {
		put, err = c.nodes[follower].Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")})
		return err
	})
	if err != nil {
		t.Fatalf("put through a follower: %v", err)
	}
	var got *pb.RangeResponse
	err = retryTimeouts(t, func(ctx context.Context) (err error) {
		got, err = c.nodes[other].Range(ctx, &pb.RangeRequest{Key: []byte("k")})
		return err
	})
	if err != nil || len(got.Kvs) != 1 || got.Kvs[0].ModRevision != put.Header.Revision {
		t.Fatalf("linearizable read on another follower: %v %v", got, err)
	}
	// MemberList eventually shows every member's client URLs everywhere.
	waitFor(t, "published client URLs", func() bool {
		for _, n := range c.nodes {
			ml, err := n.MemberList(ctx10(t), &pb.MemberListRequest{})
			if err != nil || len(ml.Members) != 3 {
				return false
			}
			for _, m := range ml.Members {
				if len(m.ClientURLs) != 1 || len(m.PeerURLs) != 1 {
					return false
				}
			}
		}
		return true
	})

	// Stop a follower, write past the snapshot count and the catch-up
	// entries, restart it: it gets the store as a snapshot over the wire.
	c.stop(other)
	for i := range 120 {
		if err := retryTimeouts(t, func(ctx context.Context) error {
			_, err := c.nodes[lead].Put(ctx, &pb.PutRequest{Key: fmt.Appendf(nil, "bulk/%03d", i), Value: []byte("v")})
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.startErr(other); err != nil {
		t.Fatal(err)
	}
	c.converged()

	// Stop the leader: the others elect a new one and take writes.
	c.stop(lead)
	stopped := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.nodes[follower].Put(ctx, &pb.PutRequest{Key: []byte("after"), Value: []byte("v")})
		cancel()
		if err == nil {
			break
		}
		if time.Since(stopped) > 15*time.Second {
			t.Fatalf("no write within 15s of stopping the leader: %v", err)
		}
	}
	t.Logf("writes resumed %v after the leader stopped (election timeout 200ms)", time.Since(stopped).Round(time.Millisecond))
	if err := c.startErr(lead); err != nil {
		t.Fatal(err)
	}
	c.leader()
	c.converged()
}
