package gateway

import (
	"context"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/gorilla/websocket"
	gwruntime "github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	etcdgw "go.etcd.io/etcd/api/v3/etcdserverpb/gw"
	electiongw "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb/gw"
	lockgw "go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb/gw"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/concord-kv/concord/gateway/h2server"
)

// restGateway serves etcd's JSON gateway: POST /v3/kv/range, /v3/kv/put,
// /v3/watch, /v3/lease/grant, /v3/lock/lock, ... with the bodies etcd's
// grpc-gateway accepts and writes (field names as in the .proto files, int64
// as strings, bytes in base64, errors as {"code", "message"}).
//
// It is etcd's own construction: the handlers generated into etcd's API
// modules translate JSON to gRPC calls on a client connection to this same
// gateway. The connection is in memory (net.Pipe to a private h2server), so
// a JSON call goes through exactly the gRPC services, validation and error
// table a gRPC client sees, without a socket or a port.
type restGateway struct {
	rpc        http.Handler
	maxStreams uint32
	// maxMessageBytes bounds one WebSocket message from a client.
	maxMessageBytes int

	// The client side is built on the first JSON request (init), so that a
	// gateway nobody sends JSON to starts no goroutines.
	init    sync.Once
	initErr error
	mux     *gwruntime.ServeMux
	conn    *grpc.ClientConn
	srv     *h2server.Server

	// ctx ends the in-memory connections' servers; wg counts them. mu
	// orders dial's wg.Add before close's wg.Wait: once closed is set, no
	// connection is added.
	ctx       context.Context
	cancel    context.CancelFunc
	mu        sync.Mutex
	closed    bool
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// restRegistrations are the services etcd's JSON gateway exposes, in etcd's
// order (embed/serve.go registerGateway).
var restRegistrations = []func(context.Context, *gwruntime.ServeMux, *grpc.ClientConn) error{
	etcdgw.RegisterKVHandler,
	etcdgw.RegisterWatchHandler,
	etcdgw.RegisterLeaseHandler,
	etcdgw.RegisterClusterHandler,
	etcdgw.RegisterMaintenanceHandler,
	etcdgw.RegisterAuthHandler,
	lockgw.RegisterLockHandler,
	electiongw.RegisterElectionHandler,
}

// newRESTGateway returns the JSON gateway in front of rpc, the gateway's
// own RPC handler.
func newRESTGateway(rpc http.Handler, maxConcurrentStreams uint32, maxMessageBytes int) *restGateway {
	ctx, cancel := context.WithCancel(context.Background())
	return &restGateway{rpc: rpc, maxStreams: maxConcurrentStreams, maxMessageBytes: maxMessageBytes, ctx: ctx, cancel: cancel}
}

// start builds the in-memory server, the client connection and the
// handlers. grpc.NewClient does not connect: the first call dials r.dial.
func (r *restGateway) start() error {
	srv, err := h2server.New(h2server.Config{MaxConcurrentStreams: r.maxStreams}, r.rpc)
	if err != nil {
		return err
	}
	r.srv = srv
	conn, err := grpc.NewClient("passthrough:///concord-gateway",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(r.dial),
		// etcd's gateway lifts the receive limit the same way: a range's
		// size is bounded by the server, not by this internal hop.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32)),
	)
	if err != nil {
		return err
	}
	r.conn = conn
	r.mux = gwruntime.NewServeMux(gwruntime.WithMarshalerOption(gwruntime.MIMEWildcard,
		&gwruntime.HTTPBodyMarshaler{Marshaler: &gwruntime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		}}))
	for _, register := range restRegistrations {
		if err := register(r.ctx, r.mux, conn); err != nil {
			return err
		}
	}
	return nil
}

// dial hands the server end of an in-memory pipe to r.srv.
func (r *restGateway) dial(ctx context.Context, _ string) (net.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	client, server := net.Pipe()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		// A failed connection shows at the client end, which redials.
		_ = r.srv.ServeConn(r.ctx, server)
	}()
	return client, nil
}

// ServeHTTP serves /v3/... (and etcd's old /v3beta/ prefix, which etcd
// rewrites to /v3/ for compatibility); a WebSocket upgrade runs the stream
// over the WebSocket (restws.go).
func (r *restGateway) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.init.Do(func() { r.initErr = r.start() })
	if r.initErr != nil {
		http.Error(w, r.initErr.Error(), http.StatusServiceUnavailable)
		return
	}
	if rest, ok := strings.CutPrefix(req.URL.Path, "/v3beta/"); ok {
		req.URL.Path = "/v3/" + rest
		req.URL.RawPath = ""
	}
	if websocket.IsWebSocketUpgrade(req) {
		r.serveWebSocket(w, req, r.mux)
		return
	}
	r.mux.ServeHTTP(w, req)
}

// close stops the client connection and the in-memory server and waits for
// its connections. Idempotent.
func (r *restGateway) close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		r.cancel()
		// After init, conn and srv are set or start failed; Do also keeps
		// a later first request from starting anything.
		r.init.Do(func() { r.initErr = ErrClosed })
		if r.conn != nil {
			r.closeErr = r.conn.Close()
		}
		if r.srv != nil {
			r.srv.Close()
		}
		r.wg.Wait()
	})
	return r.closeErr
}
