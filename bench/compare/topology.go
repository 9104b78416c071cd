package compare

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
)

// Roles of the processes of a cluster topology.
const (
	RoleEtcd        = "etcd"
	RoleConsensus   = "consensus"
	RoleGateway     = "gateway"
	RoleWatchfanout = "watchfanout"
	RoleLeasesvc    = "leasesvc"
	// RoleClient labels the benchmark process's own CPU in a breakdown.
	RoleClient = "client"
)

// ProcSpec is one process of a generated topology: everything needed to
// start it, and where clients and probes reach it.
type ProcSpec struct {
	Name      string // unique in the topology: "consensus-1", "gateway-2", "etcd-3"
	Role      string
	Args      []string // after the binary; for concord the subcommand comes first
	ClientURL string   // http://127.0.0.1:port, served /health included
	DataDir   string   // "" for stateless processes
}

// Endpoint is the client endpoint as host:port.
func (p ProcSpec) Endpoint() string { return strings.TrimPrefix(p.ClientURL, "http://") }

// PortFunc returns a free loopback port; every call a different one.
type PortFunc func() (int, error)

// EtcdClusterSpec describes a real etcd cluster of Members members.
type EtcdClusterSpec struct {
	Members int
	Dir     string   // data directories go under it
	Flags   []string // for every member, after names and URLs (heartbeat, election, snapshot count, ...)
}

// GenerateEtcdCluster returns the members of an etcd cluster bootstrapped
// with --initial-cluster on loopback, in name order.
func GenerateEtcdCluster(spec EtcdClusterSpec, port PortFunc) ([]ProcSpec, error) {
	if spec.Members < 1 {
		return nil, fmt.Errorf("etcd cluster needs at least one member, got %d", spec.Members)
	}
	members, initial, err := raftMembers("etcd", spec.Members, port)
	if err != nil {
		return nil, err
	}
	out := make([]ProcSpec, len(members))
	for i, m := range members {
		dd := filepath.Join(spec.Dir, m.name+".data")
		args := []string{
			"--name", m.name, "--data-dir", dd,
			"--listen-client-urls", m.client, "--advertise-client-urls", m.client,
			"--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
			"--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", "bench-etcd",
		}
		out[i] = ProcSpec{Name: m.name, Role: RoleEtcd, Args: append(args, spec.Flags...), ClientURL: m.client, DataDir: dd}
	}
	return out, nil
}

// SplitSpec describes concord's split topology: consensus voters, gateways,
// watch fan-outs and lease services, each a process. OneFanoutGateways adds
// gateways that use only the first fan-out, so one topology serves both the
// "N fan-outs" and the "1 fan-out" measurements.
type SplitSpec struct {
	Consensus, Gateways, Fanouts, Leasesvcs int
	OneFanoutGateways                       int
	Dir                                     string
	ConsensusFlags                          []string // for consensus members, after names and URLs
	ServiceFlags                            []string // for the other processes (log level)
	// NATSRoutes clusters the consensus members' embedded NATS servers
	// (--nats-cluster-listen-addr, --nats-routes): the raft leader alone
	// publishes and every fan-out hears it through any member. Without it
	// every member publishes on its own server.
	NATSRoutes bool
}

// Validate checks the counts.
func (s SplitSpec) Validate() error {
	if s.Consensus < 1 || s.Gateways < 1 || s.Fanouts < 1 || s.Leasesvcs < 1 || s.OneFanoutGateways < 0 {
		return fmt.Errorf("split topology needs at least one of each process, got %d consensus, %d gateways, %d fan-outs, %d lease services",
			s.Consensus, s.Gateways, s.Fanouts, s.Leasesvcs)
	}
	return nil
}

