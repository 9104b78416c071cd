package e2e

import (
	"fmt"
	"strings"
	"testing"
)

// txnInput is the non-interactive stdin of `etcdctl txn`: compares, a blank line, success ops,
// a blank line, failure ops, a blank line. etcdctl fails with EOF without the last blank line.
func txnInput(compares, success, failure []string) string {
	var b strings.Builder
	for _, section := range [][]string{compares, success, failure} {
		for _, line := range section {
			b.WriteString(line + "\n")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// puts returns etcdctl steps that put key=value pairs in order.
func puts(kv ...string) []step {
	var steps []step
	for i := 0; i+1 < len(kv); i += 2 {
		steps = append(steps, ctl("put", kv[i], kv[i+1]))
	}
	return steps
}

func seq(parts ...any) []step {
	var steps []step
	for _, p := range parts {
		switch v := p.(type) {
		case step:
			steps = append(steps, v)
		case []step:
			steps = append(steps, v...)
		default:
			panic(fmt.Sprintf("seq: unexpected %T", p))
		}
	}
	return steps
}

func TestCtlPut(t *testing.T) {
	runScenario(t, scenario{name: "put", steps: seq(
		ctl("put", "a", "1"),
		ctl("put", "a", "2", "--prev-kv"),
		ctl("put", "a", "3", "--prev-kv", "-w", "json"),
		ctl("put", "b", "1", "-w", "json"),
		ctl("put", "b", "2", "-w", "fields"),
		ctl("put", "new", "x", "--prev-kv", "-w", "json"),
		// --ignore-value keeps the value and makes a new revision and version.
		ctl("put", "a", "--ignore-value", "-w", "json"),
		ctl("get", "a", "-w", "json"),
		ctl("put", "missing", "--ignore-value"),
		// --ignore-lease on a key without a lease is a plain put; on a missing key an error.
		ctl("put", "a", "4", "--ignore-lease", "-w", "json"),
		ctl("put", "missing", "v", "--ignore-lease"),
		ctl("put", "a", "--ignore-value", "--ignore-lease", "--prev-kv", "-w", "json"),
		// A lease that does not exist: nothing is written.
		ctl("put", "c", "1", "--lease=1234"),
		ctl("get", "c", "-w", "json"),
		ctl("put", "", "x"),
		ctl("put", "with space", "a value with spaces", "-w", "json"),
		ctl("put", "empty-value", ""),
		ctlIn("value from stdin", "put", "stdin-key"),
		ctl("get", "", "--prefix", "-w", "json"),
	)})
}

// getFixture makes revisions 2..12 with updates, a delete and a re-create, so that sorting by
// version, create and mod revision and the revision filters all give different orders.
func getFixture() []step {
	return seq(
		puts("a", "1", "b", "2", "c", "3", "d", "4", "e", "5", "b", "22", "ab", "0", "c", "33", "c", "333"),
		ctl("del", "d"),
		ctl("put", "d", "44"),
	)
}

func TestCtlGet(t *testing.T) {
	var sorts []step
	for _, target := range []string{"KEY", "VERSION", "CREATE", "MODIFY", "VALUE"} {
		for _, order := range []string{"ASCEND", "DESCEND"} {
			sorts = append(sorts, ctl("get", "", "--prefix", "--sort-by="+target, "--order="+order, "--keys-only"))
		}
	}
	runScenario(t, scenario{name: "get", steps: seq(
		getFixture(),
		ctl("get", "a"),
		ctl("get", "a", "-w", "json"),
		ctl("get", "nope"),
		ctl("get", "nope", "-w", "json"),
		ctl("get", "a", "c"),
		ctl("get", "a", "c", "-w", "json"),
		ctl("get", "--prefix", "a"),
		ctl("get", "--from-key", "b"),
		ctl("get", "", "--from-key", "--keys-only"),
		ctl("get", "", "--prefix", "--limit", "2", "-w", "json"),
		ctl("get", "", "--prefix", "--limit", "6", "-w", "json"),
		ctl("get", "", "--prefix", "--limit", "7", "-w", "json"),
		ctl("get", "b", "--from-key", "--limit", "1", "--count-only", "-w", "fields"),
		ctl("get", "", "--prefix", "--count-only", "-w", "fields"),
		ctl("get", "", "--prefix", "--keys-only"),
		ctl("get", "a", "--prefix", "--print-value-only"),
		ctl("get", "", "--prefix", "--rev", "5"),
		ctl("get", "d", "--rev", "10", "-w", "json"),
		ctl("get", "d", "--rev", "11", "-w", "json"),
		ctl("get", "d", "--rev", "12", "-w", "json"),
		ctl("get", "", "--prefix", "--rev", "1", "-w", "json"),
		ctl("get", "", "--prefix", "--rev", "12", "--keys-only"),
		ctl("get", "", "--prefix", "--rev", "13"),
		sorts,
		ctl("get", "", "--prefix", "--sort-by=MODIFY", "--order=DESCEND", "--limit", "2", "-w", "json"),
		ctl("get", "", "--prefix", "--sort-by=VALUE", "--order=ASCEND", "--limit", "3", "--keys-only"),
		ctl("get", "", "--prefix", "--order=DESCEND", "--keys-only"),
		ctl("get", "b", "e", "--sort-by=CREATE", "--order=DESCEND", "-w", "json"),
		ctl("get", "a", "--consistency=s", "-w", "json"),
		ctl("get", "a", "--consistency=l", "-w", "json"),
		ctl("get", "", "--prefix", "--consistency=s", "--keys-only"),
		ctl("get", "", "--prefix", "--min-mod-rev", "7", "--keys-only"),
		ctl("get", "", "--prefix", "--max-mod-rev", "6", "--keys-only"),
		ctl("get", "", "--prefix", "--min-create-rev", "4", "--max-create-rev", "8", "--keys-only"),
		ctl("get", "", "--prefix", "--min-mod-rev", "7", "--limit", "1", "-w", "json"),
		ctl("get", "", "--prefix", "--max-create-rev", "3", "--sort-by=MODIFY", "--order=DESCEND", "-w", "json"),
		ctl("get", "", "--prefix", "--min-mod-rev", "5", "--max-mod-rev", "9", "--rev", "9", "--keys-only"),
		ctl("get", ""),
	)})
}

func TestCtlDel(t *testing.T) {
	runScenario(t, scenario{name: "del", steps: seq(
		puts("a", "1", "ab", "2", "b", "3", "c", "4", "d", "5", "e", "6"),
		ctl("del", "a"),
		ctl("del", "a"),
		ctl("del", "zzz", "-w", "json"),
		ctl("del", "ab", "--prev-kv"),
		ctl("del", "ab", "--prev-kv", "-w", "json"),
		ctl("get", "", "--prefix", "-w", "json"),
		// --range avoids etcdctl's 2 s "interrupt me" delay for explicit ranges.
		ctl("del", "b", "d", "--range", "-w", "json"),
		ctl("get", "", "--prefix", "--keys-only"),
		puts("a", "1", "b", "2", "c", "3"),
		ctl("del", "b", "--from-key", "--prev-kv", "-w", "json"),
		ctl("get", "", "--prefix", "-w", "json"),
		puts("x/1", "1", "x/2", "2", "xy", "3"),
		ctl("del", "--prefix", "x/", "--prev-kv"),
		ctl("del", "--prefix", "x", "-w", "json"),
		ctl("del", "--prefix", "", "-w", "json"),
		ctl("del", "--prefix", ""),
		ctl("get", "", "--prefix", "-w", "json"),
		ctl("get", "a", "--rev", "8", "-w", "json"),
		ctl("del", ""),
		ctl("put", "a", "again", "-w", "json"),
		ctl("get", "a", "-w", "json"),
	)})
}

func TestCtlTxn(t *testing.T) {
	var many128, many129 []string
	for i := range 129 {
		op := fmt.Sprintf("put many%03d v", i)
		if i < 128 {
			many128 = append(many128, op)
		}
		many129 = append(many129, op)
	}
	runScenario(t, scenario{name: "txn", steps: seq(
		puts("k1", "v1", "k2", "v2", "k2", "v22"),
		ctlIn(txnInput(
			[]string{`value("k1") = "v1"`},
			[]string{"put k3 x", "get k1", "del k4"},
			[]string{"put k3 y"}), "txn"),
		ctlIn(txnInput(
			[]string{`value("k1") = "v1"`, `version("k2") = "2"`, `create("k1") = "2"`, `mod("k2") = "4"`},
			[]string{"put k3 x2 --prev-kv", "get k3", "del k4 --prev-kv", "get k --prefix --keys-only"},
			[]string{"put k3 y"}), "txn", "-w", "json"),
		ctlIn(txnInput(
			[]string{`value("k1") != "v1"`},
			[]string{"put k5 a"},
			[]string{"put k5 b --prev-kv", "get k --prefix --limit 2", "del k3 --prev-kv"}), "txn", "-w", "json"),
		ctlIn(txnInput(
			[]string{`version("k2") > "5"`, `mod("k1") < "100"`},
			[]string{"put k6 a"},
			[]string{"put k6 b", "get k6", "get k6 --rev 1", "del nothing"}), "txn"),
		// A missing key has create revision, mod revision and version 0 and compares as "".
		ctlIn(txnInput(
			[]string{`create("nokey") = "0"`, `version("nokey") = "0"`, `mod("nokey") < "1"`},
			[]string{"get nokey"},
			nil), "txn", "-w", "json"),
		ctlIn(txnInput(
			[]string{`value("nokey") = ""`},
			[]string{"put ok yes"},
			[]string{"put ok no"}), "txn", "-w", "json"),
		ctlIn(txnInput(
			[]string{`value("k1") > "v0"`, `value("k1") < "v2"`, `version("k2") > "1"`, `create("k2") != "1"`},
			[]string{"get k2"},
			nil), "txn", "-w", "json"),
		// Read-only and empty transactions make no revision.
		ctlIn(txnInput(nil, []string{"get k1", "get k2 --count-only"}, nil), "txn", "-w", "json"),
		ctlIn(txnInput(nil, nil, nil), "txn", "-w", "json"),
		ctlIn(txnInput(nil, nil, nil), "txn"),
		// A delete that deletes nothing makes no revision either.
		ctlIn(txnInput(nil, []string{"del nothing", "del nothing2 --prefix"}, nil), "txn", "-w", "json"),
		// Reads inside a txn see the writes made before them in the same txn; a put and a
		// delete of the same key in one branch are duplicates.
		ctlIn(txnInput(nil, []string{"get k7", "put k7 first", "get k7", "put k8 x", "get k --prefix --count-only"}, nil), "txn", "-w", "json"),
		ctlIn(txnInput(nil, []string{"put k7 first", "get k7", "del k7"}, nil), "txn", "-w", "json"),
		// Duplicate keys among writes of one branch are rejected; across branches they are fine.
		ctlIn(txnInput(nil, []string{"put d x", "put d y"}, nil), "txn"),
		ctlIn(txnInput(nil, []string{"put d x", "del d"}, nil), "txn"),
		ctlIn(txnInput(nil, []string{"put d1 x", "del d --prefix"}, nil), "txn"),
		ctlIn(txnInput([]string{`value("k1") = "v1"`}, []string{"put d x"}, []string{"put d y"}), "txn"),
		ctlIn(txnInput(nil, []string{"get d", "put d z", "get d"}, nil), "txn"),
		ctlIn(txnInput(nil, many129, nil), "txn"),
		ctlIn(txnInput(nil, many128, nil), "txn", "-w", "json"),
		ctl("get", "many", "--prefix", "--count-only", "-w", "fields"),
		ctlIn(txnInput(nil, []string{"get k1 --rev 1000"}, nil), "txn"),
		ctlIn(txnInput(nil, []string{"put k9 x", "get k1 --rev 1000"}, nil), "txn"),
		ctl("get", "k9"),
		ctl("get", "k", "--prefix", "--keys-only", "-w", "json", "--limit", "3", "--sort-by=MODIFY", "--order=DESCEND"),
	)})
}

func TestCtlCompact(t *testing.T) {
	runScenario(t, scenario{name: "compact", steps: seq(
		puts("a", "1", "a", "2", "b", "1", "a", "3", "b", "2"),
		ctl("compact", "3"),
		ctl("get", "a", "--rev", "2"),
		ctl("get", "a", "--rev", "3", "-w", "json"),
		ctl("get", "", "--prefix", "--rev", "3", "-w", "json"),
		ctl("compact", "3"),
		ctl("compact", "2"),
		ctl("compact", "7"),
		ctl("endpoint", "hashkv", "-w", "json"),
		// A compaction at R stores the hash of revision R, which HashKV(R) then returns with
		// the compact revision that was in force before R.
		ctl("endpoint", "hashkv", "--rev", "3", "-w", "json"),
		ctl("endpoint", "hashkv", "--rev", "2", "-w", "json"),
		ctl("endpoint", "hashkv", "--rev", "4", "-w", "json"),
		ctl("compact", "5", "--physical"),
		ctl("get", "a", "--rev", "4"),
		ctl("get", "", "--prefix", "--rev", "5", "-w", "json"),
		ctlIn(txnInput(nil, []string{"get a --rev 4"}, nil), "txn"),
		ctl("compact", "6"),
		ctl("get", "", "--prefix", "-w", "json"),
		ctl("put", "c", "1", "-w", "json"),
		ctl("get", "a", "--rev", "6", "-w", "json"),
		ctl("get", "a", "--rev", "5"),
		ctl("endpoint", "hashkv", "-w", "json"),
		ctl("del", "a"),
		ctl("compact", "8"),
		ctl("get", "", "--prefix", "-w", "json"),
		ctl("get", "a", "--rev", "8", "-w", "json"),
		ctl("put", "a", "new", "-w", "json"),
		ctl("get", "a", "-w", "json"),
		ctl("endpoint", "hashkv", "-w", "json"),
	)})
}

// Sizes around etcd's default --max-request-bytes (1.5 MiB). Both are far from the limit so
// that protocol overheads do not matter.
const (
	tooLargeValue = 1700 * 1000 // > 1.5 MiB: "etcdserver: request is too large"
	largeValue    = 1400 * 1000 // < 1.5 MiB: accepted
)

func TestCtlErrors(t *testing.T) {
	runScenario(t, scenario{name: "errors", steps: seq(
		ctl("put", "", "x"),
		ctl("get", ""),
		ctl("del", ""),
		ctl("put", "a", "1"),
		ctlIn(strings.Repeat("x", tooLargeValue), "put", "big"),
		ctlIn(strings.Repeat("y", largeValue), "put", "large", "-w", "json"),
		ctl("get", "large", "--keys-only"),
		ctl("get", "", "--prefix", "--count-only", "-w", "fields"),
		ctl("get", "a", "--rev", "100"),
		ctl("get", "a", "--rev", "4"),
		ctl("compact", "100"),
		ctl("compact", "0"),
		ctl("compact", "0"),
		ctl("put", "a", "2", "--lease=abc"),
		ctl("get", "", "--prefix", "--keys-only"),
	)})
}
