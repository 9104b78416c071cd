package kvmodel

import (
	"slices"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

func op(client int, in Input, call int64, out Output, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

func check(t *testing.T, hist []porcupine.Operation) porcupine.CheckResult {
	t.Helper()
	return porcupine.CheckOperationsTimeout(New(10), hist, 10*time.Second)
}

func TestLegalHistories(t *testing.T) {
	for name, hist := range map[string][]porcupine.Operation{
		"sequential": {
			op(0, Input{Kind: Put, Key: 1, Value: "a"}, 0, Output{Rev: 11}, 1),
			op(0, Input{Kind: Get, Key: 1}, 2, Output{Rev: 11, Found: true, Value: "a", ModRev: 11}, 3),
			op(0, Input{Kind: Txn, Key: 1, ExpectMod: 11, Value: "b"}, 4, Output{Rev: 12, Succeeded: true}, 5),
			op(0, Input{Kind: Txn, Key: 1, Compare: ValueEquals, ExpectValue: "a", Value: "c"}, 6, Output{Rev: 12}, 7),
			op(0, Input{Kind: Get, Key: 2}, 8, Output{Rev: 12}, 9),
		},
		// Concurrent puts may take either order; the read decides which.
		"concurrent": {
			op(0, Input{Kind: Put, Key: 1, Value: "a"}, 0, Output{Rev: 12}, 10),
			op(1, Input{Kind: Put, Key: 1, Value: "b"}, 1, Output{Rev: 11}, 9),
			op(2, Input{Kind: Get, Key: 1}, 11, Output{Rev: 12, Found: true, Value: "a", ModRev: 12}, 12),
		},
		// A read whose revision includes writes outside the model.
		"any-rev": {
			op(0, Input{Kind: Put, Key: 1, Value: "a"}, 0, Output{Rev: 11}, 1),
			op(1, Input{Kind: Get, Key: 1, AnyRev: true}, 2, Output{Rev: 15, Found: true, Value: "a", ModRev: 11}, 3),
		},
		// A timed-out put that did apply, seen by a later read.
		"unknown-applied": {
			op(0, Input{Kind: Put, Key: 3, Value: "x"}, 0, Output{Unknown: true}, Infinity),
			op(1, Input{Kind: Get, Key: 3}, 5, Output{Rev: 11, Found: true, Value: "x", ModRev: 11}, 6),
		},
		// A timed-out put that never applied.
		"unknown-lost": {
			op(0, Input{Kind: Put, Key: 3, Value: "x"}, 0, Output{Unknown: true}, Infinity),
			op(1, Input{Kind: Put, Key: 3, Value: "y"}, 5, Output{Rev: 11}, 6),
			op(1, Input{Kind: Get, Key: 3}, 7, Output{Rev: 11, Found: true, Value: "y", ModRev: 11}, 8),
		},
	} {
		if got := check(t, hist); got != porcupine.Ok {
			t.Errorf("%s: %s, want Ok", name, got)
		}
	}
}

func TestIllegalHistories(t *testing.T) {
	for name, hist := range map[string][]porcupine.Operation{
		"stale-read": {
			op(0, Input{Kind: Put, Key: 1, Value: "a"}, 0, Output{Rev: 11}, 1),
			op(1, Input{Kind: Get, Key: 1}, 2, Output{Rev: 10}, 3),
		},
		"any-rev-stale-value": {
			op(0, Input{Kind: Put, Key: 1, Value: "a"}, 0, Output{Rev: 11}, 1),
			op(1, Input{Kind: Get, Key: 1, AnyRev: true}, 2, Output{Rev: 15}, 3),
		},
		"lost-write": {
			op(0, Input{Kind: Put, Key: 1, Value: "a"}, 0, Output{Rev: 11}, 1),
			op(0, Input{Kind: Put, Key: 2, Value: "b"}, 2, Output{Rev: 12}, 3),
			op(1, Input{Kind: Get, Key: 1}, 4, Output{Rev: 12}, 5),
		},
		"write-applied-twice": {
			op(0, Input{Kind: Put, Key: 1, Value: "a"}, 0, Output{Rev: 12}, 1),
			op(1, Input{Kind: Get, Key: 1}, 2, Output{Rev: 12, Found: true, Value: "a", ModRev: 12}, 3),
		},
		"txn-wrong-outcome": {
			op(0, Input{Kind: Put, Key: 1, Value: "a"}, 0, Output{Rev: 11}, 1),
			op(0, Input{Kind: Txn, Key: 1, ExpectMod: 5, Value: "b"}, 2, Output{Rev: 12, Succeeded: true}, 3),
		},
		"value-compare-on-absent-key": {
			op(0, Input{Kind: Txn, Key: 4, Compare: ValueEquals, ExpectValue: "", Value: "b"}, 0, Output{Rev: 11, Succeeded: true}, 1),
		},
		"unknown-seen-before-call": {
			op(1, Input{Kind: Get, Key: 3}, 0, Output{Rev: 11, Found: true, Value: "x", ModRev: 11}, 1),
			op(0, Input{Kind: Put, Key: 3, Value: "x"}, 5, Output{Unknown: true}, Infinity),
		},
	} {
		if got := check(t, hist); got != porcupine.Illegal {
			t.Errorf("%s: %s, want Illegal", name, got)
		}
	}
}

// replay is the state at each revision of a list of writes starting at 10.
func replay(writes []Write) func(int64) State {
	return func(rev int64) State {
		s := State{Rev: 10}
		for _, w := range writes {
			if w.Rev <= rev {
				s = s.put(w.Key, w.Value)
			}
		}
		s.Rev = max(s.Rev, rev)
		return s
	}
}

func TestResolveAndCheckInWindows(t *testing.T) {
	writes := []Write{{11, 1, "a"}, {12, 2, "b"}, {13, 1, "c"}, {14, 2, "d"}}
	byValue := map[string]Write{}
	for _, w := range writes {
		byValue[w.Value] = w
	}
	hist := []porcupine.Operation{
		op(0, Input{Kind: Put, Key: 1, Value: "a"}, 0, Output{Rev: 11}, 1),
		op(1, Input{Kind: Put, Key: 2, Value: "b"}, 2, Output{Unknown: true}, Infinity), // applied at 12
		op(2, Input{Kind: Put, Key: 2, Value: "lost"}, 2, Output{Unknown: true}, Infinity),
		op(3, Input{Kind: Get, Key: 2}, 3, Output{Unknown: true}, Infinity),
		op(0, Input{Kind: Get, Key: 2}, 4, Output{Rev: 12, Found: true, Value: "b", ModRev: 12}, 5),
		op(0, Input{Kind: Txn, Key: 1, ExpectMod: 11, Value: "c"}, 6, Output{Rev: 13, Succeeded: true}, 7),
		op(4, Input{Kind: Put, Key: 2, Value: "d"}, 8, Output{Rev: 14}, 9),
		op(0, Input{Kind: Get, Key: 1, AnyRev: true}, 10, Output{Rev: 20, Found: true, Value: "c", ModRev: 13}, 11),
	}
	resolved := Resolve(hist, byValue)
	if len(resolved) != len(hist)-2 {
		t.Fatalf("resolve kept %d of %d operations, want the lost write and the failed read dropped", len(resolved), len(hist))
	}
	for _, size := range []int{1, 2, 100} {
		w, err := Check(resolved, 10, replay(writes), size, 10*time.Second)
		if err != nil || w.Result != porcupine.Ok {
			t.Fatalf("window size %d: %v %v (window %d..%d)", size, w.Result, err, w.From, w.To)
		}
	}

	// A stale read in a later window.
	stale := append(slices.Clone(resolved), op(5, Input{Kind: Get, Key: 1}, 12, Output{Rev: 14, Found: true, Value: "a", ModRev: 11}, 13))
	for _, size := range []int{1, 100} {
		if w, err := Check(stale, 10, replay(writes), size, 10*time.Second); err == nil && w.Result == porcupine.Ok {
			t.Errorf("window size %d: a stale read passed", size)
		}
	}
	// Real time across windows: a write at revision 14 that returned
	// before the write at revision 13 was called.
	late := slices.Clone(resolved)
	for i, o := range late {
		if o.Input.(Input).Value == "d" {
			late[i].Call, late[i].Return = 0, 0
		}
	}
	if w, err := Check(late, 10, replay(writes), 1, 10*time.Second); err == nil && w.Result == porcupine.Ok {
		t.Error("a real-time inversion across windows passed")
	}
}
