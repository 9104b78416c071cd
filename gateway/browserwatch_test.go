package gateway_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/watchfanout"
	"github.com/concord-kv/concord/watchfanout/watchtest"
)

// browserEnv is a gateway serving concord.v1.WatchService from a real
// watchfanout fed by an in-memory MVCC model through the in-memory bus.
type browserEnv struct {
	model *watchtest.Model
	f     *watchfanout.Fanout
	base  string       // http://127.0.0.1:port
	hc    *http.Client // HTTP/1.1, as a browser's fetch may use
}

func startBrowserWatch(t *testing.T, cfg watchfanout.Config) *browserEnv {
	t.Helper()
	bus := eventbus.NewMemory()
	e := &browserEnv{hc: &http.Client{Transport: &http.Transport{}}}
	e.model = watchtest.NewModel(func(r eventbus.Revision) {
		_ = bus.Publish(context.Background(), []eventbus.Revision{r})
	})
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	f, err := watchfanout.New(cfg, bus, e.model)
	if err != nil {
		t.Fatal(err)
	}
	e.f = f
	g, err := gateway.New(gateway.Config{}, newFake(), gateway.WithBrowserWatch(f))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.base = "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx, ln) }()
	t.Cleanup(func() {
		_ = f.Close() // ends the remaining watch calls, so shutdown is quick
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Serve did not return after cancel")
		}
		_ = g.Close()
		e.hc.CloseIdleConnections()
		_ = bus.Close()
	})
	return e
}

// recvN receives n responses from s, failing the test on an early end.
func recvN(t *testing.T, s *connect.ServerStreamForClient[pb.WatchResponse], n int) []*pb.WatchResponse {
	t.Helper()
	var out []*pb.WatchResponse
	for len(out) < n {
		if !s.Receive() {
			t.Fatalf("stream ended after %d of %d responses: %v", len(out), n, s.Err())
		}
		out = append(out, s.Msg())
	}
	return out
}

