// Package eventbustest is the conformance suite every eventbus.Bus
// implementation must pass. It checks what the bus promises on a healthy,
// lightly loaded transport: ordered delivery of whole revisions (prev_kv
// intact) to every subscriber, progress beats, unsubscribe semantics, no
// replay, large revisions, Close, and no leaked goroutines. It does not
// apply to eventbus.Faulty, whose job is to break those promises.
package eventbustest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/consensus/eventbus"
)

// Timeout bounds every wait for delivery in the suite.
const Timeout = 15 * time.Second

// LargeRevisionBytes is roughly the encoded size of the suite's large
// revision; transports under test should use a smaller max payload (e.g.
// 64 KiB) so that fragmentation is exercised.
const LargeRevisionBytes = 512 << 10

// NewFunc returns a fresh, started bus. The suite closes it.
type NewFunc func(t *testing.T) eventbus.Bus

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, newBus NewFunc) {
	tests := []struct {
		name string
		fn   func(*testing.T, eventbus.Bus)
	}{
		{"OrderedDeliveryToAllSubscribers", testOrdered},
		{"RevisionEventsTogetherWithPrevKV", testEventsTogether},
		{"ProgressBeatsInOrder", testProgress},
		{"UnsubscribeStopsDeliveryAndIsIdempotent", testUnsubscribe},
		{"UnsubscribeWaitsForHandler", testUnsubscribeWaits},
		{"NoReplayForLateSubscriber", testNoReplay},
		{"SubscribeDuringPublishGetsContiguousSuffix", testSubscribeDuringPublish},
		{"LargeRevisionDeliveredWhole", testLargeRevision},
		{"PublisherMayReuseEvents", testReuse},
		{"InvalidInputRejected", testInvalid},
		{"ContextHonored", testContext},
		{"CloseIdempotentAndFinal", testClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			// Registered first, so it runs after the bus's Close below.
			t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
			b := newBus(t)
			t.Cleanup(func() {
				if err := b.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, b)
		})
	}
}

// Recorder collects the messages a subscription receives.
type Recorder struct {
	mu   sync.Mutex
	msgs []eventbus.Message
}

// Handle is the handler to pass to Subscribe.
func (r *Recorder) Handle(m eventbus.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
}

// Messages returns a copy of what was received so far.
func (r *Recorder) Messages() []eventbus.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]eventbus.Message(nil), r.msgs...)
}

// Len is the number of messages received so far.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

