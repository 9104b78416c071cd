// Package kvmodel is a sequential model of etcd's KV for the porcupine
// linearizability checker: a small keyspace with the store's revision, each
// key's value and mod_revision. Puts and successful txns advance the revision
// by exactly one, reads return the revision they saw, so the model checks
// revisions as well as values (an acknowledged write applied twice, a read
// from a stale member, a revision skipped all make a history illegal).
//
// An operation whose outcome the client does not know (a timeout, an
// Unavailable) is recorded with Output.Unknown and an infinite return time,
// as Jepsen and etcd's robustness tests do: the checker may then place it
// anywhere after its call, including after every other operation, which is
// the same as it never having happened.
package kvmodel

import (
	"fmt"
	"hash/fnv"
	"math"
	"strings"

	"github.com/anishathalye/porcupine"
)

// MaxKeys is the size of the modelled keyspace: keys are 0..MaxKeys-1.
const MaxKeys = 8

// Kind is an operation's kind.
type Kind uint8

// The operations of the model.
const (
	Get Kind = iota // linearizable range of one key
	Put
	// Txn: if the compare holds, put Value into Key; no else branch.
	Txn
)

// Compare is what a Txn compares.
type Compare uint8

// Compares of a Txn.
const (
	ModRevisionEquals Compare = iota // mod_revision(key) == ExpectMod (0: key absent)
	ValueEquals                      // value(key) == ExpectValue (false when absent, as in etcd)
)

// Input is an operation as the client issued it.
type Input struct {
	Kind        Kind
	Key         int
	Value       string // Put, Txn: the value written (unique per write)
	Compare     Compare
	ExpectMod   int64
	ExpectValue string
	// AnyRev: a Get whose header revision is not checked (a read after
	// writes outside the modelled keys, such as a lease expiry, moved the
	// store's revision; the key's value and mod_revision still are).
	AnyRev bool
}

// Output is what the client got back.
type Output struct {
	// Unknown: the call failed and the write may or may not have applied.
	Unknown bool
	// Rev is the response header's revision.
	Rev int64
	// Get: whether the key existed, its value and mod_revision.
	Found  bool
	Value  string
	ModRev int64
	// Txn: whether the compare held.
	Succeeded bool
}

// State is the modelled store; a comparable value, so == is equality.
type State struct {
	Rev  int64
	Vals [MaxKeys]string
	Mods [MaxKeys]int64
}

// Infinity is the return time of an operation with an unknown outcome.
const Infinity int64 = math.MaxInt64

func (s State) holds(in Input) bool {
	switch in.Compare {
	case ValueEquals:
		return s.Mods[in.Key] != 0 && s.Vals[in.Key] == in.ExpectValue
	default:
		return s.Mods[in.Key] == in.ExpectMod
	}
}

func (s State) put(key int, v string) State {
	s.Rev++
	s.Vals[key], s.Mods[key] = v, s.Rev
	return s
}

// Step applies in to s and says whether out is a possible answer.
func Step(s State, in Input, out Output) (bool, State) {
	switch in.Kind {
	case Get:
		if out.Unknown {
			return true, s
		}
		found := s.Mods[in.Key] != 0
		return (in.AnyRev || out.Rev == s.Rev) && out.Found == found && (!found || out.Value == s.Vals[in.Key] && out.ModRev == s.Mods[in.Key]), s
	case Put:
		next := s.put(in.Key, in.Value)
		return out.Unknown || out.Rev == next.Rev, next
	case Txn:
		ok := s.holds(in)
		next := s
		if ok {
			next = s.put(in.Key, in.Value)
		}
		return out.Unknown || out.Succeeded == ok && out.Rev == next.Rev, next
	}
	return false, s
}

// New returns the model of a keyspace whose keys are all absent at revision
// initRev.
func New(initRev int64) porcupine.Model { return NewFrom(State{Rev: initRev}) }

// NewFrom returns the model starting from the state init.
func NewFrom(init State) porcupine.Model {
	return porcupine.Model{
		Init: func() any { return init },
		Step: func(state, input, output any) (bool, any) {
			return Step(state.(State), input.(Input), output.(Output))
		},
		Equal: func(a, b any) bool { return a.(State) == b.(State) },
		Hash: func(state any) uint64 {
			s := state.(State)
			h := fnv.New64a()
			fmt.Fprintf(h, "%d", s.Rev)
			for i := range s.Vals {
				fmt.Fprintf(h, "|%d=%s", s.Mods[i], s.Vals[i])
			}
			return h.Sum64()
		},
		DescribeOperation: func(input, output any) string { return Describe(input.(Input), output.(Output)) },
		DescribeState: func(state any) string {
			s := state.(State)
			var b strings.Builder
			fmt.Fprintf(&b, "rev %d", s.Rev)
			for i := range s.Vals {
				if s.Mods[i] != 0 {
					fmt.Fprintf(&b, " k%d=%s@%d", i, s.Vals[i], s.Mods[i])
				}
			}
			return b.String()
		},
	}
}

// Describe renders one operation for reports.
func Describe(in Input, out Output) string {
	var op string
	switch in.Kind {
	case Get:
		op = fmt.Sprintf("get(k%d)", in.Key)
	case Put:
		op = fmt.Sprintf("put(k%d, %s)", in.Key, in.Value)
	case Txn:
		if in.Compare == ValueEquals {
			op = fmt.Sprintf("txn(value(k%d)==%q ? put %s)", in.Key, in.ExpectValue, in.Value)
		} else {
			op = fmt.Sprintf("txn(mod(k%d)==%d ? put %s)", in.Key, in.ExpectMod, in.Value)
		}
	}
	switch {
	case out.Unknown:
		return op + " -> unknown"
	case in.Kind == Get && out.Found:
		return fmt.Sprintf("%s -> %s@%d rev %d", op, out.Value, out.ModRev, out.Rev)
	case in.Kind == Get:
		return fmt.Sprintf("%s -> absent rev %d", op, out.Rev)
	case in.Kind == Txn:
		return fmt.Sprintf("%s -> succeeded=%v rev %d", op, out.Succeeded, out.Rev)
	}
	return fmt.Sprintf("%s -> rev %d", op, out.Rev)
}
