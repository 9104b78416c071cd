package k8s

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
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
	root, err := moduleRoot(ctx)
	if err != nil {
		etcdImpl.err, concordImpl.err = err, err
		return
	}
	var wg sync.WaitGroup
	for _, im := range impls {
		wg.Go(func() {
			out := filepath.Join(dir, im.name)
			if err := goBuild(ctx, root, out, im.pkg); err != nil {
				im.err = fmt.Errorf("%w: %s (go build %s): %v", errNoBinary, im.name, im.pkg, err)
				return
			}
			im.bin = out
		})
	}
	wg.Wait()
}

func goBuild(ctx context.Context, root, out, pkg string) error {
	cmd := exec.CommandContext(ctx, goTool(), "build", "-o", out, pkg)
	cmd.Dir = root
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%v\n%s", err, strings.TrimSpace(buf.String()))
	}
	return nil
}

// moduleRoot is the directory of the go.mod that contains this package.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, goTool(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("tests/k8s is not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

// goTool is the go command that runs these tests: the one in GOROOT if `go test` exported it,
// otherwise the first on PATH.
func goTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "go"
}
