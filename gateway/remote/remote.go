// Package remote holds the clients the split topology's processes use to
// reach each other: the consensus members (gateway.Backend, leasesvc.Backend
// and watchfanout.History over etcd's KV/Lease/Maintenance/Cluster services
// and concord.v1.InternalService, following the leader and failing over
// between members), a lease service (gateway.Lease) and a
// watch fan-out (gateway.Watcher, one upstream bidi stream per client
// stream). The same component code runs in every topology; only these
// adapters differ from the all-in-one, which calls the components directly.
//
// Invariants:
//   - Each endpoint is reached through one shared HTTP/2 transport
//     (cleartext h2c for http://, TLS for https://), so all calls and streams to it multiplex over one
//     connection, as gRPC clients do.
//   - A call to consensus is sent again to another member only if it
//     certainly was not executed (its dial failed) or is safe to repeat
//     (clientv3's repeatable calls); a mutation whose connection broke
//     after it was sent fails with etcd's Unavailable "connection lost".
//   - Errors from the wire keep their gRPC code and message (the gateway's
//     TranslateError passes *connect.Error through, so clients see etcd's
//     exact errors), and also match the backend sentinel the message names
//     (errors.Is), so leasesvc and watchfanout branch on them as they do in
//     process.
//   - A call made for a client's request presents that client's token to
//     the next hop, marked as forwarded, or, without a token, the claim of
//     the user its verified certificate names, which consensus believes
//     only if concord's processes alone passed it on (credentials.go).
//     With WithInternalSecret every call also presents the secret's
//     proof, which the next hop trusts for the process's own calls, and
//     for having made or passed on a claim, never as the identity of the
//     client a call is forwarded for.
package remote

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/internal/tracing"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/storage"
	"github.com/concord-kv/concord/watchfanout"
)

// ErrNoEndpoint is returned when no endpoint URL was given.
var ErrNoEndpoint = errors.New("remote: no endpoint")

// Endpoint is one remote process: its base URL and the shared transport.
type Endpoint struct {
	URL    string
	client *http.Client
	tr     *http2.Transport
}

// DialOption configures how endpoints are reached.
type DialOption func(*dialOptions)

type dialOptions struct {
	tls *tls.Config
	// secrets present their proof (WithInternalSecret, WithClaimSecret);
	// claimsOnly: WithClaimSecret's.
	secrets    *gateway.InternalSecrets
	claimsOnly bool
	// tracing, when on, passes each call's trace context on (WithTracing).
	tracing *tracing.Provider
}

// WithTracing makes every request carry the trace context of its caller's
// span (W3C traceparent), so the process called continues the trace: a
// gateway's span and the consensus member's spans of one client request
// share a trace. A nil p (tracing off) adds nothing.
func WithTracing(p *tracing.Provider) DialOption {
	return func(o *dialOptions) { o.tracing = p }
}

// WithTLS is the client TLS configuration for https:// endpoints (trusted
// CAs, client certificate); without it they are verified against the
// system's roots. http:// endpoints ignore it.
func WithTLS(c *tls.Config) DialOption {
	return func(o *dialOptions) { o.tls = c }
}

// WithInternalSecret makes every request to the endpoints present the
// proof of the split topology's internal secret (gateway.InternalSecrets'
// Proof at the time of the request, so a secret set again is presented
// from then on), by which a consensus member that has the same secret
// trusts this process's own calls as a root-role user's once auth is
// enabled. Give it for consensus members; fan-outs and lease services only
// need WithClaimSecret. nil, or no secret presented: nothing is presented.
func WithInternalSecret(s *gateway.InternalSecrets) DialOption {
	return func(o *dialOptions) { o.secrets, o.claimsOnly = s, false }
}

// WithClaimSecret makes the requests that forward a client certificate's
// user (gateway.ForwardedUserHeader) present the internal secret's proof,
// by which a watch fan-out or lease service with the same secret vouches,
// to consensus, for this process having made the claim. Those processes
// check nothing else by it, so the other requests do not carry it. nil:
// nothing is presented.
func WithClaimSecret(s *gateway.InternalSecrets) DialOption {
	return func(o *dialOptions) { o.secrets, o.claimsOnly = s, true }
}

