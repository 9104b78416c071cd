package consensus

import (
	"context"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"golang.org/x/crypto/bcrypt"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/internal/netaddr"
	"github.com/concord-kv/concord/internal/tracing"
)

// Defaults, matching etcd's where the meaning is the same.
const (
	DefaultName                   = "default"
	DefaultClientURL              = "http://localhost:2379"
	DefaultPeerURL                = "http://localhost:2380"
	DefaultClusterToken           = "etcd-cluster"
	DefaultHeartbeatInterval      = 100 * time.Millisecond
	DefaultElectionTimeout        = 1000 * time.Millisecond
	DefaultSnapshotCount          = 10000
	DefaultSnapshotCatchUpEntries = 5000
	DefaultProgressInterval       = 100 * time.Millisecond
	DefaultQuotaBackendBytes      = int64(2 << 30) // 2 GiB, as etcd
	DefaultAuthTokenTTL           = 300 * time.Second
	DefaultMaxLearners            = 1
	DefaultWarningApplyDuration   = 100 * time.Millisecond

	// ClusterStateNew bootstraps a new cluster; ClusterStateExisting joins one.
	ClusterStateNew      = "new"
	ClusterStateExisting = "existing"

	// maxElectionTimeout is etcd's upper bound for --election-timeout.
	maxElectionTimeout = 50 * time.Second
)

