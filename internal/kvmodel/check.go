package kvmodel

import (
	"fmt"
	"slices"
	"time"

	"github.com/anishathalye/porcupine"
)

// Write is a write the store's history shows: the revision it created.
type Write struct {
	Rev   int64
	Key   int
	Value string
}

// Resolve replaces the unknown outcomes of writes with what the complete
// history of the store says (writes carries unique values, as the chaos
// workload's are): a write whose value is in the history applied at that
// revision (its return time stays unknown); a write whose value is not
// never took effect and is dropped, as is a failed read. This is what etcd's
// robustness tests call patching the history; it keeps porcupine from
// trying every placement of every unknown write.
func Resolve(ops []porcupine.Operation, writes map[string]Write) []porcupine.Operation {
	out := make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		in, o := op.Input.(Input), op.Output.(Output)
		if o.Unknown {
			if in.Kind == Get {
				continue
			}
			w, ok := writes[in.Value]
			if !ok || w.Key != in.Key {
				continue
			}
			op.Output = Output{Unknown: true, Rev: w.Rev, Succeeded: true}
		}
		out = append(out, op)
	}
	return out
}

// rev is the revision an operation is linearized at: the one it wrote, or
// the one it read (a read of AnyRev goes last).
func rev(op porcupine.Operation) int64 {
	if op.Input.(Input).AnyRev {
		return 1<<63 - 1
	}
	return op.Output.(Output).Rev
}

// Window is one checked window of revisions.
type Window struct {
	From, To int64 // revisions (From, To]
	Ops      []porcupine.Operation
	Result   porcupine.CheckResult
	Info     porcupine.LinearizationInfo
	Model    porcupine.Model
}

// Check checks a history whose every operation has a known revision (see
// Resolve: unknown writes carry the revision the store's history gave
// them) in windows of about size operations, so that long histories fit in
// memory (porcupine's cache grows with the square of a window's length).
// Operations are assigned to the window of their revision and each window
// starts from the state at the revision before its first (stateAt; the
// first window from initRev); revisions order
// the windows, so what the windows cannot see, real time across windows,
// is checked directly: no operation of a later window may return before an
// operation of an earlier one was called. It returns Ok, or the first
// window that is not, or an error for a real-time violation across windows.
func Check(ops []porcupine.Operation, initRev int64, stateAt func(rev int64) State, size int, timeout time.Duration) (Window, error) {
	for _, op := range ops {
		if o := op.Output.(Output); o.Unknown && o.Rev == 0 {
			return Window{}, fmt.Errorf("kvmodel: an operation of unknown outcome and revision (Resolve first): %s", Describe(op.Input.(Input), o))
		}
	}
	sorted := slices.Clone(ops)
	slices.SortStableFunc(sorted, func(a, b porcupine.Operation) int {
		switch ra, rb := rev(a), rev(b); {
		case ra < rb:
			return -1
		case ra > rb:
			return 1
		}
		return 0
	})
	var windows [][]porcupine.Operation
	for i := 0; i < len(sorted); {
		j := min(i+size, len(sorted))
		// Never split one revision: its write and reads go together.
		for j < len(sorted) && rev(sorted[j]) == rev(sorted[j-1]) {
			j++
		}
		windows = append(windows, sorted[i:j])
		i = j
	}
	// Real time across windows: the latest call up to window k must not
	// come after the earliest return from window k+1 on.
	minReturn := make([]int64, len(windows)+1)
	minReturn[len(windows)] = 1<<63 - 1
	for k := len(windows) - 1; k >= 0; k-- {
		minReturn[k] = minReturn[k+1]
		for _, op := range windows[k] {
			minReturn[k] = min(minReturn[k], op.Return)
		}
	}
	maxCall := int64(-1 << 63)
	for k, w := range windows {
		for _, op := range w {
			maxCall = max(maxCall, op.Call)
		}
		if k+1 < len(windows) && minReturn[k+1] < maxCall {
			return Window{}, fmt.Errorf("kvmodel: an operation at revision %d or later returned (%d) before one at revision %d or earlier was called (%d)",
				rev(windows[k+1][0]), minReturn[k+1], rev(w[len(w)-1]), maxCall)
		}
	}
	var last Window
	from := initRev
	for _, w := range windows {
		start := stateAt(from)
		m := NewFrom(start)
		res, info := porcupine.CheckOperationsVerbose(m, w, timeout)
		to := rev(w[len(w)-1])
		last = Window{From: start.Rev, To: to, Ops: w, Result: res, Info: info, Model: m}
		if res != porcupine.Ok {
			return last, nil
		}
		from = to
	}
	if len(windows) == 0 {
		last.Result = porcupine.Ok
	}
	return last, nil
}
