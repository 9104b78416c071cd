package config_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/concord-kv/concord/services/config"
)

// dnsServer is a small authoritative DNS server on 127.0.0.1:0 (UDP) that
// answers SRV and A questions from fixed records, so discovery goes
// through Go's real resolver and real DNS messages.
type dnsServer struct {
	srv map[string][]dnsmessage.SRVResource // "_etcd-server._tcp.example.test."
	a   map[string][4]byte                  // "m1.example.test."
}

// resolver starts the server and returns a resolver that asks only it.
func (d *dnsServer) resolver(t *testing.T) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out, err := d.answer(buf[:n]); err == nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	addr := pc.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "udp", addr)
	}}
}

func (d *dnsServer) answer(req []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	name := strings.ToLower(q.Name.String())
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
	b.EnableCompression()
	_ = b.StartQuestions()
	_ = b.Question(q)
	_ = b.StartAnswers()
	found := false
	switch q.Type {
	case dnsmessage.TypeSRV:
		for _, r := range d.srv[name] {
			found = true
			if err := b.SRVResource(rh, r); err != nil {
				return nil, err
			}
		}
	case dnsmessage.TypeA:
		if ip, ok := d.a[name]; ok {
			found = true
			if err := b.AResource(rh, dnsmessage.AResource{A: ip}); err != nil {
				return nil, err
			}
		}
	}
	_, known := d.a[name]
	if !found && !known && d.srv[name] == nil {
		// Unknown names are NXDOMAIN; known ones without this type are
		// empty answers (AAAA of a host with an A record).
		b = dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RCode: dnsmessage.RCodeNameError})
		_ = b.StartQuestions()
		_ = b.Question(q)
	}
	return b.Finish()
}

func srvRecord(target string, port, priority uint16) dnsmessage.SRVResource {
	return dnsmessage.SRVResource{Priority: priority, Weight: 10, Port: port, Target: dnsmessage.MustNewName(target)}
}

// exampleDNS describes a three-member cluster under example.test: http
// members under _etcd-server, https ones under _etcd-server-ssl-prod.
func exampleDNS() *dnsServer {
	return &dnsServer{
		srv: map[string][]dnsmessage.SRVResource{
			"_etcd-server._tcp.example.test.": {
				srvRecord("m1.example.test.", 2380, 1), srvRecord("m2.example.test.", 2380, 2), srvRecord("m3.example.test.", 2390, 3),
			},
			"_etcd-server-ssl-prod._tcp.example.test.": {
				srvRecord("m1.example.test.", 2480, 1), srvRecord("m2.example.test.", 2480, 2),
			},
		},
		a: map[string][4]byte{
			"m1.example.test.": {127, 0, 0, 11}, "m2.example.test.": {127, 0, 0, 12}, "m3.example.test.": {127, 0, 0, 13},
		},
	}
}

func loadWith(t *testing.T, r config.SRVResolver, args ...string) (config.Server, error) {
	t.Helper()
	fs := pflag.NewFlagSet("concord", pflag.ContinueOnError)
	config.ServerFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return config.LoadServerWithResolver(fs, r)
}

// TestDiscoverySRV checks etcd's DNS SRV bootstrap: this member's record
// (matched by the resolved address of an advertised peer URL) gets its
// name, the others etcd's placeholders 0, 1, ...; the URLs keep the SRV
// targets' names without the trailing dot.
func TestDiscoverySRV(t *testing.T) {
	r := exampleDNS().resolver(t)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"http", []string{"--name=m2", "--discovery-srv=example.test", "--initial-advertise-peer-urls=http://127.0.0.12:2380"},
			"0=http://m1.example.test:2380,m2=http://m2.example.test:2380,1=http://m3.example.test:2390"},
		{"own URL by name", []string{"--name=m3", "--discovery-srv=example.test", "--initial-advertise-peer-urls=http://m3.example.test:2390"},
			"0=http://m1.example.test:2380,1=http://m2.example.test:2380,m3=http://m3.example.test:2390"},
		{"https with service name", []string{"--name=m1", "--discovery-srv=example.test", "--discovery-srv-name=prod", "--initial-advertise-peer-urls=https://127.0.0.11:2480"},
			"m1=https://m1.example.test:2480,0=https://m2.example.test:2480"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := loadWith(t, r, c.args...)
			if err != nil {
				t.Fatal(err)
			}
			if s.InitialCluster != c.want {
				t.Errorf("initial cluster %q, want %q", s.InitialCluster, c.want)
			}
			// As etcd: https:// peers found by SRV, with no peer CA
			// given, must have certificates for the domain.
			if want := map[bool]string{true: "example.test"}[strings.Contains(c.want, "https://")]; s.PeerTLS.ServerName != want {
				t.Errorf("peer TLS server name %q, want %q", s.PeerTLS.ServerName, want)
			}
		})
	}
}

