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

// topologyRoles is the topology compose.yaml and deploy/Procfile both
// describe: service name to subcommand.
var topologyRoles = map[string]string{
	"consensus-1": "consensus", "consensus-2": "consensus", "consensus-3": "consensus",
	"gateway-1": "gateway", "gateway-2": "gateway",
	"watchfanout-1": "watchfanout", "watchfanout-2": "watchfanout", "leasesvc-1": "leasesvc", "leasesvc-2": "leasesvc",
}

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
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
	return project
}

func TestComposeCommandsParse(t *testing.T) {
	project := loadCompose(t)
	want := topologyRoles
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

// procLine is one process of deploy/Procfile.
type procLine struct {
	name string
	args []string // after "concord"
}

func readProcfile(t *testing.T) []procLine {
	t.Helper()
	f, err := os.Open("../../deploy/Procfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []procLine
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
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
		out = append(out, procLine{name: strings.TrimSpace(name), args: fields[1:]})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestProcfileCommandsParse(t *testing.T) {
	var roles []string
	for _, p := range readProcfile(t) {
		role := checkCommand(t, p.name, p.args)
		if role == "gateway" && !strings.Contains(strings.Join(p.args, " "), "--listen-client-urls http://127.0.0.1:") {
			t.Errorf("%s: a gateway needs --listen-client-urls http://127.0.0.1:<port>", p.name)
		}
		roles = append(roles, role)
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

// flagValues maps each --flag of args to its value.
func flagValues(args []string) map[string]string {
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		name, ok := strings.CutPrefix(args[i], "--")
		if !ok {
			continue
		}
		if n, v, eq := strings.Cut(name, "="); eq {
			out[n] = v
		} else if i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			out[name] = args[i+1]
			i++
		} else {
			out[name] = ""
		}
	}
	return out
}

// TestProcfileMatchesCompose: deploy/Procfile and compose.yaml describe the
// same topology: the same services with the same subcommands and the same
// flags, a real three-voter cluster, and every client-side service given
// every consensus member (addresses differ: loopback ports vs service names).
func TestProcfileMatchesCompose(t *testing.T) {
	project := loadCompose(t)
	procs := readProcfile(t)
	if len(procs) != len(project.Services) {
		t.Errorf("Procfile has %d processes, compose.yaml %d services", len(procs), len(project.Services))
	}
	for _, p := range procs {
		svc, ok := project.Services[p.name]
		if !ok {
			t.Errorf("Procfile process %s is not a compose.yaml service", p.name)
			continue
		}
		if len(svc.Command) == 0 || svc.Command[0] != p.args[0] {
			t.Errorf("%s: Procfile runs %s, compose.yaml %v", p.name, p.args[0], svc.Command)
			continue
		}
		pf, cf := flagValues(p.args[1:]), flagValues(svc.Command[1:])
		for f := range pf {
			if _, ok := cf[f]; !ok {
				t.Errorf("%s: --%s in the Procfile, not in compose.yaml", p.name, f)
			}
		}
		for f := range cf {
			if _, ok := pf[f]; !ok {
				t.Errorf("%s: --%s in compose.yaml, not in the Procfile", p.name, f)
			}
		}
		for _, vals := range []map[string]string{pf, cf} {
			var list string
			switch p.args[0] {
			case "consensus":
				list = vals["initial-cluster"]
			default:
				list = vals["consensus-endpoints"]
			}
			if n := len(strings.Split(list, ",")); n != 3 {
				t.Errorf("%s: %d consensus members in %q, want all 3", p.name, n, list)
			}
		}
	}
}
