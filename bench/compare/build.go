package compare

import (
	"context"
	"fmt"
	"io"
	"os"
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

// Build runs `go build` of pkg in the module at root and installs the
// binary at out.
//
// Installs, as a package manager, cp or a container image's layer would:
// the linker writes its output through a memory mapping, which leaves the
// file in the page cache as large folios, and the kernel then maps the
// whole of such a folio into a process at its first touch. A freshly
// linked concord started at once showed 60 MiB of RSS at idle, the same
// binary copied 47 MiB (etcd 30 MiB either way, as its start touches nearly
// all of its smaller text): the idle figure would measure how the binary
// was written, not what it needs.
func Build(ctx context.Context, root, pkg, out string) error {
	linked := out + ".link"
	if err := gobuild.Build(ctx, root, pkg, linked); err != nil {
		return fmt.Errorf("%w: %w", ErrBuild, err)
	}
	defer os.Remove(linked)
	if err := install(linked, out); err != nil {
		return fmt.Errorf("%w: installing %s: %w", ErrBuild, pkg, err)
	}
	return nil
}

// install copies the executable src to dst, as cp does.
func install(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	o, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(o, in); err != nil {
		o.Close()
		return err
	}
	return o.Close()
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
