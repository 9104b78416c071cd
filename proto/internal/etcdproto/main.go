// Command etcdproto prepares etcd's service definitions for code generation.
//
// It copies the .proto files of the exact etcd module versions in go.mod from
// the module cache into proto/etcd, stripping the grpc-gateway and openapiv2
// annotations (and their imports) that concord does not need and that would
// otherwise pull googleapis into the build. With -buf it then runs
// `go tool buf generate` at the module root, so `go generate ./proto/...`
// regenerates everything in one step.
//
// Invariant: every copied file is placed at the path under which etcd's own
// Go package registers it (rpc.proto, v3lock.proto, v3election.proto at the
// root; imports under etcd/api/...). The generated connect code refers to the
// file descriptors of etcd's message packages (File_rpc_proto, ...), so the
// paths must match; the program checks them against protoregistry and fails
// otherwise.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// source is one .proto file to copy.
type source struct {
	module string // Go module that ships the file
	src    string // path inside the module
	dst    string // path inside the generation input (proto/etcd)
	// registered is the descriptor etcd's Go package registers for the file;
	// nil for files whose Go code we never reference.
	registered protoreflect.FileDescriptor
}

const (
	apiModule    = "go.etcd.io/etcd/api/v3"
	serverModule = "go.etcd.io/etcd/server/v3"
	raftModule   = "go.etcd.io/raft/v3"
)

var sources = []source{
	{apiModule, "etcdserverpb/rpc.proto", "rpc.proto", etcdserverpb.File_rpc_proto},
	{apiModule, "mvccpb/kv.proto", "etcd/api/mvccpb/kv.proto", nil},
	{apiModule, "authpb/auth.proto", "etcd/api/authpb/auth.proto", nil},
	{apiModule, "versionpb/version.proto", "etcd/api/versionpb/version.proto", nil},
	{serverModule, "etcdserver/api/v3lock/v3lockpb/v3lock.proto", "v3lock.proto", v3lockpb.File_v3lock_proto},
	{serverModule, "etcdserver/api/v3election/v3electionpb/v3election.proto", "v3election.proto", v3electionpb.File_v3election_proto},
	// raft's messages, carried by concord's peer transport (concord/v1/peer.proto).
	{raftModule, "raftpb/raft.proto", "raft.proto", raftpb.File_raft_proto},
}

// importRewrites maps import paths used by etcd's sources to the paths of
// the generation input. rpc.proto lives at the root because that is where
// etcdserverpb registers it.
var importRewrites = map[string]string{
	"etcd/api/etcdserverpb/rpc.proto": "rpc.proto",
}

// droppedImports are the annotation imports removed together with their options.
var droppedImports = []string{
	"google/api/annotations.proto",
	"protoc-gen-openapiv2/options/annotations.proto",
}

var (
	importRE       = regexp.MustCompile(`^\s*import\s+"([^"]+)";`)
	annotationRE   = regexp.MustCompile(`^\s*option\s+\((google\.api\.http|grpc\.gateway\.[A-Za-z0-9_.]+)\)\s*=\s*\{`)
	gatewayComment = regexp.MustCompile(`^\s*//\s*for grpc-gateway\s*$`)
	rpcOpenRE      = regexp.MustCompile(`^(\s*rpc\s.*\))\s*\{\s*$`)
)

