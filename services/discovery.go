package services

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/concord-kv/concord/services/config"
)

// etcd's v3 discovery protocol (config.Discovery), as its v3discovery
// package speaks it, so concord and etcd members can share a registry:
//
//	/_etcd/registry/TOKEN/_config/size         the cluster size, set beforehand
//	/_etcd/registry/TOKEN/members/MEMBERID     "name=peerURL,..." of a member
//
// A member registers itself, then waits (watching the members prefix) until
// size members have registered; the first size by create revision are the
// initial cluster. Transient errors are retried with etcd's backoff (1 s,
// doubling up to 256 s) until ctx ends; a missing or bad size key and a
// full cluster are final.

var (
	errDiscoverySizeNotFound = errors.New("discovery: size key not found")
	errDiscoveryBadSize      = errors.New("discovery: size key is bad")
	errDiscoveryFull         = errors.New("discovery: cluster is full")
)

const (
	discoveryPrefix     = "/_etcd/registry"
	discoveryMaxBackoff = 256 * time.Second
)

// discoverCluster returns consensus.Config.DiscoverCluster for d.
func discoverCluster(d config.Discovery, log *slog.Logger) func(ctx context.Context, memberID uint64, self string) (string, error) {
	return func(ctx context.Context, memberID uint64, self string) (string, error) {
		cfg, err := clientv3.NewClientConfig(&clientv3.ConfigSpec{
			Endpoints: d.Endpoints, DialTimeout: d.DialTimeout,
			KeepAliveTime: d.KeepAliveTime, KeepAliveTimeout: d.KeepAliveTimeout,
			Secure: &clientv3.SecureConfig{Cert: d.CertFile, Key: d.KeyFile, Cacert: d.CAFile,
				InsecureTransport: d.InsecureTransport, InsecureSkipVerify: d.InsecureSkipVerify},
			Auth: &clientv3.AuthConfig{Username: d.User, Password: d.Password},
		}, zap.NewNop())
		if err != nil {
			return "", fmt.Errorf("failed to join discovery cluster (%w)", err)
		}
		cfg.Context = ctx
		cfg.Logger = zap.NewNop()
		cli, err := clientv3.New(*cfg)
		if err != nil {
			return "", fmt.Errorf("failed to join discovery cluster (%w)", err)
		}
		defer cli.Close()
		r := &registry{cli: cli, token: d.Token, timeout: d.RequestTimeout,
			log: log.With("discovery-token", d.Token, "discovery-endpoints", strings.Join(d.Endpoints, ","))}
		cluster, err := r.join(ctx, strconv.FormatUint(memberID, 16), self)
		if err != nil {
			return "", fmt.Errorf("failed to join discovery cluster (%w)", err)
		}
		r.log.Info("discovery joined cluster successfully", "cluster", cluster)
		return cluster, nil
	}
}

// registry is one discovery token's registry in the discovery cluster.
type registry struct {
	cli     *clientv3.Client
	token   string
	timeout time.Duration // per request
	log     *slog.Logger
}

// registered is a member found in the registry.
type registered struct {
	key, value string
	createRev  int64
}

func (r *registry) membersPrefix() string { return path.Join(discoveryPrefix, r.token, "members") }

// join registers self under id and returns the initial cluster once it is
// complete.
func (r *registry) join(ctx context.Context, id, self string) (string, error) {
	key := path.Join(r.membersPrefix(), id)
	if _, _, _, err := r.check(ctx, key); err != nil {
		return "", err
	}
	err := r.retry(ctx, "register member itself", func(ctx context.Context) error {
		_, err := r.cli.Put(ctx, key, self)
		return err
	})
	if err != nil {
		return "", err
	}
	r.log.Info("registered member itself", "member-key", key, "member-info", self)
	members, size, rev, err := r.check(ctx, key)
	if err != nil {
		return "", err
	}
	if len(members) < size {
		if members, err = r.wait(ctx, key, members, size, rev); err != nil {
			return "", err
		}
	}
	values := make([]string, 0, size)
	for _, m := range members[:size] {
		values = append(values, m.value)
	}
	return strings.Join(values, ","), nil
}

