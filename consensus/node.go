// Package consensus replicates concord's state machine with raft
// (go.etcd.io/raft/v3) and serves etcd's KV, Lease, Maintenance and Cluster
// operations on top of it.
//
// One goroutine (the raft loop) owns the raft.RawNode, the raft log and the
// apply step. For every raft Ready it opens ONE storage.Batch, appends the new
// entries and hard state to it, applies the newly committed entries into the
// same batch (including the applied index), commits it (fsync when raft
// requires it) and only then answers waiting proposals, releases reads, sends
// messages and calls Advance. Invariants that follow:
//
//   - A crash at any point leaves the raft log, hard state, state machine and
//     applied index mutually consistent; a restart resumes raft at the
//     persisted applied index and never applies an entry twice.
//   - A write is acknowledged only after its entry is committed, fsynced and
//     applied; revisions are assigned at apply, so they are contiguous.
//   - Linearizable reads are served after a ReadIndex round confirmed the
//     commit index and the local applied index reached it; concurrent reads
//     share rounds. Serializable reads go to the store directly.
//
// Lease expiries are fenced (leaseauth.go): the replicated lease authority
// record {holder, epoch} changes only through raft, and an expiry revoke is
// applied only if it carries the current epoch, checked against the state
// the apply step itself has reached (so a takeover earlier in the same batch
// counts).
//
// Proposals from concurrent callers queue on a channel; everything that
// arrives while a batch is being fsynced goes into the next Ready, so commits
// are grouped without extra goroutines.
//
// Clusters: every member of --initial-cluster is a voter from the start
// (the bootstrap ConfState lists them all, identically on every member, with
// etcd's member and cluster IDs). Messages travel through a Transport
// (consensus/peer on the network, MemNetwork in tests): received ones are
// stepped on the raft loop, and the Ready's messages are handed to the
// transport only after its batch is durable. Followers forward proposals
// and ReadIndex requests to the leader (raft's MsgProp/MsgReadIndex), so
// writes and linearizable reads work through any member; the proposer's
// waiter is answered when the entry is applied locally. A follower behind
// the leader's truncated log receives a store snapshot (snapshot.go). Each
// member publishes its name and client URLs through raft (membership.go), so
// the replicated member table, and MemberList, show every member.
//
// Membership changes (reconfig.go) are raft conf changes carrying the member
// record, validated and applied to the member table at apply, as etcd does:
// members and learners are added, promoted, updated and removed at runtime;
// a member joining with ClusterState "existing" learns the cluster from the
// others and catches up by snapshot; a removed member stops (Done, Err).
// With Config.ForceNewCluster a member restarting on its data becomes the
// only member of its cluster (etcd's --force-new-cluster,
// forcenewcluster.go).
// Learners serve serializable and linearizable reads and Status; everything
// else answers ErrNotSupportedForLearner.
package consensus

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/storage"
)

const (
	// maxGapBetweenApplyAndCommitIndex is etcd's limit on how far apply may
	// lag behind commit before new proposals are refused.
	maxGapBetweenApplyAndCommitIndex = 5000
	// readIndexRetry is how long a ReadIndex round waits before re-sending.
	readIndexRetry = 500 * time.Millisecond
	// proposalQueue bounds proposals waiting for the loop.
	proposalQueue = 1024
	// maxSizePerMsg and maxInflightMsgs are etcd's raft settings.
	maxSizePerMsg   = 1 << 20
	maxInflightMsgs = 4096 / 8
	// maxUncommittedEntriesSize is etcd's raft setting.
	maxUncommittedEntriesSize = 1 << 30
	// sizeCacheTTL bounds how stale the store size used for quota checks may
	// be; pebble's metrics are too costly to read per request (etcd's backend
	// size is likewise refreshed per backend commit, every 100ms).
	sizeCacheTTL = 100 * time.Millisecond
)

// sizeCache serves the store size for quota checks, refreshing it at most
// once per ttl.
type sizeCache struct {
	fn  func() int64
	ttl time.Duration

	mu sync.Mutex
	v  atomic.Int64
	at atomic.Int64 // unix nanos of the last refresh; 0 = never
}

