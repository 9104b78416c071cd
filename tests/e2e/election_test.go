package e2e

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"google.golang.org/grpc/codes"
)

// Elections: `etcdctl elect`, clientv3/concurrency's Election and the v3election gRPC service, each
// run against etcd and concord with the same assertions.

// `etcdctl elect NAME PROPOSAL` prints the leader key and proposal once elected and resigns on
// SIGTERM; a second candidate waits until then; `etcdctl elect -l NAME` prints every leader.
func TestCtlElect(t *testing.T) {
	reLeader := func(value string) *regexp.Regexp {
		return regexp.MustCompile(`(?m)^(myelection/[0-9a-f]+)\n` + value + `\n`)
	}
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)

		observer := startCtlProc(t, s.Endpoint(), "elect", "-l", "myelection")
		first := startCtlProc(t, s.Endpoint(), "elect", "myelection", "p1")
		k1 := first.waitOutput(reLeader("p1"))[1]
		if m := observer.waitOutput(reLeader("p1")); m[1] != k1 {
			t.Fatalf("observer saw leader %s, want %s", m[1], k1)
		}

		second := startCtlProc(t, s.Endpoint(), "elect", "myelection", "p2")
		queue := waitQueue(ctx, t, c, "myelection/", 2)
		if queue[0] != k1 {
			t.Fatalf("candidates %q: the leader %s must be first", queue, k1)
		}
		if second.out.String() != "" {
			t.Fatalf("second candidate elected while the first leads: %q", second.out)
		}
		if code := first.terminate(); code != 0 {
			t.Fatalf("first candidate exited %d", code)
		}
		if k2 := second.waitOutput(reLeader("p2"))[1]; k2 != queue[1] {
			t.Fatalf("second candidate elected as %s, want %s", k2, queue[1])
		}
		if m := observer.waitOutput(reLeader("p2")); m[1] != queue[1] {
			t.Fatalf("observer saw leader %s, want %s", m[1], queue[1])
		}
		if code := second.terminate(); code != 0 {
			t.Fatalf("second candidate exited %d", code)
		}
		if code := observer.terminate(); code != 0 {
			t.Fatalf("observer exited %d", code)
		}
		want := fmt.Sprintf("%s\np1\n%s\np2\n", k1, queue[1])
		if got := observer.out.String(); got != want {
			t.Fatalf("observer printed %q, want %q", got, want)
		}
		if keys := prefixKeys(ctx, t, c, "myelection/"); len(keys) != 0 {
			t.Fatalf("election keys after every candidate resigned: %q", keys)
		}

		r := runCtl(t, s.Endpoint(), "", "elect", "myelection")
		if r.exit == 0 || r.stderr != "Error: no proposal argument but -l not set\n" {
			t.Fatalf("elect without a proposal: exit %d, stderr %q", r.exit, r.stderr)
		}
	})
}

// nextObservation reads the next leader value from a concurrency Observe channel.
func nextObservation(t *testing.T, ch <-chan *clientv3.GetResponse) string {
	t.Helper()
	select {
	case r, ok := <-ch:
		if !ok {
			t.Fatal("observe channel closed")
		}
		return string(r.Kvs[0].Value)
	case <-time.After(recipeWait):
		t.Fatal("no observation")
		return ""
	}
}

