package kvmodel

import (
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
