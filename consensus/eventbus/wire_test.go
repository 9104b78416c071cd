package eventbus

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// testRevision builds a revision of n puts with prev_kv and values of size bytes.
func testRevision(rev int64, n, size int) Revision {
	r := Revision{Rev: rev}
	for i := range n {
		key := fmt.Appendf(nil, "k%06d", i)
		r.Events = append(r.Events, &mvccpb.Event{
			Type:   mvccpb.Event_PUT,
			Kv:     &mvccpb.KeyValue{Key: key, Value: bytes.Repeat([]byte{byte(i)}, size), CreateRevision: 1, ModRevision: rev, Version: 2},
			PrevKv: &mvccpb.KeyValue{Key: key, Value: bytes.Repeat([]byte{byte(i + 1)}, size), CreateRevision: 1, ModRevision: 1, Version: 1},
		})
	}
	return r
}

func decodeAll(t *testing.T, chunks [][]byte) []*pb.WatchResponse {
	t.Helper()
	var out []*pb.WatchResponse
	for i, c := range chunks {
		w, err := decode(c)
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		out = append(out, w)
	}
	return out
}

func equalEvents(a, b []*mvccpb.Event) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func TestSplitRevisionFitsInOneChunk(t *testing.T) {
	r := testRevision(5, 3, 10)
	chunks, err := splitRevision(r, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(chunks) != 1 {
		t.Fatalf("%d chunks, want 1", len(chunks))
	}
	w := decodeAll(t, chunks)[0]
	if w.Header.Revision != 5 || w.WatchId != 0 || w.Fragment || !equalEvents(w.Events, r.Events) {
		t.Fatalf("bad single chunk: %v", w)
	}
}

func TestSplitRevisionFragments(t *testing.T) {
	for _, maxPayload := range []int{1024, 4096, 64 << 10} {
		r := testRevision(42, 500, 100)
		chunks, err := splitRevision(r, maxPayload)
		if err != nil {
			t.Fatal(err)
		}
		if len(chunks) < 2 {
			t.Fatalf("max %d: %d chunks, want several", maxPayload, len(chunks))
		}
		ws := decodeAll(t, chunks)
		var a assembler
		for i, w := range ws {
			if len(chunks[i]) > maxPayload {
				t.Fatalf("max %d: chunk %d has %d bytes", maxPayload, i, len(chunks[i]))
			}
			if w.WatchId != int64(i) || w.Fragment != (i < len(ws)-1) || w.Header.Revision != 42 {
				t.Fatalf("max %d: chunk %d: id %d fragment %v rev %d", maxPayload, i, w.WatchId, w.Fragment, w.Header.Revision)
			}
			msg, ok, dropped := a.push(w, len(chunks[i]))
			if dropped != 0 || ok != (i == len(ws)-1) {
				t.Fatalf("max %d: chunk %d: ok %v dropped %d", maxPayload, i, ok, dropped)
			}
			if ok && (msg.Rev != 42 || msg.Progress || !equalEvents(msg.Events, r.Events)) {
				t.Fatalf("max %d: reassembled revision differs", maxPayload)
			}
		}
	}
}

func TestSplitRevisionEventTooLarge(t *testing.T) {
	r := testRevision(7, 2, 4000)
	if _, err := splitRevision(r, 4096); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
}

// chunksOf returns decoded chunks of a revision split at maxPayload.
func chunksOf(t *testing.T, r Revision, maxPayload int) []*pb.WatchResponse {
	t.Helper()
	c, err := splitRevision(r, maxPayload)
	if err != nil {
		t.Fatal(err)
	}
	return decodeAll(t, c)
}

func TestAssemblerDropsIncompleteSequences(t *testing.T) {
	const maxPayload = 2048
	r7, r8 := testRevision(7, 40, 50), testRevision(8, 40, 50)
	c7, c8 := chunksOf(t, r7, maxPayload), chunksOf(t, r8, maxPayload)
	// The drop counts below assume 3 chunks per revision. Each dropped
	// partial sequence counts 1 and so does each stray chunk that arrives
	// without its beginning.
	if len(c7) != 3 || len(c8) != 3 {
		t.Fatalf("need 3 chunks per revision, got %d and %d", len(c7), len(c8))
	}
	progress := progressResponse(9)
	cat := func(parts ...[]*pb.WatchResponse) []*pb.WatchResponse {
		var out []*pb.WatchResponse
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	without := func(c []*pb.WatchResponse, i int) []*pb.WatchResponse {
		return cat(c[:i:i], c[i+1:])
	}
	cases := []struct {
		name    string
		in      []*pb.WatchResponse
		want    []int64 // revisions delivered (progress beats as -rev)
		dropped int
	}{
		{"complete", cat(c7, c8), []int64{7, 8}, 0},
		{"missing middle", cat(without(c7, 1), c8), []int64{8}, 2},       // the prefix, then the stray tail
		{"missing first", cat(without(c7, 0), c8), []int64{8}, 2},        // two stray chunks
		{"missing last", cat(without(c7, len(c7)-1), c8), []int64{8}, 1}, // prefix dropped when 8 begins
		{"duplicate chunk", cat(c7[:2], c7[1:], c8), []int64{8}, 3},
		{"interleaved", cat(c7[:1], c8[:1], c7[1:], c8[1:]), nil, 6},
		{"progress inside", cat(c7[:1], []*pb.WatchResponse{progress}, c7[1:], c8), []int64{-9, 8}, 3},
		{"trailing incomplete", cat(c8, c7[:2]), []int64{8}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var a assembler
			var got []int64
			dropped := 0
			for _, w := range tc.in {
				msg, ok, d := a.push(w, 100)
				dropped += d
				if !ok {
					continue
				}
				if msg.Progress {
					got = append(got, -msg.Rev)
					continue
				}
				want := map[int64]Revision{7: r7, 8: r8}[msg.Rev]
				if !equalEvents(msg.Events, want.Events) {
					t.Fatalf("revision %d delivered with %d events, want exactly its %d", msg.Rev, len(msg.Events), len(want.Events))
				}
				got = append(got, msg.Rev)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || dropped != tc.dropped {
				t.Fatalf("delivered %v dropped %d, want %v dropped %d", got, dropped, tc.want, tc.dropped)
			}
		})
	}
}

func TestAssemblerMaxBytes(t *testing.T) {
	r := testRevision(3, 100, 100)
	raw, err := splitRevision(r, 2048)
	if err != nil {
		t.Fatal(err)
	}
	a := assembler{maxBytes: 4096}
	for i, w := range decodeAll(t, raw) {
		if _, ok, _ := a.push(w, len(raw[i])); ok {
			t.Fatal("revision larger than maxBytes delivered")
		}
	}
	// The next revision is unaffected.
	small := testRevision(4, 1, 1)
	w := decodeAll(t, chunksOfRaw(t, small))[0]
	if msg, ok, _ := a.push(w, 10); !ok || msg.Rev != 4 {
		t.Fatal("next revision not delivered")
	}
}

func chunksOfRaw(t *testing.T, r Revision) [][]byte {
	t.Helper()
	c, err := splitRevision(r, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeRejectsMalformed(t *testing.T) {
	ev := testRevision(5, 1, 1).Events[0]
	cases := map[string][]byte{
		"garbage":          []byte("\xff\xff\xff\xff"),
		"truncated":        chunksOfRaw(t, testRevision(5, 3, 10))[0][:20],
		"empty":            {},
		"no header":        mustMarshal(t, &pb.WatchResponse{Events: []*mvccpb.Event{ev}}),
		"zero revision":    mustMarshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{}, Events: []*mvccpb.Event{ev}}),
		"no events":        mustMarshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: 5}}),
		"wrong modrev":     mustMarshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: 6}, Events: []*mvccpb.Event{ev}}),
		"nil kv":           mustMarshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: 5}, Events: []*mvccpb.Event{{}}}),
		"bad type":         mustMarshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: 5}, Events: []*mvccpb.Event{{Type: 9, Kv: ev.Kv}}}),
		"negative chunk":   mustMarshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: 5}, WatchId: -2, Events: []*mvccpb.Event{ev}}),
		"progress w/ evs":  mustMarshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: 5}, WatchId: -1, Events: []*mvccpb.Event{ev}}),
		"progress w/ frag": mustMarshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: 5}, WatchId: -1, Fragment: true}),
		"progress neg rev": mustMarshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: -5}, WatchId: -1}),
	}
	for name, data := range cases {
		if _, err := decode(data); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
	w, err := decode(mustMarshal(t, progressResponse(12)))
	if err != nil || w.WatchId != -1 || w.Header.Revision != 12 {
		t.Fatalf("progress beat: %v %v", w, err)
	}
}