func (c *sizeCache) get() int64 {
	if at := c.at.Load(); at != 0 && time.Since(time.Unix(0, at)) < c.ttl {
		return c.v.Load()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if at := c.at.Load(); at == 0 || time.Since(time.Unix(0, at)) >= c.ttl {
		c.v.Store(c.fn())
		c.at.Store(time.Now().UnixNano())
	}
	return c.v.Load()
}

type proposal struct {
	id   uint64
	data []byte
	// cc, when set, is a membership change proposed instead of data.
	cc *raftpb.ConfChange
	// internal proposals (the loop's own NOSPACE alarm) have no waiter and
	// must not be dropped as abandoned.
	internal bool
}

// readNotifier is shared by every linearizable read of one ReadIndex round.
type readNotifier struct {
	c   chan struct{}
	err error
}

func newReadNotifier() *readNotifier { return &readNotifier{c: make(chan struct{})} }

func (r *readNotifier) notify(err error) {
	r.err = err
	close(r.c)
}

type readRound struct {
	nr       *readNotifier
	ids      []uint64
	started  time.Time
	lastSent time.Time
}

type appliedWait struct {
	index uint64
	nr    *readNotifier
}

type alarmKey struct {
	member uint64
	alarm  pb.AlarmType
}

// Node is one consensus member.
type Node struct {
	cfg       Config
	lg        *slog.Logger
	store     *storage.Store
	transport Transport

	memberID, clusterID uint64
	// members is the replicated member table as of the applied index
	// (owned by the raft loop); membersPub is its published copy.
	members    []member
	membersPub atomic.Pointer[[]member]
	// removed is the replicated set of removed member IDs (owned by the
	// raft loop; removedPub is its published copy), rejectedCC the indexes
	// of conf changes apply rejected (reconfig.go).
	removed    map[uint64]bool
	removedPub atomic.Pointer[map[uint64]bool]
	rejectedCC []uint64

	reqTimeout  time.Duration
	quota       int64
	minLeaseTTL int64
	sizeFn      func() int64

	ids  *idGenerator
	wait *waitRegistry

	propC   chan proposal
	readC   chan struct{}
	stopC   chan struct{}
	execC   chan func()   // functions to run on the raft loop (tests)
	done    chan struct{} // closed when the raft loop has exited
	leaderC chan struct{} // closed the first time a leader is known
	// From the transport: received message batches, reports for raft
	// (unreachable peers, snapshot outcomes) and received snapshots.
	recvC   chan []*raftpb.Message
	reportC chan func()
	snapC   chan *incomingSnap

	// Published by the raft loop for readers on other goroutines.
	leader, term, committed, applied atomic.Uint64
	noSpace                          atomic.Bool
	leaseAuthPub                     atomic.Pointer[LeaseAuthority]
	authPub                          atomic.Pointer[auth.State]
	// tokens issues and verifies auth tokens (--auth-token).
	tokens auth.TokenProvider
	// Read statistics: ReadIndex rounds started and reads currently waiting.
	readRounds, readsWaiting atomic.Int64
	// snapshotsSent counts store snapshots handed to the transport,
	// snapshotsInstalled the ones received and installed.
	snapshotsSent, snapshotsInstalled atomic.Int64
	// leaderChanges counts changes to a new known leader (etcd's
	// etcd_server_leader_changes_seen_total).
	leaderChanges atomic.Uint64
	// proposalsPending counts proposals handed to raft and not yet answered,
	// proposalsFailed those that failed or timed out (etcd's
	// etcd_server_proposals_pending and etcd_server_proposals_failed_total).
	proposalsPending atomic.Int64
	proposalsFailed  atomic.Uint64
	// slowApplies counts applies of a batch of entries that took longer
	// than --warning-apply-duration (etcd_server_slow_apply_total; etcd
	// counts each slow request, concord applies a Ready's entries at once).
	slowApplies atomic.Uint64
	// walFsync times the Ready commits that fsync (the raft log and the
	// store share Pebble's WAL); backendCommit times every Ready commit.
	walFsync, backendCommit *DurationHistogram
	// overlappedReadys counts Readys whose committed entries were applied
	// while their new entries were being fsynced (persistWhileApplying).
	overlappedReadys atomic.Int64

	readMu   sync.Mutex
	readNext *readNotifier

	// restarted: the data dir held this member's raft state at Start
	// (set before Start returns, then read only).
	restarted bool

	// Owned by the raft loop.
	rn             *raft.RawNode
	ms             *raft.MemoryStorage
	log            raftLog
	confState      *raftpb.ConfState
	snapIndex      uint64
	pendingProps   []proposal
	readPending    bool
	round          *readRound
	readWaiting    []appliedWait
	alarms         map[alarmKey]bool
	leaseAuth      LeaseAuthority
	auth           *auth.State
	alarmReqID     uint64
	noSpaceWaiters []uint64
	leaderSeen     bool
	lastBeat       time.Time
	// raftApplied is the last index raft handed to apply (or restored from a
	// snapshot). It equals the store's applied index except right after a
	// snapshot install, when the store is ahead (snapshot.go).
	raftApplied uint64
	// tokenKeyTerm is the term in which this member, as leader, last
	// proposed a token key (proposeTokenKey).
	tokenKeyTerm uint64

	pendingSnap *incomingSnap
	peers       map[uint64]bool // the transport's peers
	// lastHeard is when each peer's last message arrived (strict
	// reconfiguration checks); removedAt when this member learned it was
	// removed (zero while it is not); confChanged that the current Ready
	// applied a conf change (a raft snapshot record that includes it is
	// taken, so a member it added can be sent a snapshot).
	lastHeard   map[uint64]time.Time
	removedAt   time.Time
	confChanged bool
	// campaignAlone: the log was rewritten by ForceNewCluster; once its
	// conf changes are applied this member is the lone voter and campaigns
	// at once rather than after an election timeout.
	campaignAlone bool
	// tickAdvanceUntil is when the initial election tick advance gives up
	// waiting for active peers (etcd: rafthttp's ConnReadTimeout); zero
	// once it happened or cannot. advancedTicks is how many ticks it
	// fast-forwarded.
	tickAdvanceUntil time.Time
	advancedTicks    int
	loopErr          error
	// orphans are proposals in flight at the last leader change, with the
	// time by which they must have been applied (watchOrphanedProposals).
	orphans map[uint64]time.Time
	// busCtx is cancelled by Close so a publish stuck on a dead bus, and the
	// background work of the node (publishing its attributes), stop.
	busCtx    context.Context
	busCancel context.CancelFunc
	bg        sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Start opens the store in cfg.DataDir, bootstraps or restores raft, starts
// the raft loop and, for a single-voter cluster, returns once this member is
// leader (or ctx is done).
func Start(ctx context.Context, cfg Config) (*Node, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	store, err := storage.Open(cfg.DataDir, storage.Options{FS: storageFS(cfg), Logger: cfg.Logger, WALDir: cfg.WALDir})
	if err != nil {
		return nil, fmt.Errorf("consensus: open storage: %w", err)
	}
	n, err := newNode(ctx, cfg, store)
	if err != nil {
		_ = store.Close()
		if cfg.Transport != nil {
			cfg.Transport.Stop()
		}
		return nil, err
	}
	if err := n.transport.Start(LocalMember{ID: n.memberID, ClusterID: n.clusterID}, n); err != nil {
		n.transport.Stop()
		_ = store.Close()
		return nil, fmt.Errorf("consensus: start transport: %w", err)
	}
	n.syncPeers()
	go n.run()
	n.bg.Add(1)
	go n.publishAttributes()

	select {
	case <-n.leaderC:
	case <-n.done:
		err := n.Close()
		return nil, errors.Join(ErrStopped, n.loopErr, err)
	case <-ctx.Done():
		return nil, errors.Join(ctx.Err(), n.Close())
	}
	n.lg.Info("consensus member ready",
		"name", cfg.Name, "member-id", fmt.Sprintf("%x", n.memberID), "cluster-id", fmt.Sprintf("%x", n.clusterID),
		"leader", fmt.Sprintf("%x", n.leader.Load()), "term", n.term.Load(), "applied-index", n.applied.Load())
	return n, nil
}

func newNode(ctx context.Context, cfg Config, store *storage.Store) (*Node, error) {
	n := &Node{
		cfg:           cfg,
		lg:            cfg.Logger,
		store:         store,
		transport:     cfg.Transport,
		reqTimeout:    5*time.Second + 2*cfg.ElectionTimeout,
		quota:         cfg.QuotaBackendBytes,
		minLeaseTTL:   minLeaseTTL(cfg),
		wait:          newWaitRegistry(),
		walFsync:      NewDurationHistogram(diskBuckets),
		backendCommit: NewDurationHistogram(diskBuckets),
		propC:         make(chan proposal, proposalQueue),
		readC:         make(chan struct{}, 1),
		stopC:         make(chan struct{}),
		execC:         make(chan func()),
		done:          make(chan struct{}),
		leaderC:       make(chan struct{}),
		recvC:         make(chan []*raftpb.Message, recvQueue),
		reportC:       make(chan func(), 1024),
		snapC:         make(chan *incomingSnap),
		readNext:      newReadNotifier(),
		alarms:        map[alarmKey]bool{},
		removed:       map[uint64]bool{},
		lastHeard:     map[uint64]time.Time{},
	}
	if n.transport == nil {
		n.transport = loopbackTransport{}
	}
	n.busCtx, n.busCancel = context.WithCancel(context.Background())
	if cfg.reqTimeout > 0 {
		n.reqTimeout = cfg.reqTimeout
	}
	sc := &sizeCache{fn: func() int64 { total, _ := store.Size(); return total }, ttl: sizeCacheTTL}
	n.sizeFn = sc.get
	if cfg.sizeFn != nil {
		n.sizeFn = cfg.sizeFn
	}

	st, err := loadRaftState(store.DB())
	if err != nil {
		return nil, err
	}
	n.restarted = st != nil
	if st == nil {
		if cfg.ClusterState == ClusterStateExisting {
			st, err = n.join(ctx)
		} else {
			st, err = n.bootstrap(ctx)
		}
		if err != nil {
			return nil, err
		}
	} else if err := n.loadMembership(); err != nil {
		return nil, err
	} else if cfg.ForceNewCluster {
		if err := n.forceNewCluster(st); err != nil {
			return nil, err
		}
	}

	n.ms, err = st.memoryStorage()
	if err != nil {
		return nil, err
	}
	n.log = raftLog{first: st.ents[0].GetIndex(), last: st.ents[len(st.ents)-1].GetIndex()}
	n.confState = st.cs
	n.snapIndex = st.snap.GetIndex()
	applied, _ := store.Applied()
	raftApplied, err := loadRaftApplied(store.DB(), applied)
	if err != nil {
		return nil, err
	}
	if raftApplied < n.log.first || raftApplied > st.hs.GetCommit() || raftApplied > applied {
		return nil, fmt.Errorf("consensus: raft applied index %d outside [%d, %d] (log base, commit) or above the store's %d",
			raftApplied, n.log.first, st.hs.GetCommit(), applied)
	}
	n.raftApplied = raftApplied
	n.applied.Store(applied)
	n.committed.Store(st.hs.GetCommit())
	n.term.Store(st.hs.GetTerm())
	for _, a := range store.Alarms() {
		n.alarms[alarmKey{a.MemberID, a.Alarm}] = true
	}
	n.publishAlarms()
	if n.leaseAuth, err = loadLeaseAuthority(store); err != nil {
		return nil, err
	}
	la := n.leaseAuth
	n.leaseAuthPub.Store(&la)
	if n.auth, err = loadAuth(store); err != nil {
		return nil, err
	}
	if n.auth.Enabled() && cfg.RefuseAuthEnable {
		// A restored backup can bring auth along where it cannot be
		// enabled; say so rather than let users trust it.
		n.lg.Warn("auth is enabled in the stored state, but in this topology the watch and lease processes do not check permissions")
	}
	if n.tokens, err = auth.ParseTokenOptions(cfg.AuthToken, cfg.AuthTokenTTL); err != nil {
		return nil, fmt.Errorf("consensus: --auth-token: %w", err)
	}
	n.authPub.Store(n.auth)
	n.ids = newIDGenerator(n.memberID, time.Now())

	n.rn, err = raft.NewRawNode(&raft.Config{
		ID:                        n.memberID,
		ElectionTick:              n.electionTicks(),
		HeartbeatTick:             1,
		Storage:                   n.ms,
		Applied:                   raftApplied,
		MaxSizePerMsg:             maxSizePerMsg,
		MaxInflightMsgs:           maxInflightMsgs,
		MaxUncommittedEntriesSize: maxUncommittedEntriesSize,
		CheckQuorum:               true,
		PreVote:                   !cfg.DisablePreVote,
		// A leader that applied its own removal hands over at once.
		StepDownOnRemoval: true,
		Logger:            raftLogger{lg: n.lg},
	})
	if err != nil {
		return nil, fmt.Errorf("consensus: create raft node: %w", err)
	}
	if cfg.UnsafeNoFsync {
		n.lg.Warn("unsafe-no-fsync: the store is never fsynced; a crash of the machine can lose acknowledged writes")
	}
	n.lg.Info("consensus starting",
		"name", cfg.Name, "member-id", fmt.Sprintf("%x", n.memberID), "cluster-id", fmt.Sprintf("%x", n.clusterID),
		"term", st.hs.GetTerm(), "commit-index", st.hs.GetCommit(), "applied-index", applied,
		"log-first", n.log.first, "log-last", n.log.last, "snapshot-index", n.snapIndex)
	return n, nil
}

// minLeaseTTL is etcd's: 1.5 election timeouts, rounded up to seconds.
func minLeaseTTL(cfg Config) int64 {
	ticks := int64(cfg.ElectionTimeout / cfg.HeartbeatInterval)
	minTTL := time.Duration(3*ticks/2) * cfg.HeartbeatInterval
	return int64(math.Ceil(minTTL.Seconds()))
}

// Close stops the raft loop, fails pending requests with ErrStopped and
// closes the store. It is idempotent.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.busCancel()
		close(n.stopC)
		<-n.done
		n.transport.Stop()
		n.bg.Wait()
		n.closeErr = n.store.Close()
		n.lg.Info("consensus stopped", "member-id", fmt.Sprintf("%x", n.memberID))
	})
	return n.closeErr
}

