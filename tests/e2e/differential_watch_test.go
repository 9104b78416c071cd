package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// TestDifferentialWatch drives one seeded random sequence of writes and raw
// Watch stream requests against a real etcd and against concord, step by step,
// and compares what every stream received.
//
// The seed is fixed (dwDefaultSeed); E2E_DIFFWATCH_SEED=N runs another one and
// E2E_DIFFWATCH_STEPS=N another length. A failure names the seed and the step.
//
// Writes: puts (some with client-chosen lease IDs), single and range deletes,
// txns of several puts and deletes (one revision, several events; and txns that
// touch one key twice, which etcd refuses), lease revokes deleting their keys,
// compactions, and txns of two 700 KiB values (responses over etcd's 2 MiB
// fragment limit). Watch requests, on three streams: creates on a key, a range,
// a prefix, from a key and from "\x00", starting now, in the past (before,
// at and after the compaction revision), at the current revision, in the
// future and at -1; with prev_kv, NOPUT/NODELETE filters, progress_notify,
// fragment, automatic and client-chosen (also duplicate) IDs, empty ranges;
// cancels of live, compacted and unknown IDs; progress requests; and, two
// thirds in, a stream whose client closes its sending side (its watches go on).
//
// Determinism. After every step the test waits, on both servers, until every
// stream has all it will get: the control responses (created, canceled) the
// step asks for, and for every live watch all events up to the current
// revision, computed from a separate "oracle" watch of everything from
// revision 1. The sequence avoids what etcd itself does differently from one
// run to the next:
//   - A watch from the past is "unsynced" in etcd until its sync loop (every
//     100 ms) has sent its history; if that history is empty nobody can see
//     when that happened, and a progress request or a compaction in that
//     window is answered differently. Half of such watches are created from
//     "now" instead (start_revision 0), which is what they are equivalent
//     to; the others are kept, but until one got events no progress request
//     goes to its stream and no compaction beyond its start revision is made.
//   - etcd answers a progress request only when every watcher of the stream
//     is synced and has reached its start revision (a compacted watcher the
//     client has not canceled never is); otherwise it drops it for good. The
//     model predicts which requests are answered; unanswered ones are checked
//     by the final comparison (an answer concord sends that etcd does not
//     shows up there).
//
// Comparison, per stream, with cluster_id, member_id and raft_term removed
// from every header. What is relaxed, and why:
//   - etcd sends control responses (created, client cancel) and data
//     responses (events, compaction cancels, progress) from two channels its
//     send loop selects between at random, and events of one revision to
//     several watchers of a stream in map order. So the control responses are
//     compared in order, the data responses in order per watch (per
//     incarnation of a watch ID), the progress-request answers (watch ID -1)
//     in order, but not the interleaving of these sequences.
//   - Batching: a watch catching up from the past gets its revisions in one
//     response (header: the revision at that moment) in both, mostly; where
//     the two servers split one watch's events into different responses or
//     at other header revisions, the flattened events are compared instead
//     of the responses (counted as "rebatched", and logged). See
//     dwTolerateCatchUpSplits for the known case. Fragments are reassembled first; the
//     fragment count of each reassembled response is compared except for the
//     first response of a watch from the past (etcd sends events it holds
//     before the created response went out without fragmenting them: its
//     send-loop race, documented in TestWatchFragments).
//   - Progress notifications (progress_notify, by a timer) come at times
//     that depend on the clocks: they are not compared, but each is checked
//     on both servers: only for watches that asked, never below the watch's
//     start revision or the last event sent to it.
func TestDifferentialWatch(t *testing.T) {
	seed := uint64(dwDefaultSeed)
	if v := os.Getenv("E2E_DIFFWATCH_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("E2E_DIFFWATCH_SEED=%q: %v", v, err)
		}
		seed = n
	}
	steps := dwDefaultSteps
	if v := os.Getenv("E2E_DIFFWATCH_STEPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("E2E_DIFFWATCH_STEPS=%q: want a positive number", v)
		}
		steps = n
	}
	t.Logf("seed %d, %d steps (E2E_DIFFWATCH_SEED / E2E_DIFFWATCH_STEPS)", seed, steps)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	opts := serverOptions{extra: watchFlags}
	var sides [2]*dwSide
	for i, im := range impls {
		srv := startServer(t, im, opts)
		c := newClient(t, srv)
		sd := &dwSide{name: im.name, c: c, lease: pb.NewLeaseClient(c.ActiveConnection())}
		// As clientv3 (MaxCallRecvMsgSize): etcd sends a watch catching up all
		// its revisions (up to 1,000) in one response, whatever its size.
		big := grpc.MaxCallRecvMsgSize(math.MaxInt32)
		sd.oracle = openRaw(ctx, t, c, big)
		sd.oracle.create(&pb.WatchCreateRequest{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: 1, PrevKv: true})
		for range dwStreams {
			sd.streams = append(sd.streams, openRaw(ctx, t, c, big))
		}
		sides[i] = sd
	}
	m := &dwModel{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), rev: 1, steps: steps, streams: make([]*dwStreamModel, dwStreams)}
	for i := range m.streams {
		m.streams[i] = &dwStreamModel{byID: map[int64]*dwWatch{}}
	}
	start := time.Now()
	for step := range steps {
		m.step = step
		op := m.next()
		var outs [2]string
		for i, sd := range sides {
			outs[i] = op.run(ctx, t, m, sd, i == 0)
		}
		if outs[0] != outs[1] {
			t.Fatalf("seed %d step %d %s:\n etcd    %s\n concord %s", seed, step, op.desc, outs[0], outs[1])
		}
		for i, sd := range sides {
			if err := m.barrier(sd, i == 0); err != nil {
				t.Fatalf("seed %d step %d %s: %s: %v", seed, step, op.desc, sd.name, err)
			}
		}
		m.counts[op.kind]++
	}
	elapsed := time.Since(start)
	// A last write, so that answers concord should not have sent (a progress
	// request etcd dropped) have a chance to be there before the comparison.
	final := &dwOp{kind: "put", desc: "final put"}
	final.write = func(ctx context.Context, sd *dwSide) (int64, error) {
		r, err := sd.c.Put(ctx, "k/9", "final")
		return dwRevOf(r, err)
	}
	for i, sd := range sides {
		final.run(ctx, t, m, sd, i == 0)
	}
	for i, sd := range sides {
		if err := m.barrier(sd, i == 0); err != nil {
			t.Fatalf("seed %d final barrier: %s: %v", seed, sd.name, err)
		}
	}
	stats := m.compare(t, sides)
	t.Logf("seed %d: %d steps in %v, final revision %d, compaction %d; ops %v; %d watches created; %d refused, %d canceled by compaction; responses etcd %d concord %d; %d events compared (%d with prev_kv); %d fragmented responses; %d progress answers; progress notifications etcd %d concord %d; rebatched watches %d",
		seed, steps, elapsed.Round(time.Millisecond), m.rev, m.compactRev, m.counts, m.nCreates(), stats.failed, stats.compacted, stats.resps[0], stats.resps[1],
		stats.events, stats.prevKVs, stats.frags, stats.progress, stats.notify[0], stats.notify[1], stats.rebatched)
}