// WaitLen polls until at least n messages were received or Timeout passes.
func (r *Recorder) WaitLen(t testing.TB, n int) []eventbus.Message {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for r.Len() < n {
		if time.Now().After(deadline) {
			t.Fatalf("received %d messages, want %d within %v", r.Len(), n, Timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return r.Messages()
}

// Subscribe subscribes a new Recorder and unsubscribes it at cleanup.
func Subscribe(t testing.TB, b eventbus.Subscriber) (*Recorder, func()) {
	t.Helper()
	r := &Recorder{}
	unsub, err := b.Subscribe(context.Background(), r.Handle)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(unsub)
	return r, unsub
}

// MakeRevision builds a revision with n events: puts with a prev_kv, and
// every third event a delete (with prev_kv), values of valueSize bytes.
func MakeRevision(rev int64, n, valueSize int) eventbus.Revision {
	r := eventbus.Revision{Rev: rev}
	for i := range n {
		key := fmt.Appendf(nil, "key/%d/%d", rev, i)
		prev := &mvccpb.KeyValue{
			Key: key, Value: fill(valueSize, byte(i)), CreateRevision: 1, ModRevision: rev - 1, Version: 1, Lease: 7,
		}
		if rev <= 1 {
			prev.ModRevision = 0
		}
		ev := &mvccpb.Event{Type: mvccpb.Event_PUT, PrevKv: prev,
			Kv: &mvccpb.KeyValue{Key: key, Value: fill(valueSize, byte(i+1)), CreateRevision: 1, ModRevision: rev, Version: 2, Lease: 7}}
		if i%3 == 2 {
			ev = &mvccpb.Event{Type: mvccpb.Event_DELETE, PrevKv: prev, Kv: &mvccpb.KeyValue{Key: key, ModRevision: rev}}
		}
		r.Events = append(r.Events, ev)
	}
	return r
}

func fill(n int, b byte) []byte {
	v := make([]byte, n)
	for i := range v {
		v[i] = b + byte(i%7)
	}
	return v
}

// Revisions builds contiguous revisions [from, to] with 1..3 small events each.
func Revisions(from, to int64) []eventbus.Revision {
	var out []eventbus.Revision
	for r := from; r <= to; r++ {
		out = append(out, MakeRevision(r, 1+int(r%3), 16))
	}
	return out
}

// EqualRevision reports whether m is exactly revision r.
func EqualRevision(m eventbus.Message, r eventbus.Revision) error {
	if m.Progress {
		return fmt.Errorf("got progress beat at %d, want revision %d", m.Rev, r.Rev)
	}
	if m.Rev != r.Rev {
		return fmt.Errorf("got revision %d, want %d", m.Rev, r.Rev)
	}
	if len(m.Events) != len(r.Events) {
		return fmt.Errorf("revision %d: got %d events, want %d", r.Rev, len(m.Events), len(r.Events))
	}
	for i := range r.Events {
		if !proto.Equal(m.Events[i], r.Events[i]) {
			return fmt.Errorf("revision %d event %d differs: got %v want %v", r.Rev, i, m.Events[i], r.Events[i])
		}
	}
	return nil
}

func publish(t *testing.T, b eventbus.Publisher, revs ...eventbus.Revision) {
	t.Helper()
	if err := b.Publish(context.Background(), revs); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

func checkRevisions(t *testing.T, got []eventbus.Message, want []eventbus.Revision) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		if err := EqualRevision(got[i], want[i]); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

func testOrdered(t *testing.T, b eventbus.Bus) {
	var recs []*Recorder
	for range 3 {
		r, _ := Subscribe(t, b)
		recs = append(recs, r)
	}
	all := Revisions(1, 300)
	// Batches of varying size, as consensus publishes one batch per apply step.
	for i, size := 0, 1; i < len(all); i, size = i+size, size%7+1 {
		publish(t, b, all[i:min(i+size, len(all))]...)
	}
	for _, r := range recs {
		checkRevisions(t, r.WaitLen(t, len(all)), all)
	}
}

func testEventsTogether(t *testing.T, b eventbus.Bus) {
	r, _ := Subscribe(t, b)
	rev := MakeRevision(10, 9, 100)
	// Edge cases of one revision: a created key (no prev_kv), an empty value.
	rev.Events = append(rev.Events,
		&mvccpb.Event{Type: mvccpb.Event_PUT, Kv: &mvccpb.KeyValue{Key: []byte("new"), CreateRevision: 10, ModRevision: 10, Version: 1}},
		&mvccpb.Event{Type: mvccpb.Event_PUT, Kv: &mvccpb.KeyValue{Key: []byte("\x00bin\xff"), Value: []byte{}, CreateRevision: 3, ModRevision: 10, Version: 4},
			PrevKv: &mvccpb.KeyValue{Key: []byte("\x00bin\xff"), Value: []byte("old"), CreateRevision: 3, ModRevision: 9, Version: 3}})
	want := []eventbus.Revision{rev, MakeRevision(11, 1, 0)}
	publish(t, b, want...)
	got := r.WaitLen(t, 2)
	checkRevisions(t, got, want)
	for i, ev := range got[0].Events {
		if i < 9 && ev.PrevKv == nil {
			t.Fatalf("event %d lost its prev_kv", i)
		}
	}
}

func testProgress(t *testing.T, b eventbus.Bus) {
	r, _ := Subscribe(t, b)
	ctx := context.Background()
	revs := Revisions(5, 8)
	if err := b.PublishProgress(ctx, 4); err != nil {
		t.Fatal(err)
	}
	publish(t, b, revs[:2]...)
	if err := b.PublishProgress(ctx, 6); err != nil {
		t.Fatal(err)
	}
	if err := b.PublishProgress(ctx, 6); err != nil { // repeated beats are legal
		t.Fatal(err)
	}
	publish(t, b, revs[2:]...)
	if err := b.PublishProgress(ctx, 8); err != nil {
		t.Fatal(err)
	}
	got := r.WaitLen(t, 8)
	type want struct {
		rev      int64
		progress bool
	}
	wants := []want{{4, true}, {5, false}, {6, false}, {6, true}, {6, true}, {7, false}, {8, false}, {8, true}}
	if len(got) != len(wants) {
		t.Fatalf("got %d messages, want %d", len(got), len(wants))
	}
	for i, w := range wants {
		if got[i].Rev != w.rev || got[i].Progress != w.progress {
			t.Fatalf("message %d: got rev %d progress %v, want rev %d progress %v", i, got[i].Rev, got[i].Progress, w.rev, w.progress)
		}
		if w.progress && len(got[i].Events) != 0 {
			t.Fatalf("message %d: progress beat with %d events", i, len(got[i].Events))
		}
	}
}

func testUnsubscribe(t *testing.T, b eventbus.Bus) {
	stay, _ := Subscribe(t, b)
	gone, unsub := Subscribe(t, b)
	publish(t, b, Revisions(1, 10)...)
	gone.WaitLen(t, 10)
	unsub()
	unsub() // idempotent
	publish(t, b, Revisions(11, 20)...)
	if err := b.PublishProgress(context.Background(), 20); err != nil {
		t.Fatal(err)
	}
	stay.WaitLen(t, 21) // the other subscriber got everything, so delivery happened
	if n := gone.Len(); n != 10 {
		t.Fatalf("unsubscribed recorder has %d messages, want 10", n)
	}
	// Concurrent unsubscribe calls are fine too.
	_, unsub2 := Subscribe(t, b)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(unsub2)
	}
	wg.Wait()
}

func testUnsubscribeWaits(t *testing.T, b eventbus.Bus) {
	entered := make(chan struct{})
	release := make(chan struct{})
	var returned, calls atomic.Int32
	unsub, err := b.Subscribe(context.Background(), func(m eventbus.Message) {
		if calls.Add(1) == 1 {
			close(entered)
			<-release
		}
		returned.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, b, Revisions(1, 5)...)
	select {
	case <-entered:
	case <-time.After(Timeout):
		t.Fatal("handler not called")
	}
	done := make(chan struct{})
	go func() { unsub(); close(done) }()
	select {
	case <-done:
		t.Fatal("unsubscribe returned while the handler was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	select {
	case <-done:
	case <-time.After(Timeout):
		t.Fatal("unsubscribe did not return after the handler did")
	}
	after := calls.Load()
	if returned.Load() != after {
		t.Fatalf("a handler call was still running after unsubscribe returned")
	}
	publish(t, b, Revisions(6, 7)...)
	// Nothing may arrive any more; a second subscriber proves delivery ran.
	r, _ := Subscribe(t, b)
	publish(t, b, Revisions(8, 9)...)
	r.WaitLen(t, 2)
	if calls.Load() != after {
		t.Fatalf("handler called %d times after unsubscribe", calls.Load()-after)
	}
}

func testNoReplay(t *testing.T, b eventbus.Bus) {
	early, _ := Subscribe(t, b)
	publish(t, b, Revisions(1, 5)...)
	if err := b.PublishProgress(context.Background(), 5); err != nil {
		t.Fatal(err)
	}
	early.WaitLen(t, 6)
	late, _ := Subscribe(t, b)
	want := Revisions(6, 7)
	publish(t, b, want...)
	early.WaitLen(t, 8)
	checkRevisions(t, late.WaitLen(t, 2), want)
}

func testSubscribeDuringPublish(t *testing.T, b eventbus.Bus) {
	const last = 2000
	all := Revisions(1, last+1)
	first, _ := Subscribe(t, b)
	errc := make(chan error, 1)
	go func() {
		for i := 0; i < last; i += 10 {
			if err := b.Publish(context.Background(), all[i:i+10]); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	first.WaitLen(t, 50)
	mid, _ := Subscribe(t, b)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// One more revision, so that mid receives something even if it
	// subscribed after the stream ended.
	publish(t, b, all[last])
	checkRevisions(t, first.WaitLen(t, last+1), all)
	// mid gets a contiguous suffix ending at the last revision.
	deadline := time.Now().Add(Timeout)
	for {
		got := mid.Messages()
		if len(got) > 0 && got[len(got)-1].Rev == last+1 {
			checkRevisions(t, got, all[len(all)-len(got):])
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("late subscriber got %d messages, none ending at %d", len(got), last+1)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func testLargeRevision(t *testing.T, b eventbus.Bus) {
	r1, _ := Subscribe(t, b)
	r2, _ := Subscribe(t, b)
	// ~2 KiB per event (value + prev value): 256 events ≈ LargeRevisionBytes.
	big := MakeRevision(3, LargeRevisionBytes/2048, 1024)
	want := append(Revisions(1, 2), big)
	want = append(want, Revisions(4, 5)...)
	// A large revision alone in a call, and one in the middle of a batch.
	big2 := MakeRevision(6, 300, 1500)
	publish(t, b, want...)
	publish(t, b, big2)
	want = append(want, big2)
	for _, r := range []*Recorder{r1, r2} {
		checkRevisions(t, r.WaitLen(t, len(want)), want)
	}
}

func testReuse(t *testing.T, b eventbus.Bus) {
	r, _ := Subscribe(t, b)
	rev := MakeRevision(1, 3, 32)
	want := eventbus.Revision{Rev: 1}
	for _, ev := range rev.Events {
		want.Events = append(want.Events, proto.Clone(ev).(*mvccpb.Event))
	}
	publish(t, b, rev)
	for _, ev := range rev.Events { // the publisher scribbles over its buffers
		ev.Kv.Value = []byte("scribbled")
		if ev.PrevKv != nil {
			ev.PrevKv.Value[0] ^= 0xff
		}
	}
	checkRevisions(t, r.WaitLen(t, 1), []eventbus.Revision{want})
}

func testInvalid(t *testing.T, b eventbus.Bus) {
	r, _ := Subscribe(t, b)
	ctx := context.Background()
	bad := map[string][]eventbus.Revision{
		"zero revision":    {MakeRevision(0, 1, 1)},
		"not contiguous":   {MakeRevision(1, 1, 1), MakeRevision(3, 1, 1)},
		"not increasing":   {MakeRevision(2, 1, 1), MakeRevision(1, 1, 1)},
		"no events":        {{Rev: 4}},
		"wrong modrev":     {{Rev: 5, Events: MakeRevision(6, 1, 1).Events}},
		"nil event":        {{Rev: 5, Events: []*mvccpb.Event{nil}}},
		"nil kv":           {{Rev: 5, Events: []*mvccpb.Event{{Type: mvccpb.Event_PUT}}}},
		"valid then wrong": {MakeRevision(7, 1, 1), {Rev: 8}},
	}
	for name, revs := range bad {
		if err := b.Publish(ctx, revs); !errors.Is(err, eventbus.ErrInvalidRevision) {
			t.Errorf("%s: Publish = %v, want ErrInvalidRevision", name, err)
		}
	}
	if err := b.PublishProgress(ctx, -1); !errors.Is(err, eventbus.ErrInvalidRevision) {
		t.Errorf("PublishProgress(-1) = %v, want ErrInvalidRevision", err)
	}
	if err := b.Publish(ctx, nil); err != nil {
		t.Errorf("Publish(nil) = %v, want nil", err)
	}
	if _, err := b.Subscribe(ctx, nil); err == nil {
		t.Errorf("Subscribe(nil handler) succeeded")
	}
	// Nothing of the rejected batches was sent, not even their valid prefix.
	want := Revisions(9, 9)
	publish(t, b, want...)
	checkRevisions(t, r.WaitLen(t, 1), want)
}

func testContext(t *testing.T, b eventbus.Bus) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Publish(ctx, Revisions(1, 1)); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish(canceled) = %v", err)
	}
	if err := b.PublishProgress(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("PublishProgress(canceled) = %v", err)
	}
	if _, err := b.Subscribe(ctx, func(eventbus.Message) {}); !errors.Is(err, context.Canceled) {
		t.Errorf("Subscribe(canceled) = %v", err)
	}
	// A subscription outlives the context it was set up with.
	sctx, scancel := context.WithCancel(context.Background())
	r := &Recorder{}
	unsub, err := b.Subscribe(sctx, r.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer unsub()
	scancel()
	want := Revisions(2, 3)
	publish(t, b, want...)
	checkRevisions(t, r.WaitLen(t, 2), want)
}

func testClose(t *testing.T, b eventbus.Bus) {
	r, unsub := Subscribe(t, b)
	var after atomic.Bool
	closed := make(chan struct{})
	unsub2, err := b.Subscribe(context.Background(), func(eventbus.Message) {
		select {
		case <-closed:
			after.Store(true)
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unsub2()
	publish(t, b, Revisions(1, 3)...)
	r.WaitLen(t, 3)
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	close(closed)
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	unsub() // after Close: still fine
	ctx := context.Background()
	if err := b.Publish(ctx, Revisions(4, 4)); !errors.Is(err, eventbus.ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
	if err := b.PublishProgress(ctx, 4); !errors.Is(err, eventbus.ErrClosed) {
		t.Errorf("PublishProgress after Close = %v, want ErrClosed", err)
	}
	if _, err := b.Subscribe(ctx, func(eventbus.Message) {}); !errors.Is(err, eventbus.ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
	}
	if after.Load() {
		t.Errorf("a handler ran after Close returned")
	}
	if n := r.Len(); n != 3 {
		t.Errorf("recorder has %d messages after Close, want 3", n)
	}
}