func main() {
	out := flag.String("out", "etcd", "directory to write the prepared .proto files to")
	runBuf := flag.Bool("buf", false, "run `go tool buf generate` at the module root afterwards")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(context.Background(), log, *out, *runBuf); err != nil {
		log.Error("etcdproto failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, out string, runBuf bool) error {
	dirs := map[string]string{}
	for _, s := range sources {
		if s.registered != nil && s.registered.Path() != s.dst {
			return fmt.Errorf("%s registers %q, but would be generated as %q", s.src, s.registered.Path(), s.dst)
		}
		if _, ok := dirs[s.module]; ok {
			continue
		}
		dir, version, err := moduleDir(ctx, s.module)
		if err != nil {
			return err
		}
		log.Info("using module", "module", s.module, "version", version, "dir", dir)
		dirs[s.module] = dir
	}
	for _, s := range sources {
		raw, err := os.ReadFile(filepath.Join(dirs[s.module], filepath.FromSlash(s.src)))
		if err != nil {
			return err
		}
		_, version, _ := moduleDir(ctx, s.module)
		body, err := strip(raw)
		if err != nil {
			return fmt.Errorf("%s: %w", s.src, err)
		}
		// The note goes after the package statement: protoc-gen-connect-go
		// copies comments attached to syntax/package into generated code.
		note := fmt.Sprintf("\n// Copied from %s@%s/%s by proto/internal/etcdproto. DO NOT EDIT.\n"+
			"// google.api.http and openapiv2 annotations and their imports are stripped.\n", s.module, version, s.src)
		body, err = insertAfterPackage(body, note)
		if err != nil {
			return fmt.Errorf("%s: %w", s.src, err)
		}
		dst := filepath.Join(out, filepath.FromSlash(s.dst))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, body, 0o644); err != nil {
			return err
		}
		log.Info("wrote", "file", dst)
	}
	if !runBuf {
		return nil
	}
	root, err := goEnv(ctx, "GOMOD")
	if err != nil {
		return err
	}
	if root == "" || root == os.DevNull {
		return errors.New("not inside a Go module")
	}
	cmd := exec.CommandContext(ctx, "go", "tool", "buf", "generate")
	cmd.Dir = filepath.Dir(root)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	log.Info("running buf generate", "dir", cmd.Dir)
	return cmd.Run()
}

var versions = map[string][2]string{}

// moduleDir returns the module cache directory and version of module as
// selected by the current go.mod.
func moduleDir(ctx context.Context, module string) (dir, version string, err error) {
	if v, ok := versions[module]; ok {
		return v[0], v[1], nil
	}
	b, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}\t{{.Version}}", module).Output()
	if err != nil {
		return "", "", fmt.Errorf("go list -m %s: %w", module, err)
	}
	dir, version, ok := strings.Cut(strings.TrimSpace(string(b)), "\t")
	if !ok || dir == "" {
		return "", "", fmt.Errorf("module %s is not downloaded (run go mod download %s)", module, module)
	}
	versions[module] = [2]string{dir, version}
	return dir, version, nil
}

func goEnv(ctx context.Context, name string) (string, error) {
	b, err := exec.CommandContext(ctx, "go", "env", name).Output()
	return strings.TrimSpace(string(b)), err
}

// strip removes the annotation options and imports, rewrites imports, and
// collapses rpc bodies that became empty into `rpc ...;`.
func strip(raw []byte) ([]byte, error) {
	lines := strings.Split(string(raw), "\n")
	kept := make([]string, 0, len(lines))
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if gatewayComment.MatchString(line) {
			continue
		}
		if m := importRE.FindStringSubmatch(line); m != nil {
			if dropped(m[1]) {
				continue
			}
			if to, ok := importRewrites[m[1]]; ok {
				line = strings.Replace(line, `"`+m[1]+`"`, `"`+to+`"`, 1)
			}
		}
		if annotationRE.MatchString(line) {
			// Skip up to the line where the option's braces balance again.
			depth := 0
			for ; i < len(lines); i++ {
				depth += strings.Count(lines[i], "{") - strings.Count(lines[i], "}")
				if depth == 0 {
					break
				}
			}
			if depth != 0 {
				return nil, errors.New("unbalanced braces in annotation option")
			}
			continue
		}
		kept = append(kept, line)
	}
	// Collapse `rpc X(A) returns (B) {` followed by a bare `}`.
	outLines := make([]string, 0, len(kept))
	for i := 0; i < len(kept); i++ {
		if m := rpcOpenRE.FindStringSubmatch(kept[i]); m != nil && i+1 < len(kept) && strings.TrimSpace(kept[i+1]) == "}" {
			outLines = append(outLines, m[1]+";")
			i++
			continue
		}
		outLines = append(outLines, kept[i])
	}
	res := []byte(strings.Join(outLines, "\n"))
	for _, imp := range droppedImports {
		if bytes.Contains(res, []byte(imp)) {
			return nil, fmt.Errorf("%s still referenced after stripping", imp)
		}
	}
	if bytes.Contains(res, []byte("google.api.")) || bytes.Contains(res, []byte("openapiv2")) {
		return nil, errors.New("annotation left after stripping")
	}
	return res, nil
}

func dropped(imp string) bool {
	for _, d := range droppedImports {
		if imp == d {
			return true
		}
	}
	return false
}

var packageRE = regexp.MustCompile(`(?m)^package [A-Za-z0-9_.]+;\n`)

func insertAfterPackage(body []byte, note string) ([]byte, error) {
	loc := packageRE.FindIndex(body)
	if loc == nil {
		return nil, errors.New("no package statement")
	}
	out := make([]byte, 0, len(body)+len(note))
	out = append(out, body[:loc[1]]...)
	out = append(out, note...)
	return append(out, body[loc[1]:]...), nil
}