// waitStreams polls until the fanout serves n streams.
func waitStreams(t *testing.T, f *watchfanout.Fanout, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f.Stats().Streams != n {
		if time.Now().After(deadline) {
			t.Fatalf("fanout serves %d streams, want %d", f.Stats().Streams, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func check(t *testing.T, e *browserEnv, req *pb.WatchCreateRequest, resps []*pb.WatchResponse) watchtest.Result {
	t.Helper()
	res, err := watchtest.Check(e.model.History(), watchtest.WatchFromRequest(req), resps)
	if err != nil {
		t.Fatalf("%v\nresponses: %v", err, resps)
	}
	return res
}

// The Connect protocol with JSON (what Connect-Web sends by default): history
// from a revision, prev_kv, then live events, then the client ends the call
// and the watch goes away.
func TestBrowserWatchConnectJSON(t *testing.T) {
	e := startBrowserWatch(t, watchfanout.Config{RaftTerm: func() uint64 { return 3 }})
	e.model.Put("a", "1") // 2
	e.model.Put("b", "1") // 3
	e.model.Put("a", "2") // 4

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := concordv1connect.NewWatchServiceClient(e.hc, e.base, connect.WithProtoJSON())
	req := &pb.WatchCreateRequest{Key: []byte("a"), StartRevision: 2, PrevKv: true}
	s, err := client.Watch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	resps := recvN(t, s, 2) // created, then revisions 2 and 4 together (etcd's catch-up)
	if ct := s.ResponseHeader().Get("Content-Type"); ct != "application/connect+json" {
		t.Errorf("content type %q, want application/connect+json", ct)
	}
	if c := resps[0]; !c.Created || c.Canceled || c.WatchId != 0 || c.Header.Revision != 4 || c.Header.RaftTerm != 3 {
		t.Errorf("created response = %v", c)
	}
	if ev := resps[1].Events; len(ev) != 2 || ev[0].Kv.ModRevision != 2 || string(ev[1].PrevKv.GetValue()) != "1" || string(ev[1].Kv.Value) != "2" {
		t.Errorf("catch-up = %v, want revision 2, then a=2 with prev a=1", resps[1])
	}
	e.model.Put("b", "2")
	rev := e.model.Put("a", "3")
	resps = append(resps, recvN(t, s, 1)...)
	if r := resps[2]; r.Header.Revision != rev || r.Header.RaftTerm != 3 || len(r.Events) != 1 || r.Events[0].Type != mvccpb.PUT {
		t.Errorf("live response = %v, want the put of revision %d", r, rev)
	}
	if res := check(t, e, req, resps); res.Events != 3 || res.Reached != rev {
		t.Errorf("checker result %+v", res)
	}

	waitStreams(t, e.f, 1)
	cancel()
	if s.Receive() {
		t.Errorf("response after the client ended the call: %v", s.Msg())
	}
	if err := s.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	waitStreams(t, e.f, 0)
}

// gRPC-Web (binary): a prefix with progress notifications, and a revision
// larger than MaxResponseBytes sent as fragments to a watch that asks.
func TestBrowserWatchGRPCWebProgressAndFragments(t *testing.T) {
	e := startBrowserWatch(t, watchfanout.Config{ProgressNotifyInterval: 50 * time.Millisecond, MaxResponseBytes: 1024})
	e.model.Put("k/0", "x") // 2

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := concordv1connect.NewWatchServiceClient(e.hc, e.base, connect.WithGRPCWeb())
	req := &pb.WatchCreateRequest{Key: []byte("k/"), RangeEnd: []byte("k0"), ProgressNotify: true, Fragment: true}
	s, err := client.Watch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	resps := recvN(t, s, 2) // created, then a progress notification
	if ct := s.ResponseHeader().Get("Content-Type"); ct != "application/grpc-web+proto" {
		t.Errorf("content type %q, want application/grpc-web+proto", ct)
	}
	if p := resps[1]; len(p.Events) != 0 || p.Created || p.Canceled || p.WatchId != 0 || p.Header.Revision != 2 {
		t.Errorf("progress notification = %v, want revision 2 for watch 0", p)
	}

	// Three events of 600 bytes each: over 1 KiB, so one event per fragment.
	big := strings.Repeat("v", 600)
	var ops []watchtest.Op
	for i := 1; i <= 3; i++ {
		ops = append(ops, watchtest.Op{Key: fmt.Appendf(nil, "k/%d", i), Value: []byte(big)})
	}
	rev, _ := e.model.Txn(ops)
	var frags []*pb.WatchResponse
	for {
		r := recvN(t, s, 1)[0]
		resps = append(resps, r)
		if len(r.Events) == 0 {
			continue // progress notifications may interleave
		}
		frags = append(frags, r)
		if !r.Fragment {
			break
		}
	}
	if len(frags) != 3 || !frags[0].Fragment || !frags[1].Fragment || frags[2].Header.Revision != rev {
		t.Errorf("revision %d came in %d responses %v, want 3 fragments", rev, len(frags), frags)
	}
	if res := check(t, e, req, resps); res.Events != 3 || res.Reached != rev {
		t.Errorf("checker result %+v", res)
	}
}

// A watch the server cancels ends the call cleanly after its canceled
// response: below the compaction revision (created, then canceled with the
// compaction revision, as etcd), and an empty range (one created+canceled
// response with watch ID -1).
func TestBrowserWatchServerCancelEndsCall(t *testing.T) {
	e := startBrowserWatch(t, watchfanout.Config{})
	for i := range 4 {
		e.model.Put("c", fmt.Sprint(i)) // 2..5
	}
	if err := e.model.Compact(4); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := concordv1connect.NewWatchServiceClient(e.hc, e.base)

	s, err := client.Watch(ctx, &pb.WatchCreateRequest{Key: []byte("c"), StartRevision: 2})
	if err != nil {
		t.Fatal(err)
	}
	resps := recvN(t, s, 2)
	if c := resps[0]; !c.Created || c.Canceled || c.WatchId != 0 {
		t.Errorf("created = %v", c)
	}
	if c := resps[1]; !c.Canceled || c.CompactRevision != 4 || c.WatchId != 0 || len(c.Events) != 0 {
		t.Errorf("canceled = %v, want compact revision 4", c)
	}
	if s.Receive() || s.Err() != nil {
		t.Errorf("after the cancel: more=%v err=%v, want a clean end", s.Msg(), s.Err())
	}
	_ = s.Close()

	// At the compaction revision: served from it.
	s, err = client.Watch(ctx, &pb.WatchCreateRequest{Key: []byte("c"), StartRevision: 4})
	if err != nil {
		t.Fatal(err)
	}
	if r := recvN(t, s, 2); len(r[1].Events) != 2 || r[1].Events[0].Kv.ModRevision != 4 || r[1].Events[1].Kv.ModRevision != 5 {
		t.Errorf("watch from the compaction revision = %v, want revisions 4 and 5", r)
	}
	_ = s.Close()

	s, err = client.Watch(ctx, &pb.WatchCreateRequest{Key: []byte("b"), RangeEnd: []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	if r := recvN(t, s, 1)[0]; !r.Created || !r.Canceled || r.WatchId != -1 || r.CancelReason != "mvcc: watcher range is empty" {
		t.Errorf("empty range = %v", r)
	}
	if s.Receive() || s.Err() != nil {
		t.Errorf("after the failed create: more=%v err=%v, want a clean end", s.Msg(), s.Err())
	}
	_ = s.Close()
	waitStreams(t, e.f, 0)
}

// envelope frames one Connect streaming message.
func envelope(flags byte, payload []byte) []byte {
	b := make([]byte, 5, 5+len(payload))
	b[0] = flags
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

// The Connect streaming protocol by hand, as curl would speak it: one
// enveloped JSON request, enveloped JSON responses, an end-of-stream message.
func TestBrowserWatchPlainHTTP(t *testing.T) {
	e := startBrowserWatch(t, watchfanout.Config{})
	for i := range 3 {
		e.model.Put("p", fmt.Sprint(i)) // 2..4
	}
	if err := e.model.Compact(3); err != nil {
		t.Fatal(err)
	}
	body := envelope(0, []byte(`{"key":"cA==","startRevision":"2"}`)) // "p"
	hreq, err := http.NewRequest(http.MethodPost, e.base+concordv1connect.WatchServiceWatchProcedure, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	hreq.Header.Set("Content-Type", "application/connect+json")
	resp, err := e.hc.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body) // the call ends after the cancel
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/connect+json" {
		t.Fatalf("status %d, content type %q: %q", resp.StatusCode, resp.Header.Get("Content-Type"), raw)
	}
	var msgs []*pb.WatchResponse
	var end []byte
	for len(raw) > 0 {
		if len(raw) < 5 || len(raw) < 5+int(binary.BigEndian.Uint32(raw[1:5])) {
			t.Fatalf("truncated envelope: %q", raw)
		}
		flags, n := raw[0], int(binary.BigEndian.Uint32(raw[1:5]))
		payload := raw[5 : 5+n]
		raw = raw[5+n:]
		if flags&2 != 0 {
			end = payload
			continue
		}
		var m pb.WatchResponse
		if err := protojson.Unmarshal(payload, &m); err != nil {
			t.Fatalf("decode %q: %v", payload, err)
		}
		msgs = append(msgs, &m)
	}
	if len(msgs) != 2 || !msgs[0].Created || msgs[0].Header.GetRevision() != 4 || !msgs[1].Canceled || msgs[1].CompactRevision != 3 {
		t.Errorf("responses = %v, want created at 4 and canceled at compaction 3", msgs)
	}
	if string(end) != "{}" {
		t.Errorf("end of stream = %q, want {} (no error)", end)
	}
}

// Without WithBrowserWatch the service exists and answers Unimplemented.
func TestBrowserWatchUnimplemented(t *testing.T) {
	_, _, addr := setup(t, gateway.Config{})
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	ctx := testCtx(t)
	s, err := concordv1connect.NewWatchServiceClient(hc, "http://"+addr).Watch(ctx, &pb.WatchCreateRequest{Key: []byte("a")})
	if err == nil {
		if s.Receive() {
			t.Fatalf("got %v", s.Msg())
		}
		err = s.Err()
		_ = s.Close()
	}
	if connect.CodeOf(err) != connect.CodeUnimplemented {
		t.Errorf("err = %v, want Unimplemented", err)
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Errorf("err %T is not a connect error", err)
	}
}
