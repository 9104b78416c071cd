package e2e

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/concord-kv/concord/internal/gobuild"
	"github.com/concord-kv/concord/internal/launcher"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/*.golden from the etcd subtests")

// concordBinEnv names a prebuilt server binary to test as "concord" instead of building
// ./services/concord (a release build, or etcd itself to check the harness).
const concordBinEnv = "E2E_CONCORD_BIN"

// errNoBinary says that a binary the tests need could not be built; the tests that need it fail
// with this error and the build output, so a missing or broken concord shows up as failures,
// never as skips.
var errNoBinary = errors.New("binary not available")

// impl is one server implementation under test.
type impl struct {
	name string // "etcd" or "concord": also the subtest name
	bin  string // path to the built binary
	err  error  // why bin is unusable; nil when it was built
}

var (
	etcdImpl    = &impl{name: "etcd"}
	concordImpl = &impl{name: "concord"}
	// etcdctlBin is the real etcdctl of the version pinned in go.mod.
	etcdctlBin = &impl{name: "etcdctl"}
	// etcdutlBin is the real etcdutl of that version (snapshot status and restore).
	etcdutlBin = &impl{name: "etcdutl"}

	// impls lists the servers every comparing test runs against, etcd first so that its
	// subtest (which may rewrite golden files) runs before concord's.
	impls = []*impl{etcdImpl, concordImpl}
)

// TestMain builds the four binaries once per run into a temporary directory. The go build cache
// makes every build after the first one quick.
func TestMain(m *testing.M) {
	if os.Getenv(withoutMemlockEnv) != "" {
		err := execWithoutMemlock()
		fmt.Fprintln(os.Stderr, "e2e: exec without memlock:", err)
		os.Exit(2)
	}
	flag.Parse()
	dir, err := os.MkdirTemp("", "concord-e2e-bin-")
	if err != nil {
		etcdImpl.err, concordImpl.err, etcdctlBin.err, etcdutlBin.err = err, err, err, err
	} else {
		defer os.RemoveAll(dir)
		buildAll(dir)
	}
	m.Run()
}

// buildAll builds etcdctl, etcdutl, etcd and concord concurrently; failures are recorded per binary.
func buildAll(dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	root, err := gobuild.ModuleRoot(ctx, "")
	if err != nil {
		for _, b := range []*impl{etcdImpl, concordImpl, etcdctlBin, etcdutlBin} {
			b.err = err
		}
		return
	}
	targets := []struct {
		b   *impl
		pkg string
	}{
		{etcdctlBin, "go.etcd.io/etcd/etcdctl/v3"},
		{etcdutlBin, "go.etcd.io/etcd/etcdutl/v3"},
		{etcdImpl, "go.etcd.io/etcd/server/v3"},
		{concordImpl, "./services/concord"},
	}
	if bin := os.Getenv(concordBinEnv); bin != "" {
		concordImpl.bin = bin
		targets = targets[:len(targets)-1]
	}
	var wg sync.WaitGroup
	for _, tg := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := filepath.Join(dir, tg.b.name)
			if err := gobuild.Build(ctx, root, tg.pkg, out); err != nil {
				tg.b.err = fmt.Errorf("%w: %s (go build %s): %v", errNoBinary, tg.b.name, tg.pkg, err)
				return
			}
			tg.b.bin = out
		}()
	}
	wg.Wait()
}

// requireBinary fails the test when b could not be built.
func requireBinary(t testing.TB, b *impl) {
	t.Helper()
	if b.err != nil {
		t.Fatalf("%s: %v", b.name, b.err)
	}
}

// cleanEnv is the environment for every child process: without the ETCD_, ETCDCTL_ and CONCORD_
// variables of whoever runs the tests, since both servers and etcdctl read their flags from those.
var cleanEnv = launcher.DefaultEnv
