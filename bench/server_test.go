package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/concord-kv/concord/bench"
	"github.com/concord-kv/concord/bench/compare"
	"github.com/concord-kv/concord/internal/gobuild"
)

// TestAgainstEtcd runs the put and range workloads for a few hundred
// requests against a real etcd built from the Go module proxy (the version
// pinned in go.mod), and checks the results against the store itself.
func TestAgainstEtcd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root, err := gobuild.ModuleRoot(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "etcd")
	if err := compare.Build(ctx, root, compare.EtcdPackage, bin); err != nil {
		t.Fatal(err)
	}
	srv, err := compare.StartServer(ctx, compare.ServerConfig{Impl: "etcd", Bin: bin,
		DataDir: filepath.Join(t.TempDir(), "etcd.data"), Extra: []string{"--log-level", "warn"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	})

	var phases []bool
	env := bench.Env{
		Client: bench.ClientConfig{Endpoints: []string{srv.Endpoint()}, Conns: 2, Clients: 8},
		Phase:  func(timed bool) { phases = append(phases, timed) },
	}
	put, err := bench.Run(ctx, &bench.Put{Total: 300, ValSize: 16, KeySpaceSize: 100, Sequential: true, KeyPrefix: "/t/put/"}, env)
	if err != nil {
		t.Fatal(err)
	}
	checkOp(t, put, "put", 300)
	if len(phases) != 2 || !phases[0] || phases[1] {
		t.Fatalf("phase calls = %v, want [true false]", phases)
	}
	if put.Params["clients"] != "8" || put.Params["conns"] != "2" || put.Params["total"] != "300" {
		t.Fatalf("params = %v", put.Params)
	}

	// The store holds exactly the key space, and every put made a revision.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, "/t/put/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 100 {
		t.Fatalf("keys under /t/put/ = %d, want 100", resp.Count)
	}
	if resp.Header.Revision < 301 {
		t.Fatalf("revision %d after 300 puts", resp.Header.Revision)
	}

	rng, err := bench.Run(ctx, &bench.Range{Key: "/t/range/", Prefix: true, Preload: 250, Total: 200, Consistency: "s"}, env)
	if err != nil {
		t.Fatal(err)
	}
	checkOp(t, rng, "range", 200)
	if rng.Params["keys-per-range"] != "250" {
		t.Fatalf("keys per range = %s, want 250", rng.Params["keys-per-range"])
	}
	one, err := bench.Run(ctx, &bench.Range{Key: "/t/one", Preload: 1, Total: 100}, env)
	if err != nil {
		t.Fatal(err)
	}
	checkOp(t, one, "range", 100)
	if one.Params["keys-per-range"] != "1" {
		t.Fatalf("keys per range = %s, want 1", one.Params["keys-per-range"])
	}

	var buf bytes.Buffer
	if err := bench.WriteJSON(&buf, put, rng, one); err != nil {
		t.Fatal(err)
	}
	var parsed []*bench.Result
	if err := json.Unmarshal(buf.Bytes(), &parsed); err != nil || len(parsed) != 3 || parsed[1].Primary().Count != 200 {
		t.Fatalf("JSON output does not round-trip: %v\n%s", err, buf.String())
	}

	// Usage from /proc: a running etcd has resident memory and has used CPU.
	u, err := srv.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if u.RSS <= 0 || u.Peak < u.RSS || u.CPU <= 0 {
		t.Fatalf("usage = %+v", u)
	}
}

func checkOp(t *testing.T, r *bench.Result, name string, count int64) {
	t.Helper()
	o := r.Primary()
	if o.Name != name || o.Count != count || o.Errors != 0 {
		t.Fatalf("%s: op %q count %d errors %d (%s), want %q count %d without errors", r.Workload, o.Name, o.Count, o.Errors, o.FirstError, name, count)
	}
	l := o.Latency
	if o.Rate() <= 0 || l.Min <= 0 || l.Min > l.P50 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.P999 || l.P999 > l.Max {
		t.Fatalf("%s: implausible figures: rate %v latency %+v", r.Workload, o.Rate(), l)
	}
	if r.Elapsed < o.Elapsed {
		t.Fatalf("%s: run took %v but its timed phase %v", r.Workload, r.Elapsed, o.Elapsed)
	}
}

// TestUnsupportedServer runs the workloads that need Watch and
// LeaseKeepAlive against a gRPC server that implements nothing: each must
// fail with ErrUnsupported, promptly, instead of reporting figures.
func TestUnsupportedServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	served := make(chan error, 1)
	go func() { served <- gs.Serve(ln) }()
	t.Cleanup(func() {
		gs.Stop()
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env := bench.Env{Client: bench.ClientConfig{Endpoints: []string{ln.Addr().String()}, Conns: 1, Clients: 2}}
	for _, w := range []bench.Workload{
		&bench.LeaseKeepalive{Total: 10},
		&bench.Watch{Streams: 1, WatchPerStream: 2, PutTotal: 10},
		&bench.WatchLatency{Watchers: 2, Streams: 1, Total: 10},
		&bench.Put{Total: 10},
		&bench.K8s{Objects: 10, Total: 10},
	} {
		st := time.Now()
		_, err := bench.Run(ctx, w, env)
		if !errors.Is(err, bench.ErrUnsupported) {
			t.Errorf("%s: %v, want ErrUnsupported", w.Name(), err)
		}
		if d := time.Since(st); d > 10*time.Second {
			t.Errorf("%s took %v to give up", w.Name(), d)
		}
	}
}