// dwTolerateCatchUpSplits relaxes the comparison of a watch whose events
// the two servers split into different responses (or with other header
// revisions) to its flattened events. Known difference: etcd's sync loop
// sends a watch catching up all its pending revisions (up to 1,000) in one
// response, whatever its size, with the store's revision in the header;
// concord's catch-up also ends a response when it passes MaxResponseBytes
// (2 MiB: here, catching up over the 700 KiB values), each part with its
// last revision in the header (watchfanout's package doc says why). Set it
// to false to see those watches fail.
const dwTolerateCatchUpSplits = true

const (
	dwDefaultSeed  = 20261207
	dwDefaultSteps = 500
	dwStreams      = 3
	dwKeys         = 10 // k/0 .. k/9
	dwBig          = 700 << 10
	dwWait         = 15 * time.Second
)

// dwSide is one server: its client, its oracle watch and its streams.
type dwSide struct {
	name    string
	c       *clientv3.Client
	lease   pb.LeaseClient
	oracle  *rawStream
	streams []*rawStream
}

// dwWatch is one create request and what the model knows of its watch.
type dwWatch struct {
	req        *pb.WatchCreateRequest
	stream     int
	idx        int   // its created response is the idx-th on its stream
	id         int64 // etcd's answer; -1 when refused
	failed     bool
	createdRev int64
	from       int64 // first revision it gets events of
	compacted  bool  // gets a compaction cancel
	canceled   bool  // canceled by the client
	history    bool  // starts in the past (gets its history in one response)
	// uncertain: from the past with nothing to send at creation, so when etcd
	// syncs it is unknown until it gets events; meanwhile no progress request
	// on its stream and no compaction above its start revision.
	uncertain bool
}

type dwStreamModel struct {
	creates   []*dwWatch
	byID      map[int64]*dwWatch // the IDs the server knows: live or compacted, not canceled
	nCtrl     int                // control responses expected so far
	nProgress int                // progress-request answers expected so far
}

type dwModel struct {
	rng        *rand.Rand
	step       int
	steps      int
	rev        int64 // current revision (etcd's)
	compactRev int64
	streams    []*dwStreamModel
	leases     []int64 // granted, not revoked
	nextLease  int64
	counts     map[string]int
	hist       []*mvccpb.Event // etcd's oracle events, in order
	sendClosed bool            // the last stream's sending side is closed
}

// stream picks the stream of a watch request: any, but the last one once
// its sending side is closed.
func (m *dwModel) stream() int {
	if m.sendClosed {
		return m.rng.IntN(dwStreams - 1)
	}
	return m.rng.IntN(dwStreams)
}

func (m *dwModel) nCreates() int {
	n := 0
	for _, s := range m.streams {
		n += len(s.creates)
	}
	return n
}

// dwOp is one step. Writes return the revision after them; watch requests are
// sent on one stream and their control response (if any) awaited.
type dwOp struct {
	kind, desc string
	write      func(ctx context.Context, sd *dwSide) (int64, error)
	watch      func(t *testing.T, m *dwModel, sd *dwSide, isEtcd bool) string
}