func TestDiscoverySRVRefusals(t *testing.T) {
	r := exampleDNS().resolver(t)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"not in the records", []string{"--name=m9", "--discovery-srv=example.test", "--initial-advertise-peer-urls=http://127.0.0.19:2380"},
			`cannot find local etcd member "m9" in SRV records`},
		{"scheme mismatch", []string{"--name=m2", "--discovery-srv=example.test", "--initial-advertise-peer-urls=https://127.0.0.12:2380"},
			"bootstrap at http://m2.example.test:2380 from DNS for etcd-server has scheme mismatch with expected peer https://127.0.0.12:2380"},
		{"no records", []string{"--name=m1", "--discovery-srv=nowhere.test", "--initial-advertise-peer-urls=http://127.0.0.11:2380"},
			"error querying DNS SRV records for _etcd-server"},
		{"with --initial-cluster", []string{"--name=m1", "--discovery-srv=example.test", "--initial-cluster=m1=http://127.0.0.11:2380"},
			`multiple discovery or bootstrap flags are set. Choose one of "initial-cluster", "discovery-endpoints" or "discovery-srv"`},
		{"service name alone", []string{"--discovery-srv-name=prod"}, "--discovery-srv-name is only used with --discovery-srv"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := loadWith(t, r, c.args...)
			if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v, want ErrInvalid with %q", err, c.want)
			}
		})
	}
}

// TestV3DiscoveryFlags checks etcd's v3 discovery flags: read with etcd's
// defaults, refused with etcd's messages when incomplete or combined with
// another way to bootstrap.
func TestV3DiscoveryFlags(t *testing.T) {
	c, err := load(t, "--discovery-endpoints=10.0.0.1:2379,10.0.0.2:2379", "--discovery-token=tok", "--discovery-user=alice:pw")
	if err != nil {
		t.Fatal(err)
	}
	d := c.Discovery
	if !d.Enabled() || len(d.Endpoints) != 2 || d.Token != "tok" || d.User != "alice" || d.Password != "pw" ||
		d.DialTimeout != 2*time.Second || d.RequestTimeout != 5*time.Second || !d.InsecureTransport {
		t.Errorf("discovery read as %+v", d)
	}
	if c, err = load(t); err != nil || c.Discovery.Enabled() {
		t.Errorf("defaults: %+v, %v", c.Discovery, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--discovery-token=tok"}, "both --discovery-token and --discovery-endpoints must be set"},
		{[]string{"--discovery-endpoints=10.0.0.1:2379"}, "both --discovery-token and --discovery-endpoints must be set"},
		{[]string{"--discovery-endpoints=10.0.0.1:2379,,10.0.0.2:2379", "--discovery-token=tok"}, "--discovery-endpoints must not contain empty endpoints"},
		{[]string{"--discovery-endpoints=10.0.0.1:2379", "--discovery-token=tok", "--initial-cluster=default=http://localhost:2380"}, "multiple discovery or bootstrap flags are set"},
		{[]string{"--discovery-endpoints=10.0.0.1:2379", "--discovery-token=tok", "--discovery-srv=example.test"}, "multiple discovery or bootstrap flags are set"},
	} {
		if _, err := load(t, c.args...); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want ErrInvalid with %q", c.args, err, c.want)
		}
	}
}
