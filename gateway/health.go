package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/version"

	"github.com/concord-kv/concord/consensus"
)

// HTTP endpoints with etcd's paths, status codes and bodies
// (server/etcdserver/api/etcdhttp): load balancers, Kubernetes probes and
// test harnesses written for etcd work unchanged.

// healthTimeout bounds the read a health check makes; etcd uses its request
// timeout (5 s plus two election timeouts by default).
const healthTimeout = 5 * time.Second

// health is etcd's /health body.
type health struct {
	Health string `json:"health"`
	Reason string `json:"reason"`
}

func (g *Gateway) installHTTPEndpoints(extraReady map[string]check) {
	g.misc.HandleFunc("/health", g.serveHealth)
	g.misc.HandleFunc("/version", serveVersion)
	g.installChecks("/livez", map[string]check{
		"serializable_read": g.readCheck(true),
	})
	ready := map[string]check{
		"data_corruption":   g.alarmCheck(pb.AlarmType_CORRUPT),
		"serializable_read": g.readCheck(true),
		"linearizable_read": g.readCheck(false),
		"non_learner":       g.learnerCheck,
	}
	maps.Copy(ready, extraReady)
	g.installChecks("/readyz", ready)
}

// serveHealth answers {"health":"true","reason":""} with 200, or the first
// failing check with 503: an active alarm (unless excluded with
// ?exclude=NOSPACE), no leader (unless ?serializable=true), a failing read.
func (g *Gateway) serveHealth(w http.ResponseWriter, r *http.Request) {
	if !getOnly(w, r) {
		return
	}
	q := r.URL.Query()
	serializable := q.Get("serializable") == "true"
	h := g.checkHealth(r.Context(), q["exclude"], serializable)
	body, _ := json.Marshal(h)
	if h.Health != "true" {
		g.log.Warn("/health error", "output", string(body), "status-code", http.StatusServiceUnavailable)
		http.Error(w, string(body), http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// LocalAlarms is implemented by a backend that knows its applied alarms
// without a round through raft (consensus.Node), as etcd's health checks
// read them: /health?serializable=true and /readyz's data_corruption then
// answer on a member that lost its leader, as etcd's do (kubeadm's liveness
// probe is /health?serializable=true). Other backends (a split gateway's
// remote consensus) are asked with an Alarm GET.
type LocalAlarms interface {
	Alarms() []*pb.AlarmMember
}

var _ LocalAlarms = (*consensus.Node)(nil)

// alarms lists the backend's alarms, locally when it can.
func (g *Gateway) alarms(ctx context.Context) ([]*pb.AlarmMember, error) {
	if la, ok := g.b.(LocalAlarms); ok {
		return la.Alarms(), nil
	}
	resp, err := g.b.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_GET})
	return resp.GetAlarms(), err
}

func (g *Gateway) checkHealth(ctx context.Context, excluded []string, serializable bool) health {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	alarms, err := g.alarms(ctx)
	if err != nil {
		return health{Health: "false", Reason: fmt.Sprintf("ALARM ERROR:%s", err)}
	}
	for _, a := range alarms {
		if slices.Contains(excluded, a.Alarm.String()) {
			continue
		}
		switch a.Alarm {
		case pb.AlarmType_NOSPACE:
			return health{Health: "false", Reason: "ALARM NOSPACE"}
		case pb.AlarmType_CORRUPT:
			return health{Health: "false", Reason: "ALARM CORRUPT"}
		default:
			return health{Health: "false", Reason: "ALARM UNKNOWN"}
		}
	}
	if !serializable && g.b.Leader() == 0 {
		return health{Health: "false", Reason: "RAFT NO LEADER"}
	}
	if _, err := g.b.Range(ctx, healthRange(serializable)); err != nil {
		return health{Health: "false", Reason: fmt.Sprintf("RANGE ERROR:%s", err)}
	}
	return health{Health: "true"}
}

// healthRange is the cheapest read that still exercises the read path.
func healthRange(serializable bool) *pb.RangeRequest {
	return &pb.RangeRequest{Key: []byte("health"), KeysOnly: true, Limit: 1, Serializable: serializable}
}

// check is one named probe of /livez or /readyz.
type check func(ctx context.Context) error

func (g *Gateway) readCheck(serializable bool) check {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, healthTimeout)
		defer cancel()
		_, err := g.b.Range(ctx, healthRange(serializable))
		return err
	}
}

// learnerCheck fails on a learner as etcd's non_learner check does; a
// backend that is never a learner (a split gateway's) always passes it.
func (g *Gateway) learnerCheck(context.Context) error {
	if g.isLearner() {
		return errors.New("not supported for learner")
	}
	return nil
}

func (g *Gateway) alarmCheck(t pb.AlarmType) check {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, healthTimeout)
		defer cancel()
		alarms, err := g.alarms(ctx)
		if err != nil {
			return err
		}
		for _, a := range alarms {
			if a.Alarm == t {
				return fmt.Errorf("alarm activated: %s", t)
			}
		}
		return nil
	}
}

// installChecks serves root (all checks but ?exclude=name ones) and
// root/<name> (one check), answering "ok" or 503 with "[-]name failed: err"
// lines, as etcd does; ?verbose lists every check on success too.
func (g *Gateway) installChecks(root string, checks map[string]check) {
	names := make([]string, 0, len(checks))
	for n := range checks {
		names = append(names, n)
	}
	slices.Sort(names)
	g.misc.HandleFunc(root, func(w http.ResponseWriter, r *http.Request) {
		excluded := r.URL.Query()["exclude"]
		run := make([]string, 0, len(names))
		for _, n := range names {
			if !slices.Contains(excluded, n) {
				run = append(run, n)
			}
		}
		g.serveChecks(w, r, root, checks, run)
	})
	for _, n := range names {
		path := root + "/" + n
		g.misc.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			g.serveChecks(w, r, path, checks, []string{n})
		})
	}
}

func (g *Gateway) serveChecks(w http.ResponseWriter, r *http.Request, path string, checks map[string]check, run []string) {
	if !getOnly(w, r) {
		return
	}
	var out strings.Builder
	failed := false
	for _, n := range run {
		if err := checks[n](r.Context()); err != nil {
			failed = true
			fmt.Fprintf(&out, "[-]%s failed: %v\n", n, err)
		} else {
			fmt.Fprintf(&out, "[+]%s ok\n", n)
		}
	}
	if failed {
		g.log.Warn("health check failed", "path", path, "reason", out.String())
		http.Error(w, out.String(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if _, verbose := r.URL.Query()["verbose"]; verbose {
		fmt.Fprint(w, out.String())
	}
	fmt.Fprint(w, "ok\n")
}

// versions is etcd's /version body; cluster and storage versions are the
// server's major.minor, as in a cluster whose members all run this version.
var versions = func() []byte {
	mm := version.Cluster(version.Version) + ".0"
	b, _ := json.Marshal(version.Versions{Server: version.Version, Cluster: mm, Storage: mm})
	return b
}()

// VersionHandler serves etcd's /version body, for the peer URLs, where
// etcd serves it too.
func VersionHandler() http.Handler { return http.HandlerFunc(serveVersion) }

func serveVersion(w http.ResponseWriter, r *http.Request) {
	if !getOnly(w, r) {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(versions)
}

// getOnly rejects every method but GET like etcd (405 with Allow: GET).
func getOnly(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet {
		return true
	}
	w.Header().Set("Allow", http.MethodGet)
	http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
	return false
}
