package remote_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/consensus/internalapi"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/leasesvc"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/storage"
	"github.com/concord-kv/concord/watchfanout"
)

// fakeNode is a consensus member with fixed answers.
type fakeNode struct{}

var hdr = &pb.ResponseHeader{ClusterId: 7, MemberId: 9, Revision: 12, RaftTerm: 3}

func (fakeNode) RangeEvents(_ context.Context, from, to int64, key, _ []byte) ([]eventbus.Revision, error) {
	if from < 5 {
		return nil, fmt.Errorf("range events: %w", storage.ErrCompacted)
	}
	var out []eventbus.Revision
	for r := from; r <= to; r++ {
		out = append(out, eventbus.Revision{Rev: r, Events: []*mvccpb.Event{{Kv: &mvccpb.KeyValue{Key: key, ModRevision: r}}}})
	}
	return out, nil
}
func (fakeNode) CurrentRevision(context.Context) (int64, int64, error) { return 12, 4, nil }
func (fakeNode) Header() *pb.ResponseHeader                            { return hdr }
func (fakeNode) LeaseAuthority(context.Context) (consensus.LeaseAuthority, error) {
	return consensus.LeaseAuthority{Holder: "a", Epoch: 2, RenewedIndex: 40}, nil
}
func (fakeNode) AcquireLeaseAuthority(_ context.Context, h string, e, _ uint64) (consensus.LeaseAuthority, error) {
	return consensus.LeaseAuthority{Holder: h, Epoch: e + 1, RenewedIndex: 41}, nil
}
func (fakeNode) RenewLeaseAuthority(context.Context, string, uint64) (consensus.LeaseAuthority, error) {
	return consensus.LeaseAuthority{}, consensus.ErrStaleEpoch
}
func (fakeNode) RevokeExpiredLeases(_ context.Context, epoch uint64, ids []int64) (consensus.RevokeExpiredResult, error) {
	if epoch != 2 {
		return consensus.RevokeExpiredResult{}, fmt.Errorf("revoke: %w", consensus.ErrStaleEpoch)
	}
	return consensus.RevokeExpiredResult{Revoked: ids[:1], NotFound: ids[1:], Revision: 13}, nil
}
func (fakeNode) Leases(context.Context) ([]storage.LeaseInfo, error) {
	return []storage.LeaseInfo{{ID: 1, TTL: 10, Keys: [][]byte{[]byte("k")}}}, nil
}
func (fakeNode) Lease(_ context.Context, id int64) (storage.LeaseInfo, bool, error) {
	if id == 1 {
		return storage.LeaseInfo{ID: 1, TTL: 10}, true, nil
	}
	return storage.LeaseInfo{}, false, nil
}

// h2cServer serves h over cleartext HTTP/2, as concord's processes do.
func h2cServer(t *testing.T, pattern string, h http.Handler, started ...func(*httptest.Server)) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(pattern, h)
	return serveH2C(t, mux, started...)
}

// serveH2C serves h over cleartext HTTP/2 until the test ends; started
// adjusts the server before it starts. It returns the server's URL.
func serveH2C(t *testing.T, h http.Handler, started ...func(*httptest.Server)) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	for _, f := range started {
		f(srv)
	}
	srv.Start()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv.URL
}