// Done is closed when the member stopped: after Close, or on its own when
// its raft loop failed or it was removed from the cluster (Err says why).
func (n *Node) Done() <-chan struct{} { return n.done }

// Err is why the member stopped on its own (wrapping ErrMemberRemoved when
// it was removed from the cluster); nil while it runs or after Close.
func (n *Node) Err() error {
	select {
	case <-n.done:
		return n.loopErr
	default:
		return nil
	}
}

// Leader returns the current leader's member ID, 0 while there is none.
func (n *Node) Leader() uint64 { return n.leader.Load() }

// Store returns the underlying store for local (serializable) reads.
func (n *Node) Store() *storage.Store { return n.store }

// MemberID and ClusterID return this member's etcd-compatible IDs.
func (n *Node) MemberID() uint64  { return n.memberID }
func (n *Node) ClusterID() uint64 { return n.clusterID }

func (n *Node) stopped() bool {
	select {
	case <-n.stopC:
		return true
	case <-n.done:
		return true
	default:
		return false
	}
}

// run is the raft loop. It owns the RawNode and everything marked "owned by
// the raft loop".
func (n *Node) run() {
	ticker := time.NewTicker(n.cfg.HeartbeatInterval)
	defer ticker.Stop()
	err := n.loop(ticker.C)
	stopErr := ErrStopped
	if err != nil {
		n.lg.Error("raft loop failed; member stopped", "member-id", fmt.Sprintf("%x", n.memberID), "error", err)
		stopErr = fmt.Errorf("%w: %w", ErrStopped, err)
		n.loopErr = err
	}
	n.wait.failAll(stopErr)
	n.failReads(stopErr)
	close(n.done)
}

