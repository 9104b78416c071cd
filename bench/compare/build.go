package compare

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Packages the runner builds: etcd from the Go module proxy at the version
// pinned in go.mod (it is a `tool` there), concord from this module.
const (
	EtcdPackage    = "go.etcd.io/etcd/server/v3"
	ConcordPackage = "./services/concord"
)

// ModuleRoot returns the directory of the go.mod the go command sees from
// dir ("" = the current directory).
func ModuleRoot(ctx context.Context, dir string) (string, error) {
	cmd := exec.CommandContext(ctx, GoTool(), "env", "GOMOD")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module: run from the concord repository or pass the binaries")
	}
	return filepath.Dir(gomod), nil
}

// Build runs `go build -o out pkg` in the module at root.
func Build(ctx context.Context, root, pkg, out string) error {
	cmd := exec.CommandContext(ctx, GoTool(), "build", "-o", out, pkg)
	cmd.Dir = root
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: go build %s: %v\n%s", ErrBuild, pkg, err, strings.TrimSpace(buf.String()))
	}
	return nil
}

// GoTool is the go command: GOROOT's when set (as under `go test` or
// `go run`), otherwise the first on PATH.
func GoTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "go"
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
