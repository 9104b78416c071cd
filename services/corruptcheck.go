package services

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/sync/errgroup"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/services/config"
	"github.com/concord-kv/concord/storage"
)

// etcd's periodic corruption check (--corrupt-check-time): every interval
// the raft leader hashes its keyspace at its current revision (HashKV),
// asks every other member over the peer URLs for its hash at that revision,
// hashes its own again after a linearizable read, and raises the CORRUPT
// alarm (at most one per check) for
//   - itself, if its own hash changed at the same revision and compaction;
//   - a member that is ahead of it in revision or compaction;
//   - a member whose hash differs at the same compact revision.
// The alarm then refuses writes cluster-wide until an operator disarms it,
// as in etcd. Members that do not answer are skipped.

// corruptionChecks are a member's corruption checks: its answers to the
// other members' (HashKV on its peer URLs, Unavailable until consensus
// started, which is after the peer server), the initial check of the
// InitialCorruptCheck gate and the periodic ones.
type corruptionChecks struct {
	etcdserverpbconnect.UnimplementedMaintenanceHandler
	node    atomic.Pointer[consensus.Node]
	cfg     config.Server
	peerTLS *tls.Config // to dial the other members' peer URLs
	log     *slog.Logger
}

func newCorruptionChecks(cfg config.Server, log *slog.Logger) (*corruptionChecks, error) {
	_, peerTLS, err := cfg.PeerTLS.PeerConfigs(cfg.ListenPeerURLs)
	if err != nil {
		return nil, err
	}
	return &corruptionChecks{cfg: cfg, peerTLS: peerTLS, log: log.With("component", "corruption-check")}, nil
}

// peerHandlers are the handlers to mount on the peer server, by path: the
// HashKV RPC the members' checks use, and etcd's HTTP form of it
// (PeerHashKVPath).
func (c *corruptionChecks) peerHandlers() map[string]http.Handler {
	path, h := etcdserverpbconnect.NewMaintenanceHandler(c)
	return map[string]http.Handler{path: h, PeerHashKVPath: c.httpHashKV()}
}

func (c *corruptionChecks) HashKV(_ context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	n := c.node.Load()
	if n == nil {
		return nil, connect.NewError(connect.CodeUnavailable, consensus.ErrStopped)
	}
	resp, err := n.PeerHashKV(r.GetRevision())
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	return resp, nil
}

// PeerHashKVPath is where etcd's members ask each other for their HashKV
// over the peer URLs (etcdserver.PeerHashKVPath).
const PeerHashKVPath = "/members/hashkv"

// httpHashKV answers etcd's peer HashKV request as etcd's hashKVHandler
// does: a GET whose body is a JSON HashKVRequest, an X-Etcd-Cluster-ID that,
// when given, must be this cluster's (412 otherwise), and a JSON
// HashKVResponse whose header holds only the store's revision; a
// compacted or future revision is a 400 with the store's error. concord's
// own checks use the HashKV RPC; this serves etcd's tools and scripts that
// speak the HTTP form.
func (c *corruptionChecks) httpHashKV() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
			return
		}
		n := c.node.Load()
		if n == nil {
			http.Error(w, consensus.ErrStopped.Error(), http.StatusServiceUnavailable)
			return
		}
		if id := r.Header.Get("X-Etcd-Cluster-ID"); id != "" && id != memberHex(n.ClusterID()) {
			http.Error(w, "cluster ID mismatch", http.StatusPreconditionFailed)
			return
		}
		b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "error reading body", http.StatusBadRequest)
			return
		}
		var req pb.HashKVRequest
		if err := json.Unmarshal(b, &req); err != nil {
			http.Error(w, "error unmarshalling request", http.StatusBadRequest)
			return
		}
		h, err := n.PeerHashKV(req.Revision)
		switch {
		case errors.Is(err, storage.ErrCompacted), errors.Is(err, storage.ErrFutureRev):
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		out, err := json.Marshal(&pb.HashKVResponse{Header: &pb.ResponseHeader{Revision: h.GetHeader().GetRevision()},
			Hash: h.Hash, CompactRevision: h.CompactRevision, HashRevision: h.HashRevision})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	})
}