// dialConsensus returns a consensus client of url, closed when the test
// ends.
func dialConsensus(t *testing.T, url string) *remote.Consensus {
	t.Helper()
	c, err := remote.NewConsensus(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestWireErrorsMapBackToSentinels(t *testing.T) {
	for _, s := range []error{
		storage.ErrCompacted, storage.ErrFutureRev, storage.ErrLeaseNotFound, storage.ErrLeaseExists,
		consensus.ErrNoSpace, consensus.ErrNoLeader, consensus.ErrTimeout, consensus.ErrStopped,
		consensus.ErrLeaseTTLTooLarge, consensus.ErrTooManyRequests, consensus.ErrStaleEpoch,
		consensus.ErrCorrupt, consensus.ErrRequestTooLarge, consensus.ErrUnknownMethod, consensus.ErrTimeoutLeaderTransfer,
		auth.ErrNoPasswordUser, auth.ErrPermissionDenied,
	} {
		wire := gateway.TranslateError(fmt.Errorf("x: %w", s))
		got := remote.FromWireForTest(wire)
		if !errors.Is(got, s) {
			t.Errorf("%v: %v does not match the sentinel", s, got)
		}
		// The gateway passes it on exactly as it came (etcd's error).
		var a, b *connect.Error
		if !errors.As(gateway.TranslateError(got), &a) || !errors.As(wire, &b) || a.Code() != b.Code() || a.Message() != b.Message() {
			t.Errorf("%v: re-translated to %v, want %v", s, a, b)
		}
	}
}

func TestConsensusClientRoundTrip(t *testing.T) {
	path, h := concordv1connect.NewInternalServiceHandler(internalapi.New(fakeNode{}))
	c := dialConsensus(t, h2cServer(t, path, h))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	got, err := c.WaitReady(ctx)
	if err != nil || got.GetClusterId() != 7 || got.GetMemberId() != 9 {
		t.Fatalf("WaitReady = %v, %v", got, err)
	}
	revs, err := c.RangeEvents(ctx, 5, 7, []byte("k"), nil)
	if err != nil || len(revs) != 3 || revs[2].Rev != 7 || string(revs[2].Events[0].Kv.Key) != "k" {
		t.Fatalf("RangeEvents = %v, %v", revs, err)
	}
	if _, err := c.RangeEvents(ctx, 1, 7, nil, nil); !errors.Is(err, storage.ErrCompacted) || !errors.Is(err, watchfanout.ErrCompacted) {
		t.Fatalf("RangeEvents below compaction: %v", err)
	}
	if rev, compact, err := c.CurrentRevision(ctx); rev != 12 || compact != 4 || err != nil {
		t.Fatalf("CurrentRevision = %d %d %v", rev, compact, err)
	}
	if a, err := c.AcquireLeaseAuthority(ctx, "me", 2, 0); err != nil || a.Holder != "me" || a.Epoch != 3 || a.RenewedIndex != 41 {
		t.Fatalf("Acquire = %+v %v", a, err)
	}
	if _, err := c.RenewLeaseAuthority(ctx, "me", 3); !errors.Is(err, consensus.ErrStaleEpoch) {
		t.Fatalf("Renew: %v, want ErrStaleEpoch", err)
	}
	if _, err := c.RevokeExpiredLeases(ctx, 1, []int64{5}); !errors.Is(err, consensus.ErrStaleEpoch) {
		t.Fatalf("fenced revoke with a stale epoch: %v", err)
	}
	if r, err := c.RevokeExpiredLeases(ctx, 2, []int64{5, 6}); err != nil || len(r.Revoked) != 1 || r.NotFound[0] != 6 || r.Revision != 13 {
		t.Fatalf("RevokeExpiredLeases = %+v %v", r, err)
	}
	if ls, err := c.Leases(ctx); err != nil || len(ls) != 1 || string(ls[0].Keys[0]) != "k" {
		t.Fatalf("Leases = %v %v", ls, err)
	}
	if _, ok, err := c.Lease(ctx, 2); ok || err != nil {
		t.Fatalf("Lease(2) = %v %v, want not found", ok, err)
	}
	if l, ok, err := c.Lease(ctx, 1); !ok || err != nil || l.TTL != 10 {
		t.Fatalf("Lease(1) = %v %v %v", l, ok, err)
	}
	if h := c.Header(); h.GetRaftTerm() != 3 {
		t.Fatalf("cached header %v", h)
	}
	// An answer that arrives after a newer one (a status poll served
	// before a write, read after the write's answer) does not move the
	// cached header back.
	remote.SeenForTest(c, &pb.ResponseHeader{ClusterId: 7, MemberId: 9, Revision: 40, RaftTerm: 3})
	remote.SeenForTest(c, &pb.ResponseHeader{ClusterId: 7, MemberId: 9, Revision: 39, RaftTerm: 3})
	if h := c.Header(); h.GetRevision() != 40 {
		t.Fatalf("cached header %v after an older answer, want revision 40", h)
	}
}

// fakeLease answers keep-alives: lease 1 exists, others do not.
type fakeLease struct{ gateway.Lease }

func (fakeLease) LeaseKeepAlive(_ context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
	switch r.GetID() {
	case 1:
		return &pb.LeaseKeepAliveResponse{Header: hdr, ID: 1, TTL: 30}, nil
	case 2:
		return nil, leasesvc.ErrNotActive
	}
	return nil, fmt.Errorf("keep-alive: %w", storage.ErrLeaseNotFound)
}

func TestLeaseKeepAliveRoundTrip(t *testing.T) {
	path, h := concordv1connect.NewLeaseKeepAliveServiceHandler(remote.KeepAliveServer{L: fakeLease{}})
	l, err := remote.NewLease(h2cServer(t, path, h), func() *pb.ResponseHeader { return hdr })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r, err := l.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: 1}); err != nil || r.GetTTL() != 30 {
		t.Fatalf("keep-alive = %v %v", r, err)
	}
	if _, err := l.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: 3}); !errors.Is(err, storage.ErrLeaseNotFound) {
		t.Fatalf("keep-alive of a missing lease: %v", err)
	}
	// A standby's refusal is held for the failover wait, then answered.
	defer remote.SetLeaseFailoverForTest(200*time.Millisecond, 20*time.Millisecond)()
	if _, err := l.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: 2}); !errors.Is(err, consensus.ErrNoLeader) {
		t.Fatalf("keep-alive on a standby: %v, want no leader", err)
	}
}