// FuzzDecode feeds arbitrary bytes to the wire decoder and the reassembler:
// they must never panic, and whatever they deliver must be well formed.
// The input is split at 0xFE bytes into several payloads, so sequences of
// chunks are explored too.
func FuzzDecode(f *testing.F) {
	for _, c := range [][]byte{
		mustMarshal(f, progressResponse(3)),
		[]byte("garbage"),
		{},
	} {
		f.Add(c)
	}
	r := testRevision(9, 20, 30)
	chunks, err := splitRevision(r, 1024)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(chunks[0])
	f.Add(bytes.Join(chunks, []byte{0xFE}))
	f.Fuzz(func(t *testing.T, data []byte) {
		a := assembler{maxBytes: 1 << 20}
		for _, p := range bytes.Split(data, []byte{0xFE}) {
			w, err := decode(p)
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("error not ErrMalformed: %v", err)
				}
				continue
			}
			msg, ok, _ := a.push(w, len(p))
			if !ok {
				continue
			}
			if msg.Progress {
				if len(msg.Events) != 0 || msg.Rev < 0 {
					t.Fatalf("bad progress %+v", msg)
				}
				continue
			}
			if err := validateRevisions([]Revision{{Rev: msg.Rev, Events: msg.Events}}); err != nil {
				t.Fatalf("delivered invalid revision: %v", err)
			}
		}
	})
}
