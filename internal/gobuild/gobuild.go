// Package gobuild builds binaries of this module and of the tools go.mod
// pins (etcd, etcdctl, etcdutl) with the go command, for the end-to-end
// tests, the Kubernetes conformance tests and `concord bench compare`, which
// run real processes of both servers.
package gobuild

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

// ErrNotInModule: the go command sees no go.mod from the directory.
var ErrNotInModule = errors.New("not inside a Go module: run from the concord repository")

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
		return "", ErrNotInModule
	}
	return filepath.Dir(gomod), nil
}

// Build runs `go build -o out pkg` in the module at root; a failure's
// error holds the go command's output.
func Build(ctx context.Context, root, pkg, out string) error {
	cmd := exec.CommandContext(ctx, GoTool(), "build", "-o", out, pkg)
	cmd.Dir = root
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, strings.TrimSpace(buf.String()))
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