func newDialOptions(opts []DialOption) dialOptions {
	var o dialOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Dial prepares an HTTP/2 client for the first of urls (a comma-separated
// list, etcd style): cleartext (h2c) for http://, TLS for https://. It does
// not connect: the transport connects on the first call and reconnects
// after failures.
func Dial(urls string, opts ...DialOption) (*Endpoint, error) {
	eps, err := DialAll(urls, opts...)
	if err != nil {
		return nil, err
	}
	for _, e := range eps[1:] {
		_ = e.Close()
	}
	return eps[0], nil
}

// DialAll prepares a client for each of urls (comma-separated), as Dial.
func DialAll(urls string, opts ...DialOption) ([]*Endpoint, error) {
	o := newDialOptions(opts)
	var eps []*Endpoint
	for _, raw := range strings.Split(urls, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		ep, err := dialOne(raw, o)
		if err != nil {
			return nil, err
		}
		eps = append(eps, ep)
	}
	if len(eps) == 0 {
		return nil, ErrNoEndpoint
	}
	return eps, nil
}

// baseURL is the scheme://host of an endpoint given as a URL or host:port.
func baseURL(raw string) (string, error) {
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("remote: endpoint %q: %w", raw, err)
	}
	return u.Scheme + "://" + u.Host, nil
}

func dialOne(raw string, o dialOptions) (*Endpoint, error) {
	base, err := baseURL(raw)
	if err != nil {
		return nil, err
	}
	secure := strings.HasPrefix(base, "https://")
	var tlsCfg *tls.Config
	if secure {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		if o.tls != nil {
			tlsCfg = o.tls.Clone()
		}
		tlsCfg.NextProtos = []string{"h2"}
	}
	tr := &http2.Transport{
		AllowHTTP:       true,
		TLSClientConfig: tlsCfg,
		DialTLSContext: func(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
			// Short: a member that does not answer a dial (or a
			// handshake) is skipped for the next.
			d := net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}
			if !secure {
				return d.DialContext(ctx, network, addr)
			}
			td := tls.Dialer{NetDialer: &d, Config: cfg}
			return td.DialContext(ctx, network, addr)
		},
		// A connection silent for 5s is pinged and closed 2s later without
		// an answer, so calls on a connection to a frozen or unreachable
		// process fail (and move to another member) within ~7s.
		ReadIdleTimeout: 5 * time.Second,
		PingTimeout:     2 * time.Second,
	}
	rt := forwardToken{next: tr, secrets: o.secrets, proofForClaimsOnly: o.claimsOnly, tracing: o.tracing}
	return &Endpoint{URL: base, client: &http.Client{Transport: rt}, tr: tr}, nil
}

// rotation picks which of several equivalent endpoints to use: the current
// one until a call to it fails with Unavailable (the process is gone, or it
// is a standby answering "no leader"), then the next. The failed call is not
// retried here; clients retry Unavailable, and their retry reaches the next
// endpoint.
type rotation struct {
	n   uint32
	cur atomic.Uint32
}

func (r *rotation) pick() uint32 { return r.cur.Load() % r.n }

// done records the outcome of a call made to endpoint i.
func (r *rotation) done(i uint32, err error) {
	if r.n > 1 && connect.CodeOf(err) == connect.CodeUnavailable {
		r.cur.CompareAndSwap(i, (i+1)%r.n)
	}
}

// Close drops the endpoint's idle connections. Idempotent.
func (e *Endpoint) Close() error {
	e.tr.CloseIdleConnections()
	return nil
}

// clientOpts are the options of every generated client: gRPC protocol, as
// the servers are etcd-compatible gRPC servers.
func clientOpts() []connect.ClientOption {
	return append([]connect.ClientOption{connect.WithGRPC()}, internalOpts()...)
}

// internalOpts are the options of concord's internal clients: the Connect
// protocol, not gRPC, because the gateway answers gRPC requests for services
// it does not know itself with Unimplemented, while other requests reach the
// handlers mounted with gateway.WithHTTPHandler, where the internal services
// live (InternalPattern, KeepAlivePattern).
//
// No client asks for compression: connect-go's clients accept gzip by
// default and its handlers then compress every response, which between
// processes on one network costs far more CPU than the bytes it saves (a
// watch event cost the fan-out 73 µs with gzip, 11 µs without).
func internalOpts() []connect.ClientOption {
	return []connect.ClientOption{
		connect.WithReadMaxBytes(64 << 20), connect.WithSendMaxBytes(64 << 20),
		connect.WithAcceptCompression("gzip", nil, nil),
	}
}

