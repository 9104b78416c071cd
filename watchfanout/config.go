// Package watchfanout holds every etcd watch: it serves etcd's Watch RPC
// (many watches per stream, client-chosen or automatic IDs, cancel, progress
// requests, progress notifications, fragments, compaction cancels) from
// committed events that consensus publishes on the event bus, and from
// consensus history when the bus is not enough.
//
// Invariants (DESIGN.md invariant 3, etcd's watch guarantees):
//
//   - History is the truth, the bus only a fast path. One goroutine (the hub)
//     consumes the bus in order and tracks the next expected revision.
//     Duplicates (rev < next) are dropped; a gap (rev > next, or a progress
//     beat / polled current revision >= next) is repaired by reading
//     [next, rev] from History before anything newer is delivered, so the hub
//     applies a contiguous history.
//   - Every watcher is in exactly one state: synced (fed by the hub, matched
//     through a key map and an interval tree), unsynced (fed by the catch-up
//     goroutine from History or from the hub's in-memory cache of recent
//     revisions), or dead (canceled/compacted). A watcher moves between
//     synced and unsynced only under the hub lock, at exactly the revision it
//     has been given, so it sees no gap and no duplicate.
//   - Each stream has one FIFO send queue. Everything for a watcher (created,
//     events, progress, canceled) is queued in order into it, so the order
//     in which the hub and the catch-up decide is the order the client sees.
//     The queue is bounded for events: a watcher whose stream cannot keep up
//     becomes unsynced (etcd's "victim") instead of blocking the hub or other
//     streams; control responses are never dropped.
//   - All events of a revision go in one WatchResponse whose Header.Revision
//     is that revision, unless the watcher asked for fragments and the
//     response is larger than Config.MaxResponseBytes (etcd's sendFragments).
//   - A progress response (per watcher, or WatchId -1 for a progress request)
//     carries a revision only once every watcher concerned has been given
//     every event up to it.
//
// Client-visible choices, all etcd's unless noted:
//
//   - A watch from "now" (start_revision 0) starts after the store's current
//     revision (History.CurrentRevision), even if the bus has not brought it
//     to the hub yet; the created response carries that revision.
//   - A watch whose start revision is below the compaction revision is
//     created, then canceled with CompactRevision set; a start revision equal
//     to the compaction revision is served (etcd's watchable store compares
//     minRev < compactRev, and the store keeps tombstones at that revision).
//   - A progress request is dropped, as etcd 3.7.3 drops it, while the
//     stream holds a watch canceled by compaction that the client has not
//     canceled, or a watch whose start revision is beyond the store's
//     revision at the time of the request (etcd answers only when every
//     watcher is synced and has reached its start revision; neither of these
//     is). One made while some watcher is still catching up is deferred until
//     they all are (etcd 3.5/3.6 "deferred progress"; etcd 3.7.3 drops it,
//     at a moment its sync loop decides, which the hub's lag behind the store
//     cannot reproduce), and until the hub has reached the store's revision
//     at the time of the request, so that its revision is at least that of
//     any write acknowledged before it (etcd answers with the store's current
//     revision). A progress notification is likewise sent only once the
//     watch's start revision is reached. A stream without watchers gets no
//     answer. A cancel of an unknown ID gets no answer.
//   - A compaction cancel's header carries no revision, as etcd's.
//   - prev_kv comes from the stored event, except at or below the
//     compaction revision: etcd reads previous values at revision-1 when it
//     sends an event, which fails below the compaction revision, so a watch
//     from exactly the compaction revision gets that revision's events
//     without them, as from etcd.
//   - A catching-up watcher gets its pending revisions in one response (up
//     to 1,000 revisions, History and cache alike), with the last revision
//     examined in the header, as etcd's unsynced watchers do. Unlike etcd,
//     whose response has no size bound, a response also ends once it passes
//     MaxResponseBytes, which bounds what one response holds in memory
//     and on the wire; the events are the same, in more responses.
package watchfanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/consensus/eventbus"
)

var (
	// ErrClosed is returned by Serve once the Fanout is closed.
	ErrClosed = errors.New("watchfanout: closed")
	// ErrCompacted is what History implementations wrap when the requested
	// revisions are below the compaction revision. (The fanout also confirms
	// compaction through CurrentRevision, so another error type is tolerated.)
	ErrCompacted = errors.New("watchfanout: required revision has been compacted")
	// ErrInvalidConfig is wrapped by Config.Validate.
	ErrInvalidConfig = errors.New("watchfanout: invalid config")
)

// History is the source of truth for catch-up and repair (in consensus:
// storage.Store.RangeEvents).
type History interface {
	// RangeEvents returns, in ascending order, every revision in [from, to]
	// that has events on keys selected by key/end, with only those events
	// (in store order) and PrevKv set whenever the key existed before.
	// key/end select keys like a Range request: end == nil means only key,
	// end == "\x00" means every key >= key, otherwise [key, end).
	//
	// It must return the complete history of [from, to]: an implementation
	// backed by a replica that has not applied `to` yet must wait or fail,
	// never return a shorter history. It fails with an error wrapping
	// ErrCompacted when from is below the compaction revision.
	RangeEvents(ctx context.Context, from, to int64, key, end []byte) ([]eventbus.Revision, error)
	// CurrentRevision returns the store's current and compaction revisions.
	CurrentRevision(ctx context.Context) (rev, compactRev int64, err error)
}

// Stream is one client watch stream (a gRPC/connect bidi stream).
type Stream interface {
	// Recv returns the next request. It must return (an error) once the ctx
	// given to Serve is done or Serve has returned: Serve does not wait for
	// a Recv that never returns.
	Recv() (*pb.WatchRequest, error)
	// Send sends one response; it may block (network).
	Send(*pb.WatchResponse) error
}

