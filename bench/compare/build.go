package compare

import (
	"context"
	"fmt"
	"os/exec"
	"strings"

	"github.com/concord-kv/concord/internal/gobuild"
)

// Packages the runner builds: etcd from the Go module proxy at the version
// pinned in go.mod (it is a `tool` there), concord from this module.
const (
	EtcdPackage    = "go.etcd.io/etcd/server/v3"
	ConcordPackage = "./services/concord"
)

// Build runs `go build -o out pkg` in the module at root.
func Build(ctx context.Context, root, pkg, out string) error {
	if err := gobuild.Build(ctx, root, pkg, out); err != nil {
		return fmt.Errorf("%w: %w", ErrBuild, err)
	}
	return nil
}

// BinaryVersion runs `bin --version` and returns its first line.
func BinaryVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return "unknown"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(line)
}
