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
	// impls lists the servers the suite runs against, etcd first: its result says which cases
	// are etcd's own failures.
	impls = []*impl{etcdImpl, concordImpl}
)

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