// check reads the size and the registered members (at revision rev), and
// fails if the first size members are others.
func (r *registry) check(ctx context.Context, self string) (members []registered, size int, rev int64, err error) {
	err = r.retry(ctx, "cluster status check", func(ctx context.Context) error {
		resp, err := r.cli.Get(ctx, path.Join(discoveryPrefix, r.token, "_config/size"))
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return errDiscoverySizeNotFound
		}
		n, perr := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 0)
		if perr != nil || n <= 0 {
			return errDiscoveryBadSize
		}
		size = int(n)
		resp, err = r.cli.Get(ctx, r.membersPrefix(), clientv3.WithPrefix())
		if err != nil {
			return err
		}
		members = nil
		for _, kv := range resp.Kvs {
			members = r.add(members, kv)
		}
		rev = resp.Header.Revision
		return nil
	})
	if err != nil {
		return nil, 0, 0, err
	}
	for i, m := range members {
		if m.key == self {
			break
		}
		if i >= size-1 {
			return nil, 0, 0, errDiscoveryFull
		}
	}
	return members, size, rev, nil
}

// add adds a registry entry to members, kept in create revision order;
// malformed and duplicate entries are skipped, as etcd skips them.
func (r *registry) add(members []registered, kv *mvccpb.KeyValue) []registered {
	key, value := strings.TrimSpace(string(kv.Key)), strings.TrimSpace(string(kv.Value))
	switch {
	case !strings.HasPrefix(key, r.membersPrefix()):
		r.log.Warn("invalid peer registry key", "member-key", key)
	case !strings.ContainsRune(value, '='):
		r.log.Warn("invalid peer info returned from discovery service", "member-key", key, "member-info", value)
	case slices.ContainsFunc(members, func(m registered) bool { return m.key == key }):
		r.log.Warn("found duplicate peer from discovery service", "member-key", key, "member-info", value)
	default:
		r.log.Info("found peer from discovery service", "member-key", key, "member-info", value)
		members = append(members, registered{key: key, value: value, createRev: kv.CreateRevision})
		slices.SortStableFunc(members, func(a, b registered) int { return cmp.Compare(a.createRev, b.createRev) })
	}
	return members
}

// wait watches the registry from rev+1 until size members are registered.
func (r *registry) wait(ctx context.Context, self string, members []registered, size int, rev int64) ([]registered, error) {
	r.log.Info("waiting for peers from discovery service", "cluster-size", size, "found-peers", len(members))
	for len(members) < size {
		err := r.watch(ctx, &members, size, rev)
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return nil, ctx.Err()
		default:
			// The watch ended (no leader, compacted, connection lost):
			// read the registry again and watch from there.
			r.log.Warn("watching the discovery registry", "error", err)
			if members, _, rev, err = r.check(ctx, self); err != nil {
				return nil, err
			}
		}
	}
	r.log.Info("found all needed peers from discovery service", "cluster-size", size, "found-peers", len(members))
	return members, nil
}

// watch adds the members registered after rev until there are size of them
// or the watch fails.
func (r *registry) watch(ctx context.Context, members *[]registered, size int, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range r.cli.Watch(wctx, r.membersPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypePut {
				*members = r.add(*members, ev.Kv)
			}
		}
		if len(*members) >= size {
			return nil
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("watch closed")
}

// retry runs op, each attempt bounded by the request timeout, until it
// succeeds, fails with a bad or missing size key (final, as in etcd) or ctx
// ends, waiting etcd's backoff between attempts.
func (r *registry) retry(ctx context.Context, step string, op func(context.Context) error) error {
	backoff := time.Second
	for {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if r.timeout > 0 {
			actx, cancel = context.WithTimeout(ctx, r.timeout)
		}
		err := op(actx)
		cancel()
		if err == nil || errors.Is(err, errDiscoverySizeNotFound) || errors.Is(err, errDiscoveryBadSize) {
			return err
		}
		r.log.Warn("retry connecting to discovery service", "reason", step, "backoff", backoff, "error", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, discoveryMaxBackoff)
	}
}
