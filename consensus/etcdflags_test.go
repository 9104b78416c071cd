package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/raft/v3"
)

// countingFS counts the syncs that reach the filesystem under a store.
type countingFS struct {
	vfs.FS
	syncs *atomic.Int64
}

func (fs countingFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	return countingFile{f, fs.syncs}, err
}

func (fs countingFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, c, opts...)
	return countingFile{f, fs.syncs}, err
}

func (fs countingFS) ReuseForWrite(o, n string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(o, n, c)
	return countingFile{f, fs.syncs}, err
}

func (fs countingFS) OpenDir(name string) (vfs.File, error) {
	f, err := fs.FS.OpenDir(name)
	return countingFile{f, fs.syncs}, err
}

type countingFile struct {
	vfs.File
	syncs *atomic.Int64
}

func (f countingFile) Sync() error     { f.syncs.Add(1); return f.File.Sync() }
func (f countingFile) SyncData() error { f.syncs.Add(1); return f.File.SyncData() }
func (f countingFile) SyncTo(n int64) (bool, error) {
	f.syncs.Add(1)
	return f.File.SyncTo(n)
}

// TestUnsafeNoFsync: with --unsafe-no-fsync no sync reaches the disk,
// writes still succeed and are read back; without it, writes sync.
func TestUnsafeNoFsync(t *testing.T) {
	for _, noFsync := range []bool{false, true} {
		t.Run(fmt.Sprint("unsafe-no-fsync=", noFsync), func(t *testing.T) {
			var syncs atomic.Int64
			c := newTestCluster(t, 1, func(cfg *Config) {
				cfg.storageFS = countingFS{vfs.NewMem(), &syncs}
				cfg.UnsafeNoFsync = noFsync
			})
			n := c.nodes[c.leader()]
			before := syncs.Load()
			for i := range 5 {
				put(t, n, fmt.Sprint("k", i), "v")
			}
			got, err := n.Range(ctxT(t), &pb.RangeRequest{Key: []byte("k4")})
			if err != nil || len(got.Kvs) != 1 {
				t.Fatalf("read back: %v, %v", got, err)
			}
			if d := syncs.Load() - before; noFsync && (d != 0 || before != 0) {
				t.Errorf("%d syncs at start and %d for 5 puts; want none", before, d)
			} else if !noFsync && d < 5 {
				t.Errorf("%d syncs for 5 puts; want one per put at least", d)
			}
		})
	}
}

// TestMaxLearners: --max-learners=2 lets a second learner in, not a third.
func TestMaxLearners(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.MaxLearners = 2 })
	lead := c.settled()
	for i := range 3 {
		_, err := c.nodes[lead].MemberAdd(ctxT(t), &pb.MemberAddRequest{PeerURLs: []string{fmt.Sprintf("http://127.0.0.1:%d", 12470+i)}, IsLearner: true})
		switch {
		case i < 2 && err != nil:
			t.Fatalf("learner %d: %v", i+1, err)
		case i == 2 && !errors.Is(err, ErrTooManyLearners):
			t.Fatalf("third learner: %v, want %v", err, ErrTooManyLearners)
		}
	}
	if err := (Config{MaxLearners: -1}).Validate(); err == nil {
		t.Error("negative MaxLearners validated")
	}
}

// TestStrictReconfigCheckDisabled: with one of three members down, adding
// a voter is refused by the strict check (TestMembershipStrictReconfigCheck)
// and allowed with --strict-reconfig-check=false, as etcd does.
func TestStrictReconfigCheckDisabled(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.DisableStrictReconfigCheck = true })
	lead := c.settled()
	down := c.followers(lead)[0]
	c.stop(down)
	waitFor(t, "the stopped member to count as inactive", func() bool {
		var active bool
		onLoop(c.nodes[lead], func() {
			active = c.nodes[lead].activeSince(c.ids[down], time.Now().Add(-c.nodes[lead].healthWindow()))
		})
		return !active
	})
	if _, err := c.nodes[lead].MemberAdd(ctxT(t), &pb.MemberAddRequest{PeerURLs: []string{"http://127.0.0.1:12383"}}); err != nil {
		t.Fatalf("add of a voter with one down and no strict check: %v", err)
	}
}

// TestPreVote: an isolated follower with Pre-Vote (the default) only
// pre-campaigns and keeps its term; with --pre-vote=false it campaigns,
// raising its term, which disrupts the leader when it returns.
func TestPreVote(t *testing.T) {
	for _, disable := range []bool{false, true} {
		t.Run(fmt.Sprint("disable=", disable), func(t *testing.T) {
			c := newTestCluster(t, 3, func(cfg *Config) { cfg.DisablePreVote = disable })
			lead := c.settled()
			f := c.followers(lead)[0]
			term := c.nodes[f].Header().RaftTerm
			c.net.Isolate(c.ids[f], c.ids...)
			want := raft.StatePreCandidate
			if disable {
				want = raft.StateCandidate
			}
			var st raft.Status
			waitFor(t, "the isolated follower to campaign", func() bool {
				onLoop(c.nodes[f], func() { st = c.nodes[f].rn.Status() })
				return st.RaftState == want
			})
			if raised := st.GetTerm() > term; raised != disable {
				t.Errorf("term %d -> %d while isolated; raised = %v, want %v", term, st.GetTerm(), raised, disable)
			}
			c.net.Heal()
		})
	}
}

// logSink collects a member's log records.
type logSink struct {
	mu   sync.Mutex
	msgs []string
}

func (s *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (s *logSink) Handle(_ context.Context, r slog.Record) error {
	s.mu.Lock()
	s.msgs = append(s.msgs, r.Message)
	s.mu.Unlock()
	return nil
}
func (s *logSink) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s *logSink) WithGroup(string) slog.Handler      { return s }
func (s *logSink) count(msg string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

// TestWarningApplyDuration: applies slower than --warning-apply-duration
// are logged as etcd logs them; with a generous threshold, none is.
func TestWarningApplyDuration(t *testing.T) {
	for _, c := range []struct {
		threshold time.Duration
		warns     bool
	}{{time.Nanosecond, true}, {time.Hour, false}} {
		sink := &logSink{}
		cl := newTestCluster(t, 1, func(cfg *Config) {
			cfg.Logger = slog.New(sink)
			cfg.WarningApplyDuration = c.threshold
		})
		put(t, cl.nodes[cl.leader()], "k", "v")
		got := sink.count("apply request took too long")
		if (got > 0) != c.warns {
			t.Errorf("threshold %v: %d warnings", c.threshold, got)
		}
		// etcd_server_slow_apply_total counts them (other applies may run
		// meanwhile: only whether there are any is stable).
		if slow := cl.nodes[cl.leader()].Stats().SlowApplies; (slow > 0) != c.warns {
			t.Errorf("threshold %v: %d slow applies counted", c.threshold, slow)
		}
	}
}
