package e2e

import (
	"fmt"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

func TestCtlMaintenance(t *testing.T) {
	runScenario(t, scenario{name: "maintenance", steps: seq(
		ctl("endpoint", "health"),
		ctl("endpoint", "health", "-w", "json"),
		ctl("endpoint", "status", "-w", "json"),
		ctl("put", "a", "1"),
		ctl("put", "b", "2"),
		ctl("endpoint", "status", "-w", "json"),
		ctl("endpoint", "hashkv", "-w", "json"),
		ctl("endpoint", "hashkv"),
		ctl("endpoint", "hashkv", "--rev", "2", "-w", "json"),
		ctl("endpoint", "hashkv", "--rev", "3", "-w", "json"),
		ctl("put", "a", "3"),
		ctl("endpoint", "hashkv", "--rev", "3", "-w", "json"),
		ctl("endpoint", "hashkv", "-w", "json"),
		ctl("alarm", "list"),
		ctl("alarm", "list", "-w", "json"),
		ctl("alarm", "disarm"),
		ctl("defrag"),
		ctl("endpoint", "status", "-w", "json"),
		ctl("get", "", "--prefix", "-w", "json"),
	)})
}

// noSpaceQuota is the --quota-backend-bytes of the NOSPACE scenario. etcd accepts any positive
// quota (0 means the 2 GiB default, negative disables it) and checks
// Size() + cost(request) < quota, where a put costs 256 + len(key) + len(value). A value larger
// than the quota therefore fails on any store, whatever its size accounting, while small puts
// succeed as long as the store is well below 1 MiB.
const (
	noSpaceQuota     = 1 << 20
	overQuotaValueSz = 1100 * 1000
)

func TestCtlNoSpace(t *testing.T) {
	big := strings.Repeat("z", overQuotaValueSz)
	runScenario(t, scenario{
		name:  "nospace",
		extra: []string{fmt.Sprintf("--quota-backend-bytes=%d", noSpaceQuota)},
		steps: seq(
			ctl("put", "a", "1"),
			ctl("put", "b", "1"),
			ctl("endpoint", "status", "-w", "json"),
			ctl("alarm", "list"),
			ctlIn(big, "put", "big"),
			ctl("alarm", "list"),
			ctl("alarm", "list", "-w", "json"),
			ctl("endpoint", "status", "-w", "json"),
			// While NOSPACE is raised, puts, txns with puts and lease grants fail; reads,
			// deletes, read-only txns and compaction still work.
			ctl("put", "c", "1"),
			ctlIn(txnInput(nil, []string{"put c 1"}, nil), "txn"),
			ctlIn(txnInput(nil, []string{"get a"}, nil), "txn"),
			ctlIn(txnInput(nil, []string{"del b"}, nil), "txn", "-w", "json"),
			ctl("lease", "grant", "60"),
			ctl("get", "", "--prefix", "-w", "json"),
			ctl("del", "a", "-w", "json"),
			ctl("compact", "4"),
			ctl("defrag"),
			ctl("alarm", "disarm"),
			ctl("alarm", "list"),
			ctl("alarm", "disarm"),
			ctl("put", "c", "1", "-w", "json"),
			ctl("endpoint", "status", "-w", "json"),
			ctl("get", "", "--prefix", "-w", "json"),
		),
	})
}

func TestCtlRestart(t *testing.T) {
	runScenario(t, scenario{name: "restart", steps: seq(
		puts("a", "1", "b", "2", "a", "3"),
		ctl("del", "b"),
		ctl("put", "c", "4"),
		ctl("compact", "3"),
		ctl("get", "", "--prefix", "-w", "json"),
		ctl("endpoint", "hashkv", "-w", "json"),
		ctl("endpoint", "status", "-w", "json"),
		step{kind: stepRestart},
		ctl("get", "", "--prefix", "-w", "json"),
		ctl("get", "a", "--rev", "2"),
		ctl("get", "", "--prefix", "--rev", "3", "-w", "json"),
		ctl("get", "b", "--rev", "5", "-w", "json"),
		ctl("endpoint", "hashkv", "-w", "json"),
		ctl("endpoint", "status", "-w", "json"),
		ctl("compact", "3"),
		ctl("put", "d", "5", "-w", "json"),
		step{kind: stepCrash},
		ctl("get", "", "--prefix", "-w", "json"),
		ctl("get", "d", "--rev", "6", "-w", "json"),
		ctl("put", "e", "6", "-w", "json"),
		ctl("endpoint", "hashkv", "-w", "json"),
		ctl("compact", "7"),
		step{kind: stepCrash},
		ctl("get", "a", "--rev", "6"),
		ctl("get", "", "--prefix", "--rev", "7", "-w", "json"),
		ctl("endpoint", "hashkv", "-w", "json"),
	)})
}

// TestCtlDowngrade compares etcd's downgrade validation and cancellation. Enabling a downgrade is
// left out: etcd starts one, concord refuses (TestDowngradeEnableRefused).
func TestCtlDowngrade(t *testing.T) {
	runScenario(t, scenario{name: "downgrade", steps: seq(
		ctl("downgrade", "validate", "3.6"),
		ctl("downgrade", "validate", "3.6.0"),
		ctl("downgrade", "validate", "3.6.9"),
		ctl("downgrade", "validate", "3.5"),
		ctl("downgrade", "validate", "3.7"),
		ctl("downgrade", "validate", "4.6"),
		ctl("downgrade", "validate", "three"),
		ctl("downgrade", "validate", "v3.6"),
		ctl("downgrade", "enable", "3.5"),
		ctl("downgrade", "enable", "bad"),
		ctl("downgrade", "cancel"),
		ctl("endpoint", "status", "-w", "json"),
	)})
}

// TestDowngradeEnableRefused: concord's data directory is not etcd's, so no older binary could
// finish a downgrade; concord refuses to start one, and nothing changes.
func TestDowngradeEnableRefused(t *testing.T) {
	t.Parallel()
	s := startServer(t, concordImpl, serverOptions{})
	r := runCtl(t, s.Endpoint(), "", "downgrade", "enable", "3.6")
	if r.exit == 0 || !strings.Contains(r.stderr, "concord cannot be downgraded in place") {
		t.Fatalf("downgrade enable 3.6: exit %d, stderr %q; want a refusal", r.exit, r.stderr)
	}
	r = runCtl(t, s.Endpoint(), "", "endpoint", "status", "-w", "json")
	if r.exit != 0 || !strings.Contains(r.stdout, `"downgradeInfo":{}`) {
		t.Fatalf("endpoint status after a refused enable: exit %d, %s %s", r.exit, r.stdout, r.stderr)
	}
	r = runCtl(t, s.Endpoint(), "", "downgrade", "validate", "3.6")
	if r.exit != 0 || !strings.Contains(r.stdout, "Downgrade validate success, cluster version 3.7") {
		t.Fatalf("downgrade validate after a refused enable: exit %d, %s %s", r.exit, r.stdout, r.stderr)
	}
}

// TestMaintenanceHash: etcd's Maintenance.Hash (no etcdctl command; gRPC only) answers with the
// revision it hashed, the same hash while nothing changes, and a new one after a write, on both
// servers. The values differ between etcd and concord (etcd hashes its bbolt file's buckets).
func TestMaintenanceHash(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		c := newClient(t, s)
		ctx := testCtx(t)
		mc := pb.NewMaintenanceClient(c.ActiveConnection())
		must(c.Put(ctx, "a", "1"))(t)
		put := must(c.Put(ctx, "b", "2"))(t)
		h1 := must(mc.Hash(ctx, &pb.HashRequest{}))(t)
		h2 := must(mc.Hash(ctx, &pb.HashRequest{}))(t)
		if h1.Header.Revision != put.Header.Revision || h1.Hash != h2.Hash || h1.Hash == 0 {
			t.Fatalf("hash %d at %d, again %d; last put at %d", h1.Hash, h1.Header.Revision, h2.Hash, put.Header.Revision)
		}
		must(c.Put(ctx, "a", "3"))(t)
		if h3 := must(mc.Hash(ctx, &pb.HashRequest{}))(t); h3.Hash == h1.Hash || h3.Header.Revision != put.Header.Revision+1 {
			t.Fatalf("after a put: hash %d at %d, before %d at %d", h3.Hash, h3.Header.Revision, h1.Hash, h1.Header.Revision)
		}
	})
}