// dwRevOf is the revision in the header of a clientv3 response (its types are
// conversions of etcdserverpb's, without the methods).
func dwRevOf[T clientv3.PutResponse | clientv3.DeleteResponse | clientv3.TxnResponse | clientv3.CompactResponse | clientv3.LeaseRevokeResponse | pb.LeaseGrantResponse](r *T, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	var h *pb.ResponseHeader
	switch r := any(r).(type) {
	case *clientv3.PutResponse:
		h = r.Header
	case *clientv3.DeleteResponse:
		h = r.Header
	case *clientv3.TxnResponse:
		h = r.Header
	case *clientv3.CompactResponse:
		h = r.Header
	case *clientv3.LeaseRevokeResponse:
		h = r.Header
	case *pb.LeaseGrantResponse:
		h = r.Header
	}
	return h.GetRevision(), nil
}

// run runs op on one side and returns its normalized outcome. The model's
// revision follows etcd's answers.
func (op *dwOp) run(ctx context.Context, t *testing.T, m *dwModel, sd *dwSide, isEtcd bool) string {
	t.Helper()
	if op.write != nil {
		wctx, cancel := context.WithTimeout(ctx, dwWait)
		defer cancel()
		rev, err := op.write(wctx, sd)
		if isEtcd && err == nil {
			m.rev = max(m.rev, rev)
		}
		if err != nil {
			return "error: " + err.Error()
		}
		return fmt.Sprintf("revision %d", rev)
	}
	return op.watch(t, m, sd, isEtcd)
}

func (m *dwModel) key(i int) string { return "k/" + strconv.Itoa(i) }
func (m *dwModel) rkey() string     { return m.key(m.rng.IntN(dwKeys)) }
func (m *dwModel) val() string {
	return fmt.Sprintf("v%d-%s", m.step, strings.Repeat("x", m.rng.IntN(20)))
}

// next picks the next step.
func (m *dwModel) next() *dwOp {
	if m.counts == nil {
		m.counts = map[string]int{}
	}
	// The big txns at fixed steps: from the second on, with previous values
	// they make responses over the fragment limit.
	if m.steps >= 8 && m.step%(m.steps/4) == m.steps/8 {
		return m.genBig()
	}
	// Two thirds in, the client closes the sending side of the last stream:
	// its watches go on (etcd keeps serving them), it gets no more requests.
	if m.step == m.steps*2/3 {
		si := dwStreams - 1
		m.sendClosed = true
		return &dwOp{kind: "closesend", desc: fmt.Sprintf("stream %d close send", si), watch: func(t *testing.T, m *dwModel, sd *dwSide, isEtcd bool) string {
			if err := sd.streams[si].ws.CloseSend(); err != nil {
				t.Fatalf("%s: CloseSend: %v", sd.name, err)
			}
			return "closed"
		}}
	}
	for {
		p := m.rng.IntN(100)
		var op *dwOp
		switch {
		case p < 28:
			op = m.genCreate()
		case p < 36:
			op = m.genCancel()
		case p < 41:
			op = m.genProgress()
		case p < 55:
			op = m.genPut()
		case p < 61:
			op = m.genDelete()
		case p < 65:
			op = m.genDeleteRange()
		case p < 75:
			op = m.genTxn()
		case p < 77:
			op = m.genTxnSameKey()
		case p < 81:
			op = m.genLeaseGrant()
		case p < 87:
			op = m.genLeasePut()
		case p < 91:
			op = m.genLeaseRevoke()
		case p < 96:
			op = m.genCompact()
		default:
			op = m.genPut()
		}
		if op != nil {
			return op
		}
	}
}

func (m *dwModel) genPut() *dwOp {
	k, v := m.rkey(), m.val()
	return &dwOp{kind: "put", desc: fmt.Sprintf("put %s=%s", k, v), write: func(ctx context.Context, sd *dwSide) (int64, error) {
		return dwRevOf(sd.c.Put(ctx, k, v))
	}}
}

func (m *dwModel) genDelete() *dwOp {
	k := m.rkey()
	return &dwOp{kind: "delete", desc: "delete " + k, write: func(ctx context.Context, sd *dwSide) (int64, error) {
		return dwRevOf(sd.c.Delete(ctx, k, clientv3.WithPrevKV()))
	}}
}

func (m *dwModel) genDeleteRange() *dwOp {
	lo := m.rng.IntN(dwKeys)
	hi := lo + 1 + m.rng.IntN(4)
	from, to := m.key(lo), m.key(hi)
	if hi >= dwKeys {
		to = "k0" // the rest of the prefix
	}
	return &dwOp{kind: "deleterange", desc: fmt.Sprintf("delete [%s, %s)", from, to), write: func(ctx context.Context, sd *dwSide) (int64, error) {
		return dwRevOf(sd.c.Delete(ctx, from, clientv3.WithRange(to)))
	}}
}

