package gateway_test

import (
	"sync"
	"testing"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/gateway"
)

// sizeObserver is a CallObserver that is also a MessageSizeObserver.
type sizeObserver struct {
	mu             sync.Mutex
	received, sent []int
}

type noDone struct{}

func (noDone) Handled(connect.Code) {}

func (o *sizeObserver) Started(string, connect.StreamType) gateway.CallDone { return noDone{} }
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
