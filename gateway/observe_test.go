package gateway_test

import (
	"sync"
	"testing"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/gateway"
)

// sizeObserver is a CallObserver that is also a MessageSizeObserver, and
// whose CallDones count messages.
type sizeObserver struct {
	mu             sync.Mutex
	received, sent []int
	// msgs counts messages by procedure: [received, sent].
	msgs map[string]*[2]int
}

type msgDone struct {
	o    *sizeObserver
	proc string
}

func (msgDone) Handled(connect.Code) {}
func (d msgDone) Received()          { d.o.mu.Lock(); d.o.msgs[d.proc][0]++; d.o.mu.Unlock() }
func (d msgDone) Sent()              { d.o.mu.Lock(); d.o.msgs[d.proc][1]++; d.o.mu.Unlock() }

func (o *sizeObserver) Started(proc string, _ connect.StreamType) gateway.CallDone {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.msgs == nil {
		o.msgs = map[string]*[2]int{}
	}
	if o.msgs[proc] == nil {
		o.msgs[proc] = &[2]int{}
	}
	return msgDone{o, proc}
}
func (o *sizeObserver) Received(n int) {
	o.mu.Lock()
	o.received = append(o.received, n)
	o.mu.Unlock()
}
func (o *sizeObserver) Sent(n int) { o.mu.Lock(); o.sent = append(o.sent, n); o.mu.Unlock() }

// The observer is told the encoded size of each request and response, as
// etcd's codec counts etcd_network_client_grpc_received_bytes_total and
// _sent_bytes_total.
func TestMessageSizesObserved(t *testing.T) {
	o := &sizeObserver{}
	cli := newClient(t, startGateway(t, gateway.Config{}, newFake(), gateway.WithCallObserver(o)))
	resp, err := cli.Put(testCtx(t), "foo", "bar")
	if err != nil {
		t.Fatal(err)
	}
	wantIn := proto.Size(&pb.PutRequest{Key: []byte("foo"), Value: []byte("bar")})
	wantOut := proto.Size((*pb.PutResponse)(resp))
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.received) != 1 || o.received[0] != wantIn || len(o.sent) != 1 || o.sent[0] != wantOut {
		t.Fatalf("received %v, sent %v; want [%d], [%d]", o.received, o.sent, wantIn, wantOut)
	}
}

// A CallDone that is a MessageCounter counts messages as etcd's prometheus
// interceptor does: a unary call receives one and sends one, failed or not
// (streams are compared with etcd in e2e TestMetrics).
func TestMessagesCounted(t *testing.T) {
	o := &sizeObserver{}
	cli := newClient(t, startGateway(t, gateway.Config{}, newFake(), gateway.WithCallObserver(o)))
	ctx := testCtx(t)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "", "v"); err == nil {
		t.Fatal("put of an empty key succeeded")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if got := *o.msgs["/etcdserverpb.KV/Put"]; got != [2]int{2, 2} {
		t.Errorf("Put messages received, sent = %v, want [2 2]", got)
	}
}
