package eventbus

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// runFaulty publishes revisions 1..n (and a progress beat after every
// tenth) through a Faulty over Memory and returns what a subscriber got.
func runFaulty(t *testing.T, seed int64, dropP, dupP, delayP float64, n int) ([]Message, FaultyStats) {
	t.Helper()
	mem := NewMemory()
	f := NewFaulty(mem, seed, dropP, dupP, delayP).(*Faulty)
	defer f.Close()
	c := subscribe(t, f)
	ctx := context.Background()
	published := 0
	for r := int64(1); r <= int64(n); r++ {
		if err := f.Publish(ctx, []Revision{testRevision(r, 1, 4)}); err != nil {
			t.Fatal(err)
		}
		published++
		if r%10 == 0 {
			if err := f.PublishProgress(ctx, r); err != nil {
				t.Fatal(err)
			}
			published++
		}
	}
	// Every message published reached the wrapper (Memory is reliable).
	waitFor(t, "all messages through the wrapper", func() bool { return mem.Stats().Delivered == uint64(published) })
	return c.get(), f.Stats()
}

func TestFaultyInjectsDeterministicFaults(t *testing.T) {
	const n = 2000
	got, st := runFaulty(t, 42, 0.05, 0.05, 0.05, n)
	again, st2 := runFaulty(t, 42, 0.05, 0.05, 0.05, n)
	if summary(got) != summary(again) || st != st2 {
		t.Fatal("same seed, different faults")
	}
	other, _ := runFaulty(t, 43, 0.05, 0.05, 0.05, n)
	if summary(got) == summary(other) {
		t.Fatal("different seeds, same faults")
	}
	if st.Dropped == 0 || st.Duplicated == 0 || st.Delayed == 0 {
		t.Fatalf("stats %+v: want every kind of fault", st)
	}

	// Check the faults against what was received.
	seen := map[int64]int{}
	reordered := 0
	var lastRev int64
	for _, m := range got {
		if m.Progress {
			continue
		}
		seen[m.Rev]++
		if m.Rev < lastRev {
			reordered++
		}
		lastRev = m.Rev
	}
	missing, dups := 0, 0
	for r := int64(1); r <= n; r++ {
		switch c := seen[r]; {
		case c == 0:
			missing++
		case c > 1:
			dups += c - 1
		}
	}
	if missing == 0 || dups == 0 || reordered == 0 {
		t.Fatalf("missing %d duplicated %d reordered %d: want all > 0", missing, dups, reordered)
	}
	// Revisions and beats are faulted alike; with n revisions and n/10
	// beats, each received message is accounted for by the stats (held
	// messages at the end may be lost, at most one per message in flight).
	total := n + n/10
	if len(got) > total-int(st.Dropped)+int(st.Duplicated) || len(got) < total-int(st.Dropped)+int(st.Duplicated)-FaultyMaxDelay {
		t.Fatalf("received %d messages; %d published, stats %+v", len(got), total, st)
	}
	// Every delivered revision is intact.
	for _, m := range got {
		if !m.Progress && (len(m.Events) != 1 || m.Events[0].Kv.ModRevision != m.Rev) {
			t.Fatalf("revision %d corrupted", m.Rev)
		}
	}
}

func TestFaultyWithZeroProbabilitiesIsTransparent(t *testing.T) {
	got, st := runFaulty(t, 1, 0, 0, 0, 300)
	if st != (FaultyStats{}) {
		t.Fatalf("stats %+v", st)
	}
	var want strings.Builder
	for r := 1; r <= 300; r++ {
		fmt.Fprintf(&want, "%d ", r)
		if r%10 == 0 {
			fmt.Fprintf(&want, "p%d ", r)
		}
	}
	if got := summary(got); got != want.String() {
		t.Fatalf("got %q, want %q", got, want.String())
	}
}

func TestFaultyDelayReordersWithinBound(t *testing.T) {
	got, st := runFaulty(t, 7, 0, 0, 0.3, 500)
	if st.Delayed == 0 || st.Dropped != 0 || st.Duplicated != 0 {
		t.Fatalf("stats %+v", st)
	}
	var revs []int64
	for _, m := range got {
		if !m.Progress {
			revs = append(revs, m.Rev)
		}
	}
	if slices.IsSorted(revs) {
		t.Fatal("nothing reordered")
	}
	// A delayed message is released after at most FaultyMaxDelay later
	// messages, and earlier delayed ones can land after it, so no revision
	// moves more than 2*FaultyMaxDelay positions; without drops, only
	// messages still held at the very end can be missing.
	pos := map[int64]int{}
	for i, r := range revs {
		pos[r] = i
	}
	for r := int64(1); r <= 500-FaultyMaxDelay*2; r++ {
		p, ok := pos[r]
		if !ok {
			t.Fatalf("revision %d lost without drops", r)
		}
		if d := p - int(r-1); d > 2*FaultyMaxDelay || d < -2*FaultyMaxDelay {
			t.Fatalf("revision %d displaced by %d", r, d)
		}
	}
}

func TestFaultyClampsAndPassesThrough(t *testing.T) {
	mem := NewMemory()
	f := NewFaulty(mem, 3, 2, -1, 0).(*Faulty) // drop everything
	c := subscribe(t, f)
	if err := f.Publish(context.Background(), []Revision{testRevision(1, 1, 1)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the message to reach the wrapper", func() bool { return mem.Stats().Delivered == 1 })
	if len(c.get()) != 0 || f.Stats().Dropped != 1 {
		t.Fatalf("dropP > 1 not clamped to 1: %v %+v", summary(c.get()), f.Stats())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Publish(context.Background(), []Revision{testRevision(2, 1, 1)}); err == nil {
		t.Fatal("publish after Close succeeded")
	}
}
