package k8s

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/concord-kv/concord/internal/gobuild"
)

// errNoBinary says that a server binary could not be built; the tests that need it fail with
// this error and the build output, never skip.
var errNoBinary = errors.New("binary not available")

// impl is one server implementation under test.
type impl struct {
	name string // "etcd" or "concord": also the subtest name
	pkg  string // the package go build makes it from
	bin  string // path to the built binary
	err  error  // why bin is unusable; nil when it was built
}

var (
	etcdImpl    = &impl{name: "etcd", pkg: "go.etcd.io/etcd/server/v3"}
	concordImpl = &impl{name: "concord", pkg: "./services/concord"}
	// impls lists the binaries TestMain builds.
	impls = []*impl{etcdImpl, concordImpl}
	// moduleRoot is the module's directory (where compose.yaml is); set by TestMain.
	moduleRoot string
)

// target is one way of running a server that the suite runs against.
type target struct {
	name string // the subtest name
	im   *impl  // the binary it runs
	// start starts a server for t, stopped when t ends, and returns the client URLs
	// Kubernetes talks to.
	start func(t *testing.T, im *impl) []string
}

// targets lists what the suite runs against, etcd first: its result says which cases are etcd's
// own failures. split is compose.yaml's topology of concord processes, reached through a gateway.
var targets = []*target{
	{name: "etcd", im: etcdImpl, start: startSingle},
	{name: "concord", im: concordImpl, start: startSingle},
	{name: "split", im: concordImpl, start: startSplit},
}

// TestMain builds both servers once per run into a temporary directory; the go build cache makes
// every build after the first one quick.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "concord-k8s-bin-")
	if err != nil {
		etcdImpl.err, concordImpl.err = err, err
	} else {
		buildAll(dir)
	}
	code := m.Run()
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
	os.Exit(code)
}

// buildAll builds etcd and concord concurrently; a failure is recorded on its impl.
func buildAll(dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	root, err := gobuild.ModuleRoot(ctx, "")
	if err != nil {
		etcdImpl.err, concordImpl.err = err, err
		return
	}
	moduleRoot = root
	var wg sync.WaitGroup
	for _, im := range impls {
		wg.Go(func() {
			out := filepath.Join(dir, im.name)
			if err := gobuild.Build(ctx, root, im.pkg, out); err != nil {
				im.err = fmt.Errorf("%w: %s (go build %s): %v", errNoBinary, im.name, im.pkg, err)
				return
			}
			im.bin = out
		})
	}
	wg.Wait()
}