// concurrency.Election: Campaign, Proclaim, Leader, Observe and Resign; leadership passes on
// Resign and when the leader's session expires (its client closed without revoking the lease).
func TestElectionClient(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		newSession := func(c *clientv3.Client) *concurrency.Session {
			sess, err := concurrency.NewSession(c, concurrency.WithTTL(2))
			if err != nil {
				t.Fatal(err)
			}
			return sess
		}
		c1, c2, c3 := newClient(t, s), newClient(t, s), newClient(t, s)
		s1, s2, s3 := newSession(c1), newSession(c2), newSession(c3)
		defer s1.Close()
		defer s3.Close()
		e1 := concurrency.NewElection(s1, "/el")
		e2 := concurrency.NewElection(s2, "/el")
		watcher := concurrency.NewElection(s3, "/el")

		if _, err := watcher.Leader(ctx); !errors.Is(err, concurrency.ErrElectionNoLeader) {
			t.Fatalf("Leader with no candidates: %v", err)
		}
		octx, ocancel := context.WithCancel(ctx)
		defer ocancel()
		obs := watcher.Observe(octx)

		if err := e1.Campaign(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		if v := nextObservation(t, obs); v != "a" {
			t.Fatalf("observed %q, want a", v)
		}
		if err := e1.Proclaim(ctx, "a2"); err != nil {
			t.Fatal(err)
		}
		if v := nextObservation(t, obs); v != "a2" {
			t.Fatalf("observed %q, want a2", v)
		}
		l := must(watcher.Leader(ctx))(t)
		if string(l.Kvs[0].Value) != "a2" || string(l.Kvs[0].Key) != e1.Key() || l.Kvs[0].CreateRevision != e1.Rev() {
			t.Fatalf("leader %v, want %s created at %d", l.Kvs, e1.Key(), e1.Rev())
		}

		won := make(chan error, 1)
		go func() { won <- e2.Campaign(ctx, "b") }()
		waitQueue(ctx, t, c1, "/el/", 2)
		select {
		case err := <-won:
			t.Fatalf("second candidate elected while the first leads: %v", err)
		default:
		}
		// Resign hands over.
		if err := e1.Resign(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-won; err != nil {
			t.Fatal(err)
		}
		if v := nextObservation(t, obs); v != "b" {
			t.Fatalf("observed %q, want b", v)
		}
		if err := e1.Proclaim(ctx, "stale"); !errors.Is(err, concurrency.ErrElectionNotLeader) {
			t.Fatalf("Proclaim after Resign: %v", err)
		}

		// The leader's session expires: its client goes away without revoking the lease.
		go func() { won <- e1.Campaign(ctx, "c") }()
		waitQueue(ctx, t, c1, "/el/", 2)
		select {
		case err := <-won:
			t.Fatalf("candidate elected while the leader's session is alive: %v", err)
		default:
		}
		closed := time.Now()
		if err := c2.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-won:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(recipeWait):
			t.Fatal("leadership not handed over after the leader's session expired")
		}
		if d := time.Since(closed); d > 2*time.Second+expirySlack+time.Second {
			t.Errorf("handover took %v after the leader's client closed (TTL 2 s)", d)
		}
		if v := nextObservation(t, obs); v != "c" {
			t.Fatalf("observed %q, want c", v)
		}
		if l := must(watcher.Leader(ctx))(t); string(l.Kvs[0].Key) != e1.Key() {
			t.Fatalf("leader %s, want %s", l.Kvs[0].Key, e1.Key())
		}
	})
}

