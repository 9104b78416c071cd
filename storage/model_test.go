package storage_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/storage"
)

// model is a deliberately naive reference implementation of etcd's MVCC
// semantics: every version of every key is kept forever in a list, and reads
// scan it. Compaction only raises the readable floor.
type model struct {
	rev, compact int64
	hist         map[string][]mver
}

type mver struct {
	main, sub   int64
	tomb        bool
	val         string
	create, ver int64
	key         string
}

func newModel() *model { return &model{rev: 1, compact: -1, hist: map[string][]mver{}} }

func (m *model) live(k string, at int64) (mver, bool) {
	vs := m.hist[k]
	for i := len(vs) - 1; i >= 0; i-- {
		if vs[i].main <= at {
			if vs[i].tomb {
				return mver{}, false
			}
			return vs[i], true
		}
	}
	return mver{}, false
}

func inRange(k, key, end string) bool {
	switch end {
	case "":
		return k == key
	case "\x00":
		return k >= key
	}
	return k >= key && k < end
}

func (m *model) rangeAt(key, end string, at int64) []*mvccpb.KeyValue {
	var keys []string
	for k := range m.hist {
		if inRange(k, key, end) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var out []*mvccpb.KeyValue
	for _, k := range keys {
		if v, ok := m.live(k, at); ok {
			out = append(out, kv(k, v.val, v.create, v.main, v.ver, 0))
		}
	}
	return out
}

// mop is one request applied to the model: at most one new revision.
type mop struct {
	m       *model
	begin   int64
	changes int64
}

func (m *model) begin() *mop { return &mop{m: m, begin: m.rev} }

func (o *mop) readRev() int64 {
	if o.changes > 0 {
		return o.begin + 1
	}
	return o.begin
}

func (o *mop) end() {
	if o.changes > 0 {
		o.m.rev = o.begin + 1
	}
}

func (o *mop) put(k, v string) {
	cur, ok := o.m.live(k, o.readRev())
	create, ver := o.begin+1, int64(1)
	if ok {
		create, ver = cur.create, cur.ver+1
	}
	o.m.hist[k] = append(o.m.hist[k], mver{main: o.begin + 1, sub: o.changes, val: v, create: create, ver: ver, key: k})
	o.changes++
}

func (o *mop) del(key, end string) int64 {
	n := int64(0)
	for _, kv := range o.m.rangeAt(key, end, o.readRev()) {
		k := string(kv.Key)
		o.m.hist[k] = append(o.m.hist[k], mver{main: o.begin + 1, sub: o.changes, tomb: true, key: k})
		o.changes++
		n++
	}
	return n
}

// events rebuilds the watch history for revisions >= from, with etcd's
// prev_kv rule (value at mod-1 for non-creations, if not compacted).
func (m *model) events(from int64) []storage.RevisionEvents {
	var all []mver
	for _, vs := range m.hist {
		for _, v := range vs {
			if v.main >= from {
				all = append(all, v)
			}
		}
	}
	slices.SortFunc(all, func(a, b mver) int {
		if a.main != b.main {
			return int(a.main - b.main)
		}
		return int(a.sub - b.sub)
	})
	var out []storage.RevisionEvents
	for _, v := range all {
		e := &mvccpb.Event{}
		if v.tomb {
			e.Type = mvccpb.Event_DELETE
			e.Kv = &mvccpb.KeyValue{Key: []byte(v.key), ModRevision: v.main}
		} else {
			e.Kv = kv(v.key, v.val, v.create, v.main, v.ver, 0)
		}
		if (v.tomb || v.ver > 1) && v.main-1 >= m.compact {
			if p, ok := m.live(v.key, v.main-1); ok {
				e.PrevKv = kv(v.key, p.val, p.create, p.main, p.ver, 0)
			}
		}
		if n := len(out); n > 0 && out[n-1].Revision == v.main {
			out[n-1].Events = append(out[n-1].Events, e)
		} else {
			out = append(out, storage.RevisionEvents{Revision: v.main, Events: []*mvccpb.Event{e}})
		}
	}
	return out
}

var modelKeys = []string{"a", "a\x00", "a\xff", "ab", "b", "b\x00\x00", "\x00", "\xff"}

func TestModel(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runModel(t, seed, 300) })
	}
}

