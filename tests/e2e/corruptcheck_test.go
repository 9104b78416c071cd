package e2e

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concord-kv/concord/storage"
)

// TestCorruptCheck runs etcd's corruption checks on a three-member
// cluster: while the members agree, the leader's periodic checks
// (--corrupt-check-time) pass and raise nothing. Then one member's store
// is changed behind raft's back (a write made directly in its data dir
// while it was down): with the InitialCorruptCheck gate it refuses to
// start ("found data inconsistency with peers"); started without the gate,
// a periodic check raises the CORRUPT alarm and the cluster refuses writes
// with etcd's "corrupt cluster", as etcd's does.
func TestCorruptCheck(t *testing.T) {
	t.Parallel()
	c := startClusterWith(t, concordImpl, 3, serverOptions{extra: []string{"--corrupt-check-time", "500ms", "--feature-gates", "InitialCorruptCheck=true"}})
	cli := newClient(t, c.members[0])
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, k := range []string{"a", "b", "c"} {
		if _, err := cli.Put(ctx, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	// Checks that compared both followers, and found nothing.
	const checked = `"number-of-peers-checked":2`
	waitUntil(t, "a corruption check of both followers", func() bool {
		return slices.ContainsFunc(c.members, func(s *Server) bool { return strings.Count(s.log.String(), checked) >= 2 })
	})
	if alarms := alarmList(t, ctx, c.members[0]); len(alarms) != 0 {
		t.Fatalf("alarms on an intact cluster: %v", alarms)
	}

	bad := c.members[2]
	changeBehindRaft(t, bad)
	// The others reach the changed member's revision with other content
	// (retried: the killed member may have led).
	putEventually(t, ctx, cli, "d")
	if err := bad.start(); err == nil {
		t.Fatal("the changed member started with InitialCorruptCheck")
	} else if !strings.Contains(bad.log.String(), "found data inconsistency with peers") {
		t.Fatalf("the changed member did not start, but not for the check: %v", err)
	}
	bad.opts.extra = []string{"--corrupt-check-time", "500ms"}
	bad.Restart()

	waitUntil(t, "the CORRUPT alarm", func() bool {
		return slices.ContainsFunc(alarmList(t, ctx, c.members[0]), func(a *pb.AlarmMember) bool { return a.Alarm == pb.AlarmType_CORRUPT })
	})
	if _, err := cli.Put(ctx, "e", "v"); err == nil || err.Error() != rpctypes.ErrCorrupt.Error() {
		t.Errorf("put on a corrupt cluster: %v, want %v", err, rpctypes.ErrCorrupt)
	}
}

// TestCompactHashCheck runs etcd's compaction hash check (the
// CompactHashCheck gate, --compact-hash-check-time) on a three-member
// cluster: after a compaction on members that agree it passes and raises
// nothing; after one at a revision where one member's store was changed
// behind raft's back, the two that agree are the majority and the third
// gets the CORRUPT alarm, as in etcd.
func TestCompactHashCheck(t *testing.T) {
	t.Parallel()
	c := startClusterWith(t, concordImpl, 3, serverOptions{extra: []string{"--feature-gates", "CompactHashCheck=true", "--compact-hash-check-time", "500ms"}})
	cli := newClient(t, c.members[0])
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	compactNow := func() {
		t.Helper()
		rev := putEventually(t, ctx, cli, "k")
		if _, err := cli.Compact(ctx, rev); err != nil {
			t.Fatal(err)
		}
	}
	compactNow()
	const passed = "successfully checked hash on whole cluster"
	waitUntil(t, "a compaction hash check of the whole cluster", func() bool {
		return slices.ContainsFunc(c.members, func(s *Server) bool { return strings.Contains(s.log.String(), passed) })
	})
	if alarms := alarmList(t, ctx, c.members[0]); len(alarms) != 0 {
		t.Fatalf("alarms on an intact cluster: %v", alarms)
	}

	bad := c.members[2]
	list, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var badID uint64
	for _, m := range list.Members {
		if m.Name == bad.opts.name {
			badID = m.ID
		}
	}
	changeBehindRaft(t, bad)
	bad.Restart()
	compactNow()
	waitUntil(t, "the CORRUPT alarm", func() bool {
		return slices.ContainsFunc(alarmList(t, ctx, c.members[0]), func(a *pb.AlarmMember) bool { return a.Alarm == pb.AlarmType_CORRUPT })
	})
	if alarms := alarmList(t, ctx, c.members[0]); len(alarms) != 1 || alarms[0].MemberID != badID {
		t.Errorf("alarms %v, want CORRUPT for %s (%x) alone", alarms, bad.opts.name, badID)
	}
}

// changeBehindRaft kills s and writes a new version of key "a" directly in
// its store, so its history differs from the other members'.
func changeBehindRaft(t *testing.T, s *Server) {
	t.Helper()
	s.Kill()
	st, err := storage.Open(s.dataDir, storage.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	b := st.NewBatch()
	if _, err := b.Put(&pb.PutRequest{Key: []byte("a"), Value: []byte("changed behind raft's back")}); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

// putEventually puts key until a put succeeds (a leader may be being
// elected), failing the test after readyTimeout; it returns the revision.
func putEventually(t *testing.T, ctx context.Context, cli *clientv3.Client, key string) int64 {
	t.Helper()
	var rev int64
	waitUntil(t, "a successful put of "+key, func() bool {
		resp, err := cli.Put(ctx, key, "v")
		if err == nil {
			rev = resp.Header.Revision
		}
		return err == nil
	})
	return rev
}

func alarmList(t *testing.T, ctx context.Context, s *Server) []*pb.AlarmMember {
	t.Helper()
	resp, err := newClient(t, s).AlarmList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Alarms
}

// waitUntil polls cond until it holds, failing the test after readyTimeout.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