// genTxn: several puts and deletes on distinct keys in one revision, with a
// compare that decides between two branches.
func (m *dwModel) genTxn() *dwOp {
	perm := m.rng.Perm(dwKeys)
	var then, els []clientv3.Op
	var desc []string
	n := 2 + m.rng.IntN(3)
	for i := range n {
		k := m.key(perm[i])
		if m.rng.IntN(3) == 0 {
			then = append(then, clientv3.OpDelete(k))
			desc = append(desc, "del "+k)
		} else {
			v := m.val()
			then = append(then, clientv3.OpPut(k, v))
			desc = append(desc, "put "+k+"="+v)
		}
	}
	ek, ev := m.key(perm[n]), m.val()
	els = append(els, clientv3.OpPut(ek, ev), clientv3.OpDelete(m.key(perm[n+1])))
	ck := m.rkey()
	cmpV := m.rng.IntN(3)
	return &dwOp{kind: "txn", desc: fmt.Sprintf("txn if version(%s)>%d then %v else put %s, del %s", ck, cmpV, desc, ek, m.key(perm[n+1])),
		write: func(ctx context.Context, sd *dwSide) (int64, error) {
			return dwRevOf(sd.c.Txn(ctx).If(clientv3.Compare(clientv3.Version(ck), ">", cmpV)).Then(then...).Else(els...).Commit())
		}}
}

// genTxnSameKey: a txn touching one key twice: two deletes of overlapping
// ranges (etcd allows them), or a put and a delete of one key, or two puts
// (etcd refuses both: "duplicate key given in txn request").
func (m *dwModel) genTxnSameKey() *dwOp {
	i := m.rng.IntN(dwKeys - 1)
	k, k2 := m.key(i), m.key(i+1)
	var ops []clientv3.Op
	var desc string
	switch m.rng.IntN(3) {
	case 0:
		ops = []clientv3.Op{clientv3.OpDelete(k), clientv3.OpDelete(k, clientv3.WithRange(m.key(i+2))), clientv3.OpPut("k/x", m.val())}
		desc = fmt.Sprintf("del %s, del [%s,%s), put k/x", k, k, m.key(i+2))
	case 1:
		ops = []clientv3.Op{clientv3.OpPut(k, m.val()), clientv3.OpDelete(k)}
		desc = fmt.Sprintf("put %s, del %s", k, k)
	default:
		ops = []clientv3.Op{clientv3.OpPut(k, m.val()), clientv3.OpPut(k2, m.val()), clientv3.OpPut(k, m.val())}
		desc = fmt.Sprintf("put %s, put %s, put %s", k, k2, k)
	}
	return &dwOp{kind: "txnsame", desc: "txn " + desc, write: func(ctx context.Context, sd *dwSide) (int64, error) {
		return dwRevOf(sd.c.Txn(ctx).Then(ops...).Commit())
	}}
}

func (m *dwModel) genLeaseGrant() *dwOp {
	if len(m.leases) >= 3 {
		return nil
	}
	m.nextLease++
	id := 0x7000 + m.nextLease
	m.leases = append(m.leases, id)
	return &dwOp{kind: "grant", desc: fmt.Sprintf("lease grant %x", id), write: func(ctx context.Context, sd *dwSide) (int64, error) {
		r, err := sd.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: 600})
		if err == nil && r.Error != "" {
			return 0, fmt.Errorf("grant: %s", r.Error)
		}
		return dwRevOf(r, err)
	}}
}

func (m *dwModel) genLeasePut() *dwOp {
	if len(m.leases) == 0 {
		return nil
	}
	id := m.leases[m.rng.IntN(len(m.leases))]
	k, v := m.rkey(), m.val()
	return &dwOp{kind: "leaseput", desc: fmt.Sprintf("put %s=%s lease %x", k, v, id), write: func(ctx context.Context, sd *dwSide) (int64, error) {
		return dwRevOf(sd.c.Put(ctx, k, v, clientv3.WithLease(clientv3.LeaseID(id))))
	}}
}

func (m *dwModel) genLeaseRevoke() *dwOp {
	if len(m.leases) == 0 {
		return nil
	}
	i := m.rng.IntN(len(m.leases))
	id := m.leases[i]
	m.leases = slices.Delete(m.leases, i, i+1)
	return &dwOp{kind: "revoke", desc: fmt.Sprintf("lease revoke %x", id), write: func(ctx context.Context, sd *dwSide) (int64, error) {
		return dwRevOf(sd.c.Revoke(ctx, clientv3.LeaseID(id)))
	}}
}

func (m *dwModel) genCompact() *dwOp {
	if m.rev <= m.compactRev+1 {
		return nil
	}
	top := m.rev
	for _, sm := range m.streams {
		for _, w := range sm.byID {
			if w.uncertain {
				top = min(top, w.req.StartRevision)
			}
		}
	}
	if top <= m.compactRev {
		return nil
	}
	rev := m.compactRev + 1 + m.rng.Int64N(top-m.compactRev)
	m.compactRev = rev
	return &dwOp{kind: "compact", desc: fmt.Sprintf("compact %d", rev), write: func(ctx context.Context, sd *dwSide) (int64, error) {
		return dwRevOf(sd.c.Compact(ctx, rev, clientv3.WithCompactPhysical()))
	}}
}

// genBig writes two 700 KiB values in one txn: with previous values, a
// response over the 2 MiB limit that fragment watches get in fragments.
func (m *dwModel) genBig() *dwOp {
	c := byte('a' + m.step%26)
	return &dwOp{kind: "big", desc: fmt.Sprintf("txn put b/1, b/2 = %c x 700KiB", c), write: func(ctx context.Context, sd *dwSide) (int64, error) {
		v := strings.Repeat(string(c), dwBig)
		return dwRevOf(sd.c.Txn(ctx).Then(clientv3.OpPut("b/1", v), clientv3.OpPut("b/2", v)).Commit())
	}}
}

