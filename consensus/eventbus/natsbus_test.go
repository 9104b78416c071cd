package eventbus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

const waitTimeout = 15 * time.Second

func startNATS(t *testing.T, cfg NATSConfig) *NATS {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	n, err := StartNATS(context.Background(), cfg)
	if err != nil {
		t.Fatalf("StartNATS: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// collector records messages; safe for concurrent reads.
type collector struct {
	mu   sync.Mutex
	msgs []Message
}

func (c *collector) handle(m Message) {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
}

func (c *collector) get() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Message(nil), c.msgs...)
}

func subscribe(t *testing.T, b Subscriber) *collector {
	t.Helper()
	c := &collector{}
	unsub, err := b.Subscribe(context.Background(), c.handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unsub)
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// summary renders messages as "rev" or "p<rev>" for progress beats.
func summary(msgs []Message) string {
	s := ""
	for _, m := range msgs {
		if m.Progress {
			s += fmt.Sprintf("p%d ", m.Rev)
		} else {
			s += fmt.Sprintf("%d ", m.Rev)
		}
	}
	return s
}

func TestNATSFragmentsLargeRevisionOnTheWire(t *testing.T) {
	n := startNATS(t, NATSConfig{MaxPayload: 64 << 10})
	raw, err := n.nc.SubscribeSync(Subject)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Unsubscribe()
	c := subscribe(t, n)
	big := testRevision(2, 400, 500) // ~400 KiB with prev_kv
	if err := n.Publish(context.Background(), []Revision{testRevision(1, 1, 1), big}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "2 messages", func() bool { return len(c.get()) == 2 })
	if got := c.get(); !equalEvents(got[1].Events, big.Events) {
		t.Fatal("large revision not delivered whole")
	}
	st := n.Stats()
	if st.PublishedRevisions != 2 || st.PublishedChunks < 8 {
		t.Fatalf("stats %+v: want 2 revisions in many chunks", st)
	}
	for i := range st.PublishedChunks {
		m, err := raw.NextMsg(waitTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Data) > 64<<10 {
			t.Fatalf("chunk %d is %d bytes, over the max payload", i, len(m.Data))
		}
		w, err := decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		last := i == st.PublishedChunks-1
		if i > 0 && (w.WatchId != int64(i-1) || w.Fragment == last) {
			t.Fatalf("chunk %d: watch id %d fragment %v", i, w.WatchId, w.Fragment)
		}
	}
}

func TestNATSSkipsMalformedPayloads(t *testing.T) {
	n := startNATS(t, NATSConfig{})
	c := subscribe(t, n)
	ctx := context.Background()
	garbage := [][]byte{
		[]byte("not a protobuf \xff\xff"),
		{},
		mustMarshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: 2}}),                              // no events
		mustMarshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: 2}, WatchId: -1, Fragment: true}), // bad beat
	}
	if err := n.Publish(ctx, []Revision{testRevision(1, 1, 1)}); err != nil {
		t.Fatal(err)
	}
	for _, g := range garbage {
		if err := n.nc.Publish(Subject, g); err != nil {
			t.Fatal(err)
		}
	}
	// A stray middle chunk of some revision: decodes, but is incomplete.
	stray := mustMarshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: 2}, WatchId: 1, Events: testRevision(2, 1, 1).Events})
	if err := n.nc.Publish(Subject, stray); err != nil {
		t.Fatal(err)
	}
	if err := n.Publish(ctx, []Revision{testRevision(2, 1, 1)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "2 messages", func() bool { return len(c.get()) >= 2 })
	if err := n.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := summary(c.get()); got != "1 2 " {
		t.Fatalf("delivered %q, want only the valid revisions", got)
	}
	if st := n.Stats(); st.Malformed != uint64(len(garbage)) || st.Incomplete != 1 || st.Delivered != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestNATSTooLargeRevisionBecomesProgressBeat(t *testing.T) {
	n := startNATS(t, NATSConfig{MaxPayload: 4096, MaxRevisionBytes: 64 << 10})
	c := subscribe(t, n)
	revs := []Revision{
		testRevision(1, 1, 10),
		testRevision(2, 1, 8000),   // one event larger than the max payload
		testRevision(3, 20, 100),   // fragmented, fine
		testRevision(4, 100, 1000), // ~200 KiB > MaxRevisionBytes
		testRevision(5, 1, 10),
	}
	if err := n.Publish(context.Background(), revs); err != nil {
		t.Fatalf("Publish = %v, want nil (too-large revisions are not errors)", err)
	}
	waitFor(t, "5 messages", func() bool { return len(c.get()) == 5 })
	if got := summary(c.get()); got != "1 p2 3 p4 5 " {
		t.Fatalf("delivered %q", got)
	}
	if st := n.Stats(); st.TooLarge != 2 || st.PublishedRevisions != 3 || st.PublishedProgress != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestNATSSlowConsumerDropsButKeepsGoing(t *testing.T) {
	n := startNATS(t, NATSConfig{PendingMsgs: 10})
	release := make(chan struct{})
	var once sync.Once
	c := &collector{}
	unsub, err := n.Subscribe(context.Background(), func(m Message) {
		once.Do(func() { <-release })
		c.handle(m)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unsub()
	ctx := context.Background()
	for r := int64(1); r <= 200; r++ {
		if err := n.Publish(ctx, []Revision{testRevision(r, 1, 10)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "slow consumer to be detected", func() bool {
		st := n.Stats()
		return st.SlowConsumer > 0 && st.Dropped > 0
	})
	close(release)
	// Delivery resumes: keep publishing until a new revision gets through
	// (the first ones may still meet a full queue while it drains).
	next := int64(201)
	waitFor(t, "delivery after the stall", func() bool {
		if err := n.Publish(ctx, []Revision{testRevision(next, 1, 10)}); err != nil {
			t.Fatal(err)
		}
		next++
		got := c.get()
		return len(got) > 0 && got[len(got)-1].Rev > 200
	})
	published := next - 1
	if err := n.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var got []Message
	waitFor(t, "every message delivered or counted as dropped", func() bool {
		got = c.get()
		st := n.Stats()
		return st.Delivered == uint64(len(got)) && st.Dropped+st.Delivered == uint64(published)
	})
	if len(got) >= 200 {
		t.Fatalf("nothing was dropped (%d messages)", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i].Rev <= got[i-1].Rev {
			t.Fatalf("out of order after drops: %d then %d", got[i-1].Rev, got[i].Rev)
		}
	}
}

func TestNATSConfigValidate(t *testing.T) {
	bad := map[string]NATSConfig{
		"tiny payload":         {MaxPayload: 10},
		"huge payload":         {MaxPayload: 128 << 20},
		"bad listen":           {ListenAddr: "nohostport"},
		"bad port":             {ListenAddr: "127.0.0.1:99999"},
		"bad cluster":          {ListenAddr: ":0", ClusterAddr: "x"},
		"cluster, no listener": {ClusterAddr: "127.0.0.1:0"},
		"routes, no addr":      {Routes: []string{"nats://127.0.0.1:6222"}},
		"bad route":            {ListenAddr: ":0", ClusterAddr: "127.0.0.1:0", Routes: []string{"::"}},
		"bad pending":          {PendingMsgs: -5},
		"bad max rev":          {MaxRevisionBytes: -7},
		"bad timeout":          {StartTimeout: -time.Second},
	}
	for name, cfg := range bad {
		cfg.SetDefaults()
		if err := cfg.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Validate = %v, want ErrInvalidConfig", name, err)
		}
		if _, err := StartNATS(context.Background(), cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: StartNATS = %v, want ErrInvalidConfig", name, err)
		}
	}
	var good NATSConfig
	good.SetDefaults()
	if err := good.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if good.MaxPayload != DefaultMaxPayload || good.PendingMsgs != DefaultPendingMsgs {
		t.Fatalf("defaults not applied: %+v", good)
	}
}

func TestStartNATSListenerAndShutdown(t *testing.T) {
	n, err := StartNATS(context.Background(), NATSConfig{ListenAddr: "127.0.0.1:0", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	u := n.ClientURL()
	if u == "" {
		t.Fatal("no client URL")
	}
	nc, err := nats.Connect(u)
	if err != nil {
		t.Fatal(err)
	}
	c := subscribe(t, n)
	b, err := marshalOpts.Marshal(progressResponse(77))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(Subject, b); err != nil { // a plain NATS client can publish on the bus
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "progress from a raw client", func() bool { return len(c.get()) == 1 })
	nc.Close()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if n.srv.Running() {
		t.Fatal("server still running after Close")
	}
	addr := u[len("nats://"):]
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatalf("listener %s still accepts after Close", addr)
	}
}

func TestStartNATSAddressInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	_, err = StartNATS(context.Background(), NATSConfig{ListenAddr: l.Addr().String(), StartTimeout: 300 * time.Millisecond, Logger: quietLogger()})
	if err == nil {
		t.Fatal("StartNATS on a busy port succeeded")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("took %v to fail", time.Since(start))
	}
}

func TestStartNATSCanceledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := StartNATS(ctx, NATSConfig{Logger: quietLogger()}); !errors.Is(err, context.Canceled) {
		t.Fatalf("StartNATS(canceled) = %v", err)
	}
}

func TestConnectNATSFailures(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := ConnectNATS(ctx, "nats://"+addr, WithLogger(quietLogger())); err == nil {
		t.Fatal("ConnectNATS to a closed port succeeded")
	}
	if _, err := ConnectNATS(ctx, "", WithLogger(quietLogger())); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("empty URL: %v", err)
	}
}

// TestNATSClusterRoutes runs two embedded servers joined by a route: what is
// published on one reaches subscribers of the other, in order.
func TestNATSClusterRoutes(t *testing.T) { testClusterRoutes(t, TLSFiles{}) }

// testClusterRoutes is TestNATSClusterRoutes with both servers on tls.
func testClusterRoutes(t *testing.T, tls TLSFiles) {
	a := startNATS(t, NATSConfig{ServerName: "a", ListenAddr: "127.0.0.1:0", ClusterAddr: "127.0.0.1:0", TLS: tls})
	route := fmt.Sprintf("nats://%s", a.srv.ClusterAddr().String())
	b := startNATS(t, NATSConfig{ServerName: "b", ListenAddr: "127.0.0.1:0", ClusterAddr: "127.0.0.1:0", Routes: []string{route}, TLS: tls})
	c := subscribe(t, b)
	ctx := context.Background()
	// Interest propagates over the route asynchronously: beat until one arrives.
	waitFor(t, "a progress beat across the route", func() bool {
		if err := a.PublishProgress(ctx, 1); err != nil {
			t.Fatal(err)
		}
		return len(c.get()) > 0
	})
	var revs []Revision
	for r := int64(2); r <= 51; r++ {
		revs = append(revs, testRevision(r, 2, 20))
	}
	if err := a.Publish(ctx, revs); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "revision 51", func() bool {
		got := c.get()
		return got[len(got)-1].Rev == 51 && !got[len(got)-1].Progress
	})
	var got []Message
	for _, m := range c.get() {
		if !m.Progress {
			got = append(got, m)
		}
	}
	if len(got) != 50 || got[0].Rev != 2 {
		t.Fatalf("got %q", summary(got))
	}
	for i, m := range got {
		if !equalEvents(m.Events, revs[i].Events) {
			t.Fatalf("revision %d differs", m.Rev)
		}
	}
}