func (n *Node) loop(tick <-chan time.Time) error {
	if err := n.campaignIfAlone(); err != nil {
		return err
	}
	if members := len(n.confState.GetVoters()) + len(n.confState.GetLearners()); members > 1 && n.electionTicks() > 2 && !n.cfg.DisableInitialElectionTickAdvance {
		n.tickAdvanceUntil = time.Now().Add(initialTickAdvanceWait)
	}
	for {
		if err := n.process(); err != nil {
			return err
		}
		if n.campaignAlone {
			// The first Readys applied the forced removals.
			n.campaignAlone = false
			if err := n.campaignIfAlone(); err != nil {
				return err
			}
			continue
		}
		select {
		case now := <-tick:
			if err := n.checkRemoved(now); err != nil {
				return err
			}
			n.maybeBeat(now)
			n.maybeAdvanceTicks(now)
			n.rn.Tick()
			n.tickReads(now)
			n.retryPending()
			n.failOrphanedProposals(now)
		case p := <-n.propC:
			n.proposeOne(p)
		case <-n.readC:
			n.readPending = true
		case msgs := <-n.recvC:
			n.stepMessages(msgs)
		case f := <-n.reportC:
			f()
		case in := <-n.snapC:
			if err := n.stepSnapshot(in); err != nil {
				return err
			}
		case f := <-n.execC:
			f()
		case <-n.stopC:
			return nil
		}
	}
}

// initialTickAdvanceWait is how long after its start a member of several
// waits for active peers before its first election, to fast-forward its
// election clock (etcd's rafthttp.ConnReadTimeout).
const initialTickAdvanceWait = 5 * time.Second

// maybeAdvanceTicks is etcd's initial election tick advance (adjustTicks)
// for a member of several: once more than one peer is active and no leader
// is known yet, raft's election clock is moved on by the election timeout
// less two ticks, so the first election comes about an election timeout
// sooner, while the two ticks left give a leader's heartbeat time to
// arrive. Raft loop only.
func (n *Node) maybeAdvanceTicks(now time.Time) {
	if n.tickAdvanceUntil.IsZero() {
		return
	}
	if now.After(n.tickAdvanceUntil) || n.leader.Load() != 0 {
		n.tickAdvanceUntil = time.Time{}
		return
	}
	ps, ok := n.transport.(PeerStatser)
	if !ok {
		n.tickAdvanceUntil = time.Time{}
		return
	}
	active := 0
	for _, p := range ps.PeerStats() {
		if p.Active || p.Reachable {
			active++
		}
	}
	if active <= 1 {
		return
	}
	n.tickAdvanceUntil = time.Time{}
	n.advancedTicks = n.electionTicks() - 2
	for range n.advancedTicks {
		n.rn.Tick()
	}
	n.lg.Info("initialized peer connections; fast-forwarded election ticks", "local-member-id", fmt.Sprintf("%x", n.memberID),
		"forward-ticks", n.advancedTicks, "forward-duration", time.Duration(n.advancedTicks)*n.cfg.HeartbeatInterval,
		"election-ticks", n.electionTicks(), "election-timeout", n.cfg.ElectionTimeout, "active-remote-members", active)
}

func (n *Node) electionTicks() int { return int(n.cfg.ElectionTimeout / n.cfg.HeartbeatInterval) }

// campaignIfAlone starts an election right away when this member is the
// only voter: a lone voter needs no election timeout.
func (n *Node) campaignIfAlone() error {
	if vs := n.confState.GetVoters(); len(vs) == 1 && vs[0] == n.memberID && len(n.confState.GetLearners()) == 0 &&
		n.rn.BasicStatus().RaftState != raft.StateLeader {
		if err := n.rn.Campaign(); err != nil {
			return fmt.Errorf("campaign: %w", err)
		}
	}
	return nil
}