// TestNoCompressionBetweenProcesses: the clients never offer gzip, so the
// servers of the other processes never spend CPU compressing responses.
func TestNoCompressionBetweenProcesses(t *testing.T) {
	path, h := concordv1connect.NewInternalServiceHandler(internalapi.New(fakeNode{}))
	offered := make(chan string, 64)
	record := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case offered <- r.Header.Get("Accept-Encoding") + "|" + r.Header.Get("Grpc-Accept-Encoding") + "|" + r.Header.Get("Connect-Accept-Encoding"):
		default:
		}
		h.ServeHTTP(w, r)
	})
	c := dialConsensus(t, h2cServer(t, path, record))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.RangeEvents(ctx, 5, 7, []byte("k"), nil); err != nil {
		t.Fatal(err)
	}
	for n := len(offered); n > 0; n-- {
		if got := <-offered; strings.Contains(got, "gzip") {
			t.Fatalf("a client offered gzip: %q", got)
		}
	}
}

// AuthorizeWatch lets the token "alice" watch under "a/"; anything else is
// refused as a member with auth enabled refuses it.
func (fakeNode) AuthorizeWatch(ctx context.Context, key, _ []byte) (*pb.ResponseHeader, error) {
	if err := fakeAuthorize(ctx, string(key)); err != nil {
		return refusalHdr, err
	}
	return hdr, nil
}

// refusalHdr is the header of a refused watch: newer than any the client
// cached, as after writes through other gateways.
var refusalHdr = &pb.ResponseHeader{ClusterId: 7, MemberId: 9, Revision: 15, RaftTerm: 3}

// AuthorizeLease lets the token "alice" use lease 1 (its keys are under
// "a/").
func (fakeNode) AuthorizeLease(ctx context.Context, id int64, _ bool) error {
	if id != 1 {
		return fakeAuthorize(ctx, "")
	}
	return fakeAuthorize(ctx, "a/k")
}

func fakeAuthorize(ctx context.Context, key string) error {
	c, ok := auth.CredentialsFrom(ctx)
	switch {
	case !ok:
		return nil // the member's own work: trusted, as consensus.Node does
	case c.Token == "":
		return auth.ErrUserEmpty
	case c.Token != "alice":
		return auth.ErrInvalidAuthToken
	case !strings.HasPrefix(key, "a/"):
		return auth.ErrPermissionDenied
	}
	return nil
}

// AuthEnabled: the fake answers as a member with auth enabled.
func (fakeNode) AuthEnabled() bool { return true }

// AuthorizeInternal admits the token "root" only, as a member with auth
// enabled admits root-role users only.
func (fakeNode) AuthorizeInternal(ctx context.Context) error {
	c, _ := auth.CredentialsFrom(ctx)
	if c.Token == "root" {
		return nil
	}
	if c.Token == "" {
		return auth.ErrUserEmpty
	}
	return auth.ErrPermissionDenied
}