// Config configures a consensus member. Call SetDefaults before Validate; Start
// does both on its own copy.
type Config struct {
	// Name is this member's human-readable name (etcd's --name).
	Name string
	// DataDir holds the Pebble store (raft log and state machine).
	DataDir string
	// WALDir, if set, holds the store's write-ahead log instead of DataDir
	// (etcd's --wal-dir; storage.Options.WALDir).
	WALDir string
	// ClientURLs are advertised to clients in MemberList.
	ClientURLs []string
	// PeerURLs are advertised to peers; together with ClusterToken they
	// determine the member ID, exactly as in etcd.
	PeerURLs []string
	// InitialCluster is "name=peerurl,name=peerurl,..."; empty means this
	// member alone (Name=PeerURLs).
	InitialCluster string
	// DiscoverCluster, when set, gives a member that bootstraps a new
	// cluster (ClusterState new, no data yet) its initial cluster in
	// InitialCluster's format, instead of InitialCluster (etcd's v3
	// discovery). It gets this member's ID and its own "name=peerurl,..."
	// entry, both computed from Name, PeerURLs and ClusterToken.
	DiscoverCluster func(ctx context.Context, memberID uint64, self string) (string, error)
	// ClusterState is "new" or "existing".
	ClusterState string
	// ClusterToken is etcd's --initial-cluster-token.
	ClusterToken string
	// HeartbeatInterval is the raft tick; ElectionTimeout/HeartbeatInterval is
	// the election tick count.
	HeartbeatInterval, ElectionTimeout time.Duration
	// SnapshotCount is how many applied entries trigger a raft snapshot record
	// and log truncation.
	SnapshotCount uint64
	// SnapshotCatchUpEntries is how many entries are kept below a snapshot so
	// slow followers can catch up from the log (etcd's SnapshotCatchUpEntries).
	// Addition to the team contract; 0 means the default.
	SnapshotCatchUpEntries uint64
	// MaxLearners is how many learners the member table may hold (etcd's
	// --max-learners); 0 means etcd's default, 1. Every member checks it
	// when it applies a learner add, so give all members the same value,
	// as etcd requires.
	MaxLearners int
	// DisablePreVote turns off raft's Pre-Vote (etcd's --pre-vote=false):
	// a member returning from a partition may then disrupt the leader.
	DisablePreVote bool
	// DisableInitialElectionTickAdvance makes a member of several wait a
	// full randomized election timeout before its first election (etcd's
	// --initial-election-tick-advance=false). By default, once the
	// transport reports more than one other member active or reachable
	// (PeerStats) within 5 s of the start and no leader is known, the
	// member fast-forwards its election clock by ElectionTimeout less two
	// heartbeats, as etcd does. A lone member campaigns at once either
	// way.
	DisableInitialElectionTickAdvance bool
	// DisableStrictReconfigCheck skips the checks that a membership change
	// keeps a quorum of started and active members (etcd's
	// --strict-reconfig-check=false); a learner must still have caught up
	// to be promoted.
	DisableStrictReconfigCheck bool
	// WarningApplyDuration logs a warning when applying one Ready's
	// committed entries takes longer (etcd's --warning-apply-duration,
	// which etcd checks per entry); 0 means etcd's default, 100ms.
	WarningApplyDuration time.Duration
	// ForceNewCluster makes a member restarting on its data dir the only
	// member of its cluster (etcd's --force-new-cluster, for a cluster that
	// lost its quorum for good): its uncommitted raft entries are dropped
	// and every other member is removed through raft conf changes it
	// commits alone (forcenewcluster.go). Ignored on an empty data dir, as
	// by etcd.
	ForceNewCluster bool
	// UnsafeNoFsync never fsyncs the store (etcd's --unsafe-no-fsync): a
	// crash of the machine loses acknowledged writes. For tests only.
	UnsafeNoFsync bool
	// QuotaBackendBytes is the store size above which writes fail with
	// ErrNoSpace; 0 means the default 2 GiB, negative disables the quota.
	QuotaBackendBytes int64
	// MaxRequestBytes is etcd's --max-request-bytes, checked on the raft
	// request built from a Put, DeleteRange or write Txn as etcd checks it:
	// after the caller's token is checked, with the user name and auth
	// revision the request header then carries (proposalSize). 0 leaves
	// the size unchecked here (the gateway's own check is then the only
	// one).
	MaxRequestBytes int
	// BcryptCost is the bcrypt cost of the password hashes UserAdd and
	// UserChangePassword store (etcd's --bcrypt-cost); 0 means the default,
	// bcrypt.DefaultCost (10).
	BcryptCost int
	// AuthToken is etcd's --auth-token: "simple" (the default; concord's
	// signed tokens, valid for AuthTokenTTL) or
	// "jwt,sign-method=...,priv-key=...,pub-key=...,ttl=...".
	AuthToken string
	// AuthTokenTTL is how long a simple token issued by Authenticate is
	// valid (etcd's --auth-token-ttl); 0 means 300 s.
	AuthTokenTTL time.Duration
	// RefuseAuthEnable makes AuthEnable fail with ErrAuthEnableUnsupported:
	// the split topology sets it where consensus neither verifies client
	// certificates nor has an internal secret, through one of which its
	// watch, lease and gateway processes would call it once auth is
	// enabled.
	RefuseAuthEnable bool
	// Logger receives start-up, leader-change and error logs.
	Logger *slog.Logger
	// Tracing, when on, gets etcd's INTERNAL span of each KV and lease
	// operation the member serves ("put", "range", "txn", ...).
	Tracing *tracing.Provider
	// Events, when set, receives every applied revision with all its events
	// right after the batch that made it is committed, and a progress beat
	// carrying the current revision every ProgressInterval. It is the fast
	// path for watchers and leases; they repair anything it loses from
	// history, so Publish errors are logged, never fatal.
	Events eventbus.Publisher
	// EventsFromLeaderOnly makes only the raft leader publish revisions and
	// beats, for when all members' Events reach one shared bus (the
	// embedded NATS servers joined in a cluster): every revision then
	// crosses the bus once, not once per member. Consumers repair whatever
	// a leader change loses (published by no one) and drop what it
	// duplicates (published by the old and the new leader) from the
	// contiguity of revisions and the beats, as for any bus loss.
	EventsFromLeaderOnly bool
	// ProgressInterval is how often a progress beat is published; it bounds
	// how long a watcher can miss a revision whose message the bus lost.
	ProgressInterval time.Duration
	// Transport carries raft messages to the other members (consensus/peer
	// on the network, MemNetwork in tests). Start takes ownership: Close
	// stops it, as does a failed Start. A single-member cluster needs none;
	// a multi-member one fails Validate without one.
	Transport Transport

	// storageFS lets unit tests run the store on a crash-simulating
	// in-memory filesystem; nil means the real disk.
	storageFS vfs.FS
	// sizeFn replaces the store size used for quota checks in unit tests.
	sizeFn func() int64
	// reqTimeout replaces the request timeout (5s + 2 election timeouts).
	reqTimeout time.Duration
	// afterSnapshotInstall runs on the raft loop right after a received
	// snapshot is durable, before raft applies anything after it (tests
	// crash the member there).
	afterSnapshotInstall func(n *Node)
	// afterEarlyDeliver runs on the raft loop in persistWhileApplying, after
	// the callers of the applied entries were answered and before the fsync
	// of the Ready's new entries is waited for (tests).
	afterEarlyDeliver func(n *Node)
}

