package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is what one workload run measured.
type Result struct {
	Workload  string            // e.g. "put"
	Params    map[string]string // the settings that shaped the run, for the record
	Endpoints []string
	Started   time.Time
	Elapsed   time.Duration // wall time of the whole run, set-up included
	// Ops has one entry per kind of operation; Ops[0] is the primary one
	// (the operation the workload is named after).
	Ops []OpResult
}

// OpResult is the measurement of one kind of operation.
type OpResult struct {
	Name       string        // e.g. "put", "read", "event"
	Unit       string        // what Count counts: "req", "txn", "event", "watch"
	Count      int64         // successful operations
	Errors     int64         // failed operations (not in Latency)
	FirstError string        // the first failure, verbatim
	Elapsed    time.Duration // wall time of the timed phase
	Latency    Latency
}

// Rate is successful operations per second of the timed phase.
func (o OpResult) Rate() float64 {
	if o.Elapsed <= 0 {
		return 0
	}
	return float64(o.Count) / o.Elapsed.Seconds()
}

// Op returns the operation named name, or false.
func (r *Result) Op(name string) (OpResult, bool) {
	for _, o := range r.Ops {
		if o.Name == name {
			return o, true
		}
	}
	return OpResult{}, false
}

// Primary returns Ops[0] (zero when there is none).
func (r *Result) Primary() OpResult {
	if len(r.Ops) == 0 {
		return OpResult{}
	}
	return r.Ops[0]
}

// opJSON and resultJSON fix the JSON schema: durations as seconds or
// milliseconds with the unit in the name, so other tools need no Go types.
type opJSON struct {
	Name       string  `json:"name"`
	Unit       string  `json:"unit"`
	Count      int64   `json:"count"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	ElapsedS   float64 `json:"elapsed_s"`
	PerSecond  float64 `json:"per_second"`
	Latency    Latency `json:"latency"`
}

type resultJSON struct {
	Workload  string            `json:"workload"`
	Params    map[string]string `json:"params,omitempty"`
	Endpoints []string          `json:"endpoints,omitempty"`
	Started   time.Time         `json:"started"`
	ElapsedS  float64           `json:"elapsed_s"`
	Ops       []opJSON          `json:"ops"`
}

func seconds(d time.Duration) float64 { return math.Round(d.Seconds()*1e6) / 1e6 }

// MarshalJSON writes the stable schema described on resultJSON.
func (r *Result) MarshalJSON() ([]byte, error) {
	j := resultJSON{Workload: r.Workload, Params: r.Params, Endpoints: r.Endpoints, Started: r.Started, ElapsedS: seconds(r.Elapsed)}
	j.Ops = make([]opJSON, 0, len(r.Ops))
	for _, o := range r.Ops {
		j.Ops = append(j.Ops, opJSON{
			Name: o.Name, Unit: o.Unit, Count: o.Count, Errors: o.Errors, FirstError: o.FirstError,
			ElapsedS: seconds(o.Elapsed), PerSecond: math.Round(o.Rate()*100) / 100, Latency: o.Latency,
		})
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON writes (per_second is derived, so it
// is recomputed from count and elapsed_s).
func (r *Result) UnmarshalJSON(b []byte) error {
	var j resultJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Result{Workload: j.Workload, Params: j.Params, Endpoints: j.Endpoints, Started: j.Started,
		Elapsed: time.Duration(j.ElapsedS * float64(time.Second))}
	for _, o := range j.Ops {
		r.Ops = append(r.Ops, OpResult{Name: o.Name, Unit: o.Unit, Count: o.Count, Errors: o.Errors, FirstError: o.FirstError,
			Elapsed: time.Duration(o.ElapsedS * float64(time.Second)), Latency: o.Latency})
	}
	return nil
}

// WriteJSON writes the results as one indented JSON array.
func WriteJSON(w io.Writer, results ...*Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if results == nil {
		results = []*Result{}
	}
	return enc.Encode(results)
}

// WriteTable writes each result as a heading line with its parameters and a
// table with one row per operation: count, errors, rate and latency
// percentiles in milliseconds.
func WriteTable(w io.Writer, results ...*Result) error {
	for i, r := range results {
		if i > 0 {
			if _, err := fmt.Fprintln(w); err != nil {
				return err
			}
		}
		if err := writeOne(w, r); err != nil {
			return err
		}
	}
	return nil
}

func writeOne(w io.Writer, r *Result) error {
	head := r.Workload
	if p := FormatParams(r.Params); p != "" {
		head += "  " + p
	}
	if _, err := fmt.Fprintf(w, "%s\n", head); err != nil {
		return err
	}
	// Numbers align right; the op column is padded so it reads left-aligned.
	width := len("op")
	for _, o := range r.Ops {
		width = max(width, len(o.Name))
	}
	pad := func(s string) string { return s + strings.Repeat(" ", width-len(s)) }
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, pad("op")+"\tcount\terrors\telapsed\trate/s\tmin ms\tmean ms\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\tmax ms\t")
	for _, o := range r.Ops {
		l := o.Latency
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			pad(o.Name), o.Count, o.Errors, o.Elapsed.Round(time.Millisecond), FormatRate(o.Rate()),
			FormatMillis(l.Min), FormatMillis(l.Mean), FormatMillis(l.P50), FormatMillis(l.P90),
			FormatMillis(l.P99), FormatMillis(l.P999), FormatMillis(l.Max))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, o := range r.Ops {
		if o.Errors > 0 {
			if _, err := fmt.Fprintf(w, "%s: %d errors, first: %s\n", o.Name, o.Errors, o.FirstError); err != nil {
				return err
			}
		}
	}
	return nil
}

// FormatParams renders params as "k=v" pairs sorted by key.
func FormatParams(p map[string]string) string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(p[k])
	}
	return b.String()
}

// FormatMillis renders d in milliseconds with three significant digits
// below 100 ms ("0.123", "12.3", "456").
func FormatMillis(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms == 0:
		return "0"
	case ms < 1:
		return fmt.Sprintf("%.3f", ms)
	case ms < 10:
		return fmt.Sprintf("%.2f", ms)
	case ms < 100:
		return fmt.Sprintf("%.1f", ms)
	default:
		return fmt.Sprintf("%.0f", ms)
	}
}

// FormatRate renders a per-second rate with a precision that suits its size.
func FormatRate(r float64) string {
	switch {
	case r < 10:
		return fmt.Sprintf("%.2f", r)
	case r < 1000:
		return fmt.Sprintf("%.1f", r)
	default:
		return fmt.Sprintf("%.0f", r)
	}
}
