package main

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/concord-kv/concord/services/config"
)

// checkCommand parses args (a subcommand and its flags) with the real
// command tree and loads the subcommand's configuration, as running it
// would, without starting anything.
func checkCommand(t *testing.T, what string, args []string) string {
	t.Helper()
	root := newRootCommand()
	cmd, rest, err := root.Find(args)
	if err != nil || cmd == root {
		t.Fatalf("%s: %v is not a concord subcommand (%v)", what, args, err)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Fatalf("%s: flags %v: %v", what, rest, err)
	}
	if extra := cmd.Flags().Args(); len(extra) != 0 {
		t.Fatalf("%s: unexpected arguments %v", what, extra)
	}
	switch cmd.Name() {
	case "consensus":
		_, err = config.LoadConsensus(cmd.Flags())
	case string(config.RoleWatchfanout), string(config.RoleLeasesvc), string(config.RoleGateway):
		_, err = config.LoadSplit(cmd.Flags(), config.Role(cmd.Name()))
	default:
		t.Fatalf("%s: %q is not a split-topology subcommand", what, cmd.Name())
	}
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return cmd.Name()
}

func TestComposeCommandsParse(t *testing.T) {
	path, err := filepath.Abs("../../compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	project, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  filepath.Dir(path),
		ConfigFiles: []types.ConfigFile{{Filename: path}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) { o.SetProjectName("concord", true) })
	if err != nil {
		t.Fatalf("load compose.yaml: %v", err)
	}
	want := map[string]string{
		"consensus-1": "consensus", "gateway-1": "gateway", "gateway-2": "gateway",
		"watchfanout-1": "watchfanout", "watchfanout-2": "watchfanout", "leasesvc-1": "leasesvc", "leasesvc-2": "leasesvc",
	}
	if len(project.Services) != len(want) {
		t.Errorf("compose.yaml has %d services, want %d", len(project.Services), len(want))
	}
	for name, role := range want {
		svc, ok := project.Services[name]
		if !ok {
			t.Errorf("compose.yaml has no service %s", name)
			continue
		}
		if svc.Build == nil || svc.Build.Dockerfile != "deploy/Dockerfile" {
			t.Errorf("%s: not built from deploy/Dockerfile: %+v", name, svc.Build)
		}
		if got := checkCommand(t, name, svc.Command); got != role {
			t.Errorf("%s runs %s, want %s", name, got, role)
		}
	}
}

func TestProcfileCommandsParse(t *testing.T) {
	f, err := os.Open("../../deploy/Procfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var roles []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, cmdline, ok := strings.Cut(line, ":")
		fields := strings.Fields(cmdline)
		if !ok || len(fields) < 2 || fields[0] != "concord" {
			t.Fatalf("Procfile line %q is not `name: concord <subcommand> <flags>`", line)
		}
		role := checkCommand(t, name, fields[1:])
		if role == "gateway" && !strings.Contains(cmdline, "--listen-client-urls http://127.0.0.1:") {
			t.Errorf("%s: a gateway needs --listen-client-urls http://127.0.0.1:<port>", name)
		}
		roles = append(roles, role)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	seenOther := false
	for i, r := range roles {
		if r != "consensus" {
			seenOther = true
		} else if seenOther {
			t.Errorf("Procfile line %d: consensus lines must come first", i+1)
		}
	}
	if len(roles) == 0 || roles[0] != "consensus" {
		t.Errorf("Procfile must start with a consensus member: %v", roles)
	}
}