// SetDefaults fills every zero field with etcd's default.
func (c *Config) SetDefaults() {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.DataDir == "" {
		c.DataDir = c.Name + ".concord"
	}
	if len(c.ClientURLs) == 0 {
		c.ClientURLs = []string{DefaultClientURL}
	}
	if len(c.PeerURLs) == 0 {
		if urls := initialClusterURLs(c.InitialCluster, c.Name); len(urls) > 0 {
			c.PeerURLs = urls
		} else {
			c.PeerURLs = []string{DefaultPeerURL}
		}
	}
	if c.ClusterState == "" {
		c.ClusterState = ClusterStateNew
	}
	if c.ClusterToken == "" {
		c.ClusterToken = DefaultClusterToken
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = DefaultElectionTimeout
	}
	if c.ProgressInterval == 0 {
		c.ProgressInterval = DefaultProgressInterval
	}
	if c.SnapshotCount == 0 {
		c.SnapshotCount = DefaultSnapshotCount
	}
	if c.SnapshotCatchUpEntries == 0 {
		c.SnapshotCatchUpEntries = DefaultSnapshotCatchUpEntries
	}
	if c.QuotaBackendBytes == 0 {
		c.QuotaBackendBytes = DefaultQuotaBackendBytes
	}
	if c.AuthToken == "" {
		c.AuthToken = "simple"
	}
	if c.AuthTokenTTL == 0 {
		c.AuthTokenTTL = DefaultAuthTokenTTL
	}
	if c.BcryptCost == 0 {
		c.BcryptCost = bcrypt.DefaultCost
	}
	if c.MaxLearners == 0 {
		c.MaxLearners = DefaultMaxLearners
	}
	if c.WarningApplyDuration == 0 {
		c.WarningApplyDuration = DefaultWarningApplyDuration
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first configuration problem, with etcd's wording
// where etcd has one.
func (c Config) Validate() error {
	if c.Name == "" {
		return errors.New("consensus: name is empty")
	}
	if c.DataDir == "" {
		return errors.New("consensus: data dir is empty")
	}
	if err := validateURLs(c.ClientURLs); err != nil {
		return fmt.Errorf("consensus: client urls: %w", err)
	}
	if err := validateURLs(c.PeerURLs); err != nil {
		return fmt.Errorf("consensus: peer urls: %w", err)
	}
	if c.ClusterState != ClusterStateNew && c.ClusterState != ClusterStateExisting {
		return fmt.Errorf("consensus: unexpected initial cluster state %q (want %q or %q)",
			c.ClusterState, ClusterStateNew, ClusterStateExisting)
	}
	if c.HeartbeatInterval <= 0 || c.ElectionTimeout <= 0 {
		return errors.New("consensus: heartbeat interval and election timeout must be positive")
	}
	if 5*c.HeartbeatInterval > c.ElectionTimeout {
		return fmt.Errorf("consensus: election timeout %v should be at least 5 times the heartbeat interval %v",
			c.ElectionTimeout, c.HeartbeatInterval)
	}
	if c.ElectionTimeout > maxElectionTimeout {
		return fmt.Errorf("consensus: election timeout %v is longer than %v", c.ElectionTimeout, maxElectionTimeout)
	}
	if c.SnapshotCount == 0 {
		return errors.New("consensus: snapshot count must be positive")
	}
	if _, err := auth.ParseTokenOptions(c.AuthToken, c.AuthTokenTTL); err != nil {
		return fmt.Errorf("consensus: --auth-token: %w", err)
	}
	if c.MaxRequestBytes < 0 {
		return fmt.Errorf("consensus: max request bytes %d is negative", c.MaxRequestBytes)
	}
	if c.BcryptCost < bcrypt.MinCost || c.BcryptCost > bcrypt.MaxCost {
		return fmt.Errorf("consensus: bcrypt cost %d outside [%d, %d]", c.BcryptCost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	if c.MaxLearners < 0 {
		return fmt.Errorf("consensus: max learners %d is negative", c.MaxLearners)
	}
	members, err := c.initialMembers()
	if err != nil {
		return err
	}
	if len(members) > 1 && c.Transport == nil {
		return fmt.Errorf("consensus: initial cluster has %d members but no peer transport is configured", len(members))
	}
	return nil
}

// member is one cluster member as MemberList reports it. It is persisted as
// JSON in the store's metadata so IDs survive restarts.
type member struct {
	ID         uint64   `json:"id"`
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peer_urls"`
	ClientURLs []string `json:"client_urls"`
	IsLearner  bool     `json:"is_learner,omitempty"`
}

// initialMembers parses InitialCluster (or derives it from Name/PeerURLs),
// computes etcd-compatible member IDs and checks that this member is part of
// it with matching peer URLs.
func (c Config) initialMembers() ([]member, error) {
	spec := c.InitialCluster
	if spec == "" {
		spec = c.Name + "=" + strings.Join(c.PeerURLs, ","+c.Name+"=")
	}
	byName := map[string][]string{}
	var order []string
	for item := range strings.SplitSeq(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, u, ok := strings.Cut(item, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("consensus: invalid initial cluster entry %q (want name=url)", item)
		}
		norm, err := normalizeURL(u)
		if err != nil {
			return nil, fmt.Errorf("consensus: initial cluster entry %q: %w", item, err)
		}
		if _, seen := byName[name]; !seen {
			order = append(order, name)
		}
		byName[name] = append(byName[name], norm)
	}
	self, ok := byName[c.Name]
	if !ok {
		return nil, fmt.Errorf("consensus: couldn't find local name %q in the initial cluster configuration", c.Name)
	}
	own := make([]string, 0, len(c.PeerURLs))
	for _, u := range c.PeerURLs {
		norm, err := normalizeURL(u)
		if err != nil {
			return nil, fmt.Errorf("consensus: peer url %q: %w", u, err)
		}
		own = append(own, norm)
	}
	if !sameURLs(self, own) {
		return nil, fmt.Errorf("consensus: advertised peer urls %v do not match the initial cluster entry for %q %v",
			c.PeerURLs, c.Name, self)
	}
	members := make([]member, 0, len(order))
	seen := map[uint64]bool{}
	for _, name := range order {
		urls := byName[name]
		m := member{ID: computeMemberID(urls, c.ClusterToken), Name: name, PeerURLs: urls}
		if m.ID == 0 || seen[m.ID] {
			return nil, fmt.Errorf("consensus: member %q has an invalid or duplicate id %x", name, m.ID)
		}
		seen[m.ID] = true
		if name == c.Name {
			m.ClientURLs = slices.Clone(c.ClientURLs)
		}
		members = append(members, m)
	}
	return members, nil
}

// initialClusterURLs returns the peer URLs listed for name in spec.
func initialClusterURLs(spec, name string) []string {
	var out []string
	for item := range strings.SplitSeq(spec, ",") {
		n, u, ok := strings.Cut(strings.TrimSpace(item), "=")
		if ok && n == name {
			out = append(out, u)
		}
	}
	return out
}

// computeMemberID derives a member ID exactly as etcd does for a new cluster:
// the first 8 bytes of SHA-1 over the sorted peer URLs and the cluster token.
func computeMemberID(peerURLs []string, token string) uint64 {
	urls := slices.Clone(peerURLs)
	slices.Sort(urls)
	b := append([]byte(strings.Join(urls, "")), token...)
	sum := sha1.Sum(b)
	return binary.BigEndian.Uint64(sum[:8])
}

// computeClusterID derives the cluster ID as etcd does: SHA-1 over the sorted
// member IDs, big-endian.
func computeClusterID(ids []uint64) uint64 {
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	b := make([]byte, 8*len(sorted))
	for i, id := range sorted {
		binary.BigEndian.PutUint64(b[8*i:], id)
	}
	sum := sha1.Sum(b)
	return binary.BigEndian.Uint64(sum[:8])
}

func validateURLs(urls []string) error {
	if len(urls) == 0 {
		return errors.New("no url given")
	}
	for _, u := range urls {
		if _, err := normalizeURL(u); err != nil {
			return fmt.Errorf("%q: %w", u, err)
		}
	}
	return nil
}

// normalizeURL applies etcd's URL rules (types.NewURLs): scheme http(s) or
// unix(s), a host with a port for http(s), no path.
func normalizeURL(s string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "http", "https":
		if u.Port() == "" {
			return "", errors.New("url address does not have the form \"host:port\"")
		}
	case "unix", "unixs":
	default:
		return "", fmt.Errorf("url scheme must be http, https, unix, or unixs: %s", s)
	}
	if u.Path != "" {
		return "", fmt.Errorf("url must not contain a path: %s", s)
	}
	return u.String(), nil
}

func sameURLs(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	if slices.Equal(x, y) {
		return true
	}
	// As etcd's netutil.URLStringsEqual: the same once host names are
	// resolved, so an initial cluster may name a member by a host name
	// it advertises by address (--discovery-srv gives the SRV targets).
	x, okx := resolveURLs(x)
	y, oky := resolveURLs(y)
	if !okx || !oky {
		return false
	}
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

// urlResolveTimeout bounds resolving the host names of sameURLs.
const urlResolveTimeout = 10 * time.Second

// resolveURLs returns urls with each host replaced by one of its addresses
// (netaddr.Resolve); false if one does not resolve.
func resolveURLs(urls []string) ([]string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), urlResolveTimeout)
	defer cancel()
	out := make([]string, len(urls))
	for i, s := range urls {
		u, err := url.Parse(s)
		if err != nil {
			return nil, false
		}
		if u.Host, err = netaddr.Resolve(ctx, net.DefaultResolver, u.Host); err != nil {
			return nil, false
		}
		out[i] = u.String()
	}
	return out, true
}
