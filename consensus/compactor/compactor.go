// Package compactor compacts a member's key history automatically, as etcd's
// --auto-compaction-mode and --auto-compaction-retention do.
//
// Two modes, with etcd's timing:
//   - periodic: keep the history of the last Retention. Every
//     min(Retention, 1h)/10 the current revision is recorded in a sliding
//     window; the oldest recorded one (the revision of about Retention ago)
//     is compacted once Retention has passed since start, then at most every
//     min(Retention, 1h).
//   - revision: every 5 minutes, compact to the current revision minus
//     Revisions.
//
// Only the raft leader compacts (a compaction is a raft proposal, so one
// member proposing is enough); on the others the compactor only records
// revisions. A compaction that finds the revision already compacted counts
// as done.
package compactor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/storage"
)

// Mode is --auto-compaction-mode.
type Mode string

const (
	ModePeriodic Mode = "periodic"
	ModeRevision Mode = "revision"
)

// RevisionInterval is how often revision mode compacts (etcd's).
const RevisionInterval = 5 * time.Minute

// ErrInvalidConfig is wrapped by every Validate error.
var ErrInvalidConfig = errors.New("compactor: invalid config")

// Backend is the member the compactor works on (consensus.Node).
type Backend interface {
	// Rev is the current revision.
	Rev() int64
	// IsLeader tells whether this member is the raft leader now.
	IsLeader() bool
	Compact(context.Context, *pb.CompactionRequest) (*pb.CompactionResponse, error)
}

// Clock is time as the compactor sees it; tests inject a fake one.
type Clock interface {
	Now() time.Time
	After(time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Config configures a compactor.
type Config struct {
	Mode Mode
	// Retention is the history kept in periodic mode.
	Retention time.Duration
	// Revisions is the number of revisions kept in revision mode.
	Revisions int64
	Clock     Clock
	Logger    *slog.Logger
}

// Enabled tells whether c asks for automatic compaction at all (etcd's
// retention "0" turns it off).
func (c Config) Enabled() bool {
	return (c.Mode == ModePeriodic && c.Retention > 0) || (c.Mode == ModeRevision && c.Revisions > 0)
}

// Validate reports whether c is usable.
func (c Config) Validate() error {
	switch c.Mode {
	case ModePeriodic:
		if c.Retention < 0 {
			return fmt.Errorf("%w: negative retention %v", ErrInvalidConfig, c.Retention)
		}
	case ModeRevision:
		if c.Revisions < 0 {
			return fmt.Errorf("%w: negative retention %d", ErrInvalidConfig, c.Revisions)
		}
	default:
		return fmt.Errorf("%w: unsupported compaction mode %q", ErrInvalidConfig, c.Mode)
	}
	return nil
}

// Run compacts b according to cfg until ctx is done; it returns nil then.
// With a disabled config it returns at once.
func Run(ctx context.Context, cfg Config, b Backend) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if !cfg.Enabled() {
		return nil
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &runner{cfg: cfg, b: b}
	if cfg.Mode == ModeRevision {
		r.revision(ctx)
	} else {
		r.periodic(ctx)
	}
	return nil
}

type runner struct {
	cfg Config
	b   Backend
}

func (r *runner) periodic(ctx context.Context) {
	window := min(r.cfg.Retention, time.Hour)
	step := window / 10
	keep := int(r.cfg.Retention/step) + 1
	revs := make([]int64, 0, keep+1)
	var last int64
	lastSuccess := r.cfg.Clock.Now()
	// The first compaction waits for a whole retention period; later ones
	// for the window.
	wait := r.cfg.Retention
	for {
		revs = append(revs, r.b.Rev())
		if len(revs) > keep {
			revs = revs[1:] // revs[0] is the revision of about Retention ago
		}
		select {
		case <-ctx.Done():
			return
		case <-r.cfg.Clock.After(step):
		}
		rev := revs[0]
		if !r.b.IsLeader() || r.cfg.Clock.Now().Sub(lastSuccess) < wait || rev == last {
			continue
		}
		if r.compact(ctx, rev, "periodic", r.cfg.Retention.String()) {
			last, lastSuccess, wait = rev, r.cfg.Clock.Now(), window
		}
	}
}

func (r *runner) revision(ctx context.Context) {
	var last int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.cfg.Clock.After(RevisionInterval):
		}
		rev := r.b.Rev() - r.cfg.Revisions
		if rev <= 0 || rev == last || !r.b.IsLeader() {
			continue
		}
		if r.compact(ctx, rev, "revision", fmt.Sprint(r.cfg.Revisions)) {
			last = rev
		}
	}
}

// compact proposes a compaction to rev and reports whether it is done
// (already compacted counts).
func (r *runner) compact(ctx context.Context, rev int64, mode, retention string) bool {
	start := r.cfg.Clock.Now()
	r.cfg.Logger.Info("starting auto "+mode+" compaction", "revision", rev, "retention", retention)
	_, err := r.b.Compact(ctx, &pb.CompactionRequest{Revision: rev})
	if err != nil && !errors.Is(err, storage.ErrCompacted) {
		if ctx.Err() == nil {
			r.cfg.Logger.Warn("failed auto "+mode+" compaction", "revision", rev, "retention", retention, "error", err)
		}
		return false
	}
	r.cfg.Logger.Info("completed auto "+mode+" compaction", "revision", rev, "retention", retention,
		"took", r.cfg.Clock.Now().Sub(start))
	return true
}