// GenerateSplit returns the processes of the split topology in start
// order: consensus members, fan-outs, lease services, gateways (the
// gateways of the 1-fan-out variant last). Every process that talks to
// consensus lists all members, starting with a different one so that load
// and NATS subscriptions spread; fan-out i hears member i's bus first;
// gateway i uses fan-out i first, and lease service 1 first.
func GenerateSplit(spec SplitSpec, port PortFunc) ([]ProcSpec, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	members, initial, err := raftMembers("consensus", spec.Consensus, port)
	if err != nil {
		return nil, err
	}
	var out []ProcSpec
	clientURLs := make([]string, len(members))
	natsURLs := make([]string, len(members))
	natsAddrs := make([]string, len(members))
	clusterAddrs := make([]string, len(members))
	for i, m := range members {
		clientURLs[i] = m.client
		p, err := port()
		if err != nil {
			return nil, err
		}
		natsAddrs[i] = fmt.Sprintf("127.0.0.1:%d", p)
		natsURLs[i] = "nats://" + natsAddrs[i]
		if spec.NATSRoutes {
			if p, err = port(); err != nil {
				return nil, err
			}
			clusterAddrs[i] = fmt.Sprintf("127.0.0.1:%d", p)
		}
	}
	for i, m := range members {
		dd := filepath.Join(spec.Dir, m.name+".data")
		args := []string{RoleConsensus,
			"--name", m.name, "--data-dir", dd,
			"--listen-client-urls", m.client, "--advertise-client-urls", m.client,
			"--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
			"--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", "bench-concord",
			"--nats-listen-addr", natsAddrs[i],
		}
		if spec.NATSRoutes {
			var routes []string
			for j, a := range clusterAddrs {
				if j != i {
					routes = append(routes, "nats://"+a)
				}
			}
			args = append(args, "--nats-cluster-listen-addr", clusterAddrs[i], "--nats-routes", strings.Join(routes, ","))
		}
		out = append(out, ProcSpec{Name: m.name, Role: RoleConsensus, Args: append(args, spec.ConsensusFlags...), ClientURL: m.client, DataDir: dd})
	}
	service := func(role string, i int, extra ...string) (ProcSpec, error) {
		p, err := port()
		if err != nil {
			return ProcSpec{}, err
		}
		name := fmt.Sprintf("%s-%d", role, i+1)
		u := fmt.Sprintf("http://127.0.0.1:%d", p)
		args := append([]string{role, "--name", name, "--listen-client-urls", u,
			"--consensus-endpoints", strings.Join(rotate(clientURLs, i), ",")}, extra...)
		return ProcSpec{Name: name, Role: role, Args: append(args, spec.ServiceFlags...), ClientURL: u}, nil
	}
	var fanouts, leases []string
	for i := range spec.Fanouts {
		ps, err := service(RoleWatchfanout, i, "--nats-url", strings.Join(rotate(natsURLs, i), ","))
		if err != nil {
			return nil, err
		}
		fanouts = append(fanouts, ps.ClientURL)
		out = append(out, ps)
	}
	for i := range spec.Leasesvcs {
		ps, err := service(RoleLeasesvc, i)
		if err != nil {
			return nil, err
		}
		leases = append(leases, ps.ClientURL)
		out = append(out, ps)
	}
	for i := range spec.Gateways + spec.OneFanoutGateways {
		fo := rotate(fanouts, i)
		if i >= spec.Gateways {
			fo = fanouts[:1]
		}
		ps, err := service(RoleGateway, i, "--watchfanout-endpoints", strings.Join(fo, ","),
			"--leasesvc-endpoints", strings.Join(leases, ","))
		if err != nil {
			return nil, err
		}
		out = append(out, ps)
	}
	return out, nil
}

type raftMember struct{ name, client, peer string }

// raftMembers names n members prefix-1..n with a client and a peer port
// each, and returns them with their --initial-cluster value.
func raftMembers(prefix string, n int, port PortFunc) ([]raftMember, string, error) {
	ms := make([]raftMember, n)
	initial := make([]string, n)
	for i := range ms {
		cp, err := port()
		if err != nil {
			return nil, "", err
		}
		pp, err := port()
		if err != nil {
			return nil, "", err
		}
		ms[i] = raftMember{name: fmt.Sprintf("%s-%d", prefix, i+1),
			client: fmt.Sprintf("http://127.0.0.1:%d", cp), peer: fmt.Sprintf("http://127.0.0.1:%d", pp)}
		initial[i] = ms[i].name + "=" + ms[i].peer
	}
	return ms, strings.Join(initial, ","), nil
}

// rotate returns xs starting at index i (mod len).
func rotate(xs []string, i int) []string {
	if len(xs) == 0 {
		return nil
	}
	i %= len(xs)
	return append(append([]string(nil), xs[i:]...), xs[:i]...)
}

// ProbePorts returns a PortFunc handing out ports that were free when
// probed: it holds every probe listener open until release is called, so
// the ports of one topology never collide with each other (another process
// may still take one between release and the server's bind; callers retry).
func ProbePorts() (port PortFunc, release func()) {
	var ls []net.Listener
	port = func() (int, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		ls = append(ls, l)
		return l.Addr().(*net.TCPAddr).Port, nil
	}
	release = func() {
		for _, l := range ls {
			_ = l.Close()
		}
		ls = nil
	}
	return port, release
}

// Names returns the names of the processes with role.
func Names(ps []ProcSpec, role string) []string {
	var out []string
	for _, p := range ps {
		if p.Role == role {
			out = append(out, p.Name)
		}
	}
	return out
}

var errNoLeader = errors.New("no member reports itself as the leader")