// ---- watch requests ----

// genCreate makes a random create request on a random stream.
func (m *dwModel) genCreate() *dwOp {
	si := m.stream()
	req := &pb.WatchCreateRequest{}
	switch p := m.rng.IntN(100); {
	case p < 30:
		req.Key = []byte(m.rkey())
	case p < 45:
		lo := m.rng.IntN(dwKeys)
		req.Key, req.RangeEnd = []byte(m.key(lo)), []byte(m.key(lo+1+m.rng.IntN(4)))
	case p < 60:
		req.Key, req.RangeEnd = []byte("k/"), []byte("k0")
	case p < 70:
		req.Key, req.RangeEnd = []byte(m.rkey()), []byte{0}
	case p < 78:
		req.RangeEnd = []byte{0} // key "" is "\x00": everything
	case p < 80:
		// Key "" alone: the key "\x00" (which nothing writes).
	case p < 85:
		req.Key, req.RangeEnd = []byte{0}, []byte{0}
	case p < 93:
		req.Key, req.RangeEnd = []byte("b/"), []byte("b0")
	default:
		req.Key, req.RangeEnd = []byte("k/5"), []byte("k/2") // empty range: refused
	}
	switch p := m.rng.IntN(100); {
	case p < 40: // now
	case p < 70:
		req.StartRevision = 1 + m.rng.Int64N(m.rev)
	case p < 76:
		// At the compaction revision, with previous values: etcd reads them at
		// revision-1 when it sends an event, compacted for that revision's.
		req.StartRevision = max(m.compactRev, 1)
		req.PrevKv = true
		if m.rng.IntN(2) == 0 {
			req.Key, req.RangeEnd = []byte{0}, []byte{0}
		}
	case p < 82:
		req.StartRevision = m.rev
	case p < 96:
		req.StartRevision = m.rev + 1 + m.rng.Int64N(3)
	default:
		req.StartRevision = -1
	}
	if m.rng.IntN(3) == 0 {
		req.WatchId = 1 + m.rng.Int64N(8)
	}
	req.PrevKv = req.PrevKv || m.rng.IntN(2) == 0
	req.ProgressNotify = m.rng.IntN(5) == 0
	req.Fragment = m.rng.IntN(3) == 0
	switch m.rng.IntN(12) {
	case 0:
		req.Filters = []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT}
	case 1:
		req.Filters = []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NODELETE}
	case 2:
		req.Filters = []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT, pb.WatchCreateRequest_NODELETE}
	}
	// A watch from the past with nothing to send is synced by etcd's sync loop
	// at a time nobody can observe (see the test's comment): from now
	// instead, or uncertain until it gets events.
	uncertain := false
	if req.StartRevision >= max(m.compactRev, 1) && req.StartRevision <= m.rev && len(m.expected(req, req.StartRevision, m.rev)) == 0 {
		if m.rng.IntN(2) == 0 {
			req.StartRevision = 0
		} else {
			uncertain = true
		}
	}
	sm := m.streams[si]
	n := sm.nCtrl + 1
	sm.nCtrl = n
	w := &dwWatch{req: req, stream: si, idx: len(sm.creates), uncertain: uncertain}
	sm.creates = append(sm.creates, w)
	return &dwOp{kind: "create", desc: fmt.Sprintf("stream %d create %v", si, req), watch: func(t *testing.T, m *dwModel, sd *dwSide, isEtcd bool) string {
		t.Helper()
		r := sd.streams[si]
		r.create(proto.CloneOf(req))
		resp, err := dwWaitCtrl(r, n)
		if err != nil {
			t.Fatalf("%s: step %d: %v", sd.name, m.step, err)
		}
		if isEtcd {
			w.id, w.createdRev, w.failed = resp.WatchId, resp.GetHeader().GetRevision(), resp.Canceled
			if !w.failed {
				sm.byID[w.id] = w
				w.from = req.StartRevision
				if w.from == 0 {
					w.from = w.createdRev + 1
				}
				w.history = req.StartRevision > 0 && req.StartRevision <= w.createdRev
				w.compacted = w.history && req.StartRevision < m.compactRev
			}
		}
		return dwNorm(resp).String()
	}}
}

// genCancel cancels a known ID (live or compacted), a canceled or an unknown one.
func (m *dwModel) genCancel() *dwOp {
	si := m.stream()
	sm := m.streams[si]
	var id int64
	if ids := slices.Sorted(func(yield func(int64) bool) {
		for id := range sm.byID {
			if !yield(id) {
				return
			}
		}
	}); len(ids) > 0 && m.rng.IntN(4) != 0 {
		id = ids[m.rng.IntN(len(ids))]
		// Mostly the compacted ones: until the client cancels them, etcd
		// answers no progress request on their stream.
		for _, cid := range ids {
			if sm.byID[cid].compacted && m.rng.IntN(3) != 0 {
				id = cid
				break
			}
		}
	} else {
		id = []int64{-1, 5, 42, 2}[m.rng.IntN(4)]
	}
	w, known := sm.byID[id]
	n := sm.nCtrl
	if known {
		n++
		sm.nCtrl = n
		w.canceled = true
		delete(sm.byID, id)
	}
	return &dwOp{kind: "cancel", desc: fmt.Sprintf("stream %d cancel %d", si, id), watch: func(t *testing.T, m *dwModel, sd *dwSide, isEtcd bool) string {
		t.Helper()
		r := sd.streams[si]
		r.cancel(id)
		if !known {
			return "no response expected"
		}
		resp, err := dwWaitCtrl(r, n)
		if err != nil {
			t.Fatalf("%s: step %d: %v", sd.name, m.step, err)
		}
		return dwNorm(resp).String()
	}}
}

