package gateway_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/gateway"
)

// httpGetter serves GETs of the gateway's HTTP endpoints (b, opts) in
// process, answering the status code and body.
func httpGetter(t *testing.T, b gateway.Backend, opts ...gateway.Option) func(path string) (int, string) {
	t.Helper()
	g, err := gateway.New(gateway.Config{}, b, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return func(path string) (int, string) {
		rec := httptest.NewRecorder()
		g.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
}

// A process's own component adds its check to /readyz (a lease service
// reports whether it is an active holder or a following standby).
func TestWithReadyCheck(t *testing.T) {
	var failing atomic.Bool
	get := httpGetter(t, newFake(), gateway.WithReadyCheck("lease_authority", func(context.Context) error {
		if failing.Load() {
			return errors.New("not renewed")
		}
		return nil
	}))
	if code, body := get("/readyz?verbose"); code != 200 || !strings.Contains(body, "[+]lease_authority ok") || !strings.Contains(body, "[+]linearizable_read ok") {
		t.Fatalf("/readyz?verbose = %d %q", code, body)
	}
	failing.Store(true)
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "[-]lease_authority failed: not renewed") {
		t.Fatalf("/readyz with the check failing = %d %q", code, body)
	}
	if code, _ := get("/readyz?exclude=lease_authority"); code != 200 {
		t.Fatalf("/readyz excluding the check = %d", code)
	}
	if code, _ := get("/livez"); code != 200 {
		t.Fatalf("/livez = %d (the check is a readiness one only)", code)
	}
}

// /readyz has etcd's non_learner check: it fails while the member is a
// learner, with etcd's text, and passes once it is promoted.
func TestReadyzNonLearner(t *testing.T) {
	b := &learnerBackend{fakeBackend: newFake()}
	b.learner.Store(true)
	get := httpGetter(t, b)
	if code, body := get("/readyz/non_learner"); code != 503 || body != "[-]non_learner failed: not supported for learner\n\n" { // http.Error adds a newline, in etcd too
		t.Fatalf("/readyz/non_learner on a learner = %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "[-]non_learner failed: not supported for learner\n") {
		t.Fatalf("/readyz on a learner = %d %q", code, body)
	}
	b.learner.Store(false)
	if code, body := get("/readyz/non_learner?verbose"); code != 200 || body != "[+]non_learner ok\nok\n" {
		t.Fatalf("/readyz/non_learner?verbose after promotion = %d %q", code, body)
	}
}

// localAlarmsBackend is the fake backend as a member that lost its leader:
// an Alarm RPC, which goes through raft, fails, but the member knows its
// applied alarms (consensus.Node.Alarms).
type localAlarmsBackend struct {
	*fakeBackend
	mu    sync.Mutex
	local []*pb.AlarmMember
}

func (l *localAlarmsBackend) Alarm(context.Context, *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	return nil, consensus.ErrNoLeader
}

func (l *localAlarmsBackend) Alarms() []*pb.AlarmMember {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.local
}

// /health?serializable=true (kubeadm's liveness probe) and /readyz's
// data_corruption read the member's alarms locally, as etcd's do, so they
// answer on a member without a leader instead of failing on the Alarm RPC.
func TestHealthReadsAlarmsLocally(t *testing.T) {
	b := &localAlarmsBackend{fakeBackend: newFake()}
	b.leader.Store(0)
	get := httpGetter(t, b)
	for path, want := range map[string]string{
		"/health?serializable=true":                 `{"health":"true","reason":""}`,
		"/health?exclude=NOSPACE&serializable=true": `{"health":"true","reason":""}`,
		"/readyz/data_corruption":                   "ok\n",
	} {
		if code, body := get(path); code != 200 || body != want {
			t.Errorf("%s without a leader = %d %q, want 200 %q", path, code, body, want)
		}
	}
	if code, body := get("/health"); code != 503 || body != `{"health":"false","reason":"RAFT NO LEADER"}`+"\n" {
		t.Errorf("/health without a leader = %d %q", code, body)
	}
	b.mu.Lock()
	b.local = []*pb.AlarmMember{{MemberID: 1, Alarm: pb.AlarmType_CORRUPT}}
	b.mu.Unlock()
	if code, body := get("/health?serializable=true"); code != 503 || body != `{"health":"false","reason":"ALARM CORRUPT"}`+"\n" {
		t.Errorf("/health?serializable=true with CORRUPT = %d %q", code, body)
	}
	if code, body := get("/readyz/data_corruption"); code != 503 || body != "[-]data_corruption failed: alarm activated: CORRUPT\n\n" {
		t.Errorf("/readyz/data_corruption with CORRUPT = %d %q", code, body)
	}
}