// Config configures a Fanout. Zero fields take the defaults below.
type Config struct {
	Logger *slog.Logger
	// ProgressNotifyInterval is the period of progress notifications for
	// watches created with progress_notify (etcd: 10 minutes, plus up to 10%
	// jitter).
	ProgressNotifyInterval time.Duration
	// SendBuffer + SendBufferPerWatcher x (live watchers of the stream) is
	// the number of event responses queued per stream before its watchers
	// fall back to catch-up. etcd has 128 per stream; the per-watcher part
	// lets a stream whose many watchers all match a revision absorb a few
	// revisions of fan-out (a queued response costs ~64 bytes: events are
	// shared). SendBufferPerWatcher < 0 means 0.
	SendBuffer           int
	SendBufferPerWatcher int
	// MaxResponseBytes is the size above which a response of a watch that
	// asked for fragments is split (etcd: max request bytes + 512 KiB gRPC
	// overhead = 2 MiB by default).
	MaxResponseBytes int
	// ClusterID and MemberID fill the response headers.
	ClusterID, MemberID uint64
	// RaftTerm, if set, returns the current raft term for the raft_term of
	// response headers, which etcd always fills (nil leaves it 0). A
	// revision's events share one header, made with the term current when
	// the revision is first delivered.
	RaftTerm func() uint64
	// CacheRevisions and CacheBytes bound the in-memory cache of the most
	// recent revisions the hub applied, from which slow watchers catch up
	// without reading History. Defaults: 1024 revisions, 16 MiB.
	CacheRevisions int
	CacheBytes     int64
	// ChunkRevisions is the number of revisions read from History at once.
	ChunkRevisions int64
	// CatchUpBatch is the number of unsynced watchers handled per catch-up
	// round (etcd: 512).
	CatchUpBatch int
	// InboxLimit is the number of bus messages buffered for the hub; beyond
	// it messages are dropped (and later repaired from History).
	InboxLimit int
	// ResyncInterval is the period at which unsynced watchers are retried
	// even without a wake-up (etcd: 100ms).
	ResyncInterval time.Duration
	// PollInterval is the period at which an idle hub asks History for the
	// current revision, so that a silent bus cannot stall watchers forever.
	PollInterval time.Duration
	// RetryInterval is the pause after a failed History call.
	RetryInterval time.Duration
}

// Defaults.
const (
	DefaultProgressNotifyInterval = 10 * time.Minute
	DefaultSendBuffer             = 128
	DefaultSendBufferPerWatcher   = 8
	DefaultMaxResponseBytes       = 1536*1024 + 512*1024
	DefaultCacheRevisions         = 1024
	DefaultCacheBytes             = 16 << 20
	DefaultChunkRevisions         = 1000
	DefaultCatchUpBatch           = 512
	DefaultInboxLimit             = 8192
	DefaultResyncInterval         = 100 * time.Millisecond
	DefaultPollInterval           = 2 * time.Second
	DefaultRetryInterval          = 100 * time.Millisecond
)

// SetDefaults fills zero fields with the defaults.
func (c *Config) SetDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ProgressNotifyInterval == 0 {
		c.ProgressNotifyInterval = DefaultProgressNotifyInterval
	}
	if c.SendBuffer == 0 {
		c.SendBuffer = DefaultSendBuffer
	}
	switch {
	case c.SendBufferPerWatcher == 0:
		c.SendBufferPerWatcher = DefaultSendBufferPerWatcher
	case c.SendBufferPerWatcher < 0:
		c.SendBufferPerWatcher = 0
	}
	if c.MaxResponseBytes == 0 {
		c.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if c.CacheRevisions == 0 {
		c.CacheRevisions = DefaultCacheRevisions
	}
	if c.CacheBytes == 0 {
		c.CacheBytes = DefaultCacheBytes
	}
	if c.ChunkRevisions == 0 {
		c.ChunkRevisions = DefaultChunkRevisions
	}
	if c.CatchUpBatch == 0 {
		c.CatchUpBatch = DefaultCatchUpBatch
	}
	if c.InboxLimit == 0 {
		c.InboxLimit = DefaultInboxLimit
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = DefaultResyncInterval
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = DefaultRetryInterval
	}
}

// Validate reports a config that cannot work (after SetDefaults).
func (c Config) Validate() error {
	switch {
	case c.ProgressNotifyInterval <= 0:
		return fmt.Errorf("%w: ProgressNotifyInterval %v must be positive", ErrInvalidConfig, c.ProgressNotifyInterval)
	case c.SendBuffer < 1:
		return fmt.Errorf("%w: SendBuffer %d must be >= 1", ErrInvalidConfig, c.SendBuffer)
	case c.MaxResponseBytes < 1:
		return fmt.Errorf("%w: MaxResponseBytes %d must be >= 1", ErrInvalidConfig, c.MaxResponseBytes)
	case c.CacheRevisions < 0 || c.CacheBytes < 0:
		return fmt.Errorf("%w: cache bounds must not be negative", ErrInvalidConfig)
	case c.ChunkRevisions < 1:
		return fmt.Errorf("%w: ChunkRevisions %d must be >= 1", ErrInvalidConfig, c.ChunkRevisions)
	case c.CatchUpBatch < 1:
		return fmt.Errorf("%w: CatchUpBatch %d must be >= 1", ErrInvalidConfig, c.CatchUpBatch)
	case c.InboxLimit < 1:
		return fmt.Errorf("%w: InboxLimit %d must be >= 1", ErrInvalidConfig, c.InboxLimit)
	case c.ResyncInterval <= 0 || c.PollInterval <= 0 || c.RetryInterval <= 0:
		return fmt.Errorf("%w: intervals must be positive", ErrInvalidConfig)
	}
	return nil
}