// genProgress sends a progress request; the model says whether etcd answers.
func (m *dwModel) genProgress() *dwOp {
	si := m.stream()
	sm := m.streams[si]
	answered := len(sm.byID) > 0
	for _, w := range sm.byID {
		if w.uncertain {
			return nil
		}
		if w.compacted || m.rev < w.req.StartRevision {
			answered = false
		}
	}
	n := sm.nProgress
	if answered {
		n++
		sm.nProgress = n
	}
	return &dwOp{kind: "progress", desc: fmt.Sprintf("stream %d progress request (answer expected: %v)", si, answered), watch: func(t *testing.T, m *dwModel, sd *dwSide, isEtcd bool) string {
		t.Helper()
		sd.streams[si].progress()
		if !answered {
			return "no answer expected"
		}
		deadline := time.Now().Add(dwWait)
		for {
			if got := dwParse(sd.streams[si].all()).progress; len(got) >= n {
				return dwNorm(got[n-1]).String()
			}
			if !dwWake(sd.streams[si], deadline) {
				t.Fatalf("%s: step %d: no answer to a progress request within %v", sd.name, m.step, dwWait)
			}
		}
	}}
}

// ---- expectations and waiting ----

// inRange says whether key is watched by req (etcd's semantics of key and
// range_end, with key "" meaning "\x00").
func dwInRange(req *pb.WatchCreateRequest, key []byte) bool {
	k := req.Key
	if len(k) == 0 {
		k = []byte{0}
	}
	switch {
	case len(req.RangeEnd) == 0:
		return bytes.Equal(key, k)
	case len(req.RangeEnd) == 1 && req.RangeEnd[0] == 0:
		return bytes.Compare(key, k) >= 0
	default:
		return bytes.Compare(key, k) >= 0 && bytes.Compare(key, req.RangeEnd) < 0
	}
}

func dwFiltered(req *pb.WatchCreateRequest, ev *mvccpb.Event) bool {
	for _, f := range req.Filters {
		if (f == pb.WatchCreateRequest_NOPUT && ev.Type == mvccpb.PUT) || (f == pb.WatchCreateRequest_NODELETE && ev.Type == mvccpb.DELETE) {
			return true
		}
	}
	return false
}

// expected is what a watch of req gets of revisions from..to, per etcd's oracle.
func (m *dwModel) expected(req *pb.WatchCreateRequest, from, to int64) []*mvccpb.Event {
	var out []*mvccpb.Event
	for _, ev := range m.hist {
		if r := ev.Kv.ModRevision; r >= from && r <= to && dwInRange(req, ev.Kv.Key) && !dwFiltered(req, ev) {
			out = append(out, ev)
		}
	}
	return out
}

// barrier waits until sd has delivered everything of the current revision on
// its oracle and on every stream. For etcd (the first side) it also records
// the oracle's events in the model.
func (m *dwModel) barrier(sd *dwSide, isEtcd bool) error {
	deadline := time.Now().Add(dwWait)
	var hist []*mvccpb.Event
	for {
		hist = hist[:0]
		for _, r := range sd.oracle.all() {
			hist = append(hist, r.Events...)
		}
		if m.rev <= 1 || (len(hist) > 0 && hist[len(hist)-1].Kv.ModRevision >= m.rev) {
			break
		}
		if !dwWake(sd.oracle, deadline) {
			last := int64(0)
			if len(hist) > 0 {
				last = hist[len(hist)-1].Kv.ModRevision
			}
			return fmt.Errorf("oracle watch at revision %d, want %d, within %v", last, m.rev, dwWait)
		}
	}
	if isEtcd {
		m.hist = slices.Clone(hist)
	}
	for si, sm := range m.streams {
		r := sd.streams[si]
		for {
			p := dwParse(r.all())
			missing := ""
			if len(p.ctrl) < sm.nCtrl {
				missing = fmt.Sprintf("%d control responses, want %d", len(p.ctrl), sm.nCtrl)
			} else if len(p.progress) < sm.nProgress {
				missing = fmt.Sprintf("%d progress answers, want %d", len(p.progress), sm.nProgress)
			}
			for _, w := range sm.creates {
				if missing != "" {
					break
				}
				if w.failed || w.canceled {
					continue
				}
				got := p.data[w.idx]
				if w.compacted {
					if len(got) == 0 || got[len(got)-1].CompactRevision == 0 {
						missing = fmt.Sprintf("watch %d (%v): no compaction cancel", w.id, w.req)
					}
					continue
				}
				n := 0
				for _, resp := range got {
					n += len(resp.Events)
				}
				if want := len(m.expected(w.req, w.from, m.rev)); n < want {
					missing = fmt.Sprintf("watch %d (%v): %d events, want %d", w.id, w.req, n, want)
				}
			}
			if missing == "" {
				break
			}
			if !dwWake(r, deadline) {
				r.mu.Lock()
				err := r.err
				r.mu.Unlock()
				return fmt.Errorf("stream %d: %s, within %v (stream error: %v)", si, missing, dwWait, err)
			}
		}
		if isEtcd {
			p := dwParse(r.all())
			for _, w := range sm.creates {
				if w.uncertain && len(p.data[w.idx]) > 0 {
					w.uncertain = false
				}
			}
		}
	}
	return nil
}