// start answers the other members' checks from node and, with the
// InitialCorruptCheck gate, runs the initial check of a restarted member:
// an error means the member must not serve.
func (c *corruptionChecks) start(ctx context.Context, node *consensus.Node) error {
	c.node.Store(node)
	if !node.Restarted() || !alphaGateOn(c.cfg.FeatureGates, "InitialCorruptCheck") {
		return nil
	}
	return c.initialCheck(ctx, node)
}

// run starts the periodic checks in g: --corrupt-check-time's, and
// --compact-hash-check-time's with the CompactHashCheck gate.
// Each keeps its clients of the other members from check to check.
func (c *corruptionChecks) run(ctx context.Context, g *errgroup.Group, node *consensus.Node) {
	g.Go(func() error {
		peers := c.newPeerClients()
		defer peers.close()
		everyAsLeader(ctx, c.cfg.CorruptCheckTime, node, func() {
			if err := c.checkHashes(ctx, node, peers); err != nil && ctx.Err() == nil {
				c.log.Warn("failed to check hash KV", "error", err)
			}
		})
		return nil
	})
	if alphaGateOn(c.cfg.FeatureGates, "CompactHashCheck") {
		g.Go(func() error {
			peers := c.newPeerClients()
			defer peers.close()
			var latestChecked int64
			everyAsLeader(ctx, c.cfg.CompactHashCheckTime, node, func() {
				latestChecked = c.checkCompactionHashes(ctx, node, peers, latestChecked)
			})
			return nil
		})
	}
}

// everyAsLeader calls check every interval (0: never) while node leads,
// until ctx ends.
func everyAsLeader(ctx context.Context, interval time.Duration, node *consensus.Node, check func()) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if node.Leader() == node.MemberID() {
			check()
		}
	}
}

// peerHashTimeout bounds the wait for the other members' hashes, and for
// the leader's own linearizable read between its two hashes.
const peerHashTimeout = 5 * time.Second

// peerHash is one member's answer to the check.
type peerHash struct {
	id   uint64
	resp *pb.HashKVResponse
}

// checkHashes is one check, as etcd's corruptionChecker.PeriodicCheck.
func (c *corruptionChecks) checkHashes(ctx context.Context, node *consensus.Node, clients *peerClients) error {
	log := c.log
	h, err := node.PeerHashKV(0)
	if err != nil {
		return err
	}
	peers := c.askPeerHashes(ctx, node, clients, h.HashRevision, min(c.cfg.CorruptCheckTime, peerHashTimeout))
	rctx, cancel := context.WithTimeout(ctx, peerHashTimeout)
	err = node.LinearizableReadNotify(rctx)
	cancel()
	if err != nil {
		return err
	}
	h2, err := node.PeerHashKV(0)
	if err != nil {
		return err
	}
	if id, why, found := periodicVerdict(node.MemberID(), h, h2, peers); found {
		log.Warn(why, "member-id", memberHex(id), "leader-revision", h2.GetHeader().GetRevision(),
			"hash-revision", h.HashRevision, "compact-revision", h.CompactRevision, "hash", h.Hash)
		raiseCorrupt(ctx, node, id, log)
	}
	log.Info("finished peer corruption check", "number-of-peers-checked", len(peers))
	return nil
}

// periodicVerdict is the decision of etcd's PeriodicCheck: given the
// leader's hash h before it asked its peers and h2 after, the member to
// raise the CORRUPT alarm for (the first found), and why.
func periodicVerdict(self uint64, h, h2 *pb.HashKVResponse, peers []peerHash) (id uint64, why string, found bool) {
	if h2.Hash != h.Hash && h2.HashRevision == h.HashRevision && h2.CompactRevision == h.CompactRevision {
		return self, "found hash mismatch", true
	}
	for _, p := range peers {
		switch {
		case p.resp.GetHeader().GetRevision() > h2.GetHeader().GetRevision():
			return p.id, "revision from follower must be less than or equal to leader's", true
		case p.resp.CompactRevision > h2.CompactRevision:
			return p.id, "compact revision from follower must be less than or equal to leader's", true
		case p.resp.CompactRevision == h.CompactRevision && p.resp.Hash != h.Hash:
			return p.id, "same compact revision then hashes must match", true
		}
	}
	return 0, "", false
}