// The v3election gRPC service interoperates with concurrency.Election on the same name, with
// etcd's results and errors.
func TestElectionService(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		ec := v3electionpb.NewElectionClient(dialGRPC(t, s))
		name := []byte("svc-el")

		_, err := ec.Leader(ctx, &v3electionpb.LeaderRequest{Name: name})
		wantStatus(t, "Leader with no candidates", err, codes.Unknown, "election: no leader")

		octx, ocancel := context.WithCancel(ctx)
		defer ocancel()
		obs, err := ec.Observe(octx, &v3electionpb.LeaderRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		observed := make(chan *v3electionpb.LeaderResponse, 16)
		go func() {
			defer close(observed)
			for {
				r, err := obs.Recv()
				if err != nil {
					return
				}
				observed <- r
			}
		}()
		next := func() *v3electionpb.LeaderResponse {
			t.Helper()
			select {
			case r, ok := <-observed:
				if !ok {
					t.Fatal("observe stream ended")
				}
				return r
			case <-time.After(recipeWait):
				t.Fatal("no observation")
				return nil
			}
		}

		lease := must(c.Grant(ctx, 30))(t)
		cr := must(ec.Campaign(ctx, &v3electionpb.CampaignRequest{Name: name, Lease: int64(lease.ID), Value: []byte("v1")}))(t)
		lk := cr.Leader
		if string(lk.Name) != string(name) || string(lk.Key) != fmt.Sprintf("svc-el/%x", lease.ID) || lk.Lease != int64(lease.ID) || lk.Rev != cr.Header.Revision {
			t.Fatalf("campaign %v", cr)
		}
		if r := next(); string(r.Kv.Value) != "v1" || r.Header.Revision != lk.Rev {
			t.Fatalf("observed %v, want v1 at revision %d", r, lk.Rev)
		}
		pr := must(ec.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: lk, Value: []byte("v2")}))(t)
		if r := next(); string(r.Kv.Value) != "v2" || r.Kv.ModRevision != pr.Header.Revision {
			t.Fatalf("observed %v, want v2 at revision %d", r, pr.Header.Revision)
		}
		lr := must(ec.Leader(ctx, &v3electionpb.LeaderRequest{Name: name}))(t)
		if string(lr.Kv.Value) != "v2" || lr.Kv.CreateRevision != lk.Rev {
			t.Fatalf("leader %v", lr)
		}

		// A concurrency.Election on the same name sees the service's leader and queues behind it.
		sess, err := concurrency.NewSession(c, concurrency.WithTTL(10))
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		e := concurrency.NewElection(sess, "svc-el")
		if l := must(e.Leader(ctx))(t); string(l.Kvs[0].Value) != "v2" {
			t.Fatalf("clientv3 sees leader %v", l.Kvs)
		}
		won := make(chan error, 1)
		go func() { won <- e.Campaign(ctx, "client") }()
		waitQueue(ctx, t, c, "svc-el/", 2)
		select {
		case err := <-won:
			t.Fatalf("clientv3 candidate elected while the service's leads: %v", err)
		default:
		}

		stale := &v3electionpb.LeaderKey{Name: name, Key: lk.Key, Rev: lk.Rev + 100, Lease: lk.Lease}
		_, err = ec.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: stale, Value: []byte("x")})
		wantStatus(t, "Proclaim with a stale leader key", err, codes.Unknown, "election: not leader")
		_, err = ec.Proclaim(ctx, &v3electionpb.ProclaimRequest{Value: []byte("x")})
		wantStatus(t, "Proclaim without a leader key", err, codes.Unknown, `"leader" field must be provided`)
		_, err = ec.Resign(ctx, &v3electionpb.ResignRequest{})
		wantStatus(t, "Resign without a leader key", err, codes.Unknown, `"leader" field must be provided`)
		_, err = ec.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: &v3electionpb.LeaderKey{Name: name, Rev: lk.Rev, Lease: lk.Lease}, Value: []byte("x")})
		wantStatus(t, "Proclaim with an empty leader key", err, codes.Unknown, "etcdserver: key is not provided")
		_, err = ec.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("other"), Lease: 0x1234567, Value: []byte("v")})
		wantStatus(t, "Campaign with an unknown lease", err, codes.Unknown, "etcdserver: requested lease not found")

		rr := must(ec.Resign(ctx, &v3electionpb.ResignRequest{Leader: lk}))(t)
		if err := <-won; err != nil {
			t.Fatal(err)
		}
		if r := next(); string(r.Kv.Value) != "client" || string(r.Kv.Key) != e.Key() {
			t.Fatalf("observed %v, want the clientv3 candidate", r)
		}
		if e.Rev() != lk.Rev+2 || rr.Header.Revision != lk.Rev+3 {
			t.Errorf("clientv3 leader created at %d, resign at %d; service leader created at %d", e.Rev(), rr.Header.Revision, lk.Rev)
		}

		// The service's Campaign waits for the clientv3 leader, then wins when it resigns.
		lease2 := must(c.Grant(ctx, 30))(t)
		type campaignResult struct {
			r   *v3electionpb.CampaignResponse
			err error
		}
		svcWon := make(chan campaignResult, 1)
		go func() {
			r, err := ec.Campaign(ctx, &v3electionpb.CampaignRequest{Name: name, Lease: int64(lease2.ID), Value: []byte("v3")})
			svcWon <- campaignResult{r, err}
		}()
		waitQueue(ctx, t, c, "svc-el/", 2)
		select {
		case r := <-svcWon:
			t.Fatalf("service candidate elected while the clientv3 leader leads: %v %v", r.r, r.err)
		default:
		}
		if err := e.Resign(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-svcWon:
			if r.err != nil || string(r.r.Leader.Key) != fmt.Sprintf("svc-el/%x", lease2.ID) {
				t.Fatalf("service campaign: %v %v", r.r, r.err)
			}
			// Unlike Lock's, a Campaign's header is that of its first txn, even after waiting.
			if r.r.Header.Revision != r.r.Leader.Rev {
				t.Errorf("service campaign header %v, leader created at %d", r.r.Header, r.r.Leader.Rev)
			}
		case <-time.After(recipeWait):
			t.Fatal("service candidate not elected after the clientv3 leader resigned")
		}
		if r := next(); string(r.Kv.Value) != "v3" {
			t.Fatalf("observed %v, want v3", r)
		}
		ocancel()
		for range observed { // the reader ends with the stream
		}
	})
}