// dwWake waits for r's next response or its end; false after deadline.
func dwWake(r *rawStream, deadline time.Time) bool {
	r.mu.Lock()
	err := r.err
	r.mu.Unlock()
	if err != nil {
		return false
	}
	d := time.Until(deadline)
	if d <= 0 {
		return false
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-r.wake:
		return true
	case <-tm.C:
		return false
	}
}

// dwWaitCtrl waits for the n-th control response of r.
func dwWaitCtrl(r *rawStream, n int) (*pb.WatchResponse, error) {
	deadline := time.Now().Add(dwWait)
	for {
		if p := dwParse(r.all()); len(p.ctrl) >= n {
			return p.ctrl[n-1], nil
		}
		if !dwWake(r, deadline) {
			return nil, fmt.Errorf("no control response %d within %v", n, dwWait)
		}
	}
}

// ---- parsing and comparison ----

// dwParsed is one stream's responses sorted into the sequences that are
// ordered in etcd (see the test's comment).
type dwParsed struct {
	ctrl     []*pb.WatchResponse         // created and client-cancel responses, in order
	data     map[int][]*pb.WatchResponse // per create index: events and compaction cancels
	notify   map[int][]*pb.WatchResponse // per create index: progress notifications
	below    map[int][]int64             // ... and the last event revision sent before each
	progress []*pb.WatchResponse         // answers to progress requests (watch ID -1)
	orphans  []*pb.WatchResponse         // data for an ID without a watch
}

func dwParse(rs []*pb.WatchResponse) *dwParsed {
	p := &dwParsed{data: map[int][]*pb.WatchResponse{}, notify: map[int][]*pb.WatchResponse{}, below: map[int][]int64{}}
	lastEv := map[int]int64{}
	cur := map[int64]int{}
	creates := 0
	for _, r := range rs {
		switch {
		case r.Created:
			p.ctrl = append(p.ctrl, r)
			if !r.Canceled {
				cur[r.WatchId] = creates
			}
			creates++
		case r.Canceled && r.CompactRevision == 0 && len(r.Events) == 0:
			p.ctrl = append(p.ctrl, r)
			delete(cur, r.WatchId)
		case r.WatchId == -1:
			p.progress = append(p.progress, r)
		default:
			idx, ok := cur[r.WatchId]
			switch {
			case !ok && len(r.Events) == 0 && r.CompactRevision == 0:
				// A progress notification etcd had queued when the client
				// canceled the watch: its send loop may send it after the
				// cancel response (two channels).
			case !ok:
				p.orphans = append(p.orphans, r)
			case len(r.Events) == 0 && r.CompactRevision == 0 && !r.Fragment:
				p.notify[idx] = append(p.notify[idx], r)
				p.below[idx] = append(p.below[idx], lastEv[idx])
			default:
				p.data[idx] = append(p.data[idx], r)
				for _, ev := range r.Events {
					lastEv[idx] = max(lastEv[idx], ev.Kv.ModRevision)
				}
			}
		}
	}
	return p
}

// dwNorm drops what legitimately differs: the header's cluster_id, member_id
// and raft_term.
func dwNorm(r *pb.WatchResponse) *pb.WatchResponse {
	c := proto.CloneOf(r)
	if c.Header != nil {
		c.Header = &pb.ResponseHeader{Revision: c.Header.Revision}
	}
	return c
}

// dwLogical is one response after its fragments are put together.
type dwLogical struct {
	resp  *pb.WatchResponse
	frags int
}

func dwAssemble(rs []*pb.WatchResponse) []dwLogical {
	var out []dwLogical
	var cur *dwLogical
	for _, r := range rs {
		if cur == nil {
			out = append(out, dwLogical{resp: dwNorm(r)})
			cur = &out[len(out)-1]
			cur.resp.Fragment = false
		} else {
			cur.resp.Events = append(cur.resp.Events, r.Events...)
		}
		cur.frags++
		if !r.Fragment {
			cur = nil
		}
	}
	return out
}

type dwStats struct {
	resps, notify                       [2]int
	events, prevKVs, progress           int
	rebatched, compacted, failed, frags int
}