// process handles Readys until raft is quiescent, feeding in proposals and
// read requests that arrived meanwhile so they share the next batch.
func (n *Node) process() error {
	for {
		select {
		case <-n.stopC:
			return nil
		default:
		}
		n.drainInputs()
		n.maybeStartRead()
		if !n.rn.HasReady() {
			return nil
		}
		if err := n.handleReady(); err != nil {
			return err
		}
	}
}

func (n *Node) drainInputs() {
	for range proposalQueue {
		select {
		case p := <-n.propC:
			n.proposeOne(p)
		case <-n.readC:
			n.readPending = true
		case msgs := <-n.recvC:
			n.stepMessages(msgs)
		case f := <-n.reportC:
			f()
		default:
			return
		}
	}
}

func (n *Node) proposeOne(p proposal) {
	if n.leader.Load() == 0 {
		n.pendingProps = append(n.pendingProps, p)
		return
	}
	var err error
	if p.cc != nil {
		err = n.rn.ProposeConfChange(p.cc)
	} else {
		err = n.rn.Propose(p.data)
	}
	if err != nil {
		if errors.Is(err, raft.ErrProposalDropped) {
			// Leader transfer or similar: retry on the next tick.
			n.pendingProps = append(n.pendingProps, p)
			return
		}
		n.wait.trigger(p.id, result{err: fmt.Errorf("consensus: propose: %w", err), failed: true})
	}
}

// retryPending re-proposes proposals queued while there was no leader,
// skipping those whose caller gave up.
func (n *Node) retryPending() {
	if len(n.pendingProps) == 0 || n.leader.Load() == 0 {
		return
	}
	ps := n.pendingProps
	n.pendingProps = nil
	for _, p := range ps {
		if p.internal || n.wait.has(p.id) {
			n.proposeOne(p)
		}
	}
}

// handleReady persists, applies and acknowledges one Ready.
func (n *Node) handleReady() error {
	rd := n.rn.Ready()
	leaderChanged := rd.SoftState != nil && n.onSoftState(rd.SoftState)

	var out applyOutput
	delivered := false
	switch {
	case !raft.IsEmptySnap(rd.Snapshot):
		// A leader sent this follower a snapshot: store data, raft state,
		// hard state and entries in one fsynced batch.
		if err := n.installSnapshot(rd); err != nil {
			return err
		}
	case n.appliesOnlyDurableEntries(rd):
		if err := n.persistWhileApplying(rd, &out); err != nil {
			return err
		}
		delivered = true
	case len(rd.Entries) > 0 || rd.HardState != nil || len(rd.CommittedEntries) > 0:
		if err := n.persistAndApply(rd, &out); err != nil {
			return err
		}
	}
	// The batch is durable and visible: update raft's view and publish.
	if err := n.ms.Append(rd.Entries); err != nil {
		return fmt.Errorf("raft memory storage append: %w", err)
	}
	if rd.HardState != nil {
		if err := n.ms.SetHardState(rd.HardState); err != nil {
			return err
		}
		n.term.Store(rd.HardState.GetTerm())
		n.committed.Store(rd.HardState.GetCommit())
	}
	if !delivered {
		n.markApplied(rd, &out)
	}
	n.sendMessages(rd.Messages)
	for _, rs := range rd.ReadStates {
		n.onReadState(rs)
	}
	n.releaseReads()
	if !delivered {
		n.publish(out.events)
		n.deliver(&out)
	}
	n.rn.Advance(rd)

	if leaderChanged {
		n.onLeaderChange()
	}
	n.proposeNoSpaceAlarm()
	n.proposeTokenKey()
	if err := n.maybeTruncate(); err != nil {
		return err
	}
	return n.trimMemoryLog()
}

// markApplied publishes what applying the Ready's committed entries
// changed: the applied index, alarms, the lease authority and members.
func (n *Node) markApplied(rd raft.Ready, out *applyOutput) {
	if k := len(rd.CommittedEntries); k > 0 {
		n.raftApplied = rd.CommittedEntries[k-1].GetIndex()
		if n.raftApplied > n.applied.Load() {
			n.applied.Store(n.raftApplied)
		}
		n.publishAlarms()
	}
	if out.leaseAuth != nil {
		n.leaseAuthPub.Store(out.leaseAuth)
	}
	if out.auth != nil {
		n.authPub.Store(out.auth)
	}
	if out.members != nil {
		n.setMembers(out.members)
	}
}

// appliesOnlyDurableEntries reports whether rd must be fsynced and commits
// only entries that earlier Readys already made durable (every Ready with
// entries is fsynced before the next one, so that is every index up to
// n.log.last before rd's own append). That is the steady state of a busy
// leader: each Ready carries the entries proposed since the last one and
// the entries the last one made durable (raft acknowledges its own append
// only on Advance).
func (n *Node) appliesOnlyDurableEntries(rd raft.Ready) bool {
	k := len(rd.CommittedEntries)
	return rd.MustSync && k > 0 && rd.CommittedEntries[k-1].GetIndex() <= n.log.last
}