// sentinels maps etcd's rpctypes errors, as they arrive on the wire, back to
// the backend sentinels the gateway's error table turned into them.
var sentinels = []struct {
	wire error
	to   []error
}{
	{rpctypes.ErrGRPCCompacted, []error{storage.ErrCompacted, watchfanout.ErrCompacted}},
	{rpctypes.ErrGRPCFutureRev, []error{storage.ErrFutureRev}},
	{rpctypes.ErrGRPCLeaseNotFound, []error{storage.ErrLeaseNotFound}},
	{rpctypes.ErrGRPCLeaseExist, []error{storage.ErrLeaseExists}},
	{rpctypes.ErrGRPCNoSpace, []error{consensus.ErrNoSpace}},
	{rpctypes.ErrGRPCCorrupt, []error{consensus.ErrCorrupt}},
	{rpctypes.ErrGRPCNoLeader, []error{consensus.ErrNoLeader}},
	{rpctypes.ErrGRPCTimeout, []error{consensus.ErrTimeout}},
	{rpctypes.ErrGRPCTimeoutDueToConnectionLost, []error{consensus.ErrTimeoutConnectionLost}},
	{rpctypes.ErrGRPCStopped, []error{consensus.ErrStopped}},
	{rpctypes.ErrGRPCLeaseTTLTooLarge, []error{consensus.ErrLeaseTTLTooLarge}},
	{rpctypes.ErrGRPCRequestTooManyRequests, []error{consensus.ErrTooManyRequests}},
	{rpctypes.ErrGRPCRequestTooLarge, []error{consensus.ErrRequestTooLarge}},
	{rpctypes.ErrGRPCLeaderChanged, []error{consensus.ErrStaleEpoch}},
	// A refused Authorize: the gateway's watch service picks the cancel
	// reason of a refused watch from these.
	{rpctypes.ErrGRPCPermissionDenied, []error{auth.ErrPermissionDenied}},
	{rpctypes.ErrGRPCUserEmpty, []error{auth.ErrUserEmpty}},
	{rpctypes.ErrGRPCInvalidAuthToken, []error{auth.ErrInvalidAuthToken}},
	{rpctypes.ErrGRPCAuthOldRevision, []error{auth.ErrAuthOldRevision}},
	// Members' answers etcd sends as Unknown with the error's text (the
	// gateway's table): without these, classify would take their code for
	// a broken connection's.
	{status.Error(codes.Unknown, auth.ErrNoPasswordUser.Error()), []error{auth.ErrNoPasswordUser}},
	{status.Error(codes.Unknown, consensus.ErrUnknownMethod.Error()), []error{consensus.ErrUnknownMethod}},
	{status.Error(codes.Unknown, consensus.ErrTimeoutLeaderTransfer.Error()), []error{consensus.ErrTimeoutLeaderTransfer}},
}

// wireError is a connect error that also matches the sentinels it stands
// for.
type wireError struct {
	ce *connect.Error
	to []error
}

func (w *wireError) Error() string   { return w.ce.Error() }
func (w *wireError) Unwrap() []error { return append([]error{w.ce}, w.to...) }

// fromWire turns a client call's error into one that is still the wire
// error (errors.As *connect.Error) and also Is the matching sentinel.
func fromWire(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err
	}
	for _, s := range sentinels {
		st := status.Convert(s.wire)
		if connect.Code(st.Code()) == ce.Code() && st.Message() == ce.Message() {
			return &wireError{ce: ce, to: s.to}
		}
	}
	return err
}

// HashKV asks the member whose peer URL e is for its HashKV at revision,
// as etcd's members ask each other on /members/hashkv for their
// corruption checks.
func (e *Endpoint) HashKV(ctx context.Context, revision int64) (*pb.HashKVResponse, error) {
	c := etcdserverpbconnect.NewMaintenanceClient(e.client, e.URL, internalOpts()...)
	resp, err := c.HashKV(ctx, &pb.HashKVRequest{Revision: revision})
	if err != nil {
		return nil, fromWire(err)
	}
	return resp, nil
}
