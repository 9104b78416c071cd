package e2e

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	crashRounds  = 3
	crashWriters = 8
	// crashAcks is how many acknowledged puts a round waits for before SIGKILL: a count, so the
	// test does the same work on fast and slow machines (about 2 s of etcd on two cores).
	crashAcks = 3000
	// crashMaxWrite bounds a round's write phase on a very slow machine: the kill then happens
	// with whatever was acknowledged, which is still a valid (if weaker) round.
	crashMaxWrite = 20 * time.Second
	crashPrefix   = "crash/"
)

// ack is a put the server acknowledged.
type ack struct {
	key string
	rev int64
}

// TestCrashRecovery: concurrent writers, SIGKILL mid-stream, restart on the same data dir; every
// acknowledged put must survive at its acknowledged revision, revisions must stay contiguous
// (each put here creates its own key, so revisions 2..current map one-to-one to keys) and the
// store must take writes again. Three rounds on the same data dir.
func TestCrashRecovery(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		var acked []ack
		for round := 1; round <= crashRounds; round++ {
			acked = append(acked, crashRound(t, s, round)...)
			s.Restart()
			verifyAfterCrash(t, s, round, acked)
			if t.Failed() {
				return
			}
		}
	})
}

// crashRound writes until crashAcks puts are acknowledged, kills the server while the writers
// are still writing, and returns the acknowledged puts.
func crashRound(t *testing.T, s *Server, round int) []ack {
	c := newClient(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var (
		count   atomic.Int64
		killed  atomic.Bool
		mu      sync.Mutex
		acked   []ack
		errMu   sync.Mutex
		liveErr error // an error seen before the kill: the server failed a healthy write
		wg      sync.WaitGroup
	)
	for w := range crashWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				key := fmt.Sprintf("%sr%d/w%d/%06d", crashPrefix, round, w, i)
				callCtx, callCancel := context.WithTimeout(ctx, 30*time.Second)
				resp, err := c.Put(callCtx, key, key)
				callCancel()
				if err != nil {
					if !killed.Load() && ctx.Err() == nil {
						errMu.Lock()
						liveErr = fmt.Errorf("put %s before the kill: %w", key, err)
						errMu.Unlock()
					}
					continue
				}
				mu.Lock()
				acked = append(acked, ack{key: key, rev: resp.Header.Revision})
				mu.Unlock()
				count.Add(1)
			}
		}()
	}

	deadline := time.Now().Add(crashMaxWrite)
	tick := time.NewTicker(5 * time.Millisecond)
	for count.Load() < crashAcks && time.Now().Before(deadline) {
		<-tick.C
	}
	tick.Stop()
	killed.Store(true)
	s.Kill()
	cancel()
	wg.Wait()

	if liveErr != nil {
		t.Errorf("round %d: %v", round, liveErr)
	}
	if len(acked) == 0 {
		t.Fatalf("round %d: no put was acknowledged within %v", round, crashMaxWrite)
	}
	t.Logf("round %d: %d puts acknowledged before SIGKILL", round, len(acked))
	return acked
}

// verifyAfterCrash checks every acknowledged put of every round so far.
func verifyAfterCrash(t *testing.T, s *Server, round int, acked []ack) {
	ctx := testCtx(t)
	c := newClient(t, s)
	resp, err := c.Get(ctx, crashPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("round %d: read after restart: %v", round, err)
	}
	cur := resp.Header.Revision
	byKey := make(map[string]int64, len(resp.Kvs))
	byRev := make(map[int64]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		if kv.Version != 1 || kv.CreateRevision != kv.ModRevision || string(kv.Value) != k {
			t.Errorf("round %d: %s = %v, want a single put of its own name", round, k, kv)
		}
		if other, dup := byRev[kv.ModRevision]; dup {
			t.Errorf("round %d: revision %d holds both %s and %s", round, kv.ModRevision, other, k)
		}
		byKey[k], byRev[kv.ModRevision] = kv.ModRevision, k
	}

	lost, maxAck := 0, int64(0)
	for _, a := range acked {
		maxAck = max(maxAck, a.rev)
		rev, ok := byKey[a.key]
		switch {
		case !ok:
			lost++
			if lost <= 5 {
				t.Errorf("round %d: acknowledged put %s (revision %d) is lost", round, a.key, a.rev)
			}
		case rev != a.rev:
			t.Errorf("round %d: %s has mod revision %d, acknowledged %d", round, a.key, rev, a.rev)
		}
	}
	if lost > 5 {
		t.Errorf("round %d: %d acknowledged puts lost in all", round, lost)
	}
	if cur < maxAck {
		t.Errorf("round %d: revision %d after restart is below the highest acknowledged %d", round, cur, maxAck)
	}
	// Contiguity: nothing but these puts ever wrote, so revisions 2..cur are exactly the keys.
	for rev := int64(2); rev <= cur; rev++ {
		if _, ok := byRev[rev]; !ok {
			t.Errorf("round %d: revision %d (of 2..%d) holds no key: revisions are not contiguous", round, rev, cur)
			break
		}
	}
	if int64(len(resp.Kvs)) != cur-1 {
		t.Errorf("round %d: %d keys for revisions 2..%d", round, len(resp.Kvs), cur)
	}

	// The store takes writes again, at the next revision.
	key := fmt.Sprintf("%scheck/%d", crashPrefix, round)
	put, err := c.Put(ctx, key, key)
	if err != nil {
		t.Fatalf("round %d: put after restart: %v", round, err)
	}
	if put.Header.Revision != cur+1 {
		t.Errorf("round %d: put after restart got revision %d, want %d", round, put.Header.Revision, cur+1)
	}
}