// persistWhileApplying handles a Ready for which appliesOnlyDurableEntries
// holds. Its new entries and hard state go into one batch whose fsync is
// started first; while it runs, the committed entries are applied in a
// second, unsynced batch and their callers are answered. Their entries are
// already durable, so waiting for this Ready's fsync would only add a disk
// round trip to their latency. Crash safety:
//   - the applied state never needs its own fsync: a restart re-applies the
//     committed entries above the persisted applied index from the log;
//   - the append batch is ordered before the apply batch in Pebble's WAL,
//     and recovery replays a prefix of the WAL, so an applied index that
//     survives a crash is never above the hard state's commit index that
//     the append batch carries.
//
// It returns once the append batch is durable.
func (n *Node) persistWhileApplying(rd raft.Ready, out *applyOutput) (err error) {
	db := n.store.DB()
	w := db.NewBatch()
	var syncStart time.Time // set once the fsync is under way
	defer func() {
		// The fsync must be over before the batch is released, also when
		// applying failed.
		if werr := w.SyncWait(); werr != nil && err == nil {
			err = fmt.Errorf("commit raft batch: %w", werr)
		} else if !syncStart.IsZero() {
			n.walFsync.Observe(time.Since(syncStart))
		}
		_ = w.Close()
	}()
	if err := n.log.append(w, rd.Entries); err != nil {
		return err
	}
	if rd.HardState != nil {
		if err := setProto(w, keyHardState, rd.HardState); err != nil {
			return err
		}
	}
	syncStart = time.Now()
	if err := db.ApplyNoSyncWait(w, pebble.Sync); err != nil {
		return fmt.Errorf("commit raft batch: %w", err)
	}
	n.overlappedReadys.Add(1)

	b := n.store.NewBatch()
	defer b.Close()
	if err := n.applyTimed(b, rd.CommittedEntries, out); err != nil {
		return err
	}
	commitStart := time.Now()
	if err := b.Commit(false); err != nil {
		return fmt.Errorf("commit apply batch: %w", err)
	}
	n.backendCommit.Observe(time.Since(commitStart))
	out.events = b.Events()
	n.markApplied(rd, out)
	// Publish before answering: the goroutine woken last runs first on
	// this processor, so the waiting handlers answer their clients before
	// the event bus's goroutines run, not after.
	n.publish(out.events)
	n.deliver(out)
	if n.cfg.afterEarlyDeliver != nil {
		n.cfg.afterEarlyDeliver(n)
	}
	return nil
}

// persistAndApply writes the Ready's entries, hard state and the effects of
// its committed entries in one atomic batch.
func (n *Node) persistAndApply(rd raft.Ready, out *applyOutput) error {
	b := n.store.NewBatch()
	defer b.Close()
	w := b.Pebble()
	if err := n.log.append(w, rd.Entries); err != nil {
		return err
	}
	if rd.HardState != nil {
		if err := setProto(w, keyHardState, rd.HardState); err != nil {
			return err
		}
	}
	if len(rd.CommittedEntries) > 0 {
		if err := n.applyTimed(b, rd.CommittedEntries, out); err != nil {
			return err
		}
	}
	start := time.Now()
	if err := b.Commit(rd.MustSync); err != nil {
		return fmt.Errorf("commit raft batch: %w", err)
	}
	took := time.Since(start)
	n.backendCommit.Observe(took)
	if rd.MustSync {
		n.walFsync.Observe(took)
	}
	out.events = b.Events()
	return nil
}

func (n *Node) onSoftState(ss *raft.SoftState) bool {
	prev := n.leader.Swap(ss.Lead)
	if prev == ss.Lead {
		return false
	}
	n.lg.Info("raft leader changed",
		"member-id", fmt.Sprintf("%x", n.memberID), "leader", fmt.Sprintf("%x", ss.Lead),
		"previous-leader", fmt.Sprintf("%x", prev), "state", ss.RaftState.String(), "term", n.rn.BasicStatus().Term)
	if ss.Lead != 0 {
		n.leaderChanges.Add(1)
	}
	if ss.Lead != 0 && !n.leaderSeen {
		n.leaderSeen = true
		close(n.leaderC)
	}
	return true
}

// sendMessages hands a durable Ready's messages to the transport; a MsgSnap
// gets the store to go with it.
func (n *Node) sendMessages(msgs []*raftpb.Message) {
	if len(msgs) == 0 {
		return
	}
	if !slices.ContainsFunc(msgs, func(m *raftpb.Message) bool { return m.GetType() == raftpb.MsgSnap }) {
		n.transport.Send(msgs)
		return
	}
	out := make([]*raftpb.Message, 0, len(msgs))
	for _, m := range msgs {
		if m.GetType() == raftpb.MsgSnap {
			n.sendSnapshot(m)
			continue
		}
		out = append(out, m)
	}
	if len(out) > 0 {
		n.transport.Send(out)
	}
}

func (n *Node) onLeaderChange() {
	// An alarm proposal may have been lost with the old leader; do not keep
	// its waiters hostage (they already carry ErrNoSpace).
	n.alarmReqID = 0
	n.releaseNoSpaceWaiters()
	if n.leader.Load() != 0 {
		n.watchOrphanedProposals(time.Now())
	}
	n.retryPending()
}

// watchOrphanedProposals gives every proposal in flight when a new leader
// took over two election timeouts to be applied (a proposal the new leader
// has commits within a few heartbeats). A proposal forwarded to a
// leader that died, or appended only by a leader that lost its term, is
// never applied; its caller is then answered with a timeout (etcd's
// "request timed out, possibly due to previous leader failure") instead of
// waiting the whole request timeout. As with any timeout the write may
// still be applied later, if the new leader had it.
func (n *Node) watchOrphanedProposals(now time.Time) {
	deadline := now.Add(2 * n.cfg.ElectionTimeout)
	if n.orphans == nil {
		n.orphans = map[uint64]time.Time{}
	}
	for _, id := range n.wait.ids() {
		if _, ok := n.orphans[id]; !ok {
			n.orphans[id] = deadline
		}
	}
}

func (n *Node) failOrphanedProposals(now time.Time) {
	for id, deadline := range n.orphans {
		switch {
		case !n.wait.has(id):
			delete(n.orphans, id) // applied, or its caller gave up
		case now.After(deadline):
			delete(n.orphans, id)
			n.wait.trigger(id, result{err: ErrTimeoutLeaderFail, failed: true})
		}
	}
}

