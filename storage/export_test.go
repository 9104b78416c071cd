package storage_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/concord-kv/concord/storage"
)

// TestHistoryLetsCloseThrough: an export visits the store chunk by chunk,
// so closing the store during a long export neither waits for it nor
// lets it go on: the export ends with ErrClosed.
func TestHistoryLetsCloseThrough(t *testing.T) {
	x := newMem(t)
	for i := range 3000 {
		x.put(fmt.Sprintf("k%d", i), "v")
	}
	sn, err := x.s.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	seen := 0
	err = sn.History(func(e storage.HistoryEntry) error {
		if seen++; seen == 1 {
			if err := x.s.Close(); err != nil {
				t.Fatal(err)
			}
		}
		return nil
	})
	if !errors.Is(err, storage.ErrClosed) || seen >= 3000 {
		t.Fatalf("History after Close: %v after %d of 3000 versions, want ErrClosed before the end", err, seen)
	}
}

// TestHistoryOrderAndContent: History lists every version in revision
// order, a multi-key delete as consecutive sub revisions, tombstones with
// only key and revision.
func TestHistoryOrderAndContent(t *testing.T) {
	x := newMem(t)
	x.put("a", "1")
	x.put("b", "2")
	x.put("a", "3")
	x.del("a", "c")
	sn, err := x.s.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	var got []string
	if err := sn.History(func(e storage.HistoryEntry) error {
		kv := e.KV
		got = append(got, fmt.Sprintf("%d.%d %s t=%v c=%d m=%d v=%d %q", e.Main, e.Sub, kv.Key, e.Tombstone, kv.CreateRevision, kv.ModRevision, kv.Version, kv.Value))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`2.0 a t=false c=2 m=2 v=1 "1"`,
		`3.0 b t=false c=3 m=3 v=1 "2"`,
		`4.0 a t=false c=2 m=4 v=2 "3"`,
		`5.0 a t=true c=0 m=5 v=0 ""`,
		`5.1 b t=true c=0 m=5 v=0 ""`,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("history:\n%v\nwant\n%v", got, want)
	}
}