func (m *dwModel) compare(t *testing.T, sides [2]*dwSide) dwStats {
	t.Helper()
	var st dwStats
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf(format, args...)
	}
	// The oracles first: both servers' histories.
	var hists [2][]*mvccpb.Event
	for i, sd := range sides {
		for _, r := range sd.oracle.all() {
			hists[i] = append(hists[i], r.Events...)
		}
	}
	if len(hists[0]) != len(hists[1]) {
		fail("oracle: etcd %d events, concord %d", len(hists[0]), len(hists[1]))
	}
	for i := range min(len(hists[0]), len(hists[1])) {
		if !proto.Equal(hists[0][i], hists[1][i]) {
			fail("oracle event %d:\n etcd    %v\n concord %v", i, hists[0][i], hists[1][i])
			break
		}
	}
	for si, sm := range m.streams {
		var ps [2]*dwParsed
		for i, sd := range sides {
			rs := sd.streams[si].all()
			st.resps[i] += len(rs)
			ps[i] = dwParse(rs)
			for _, o := range ps[i].orphans {
				fail("%s stream %d: response for no watch: %v", sd.name, si, o)
			}
		}
		// Control responses, in order.
		if len(ps[0].ctrl) != len(ps[1].ctrl) {
			fail("stream %d: etcd %d control responses, concord %d", si, len(ps[0].ctrl), len(ps[1].ctrl))
		}
		for i := range min(len(ps[0].ctrl), len(ps[1].ctrl)) {
			if a, b := dwNorm(ps[0].ctrl[i]), dwNorm(ps[1].ctrl[i]); !proto.Equal(a, b) {
				fail("stream %d control response %d:\n etcd    %v\n concord %v", si, i, a, b)
			}
		}
		// Progress answers, in order.
		st.progress += len(ps[0].progress)
		if a, b := dwRender(ps[0].progress), dwRender(ps[1].progress); a != b {
			fail("stream %d progress answers:\n etcd    %s\n concord %s", si, a, b)
		}
		// Per watch: data responses; progress notifications checked.
		for _, w := range sm.creates {
			var ls [2][]dwLogical
			for i, sd := range sides {
				ls[i] = dwAssemble(ps[i].data[w.idx])
				st.notify[i] += len(ps[i].notify[w.idx])
				for j, n := range ps[i].notify[w.idx] {
					if rev := n.Header.GetRevision(); !w.req.ProgressNotify || rev < w.req.StartRevision || rev < ps[i].below[w.idx][j] {
						fail("%s stream %d watch %d (%v): progress notification %v after events up to revision %d", sd.name, si, w.id, w.req, dwNorm(n), ps[i].below[w.idx][j])
					}
				}
			}
			if !dwSameBoundaries(ls[0], ls[1]) {
				st.rebatched++
				a, b := dwFlatten(ls[0]), dwFlatten(ls[1])
				switch {
				case a != b:
					fail("stream %d watch %d (%v) events:\n etcd    %s\n concord %s", si, w.id, w.req, a, b)
				case !dwTolerateCatchUpSplits:
					fail("stream %d watch %d (%v): same events in other responses:\n etcd    %s\n concord %s", si, w.id, w.req, dwRenderL(ls[0]), dwRenderL(ls[1]))
				default:
					t.Logf("stream %d watch %d (%v): same events in other responses:\n etcd    %s\n concord %s", si, w.id, w.req, dwRenderL(ls[0]), dwRenderL(ls[1]))
				}
				continue
			}
			if w.failed {
				st.failed++
			}
			for j := range ls[0] {
				a, b := ls[0][j], ls[1][j]
				st.events += len(a.resp.Events)
				for _, ev := range a.resp.Events {
					if ev.PrevKv != nil {
						st.prevKVs++
					}
				}
				if a.resp.CompactRevision != 0 {
					st.compacted++
				}
				if a.frags > 1 {
					st.frags++
				}
				if !proto.Equal(a.resp, b.resp) {
					fail("stream %d watch %d (%v) response %d:\n etcd    %v\n concord %v", si, w.id, w.req, j, a.resp, b.resp)
				}
				if a.frags != b.frags && !(j == 0 && w.history) {
					fail("stream %d watch %d (%v) response %d: etcd sent it in %d fragments, concord in %d", si, w.id, w.req, j, a.frags, b.frags)
				}
			}
		}
	}
	return st
}

// dwSameBoundaries says whether two watches' responses split the same
// events the same way, at the same header revisions.
func dwSameBoundaries(a, b []dwLogical) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i].resp.Events) != len(b[i].resp.Events) || (a[i].resp.CompactRevision != 0) != (b[i].resp.CompactRevision != 0) ||
			a[i].resp.GetHeader().GetRevision() != b[i].resp.GetHeader().GetRevision() {
			return false
		}
	}
	return true
}

// dwFlatten renders the events (and compaction cancels) of a watch, whatever
// responses they came in.
func dwFlatten(ls []dwLogical) string {
	var b strings.Builder
	for _, l := range ls {
		for _, ev := range l.resp.Events {
			fmt.Fprintf(&b, "%v; ", ev)
		}
		if l.resp.CompactRevision != 0 || l.resp.Canceled {
			fmt.Fprintf(&b, "compacted %d canceled %v; ", l.resp.CompactRevision, l.resp.Canceled)
		}
	}
	return b.String()
}

func dwRender(rs []*pb.WatchResponse) string {
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "[%v] ", dwNorm(r))
	}
	return b.String()
}

func dwRenderL(ls []dwLogical) string {
	var b strings.Builder
	for i, l := range ls {
		if i == 6 {
			fmt.Fprintf(&b, "... (%d more)", len(ls)-i)
			break
		}
		fmt.Fprintf(&b, "[rev %d: %d events, %d fragments, compact %d] ", l.resp.GetHeader().GetRevision(), len(l.resp.Events), l.frags, l.resp.CompactRevision)
	}
	return b.String()
}