// maybeTruncate records a raft snapshot (metadata only: the state machine is
// the store itself) every SnapshotCount applied entries and drops log entries
// older than SnapshotCatchUpEntries below it. A follower that needs entries
// older than that gets the store instead (snapshot.go).
func (n *Node) maybeTruncate() error {
	applied := n.raftApplied
	force := n.confChanged
	n.confChanged = false
	if applied <= n.snapIndex || (applied-n.snapIndex < n.cfg.SnapshotCount && !force) {
		return nil
	}
	snap, err := n.memorySnapshotAt(applied)
	if err != nil {
		return err
	}
	var compactTo uint64
	if applied > n.cfg.SnapshotCatchUpEntries {
		compactTo = applied - n.cfg.SnapshotCatchUpEntries
	}
	oldFirst := n.log.first
	b := n.store.NewBatch()
	defer b.Close()
	w := b.Pebble()
	if err := setProto(w, keySnapshot, snap.GetMetadata()); err != nil {
		return err
	}
	if err := n.log.truncate(w, compactTo); err != nil {
		return err
	}
	if err := b.Commit(false); err != nil {
		return fmt.Errorf("commit raft log truncation: %w", err)
	}
	// trimMemoryLog may have dropped more from memory than the disk log.
	if memFirst, _ := n.ms.FirstIndex(); compactTo > oldFirst && compactTo >= memFirst {
		if err := n.ms.Compact(compactTo); err != nil {
			return fmt.Errorf("compact raft memory storage to %d: %w", compactTo, err)
		}
	}
	n.snapIndex = applied
	n.lg.Debug("raft snapshot recorded", "snapshot-index", applied, "log-first", n.log.first)
	return nil
}

// memorySnapshotAt returns raft's in-memory snapshot record at index,
// creating it unless trimMemoryLog already did.
func (n *Node) memorySnapshotAt(index uint64) (*raftpb.Snapshot, error) {
	snap, err := n.ms.CreateSnapshot(index, n.confState, nil)
	if errors.Is(err, raft.ErrSnapOutOfDate) {
		if cur, _ := n.ms.Snapshot(); cur.GetMetadata().GetIndex() == index {
			return cur, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create raft snapshot at %d: %w", index, err)
	}
	return snap, nil
}

// memTrimEntries is how many applied entries trimMemoryLog lets gather
// before it drops them, so the copy of the unapplied tail that a compaction
// makes is paid once per batch, not once per Ready.
const memTrimEntries = 64

// trimMemoryLog drops applied entries from raft's in-memory log once every
// other member has them (Match): no member can ask for them again, and a
// member added later starts from a store snapshot either way. It only runs
// on the leader, the one member that knows the others' progress; a
// follower keeps the SnapshotCatchUpEntries that maybeTruncate leaves, in
// case it becomes leader of members that lag. A single-member cluster thus
// keeps no applied entries in memory, where etcd keeps every entry since
// its last raft snapshot and SnapshotCatchUpEntries below it: after
// loading 100,000 keys in txns of 100 that was 28 MiB of heap here too.
// The on-disk log is left to maybeTruncate. Invariant kept: raft's memory
// snapshot is at the compaction index, so a member that needs older
// entries is sent a snapshot it can resume from.
func (n *Node) trimMemoryLog() error {
	if n.leader.Load() != n.memberID {
		return nil
	}
	applied := n.raftApplied
	first, err := n.ms.FirstIndex()
	if err != nil || applied < first-1+memTrimEntries {
		return err
	}
	lagging := false
	n.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if id != n.memberID && pr.Match < applied {
			lagging = true
		}
	})
	if lagging {
		return nil
	}
	if _, err := n.memorySnapshotAt(applied); err != nil {
		return err
	}
	if err := n.ms.Compact(applied); err != nil {
		return fmt.Errorf("trim raft memory storage to %d: %w", applied, err)
	}
	return nil
}

// ---- linearizable reads ----

// Restarted reports whether this member started from its data dir's raft
// state, rather than bootstrapping or joining a cluster (etcd's "member
// initialized").
func (n *Node) Restarted() bool { return n.restarted }

// LinearizableReadNotify returns once the local state machine reflects
// every write committed before the call, without auth checks (for the
// corruption check, as etcd's).
func (n *Node) LinearizableReadNotify(ctx context.Context) error {
	return n.linearizableReadNotify(ctx)
}

// linearizableReadNotify returns once the local state machine reflects every
// write committed before the call (etcd's ReadIndex protocol).
func (n *Node) linearizableReadNotify(ctx context.Context) error {
	if n.stopped() {
		return ErrStopped
	}
	timeout := time.NewTimer(n.reqTimeout)
	defer timeout.Stop()
	n.readMu.Lock()
	nr := n.readNext
	n.readMu.Unlock()
	n.readsWaiting.Add(1)
	defer n.readsWaiting.Add(-1)
	select {
	case n.readC <- struct{}{}:
	default: // a signal is already pending; it covers this read too
	}
	select {
	case <-nr.c:
		return nr.err
	case <-ctx.Done():
		return n.ctxErr(ctx)
	case <-timeout.C:
		return n.ctxErr(ctx)
	case <-n.done:
		return ErrStopped
	}
}

// maybeStartRead starts a ReadIndex round for every read that arrived since
// the last round started. Rounds do not overlap: reads arriving during a
// round wait for the next one, whose index is taken after they arrived.
func (n *Node) maybeStartRead() {
	if !n.readPending || n.round != nil {
		return
	}
	n.readPending = false
	n.readMu.Lock()
	nr := n.readNext
	n.readNext = newReadNotifier()
	n.readMu.Unlock()
	n.readRounds.Add(1)
	now := time.Now()
	n.round = &readRound{nr: nr, started: now}
	n.sendReadIndex(now)
}

func (n *Node) sendReadIndex(now time.Time) {
	id := n.ids.next()
	n.round.ids = append(n.round.ids, id)
	n.round.lastSent = now
	var rctx [8]byte
	binary.BigEndian.PutUint64(rctx[:], id)
	n.rn.ReadIndex(rctx[:])
}

func (n *Node) tickReads(now time.Time) {
	if n.round == nil {
		return
	}
	switch {
	case now.Sub(n.round.started) > n.reqTimeout:
		n.round.nr.notify(ErrTimeout)
		n.round = nil
	case now.Sub(n.round.lastSent) >= readIndexRetry:
		// Dropped (no leader yet) or lost: ask again under a new id; any
		// answer to any id of this round is valid for all its reads.
		n.sendReadIndex(now)
	}
}