func runModel(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, seed*7+1))
	m := newModel()
	primary := newMem(t)
	// The mirror applies the same requests and is reopened now and then:
	// its responses and hashes must match the primary's.
	mirrorFS := vfs.NewMem()
	openMirror := func() *storage.Store {
		s, err := storage.Open("mirror", storage.Options{FS: mirrorFS, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	mirror := openMirror()
	defer func() { _ = mirror.Close() }()

	key := func() string { return modelKeys[rng.IntN(len(modelKeys))] }
	end := func(k string) string {
		switch rng.IntN(4) {
		case 0:
			return ""
		case 1:
			return "\x00"
		}
		return key() // may be <= k: an empty range
	}
	val := func() string { return fmt.Sprint(rng.IntN(5)) }
	rangeEnd := func(e string) []byte {
		if e == "" {
			return nil
		}
		return []byte(e)
	}

	for step := range steps {
		// Each step builds the request(s) once, applies them to the model and
		// to both stores, and compares the responses.
		var reqs []func(b *storage.Batch) (proto.Message, error)
		nOps := 1
		if rng.IntN(8) == 0 {
			nOps = 2 + rng.IntN(2) // several requests in one batch
		}
		for range nOps {
			switch p := rng.IntN(20); {
			case p < 8:
				k, v := key(), val()
				o := m.begin()
				o.put(k, v)
				o.end()
				reqs = append(reqs, func(b *storage.Batch) (proto.Message, error) {
					return b.Put(&pb.PutRequest{Key: []byte(k), Value: []byte(v), PrevKv: true})
				})
			case p < 11:
				k := key()
				e := end(k)
				o := m.begin()
				o.del(k, e)
				o.end()
				reqs = append(reqs, func(b *storage.Batch) (proto.Message, error) {
					return b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: rangeEnd(e), PrevKv: true})
				})
			case p < 17:
				k1, k2, k3, v := key(), key(), key(), val()
				want := int64(rng.IntN(3))
				o := m.begin()
				cur, _ := m.live(k1, o.begin)
				nested := rng.IntN(2) == 0
				if cur.ver == want {
					o.put(k2, v)
					o.del(k3, "")
					if nested {
						// nested compare runs against the pre-txn state
						if c, _ := m.live(k3, o.begin); c.ver > 0 {
							o.put(k3, v+"n")
						}
					}
				} else {
					o.put(k1, v)
				}
				o.end()
				req := &pb.TxnRequest{
					Compare: []*pb.Compare{cmpVersion(k1, pb.Compare_EQUAL, want)},
					Success: []*pb.RequestOp{opPut(k2, v), opGet(k2, ""), opDel(k3, "")},
					Failure: []*pb.RequestOp{opPut(k1, v), opGet(k1, "\x00")},
				}
				if nested {
					req.Success = append(req.Success, opTxn(&pb.TxnRequest{
						Compare: []*pb.Compare{cmpVersion(k3, pb.Compare_GREATER, 0)},
						Success: []*pb.RequestOp{opPut(k3, v+"n"), opGet("\x00", "\x00")},
					}))
				}
				reqs = append(reqs, func(b *storage.Batch) (proto.Message, error) { return b.Txn(req) })
			default:
				if m.rev <= m.compact {
					continue
				}
				// Not at revision 0 (TestCompactZero covers it): HashKV(0)
				// would then return the hash stored by that compaction, as
				// etcd's does, which the reopened mirror no longer has.
				lo := max(m.compact+1, 1)
				rev := lo + rng.Int64N(m.rev-lo+1)
				m.compact = rev
				reqs = append(reqs, func(b *storage.Batch) (proto.Message, error) { return b.Compact(rev) })
			}
		}
		var got [2][]proto.Message
		for i, s := range []*storage.Store{primary.s, mirror} {
			b := s.NewBatch()
			for _, r := range reqs {
				resp, err := r(b)
				if err != nil {
					t.Fatalf("step %d: store %d: %v", step, i, err)
				}
				got[i] = append(got[i], resp)
			}
			if err := b.Commit(false); err != nil {
				t.Fatalf("step %d: commit: %v", step, err)
			}
		}
		for i := range got[0] {
			if !proto.Equal(got[0][i], got[1][i]) {
				t.Fatalf("step %d: primary and mirror responses differ:\n%v\n%v", step, got[0][i], got[1][i])
			}
		}
		if primary.s.Rev() != m.rev || primary.s.CompactRev() != m.compact {
			t.Fatalf("step %d: rev %d compact %d, model %d %d", step, primary.s.Rev(), primary.s.CompactRev(), m.rev, m.compact)
		}
		if step%25 == 24 {
			if err := mirror.Close(); err != nil {
				t.Fatal(err)
			}
			mirror = openMirror()
		}
		h1, _, _, err1 := primary.s.HashKV(0)
		h2, _, _, err2 := mirror.HashKV(0)
		if err1 != nil || err2 != nil || h1 != h2 {
			t.Fatalf("step %d: hashes %x %v / %x %v", step, h1, err1, h2, err2)
		}
		// Random reads at random revisions, compared with the model.
		for range 3 {
			k := key()
			e := end(k)
			at := m.compact - 1 + rng.Int64N(m.rev-m.compact+3) // from below the floor to the future
			limit := rng.Int64N(3)
			resp, err := primary.s.Range(&pb.RangeRequest{Key: []byte(k), RangeEnd: rangeEnd(e), Revision: at, Limit: limit})
			switch {
			case at > m.rev:
				wantErr(t, "future read", err, storage.ErrFutureRev)
				continue
			case at > 0 && at < m.compact:
				wantErr(t, "compacted read", err, storage.ErrCompacted)
				continue
			case err != nil:
				t.Fatalf("step %d: range %q-%q@%d: %v", step, k, e, at, err)
			}
			if at <= 0 {
				at = m.rev
			}
			want := m.rangeAt(k, e, at)
			count, more := int64(len(want)), false
			if limit > 0 && int64(len(want)) > limit {
				want, more = want[:limit], true
			}
			eqKVs(t, fmt.Sprintf("step %d range %q-%q@%d limit %d", step, k, e, at, limit), resp.Kvs, want...)
			if resp.Count != count || resp.More != more || resp.Header.Revision != m.rev {
				t.Fatalf("step %d: count %d more %v rev %d, want %d %v %d", step, resp.Count, resp.More, resp.Header.Revision, count, more, m.rev)
			}
		}
	}
	from := max(m.compact, 1)
	got, err := primary.s.RangeEvents(from, 0, []byte{0}, []byte{0})
	if err != nil {
		t.Fatal(err)
	}
	want := m.events(from)
	// A compaction at revision C keeps only the newest version at C of each
	// key (as etcd does), so sub-revisions at exactly C may be gone.
	if len(want) > 0 && want[0].Revision == m.compact {
		if len(got) == 0 || got[0].Revision != m.compact {
			t.Fatalf("history lost the compact revision: %v", got)
		}
		got, want = got[1:], want[1:]
	}
	eqHistory(t, "model history", got, want)
}