// initialCheck is etcd's InitialCorruptCheck gate: before a
// restarted member serves, it compares its HashKV with every other
// member's at its revision and refuses to start on a mismatch at the same
// compaction.
func (c *corruptionChecks) initialCheck(ctx context.Context, node *consensus.Node) error {
	log := c.log
	h, err := node.PeerHashKV(0)
	if err != nil {
		return err
	}
	log.Info("starting initial corruption check", "local-member-id", memberHex(node.MemberID()), "revision", h.HashRevision)
	mismatch := 0
	clients := c.newPeerClients()
	defer clients.close()
	for _, p := range c.askPeerHashes(ctx, node, clients, h.HashRevision, peerHashTimeout) {
		switch {
		case p.resp.Hash == h.Hash:
		case p.resp.CompactRevision == h.CompactRevision:
			log.Warn("found different hash values from remote peer", "local-member-id", memberHex(node.MemberID()),
				"local-member-revision", h.HashRevision, "local-member-hash", h.Hash,
				"remote-peer-id", memberHex(p.id), "remote-peer-hash", p.resp.Hash)
			mismatch++
		default:
			log.Warn("found different compact revision values from remote peer", "local-member-id", memberHex(node.MemberID()),
				"local-member-compact-revision", h.CompactRevision, "remote-peer-id", memberHex(p.id), "remote-peer-compact-revision", p.resp.CompactRevision)
		}
	}
	if mismatch > 0 {
		return fmt.Errorf("%s found data inconsistency with peers", memberHex(node.MemberID()))
	}
	log.Info("initial corruption checking passed; no corruption", "local-member-id", memberHex(node.MemberID()))
	return nil
}

// askPeerHashes asks every other member, at the same time, for its HashKV
// at rev over its peer URLs (the first that answers) through clients;
// members that do not answer within timeout are left out.
func (c *corruptionChecks) askPeerHashes(ctx context.Context, node *consensus.Node, clients *peerClients, rev int64, timeout time.Duration) []peerHash {
	members := node.Membership().Members
	clients.retain(members)
	answers := make([]*pb.HashKVResponse, len(members))
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var g errgroup.Group
	for i, m := range members {
		if m.GetID() == node.MemberID() {
			continue
		}
		g.Go(func() error {
			for _, u := range m.GetPeerURLs() {
				ep, err := clients.get(u)
				if err != nil {
					continue
				}
				resp, err := ep.HashKV(ctx, rev)
				if err == nil {
					answers[i] = resp
					return nil
				}
				c.log.Warn("failed hash kv request", "remote-peer-id", memberHex(m.GetID()), "requested-revision", rev, "remote-peer-endpoint", u, "error", err)
			}
			return nil
		})
	}
	_ = g.Wait()
	var out []peerHash
	for i, a := range answers {
		if a != nil {
			out = append(out, peerHash{id: members[i].GetID(), resp: a})
		}
	}
	return out
}

// peerClients are clients of the other members' peer URLs, kept by one
// check loop from check to check so that each check does not dial every
// member again. Safe for concurrent use.
type peerClients struct {
	tls *tls.Config
	mu  sync.Mutex
	eps map[string]*remote.Endpoint // by peer URL; nil once closed
}

func (c *corruptionChecks) newPeerClients() *peerClients {
	return &peerClients{tls: c.peerTLS, eps: map[string]*remote.Endpoint{}}
}

// get returns the client of peer URL u, dialing it the first time.
func (p *peerClients) get(u string) (*remote.Endpoint, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.eps == nil {
		return nil, consensus.ErrStopped
	}
	if ep, ok := p.eps[u]; ok {
		return ep, nil
	}
	ep, err := remote.Dial(u, remote.WithTLS(p.tls))
	if err != nil {
		return nil, err
	}
	p.eps[u] = ep
	return ep, nil
}

// retain closes the clients of URLs that none of members has any more.
func (p *peerClients) retain(members []*pb.Member) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for u, ep := range p.eps {
		if !slices.ContainsFunc(members, func(m *pb.Member) bool { return slices.Contains(m.GetPeerURLs(), u) }) {
			_ = ep.Close()
			delete(p.eps, u)
		}
	}
}

// close closes every client; later gets fail. Idempotent.
func (p *peerClients) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ep := range p.eps {
		_ = ep.Close()
	}
	p.eps = nil
}

// memberHex is a member ID as etcd logs it.
func memberHex(id uint64) string { return strconv.FormatUint(id, 16) }