func (n *Node) onReadState(rs raft.ReadState) {
	if n.round == nil || len(rs.RequestCtx) != 8 {
		return
	}
	id := binary.BigEndian.Uint64(rs.RequestCtx)
	for _, want := range n.round.ids {
		if id == want {
			n.readWaiting = append(n.readWaiting, appliedWait{index: rs.Index, nr: n.round.nr})
			n.round = nil
			return
		}
	}
}

func (n *Node) releaseReads() {
	if len(n.readWaiting) == 0 {
		return
	}
	applied := n.applied.Load()
	kept := n.readWaiting[:0]
	for _, w := range n.readWaiting {
		if w.index <= applied {
			w.nr.notify(nil)
		} else {
			kept = append(kept, w)
		}
	}
	clear(n.readWaiting[len(kept):])
	n.readWaiting = kept
}

func (n *Node) failReads(err error) {
	if n.round != nil {
		n.round.nr.notify(err)
		n.round = nil
	}
	for _, w := range n.readWaiting {
		w.nr.notify(err)
	}
	n.readWaiting = nil
	n.readMu.Lock()
	n.readNext.notify(err)
	n.readMu.Unlock()
}

// ---- proposals ----

// propose replicates r and returns its apply result.
func (n *Node) propose(ctx context.Context, r *pb.InternalRaftRequest) (proto.Message, error) {
	ai, err := n.proposer(ctx)
	if err != nil {
		return nil, err
	}
	id := n.ids.next()
	r.Header = &pb.RequestHeader{ID: id}
	if ai != nil {
		// Checked at apply against the auth state of that log position,
		// as etcd's authApplierV3 does.
		r.Header.Username, r.Header.AuthRevision = ai.Username, ai.Revision
	}
	data, err := proto.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("consensus: encode request: %w", err)
	}
	if max := n.cfg.MaxRequestBytes; max > 0 && (r.Put != nil || r.DeleteRange != nil || r.Txn != nil) && proposalSize(len(data), id) > max {
		return nil, ErrRequestTooLarge
	}
	return n.proposeData(ctx, id, data)
}

// ChecksRequestSize reports whether writes are size-checked here
// (Config.MaxRequestBytes; gateway.RequestSizeChecker).
func (n *Node) ChecksRequestSize(context.Context) bool { return n.cfg.MaxRequestBytes > 0 }

// proposalSize is the size of the raft request etcd would build where
// concord built one of size n with request ID id: the same message (with
// auth enabled, the header also holds the user name and auth revision, as
// etcd's processInternalRaftRequestOnce fills it) but etcd's request ID,
// which begins with the low 16 bits of its member ID and so takes 9 or
// (with the top bit set) 10 bytes. 10 are counted, so a write etcd refuses
// is refused here too whatever its member ID (as the gateway's
// etcdRaftSize counts).
func proposalSize(n int, id uint64) int {
	return n - protowire.SizeVarint(id) + 10
}

// proposeData replicates one encoded entry whose apply result is delivered
// under id.
func (n *Node) proposeData(ctx context.Context, id uint64, data []byte) (proto.Message, error) {
	return n.proposeWait(ctx, proposal{id: id, data: data})
}

// proposeWait replicates p and waits for its apply result.
func (n *Node) proposeWait(ctx context.Context, p proposal) (proto.Message, error) {
	id := p.id
	if n.stopped() {
		return nil, ErrStopped
	}
	if ci, ai := n.committed.Load(), n.applied.Load(); ci > ai+maxGapBetweenApplyAndCommitIndex {
		return nil, ErrTooManyRequests
	}
	ch := n.wait.register(id)
	// A timer, not context.WithTimeout: deriving a context from a request's
	// context that is not one of the context package's own starts a
	// goroutine per call, which cost 5% of the server's CPU under puts.
	timeout := time.NewTimer(n.reqTimeout)
	defer timeout.Stop()
	giveUp := func() (proto.Message, error) {
		n.wait.cancel(id)
		n.proposalsFailed.Add(1)
		return nil, n.ctxErr(ctx)
	}
	// The events etcd's raftRequestOnce adds to the request's span.
	var span trace.Span
	if n.cfg.Tracing.On() {
		span = trace.SpanFromContext(ctx)
		span.AddEvent("Send raft proposal")
	}
	// Failures and pending proposals are counted where etcd counts them:
	// a proposal raft did not take in time or refused, or that was not
	// applied before the deadline, failed; one handed to raft is pending
	// until it is answered.
	select {
	case n.propC <- p:
	case <-ctx.Done():
		return giveUp()
	case <-timeout.C:
		return giveUp()
	case <-n.done:
		n.wait.cancel(id)
		return nil, ErrStopped
	}
	n.proposalsPending.Add(1)
	defer n.proposalsPending.Add(-1)
	select {
	case res := <-ch:
		if res.failed {
			n.proposalsFailed.Add(1)
		}
		if span != nil {
			span.AddEvent("Receive raft result")
		}
		return res.resp, res.err
	case <-ctx.Done():
		return giveUp()
	case <-timeout.C:
		return giveUp()
	case <-n.done:
		select {
		case res := <-ch: // the loop fails every waiter before it exits
			return res.resp, res.err
		default:
			return nil, ErrStopped
		}
	}
}

// ctxErr maps the end of a request's wait: the caller's cancellation is
// returned as is; a deadline (the caller's or the internal request timeout)
// becomes ErrTimeout, or ErrNoLeader if there is no leader to make progress.
func (n *Node) ctxErr(parent context.Context) error {
	if err := parent.Err(); errors.Is(err, context.Canceled) {
		return err
	}
	if n.leader.Load() == 0 {
		return ErrNoLeader
	}
	return ErrTimeout
}

func proposeAs[T proto.Message](ctx context.Context, n *Node, r *pb.InternalRaftRequest) (T, error) {
	var zero T
	m, err := n.propose(ctx, r)
	if err != nil {
		return zero, err
	}
	resp, ok := m.(T)
	if !ok {
		return zero, fmt.Errorf("consensus: unexpected apply response %T", m)
	}
	return resp, nil
}
