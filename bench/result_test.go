package bench

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func sampleResult() *Result {
	return &Result{
		Workload:  "txn-mixed",
		Params:    map[string]string{"total": "100", "conns": "1", "clients": "2"},
		Endpoints: []string{"127.0.0.1:2379"},
		Started:   time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Elapsed:   3 * time.Second,
		Ops: []OpResult{
			{Name: "txn", Unit: "txn", Count: 100, Errors: 2, FirstError: "boom", Elapsed: 2 * time.Second,
				Latency: Latency{Min: 50 * time.Microsecond, Mean: 2 * time.Millisecond, P50: 1500 * time.Microsecond,
					P90: 3 * time.Millisecond, P99: 12 * time.Millisecond, P999: 150 * time.Millisecond, Max: 2 * time.Second}},
			{Name: "read", Unit: "txn", Count: 50, Elapsed: 2 * time.Second},
		},
	}
}

func TestRate(t *testing.T) {
	r := sampleResult()
	if got := r.Primary().Rate(); got != 50 {
		t.Fatalf("rate = %v, want 50", got)
	}
	if got := (OpResult{Count: 5}).Rate(); got != 0 {
		t.Fatalf("rate without elapsed = %v, want 0", got)
	}
	if o, ok := r.Op("read"); !ok || o.Count != 50 {
		t.Fatalf("Op(read) = %+v, %v", o, ok)
	}
	if _, ok := r.Op("write"); ok {
		t.Fatal("Op(write) found")
	}
	if (&Result{}).Primary().Name != "" {
		t.Fatal("Primary of an empty result is not zero")
	}
}

func TestResultJSONSchema(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteJSON(&buf, sampleResult()); err != nil {
		t.Fatal(err)
	}
	var raw []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &raw); err != nil {
		t.Fatalf("not a JSON array: %v\n%s", err, buf.String())
	}
	if len(raw) != 1 || raw[0]["workload"] != "txn-mixed" || raw[0]["elapsed_s"] != 3.0 {
		t.Fatalf("unexpected top level: %v", raw)
	}
	op := raw[0]["ops"].([]any)[0].(map[string]any)
	if op["per_second"] != 50.0 || op["count"] != 100.0 || op["errors"] != 2.0 || op["first_error"] != "boom" {
		t.Fatalf("unexpected op: %v", op)
	}
	if lat := op["latency"].(map[string]any); lat["p99_9_ms"] != 150.0 {
		t.Fatalf("unexpected latency: %v", lat)
	}
	var back []*Result
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	want := sampleResult()
	if back[0].Ops[0].Latency != want.Ops[0].Latency || back[0].Ops[0].Elapsed != want.Ops[0].Elapsed ||
		back[0].Params["clients"] != "2" || !back[0].Started.Equal(want.Started) {
		t.Fatalf("round trip = %+v, want %+v", back[0], want)
	}

	buf.Reset()
	if err := WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(buf.String()) != "[]" {
		t.Fatalf("no results = %q, want []", buf.String())
	}
}

func TestWriteTable(t *testing.T) {
	var buf bytes.Buffer
	r := sampleResult()
	if err := WriteTable(&buf, r, r); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if lines[0] != "txn-mixed  clients=2 conns=1 total=100" {
		t.Fatalf("heading = %q", lines[0])
	}
	header := strings.Fields(lines[1])
	wantHeader := []string{"op", "count", "errors", "elapsed", "rate/s", "min", "ms", "mean", "ms", "p50", "ms", "p90", "ms", "p99", "ms", "p99.9", "ms", "max", "ms"}
	if strings.Join(header, " ") != strings.Join(wantHeader, " ") {
		t.Fatalf("header = %q", lines[1])
	}
	row := strings.Fields(lines[2])
	wantRow := []string{"txn", "100", "2", "2s", "50.0", "0.050", "2.00", "1.50", "3.00", "12.0", "150", "2000"}
	if strings.Join(row, " ") != strings.Join(wantRow, " ") {
		t.Fatalf("row = %q, want %q", row, wantRow)
	}
	// The op column reads left-aligned.
	col := strings.Index(lines[1], "op")
	if strings.Index(lines[2], "txn ") != col || strings.Index(lines[3], "read") != col {
		t.Fatalf("op column not left-aligned:\n%s", out)
	}
	if !strings.Contains(out, "txn: 2 errors, first: boom\n") {
		t.Fatalf("missing error line:\n%s", out)
	}
	if strings.Count(out, "txn-mixed  ") != 2 || !strings.Contains(out, "\n\ntxn-mixed") {
		t.Fatalf("two results are not separated by a blank line:\n%s", out)
	}
}

func TestFormatting(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0"}, {123 * time.Microsecond, "0.123"}, {1234 * time.Microsecond, "1.23"},
		{12345 * time.Microsecond, "12.3"}, {123456 * time.Microsecond, "123"}, {2 * time.Second, "2000"},
	} {
		if got := FormatMillis(c.d); got != c.want {
			t.Errorf("FormatMillis(%v) = %q, want %q", c.d, got, c.want)
		}
	}
	for _, c := range []struct {
		r    float64
		want string
	}{{1.234, "1.23"}, {12.34, "12.3"}, {1234.5, "1234"}, {98765.4, "98765"}} {
		if got := FormatRate(c.r); got != c.want {
			t.Errorf("FormatRate(%v) = %q, want %q", c.r, got, c.want)
		}
	}
	if got := FormatParams(map[string]string{"b": "2", "a": "1", "c": "x y"}); got != "a=1 b=2 c=x y" {
		t.Errorf("FormatParams = %q", got)
	}
	if got := FormatParams(nil); got != "" {
		t.Errorf("FormatParams(nil) = %q", got)
	}
	if got := Millis(1500 * time.Nanosecond); got != 0.002 {
		t.Errorf("Millis(1.5µs) = %v, want 0.002", got)
	}
}