// checkCompactionHashes is one round of etcd's CompactHashCheck: the
// leader takes the hashes its latest compactions stored, newest first and
// newer than the last it checked, and asks every other member for its
// hash at the same revision. A revision at which the members that
// compacted alike all agree, and all answered, ends the round. At one
// where they differ, the members outside the majority get the CORRUPT
// alarm; with no majority, the alarm goes to member 0 (the whole cluster),
// as in etcd.
// It returns the newest revision checked on every member.
func (c *corruptionChecks) checkCompactionHashes(ctx context.Context, node *consensus.Node, clients *peerClients, latestChecked int64) int64 {
	log := c.log
	timeout := min(c.cfg.CompactHashCheckTime, peerHashTimeout)
	hashes := node.CompactionHashes()
	checked := 0
	for _, h := range hashes {
		if h.Revision <= latestChecked {
			break
		}
		checked++
		others := len(node.Membership().Members) - 1
		if others == 0 {
			break
		}
		peers := c.askPeerHashes(ctx, node, clients, h.Revision, timeout)
		if len(peers) == 0 {
			continue
		}
		v := compactionVerdict(node.MemberID(), h, peers, others)
		for _, id := range v.skipped {
			log.Warn("Skipped peer's hash", "peer-id", memberHex(id), "revision", h.Revision,
				"reason", "the peer's CompactRevision doesn't match leader's CompactRevision", "compact-revision", h.CompactRevision)
		}
		if v.consistent {
			if v.checked < others {
				log.Warn("skipped revision in compaction hash check; was not able to check all peers",
					"number-of-peers-checked", v.checked, "number-of-peers", others, "revision", h.Revision)
				continue
			}
			log.Info("successfully checked hash on whole cluster", "number-of-peers-checked", v.checked, "revision", h.Revision, "compactRevision", h.CompactRevision)
			log.Info("finished compaction hash check", "number-of-hashes-checked", checked)
			return max(latestChecked, h.Revision)
		}
		log.Error("Detected compaction hash mismatch", "revision", h.Revision, "compact-revision", h.CompactRevision,
			"leader-hash", h.Hash, "corrupt-member-ids", fmt.Sprintf("%x", v.corrupt), "quorum-exist", v.majority)
		for _, id := range v.corrupt {
			raiseCorrupt(ctx, node, id, log)
		}
		return latestChecked
	}
	log.Info("finished compaction hash check", "number-of-hashes-checked", checked)
	return latestChecked
}

// hashVerdict is what one revision of the compaction hash check found.
type hashVerdict struct {
	skipped    []uint64 // peers at another compact revision
	checked    int      // peers compared
	consistent bool     // every compared hash is the leader's
	majority   bool     // with a mismatch: a majority of members agree
	corrupt    []uint64 // the members to raise CORRUPT for (0: the whole cluster)
}

// compactionVerdict is the decision of etcd's checkPeerHashes for the
// leader's stored hash h, the peers' answers and the number of other
// members.
func compactionVerdict(self uint64, h storage.CompactionHash, peers []peerHash, others int) hashVerdict {
	var v hashVerdict
	byHash := map[uint32][]uint64{h.Hash: {self}}
	for _, p := range peers {
		if p.resp.CompactRevision != h.CompactRevision {
			v.skipped = append(v.skipped, p.id)
			continue
		}
		v.checked++
		byHash[p.resp.Hash] = append(byHash[p.resp.Hash], p.id)
	}
	if len(byHash) == 1 {
		v.consistent = true
		return v
	}
	quorum := (others+1)/2 + 1
	for hash, ids := range byHash {
		if len(ids) >= quorum {
			v.majority = true
			delete(byHash, hash)
			break
		}
	}
	if !v.majority {
		v.corrupt = []uint64{0}
		return v
	}
	for _, ids := range byHash {
		v.corrupt = append(v.corrupt, ids...)
	}
	slices.Sort(v.corrupt)
	return v
}

// raiseCorrupt raises the CORRUPT alarm for id, logging a failure.
func raiseCorrupt(ctx context.Context, node *consensus.Node, id uint64, log *slog.Logger) {
	if err := node.RaiseCorruptAlarm(ctx, id); err != nil {
		log.Warn("raising the CORRUPT alarm failed", "member-id", memberHex(id), "error", err)
	}
}
