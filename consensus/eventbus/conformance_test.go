package eventbus_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/consensus/eventbus/eventbustest"
	"github.com/concord-kv/concord/internal/tlstest"
)

// smallPayload makes the suite's large revisions fragment on NATS.
const smallPayload = 64 << 10

func logger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestConformanceMemory(t *testing.T) {
	eventbustest.Run(t, func(t *testing.T) eventbus.Bus { return eventbus.NewMemory() })
}

func TestConformanceNATSInProcess(t *testing.T) {
	eventbustest.Run(t, func(t *testing.T) eventbus.Bus {
		b, err := eventbus.StartNATS(context.Background(), eventbus.NATSConfig{MaxPayload: smallPayload, Logger: logger()})
		if err != nil {
			t.Fatal(err)
		}
		if u := b.ClientURL(); u != "" {
			t.Fatalf("in-process server has a listener: %q", u)
		}
		return b
	})
}

// TestConformanceNATSLoopback publishes on the embedded server's bus and
// subscribes through a separate client connected over loopback TCP, the
// shape of the split deployment.
func TestConformanceNATSLoopback(t *testing.T) {
	eventbustest.Run(t, func(t *testing.T) eventbus.Bus {
		srv, err := eventbus.StartNATS(context.Background(), eventbus.NATSConfig{
			ListenAddr: "127.0.0.1:0", MaxPayload: smallPayload, Logger: logger(),
		})
		if err != nil {
			t.Fatal(err)
		}
		cli, err := eventbus.ConnectNATS(context.Background(), srv.ClientURL(), eventbus.WithLogger(logger()))
		if err != nil {
			srv.Close()
			t.Fatal(err)
		}
		if got := cli.MaxPayload(); got != smallPayload {
			t.Fatalf("client sees max payload %d, want %d", got, smallPayload)
		}
		return split{pub: srv, sub: cli}
	})
}

// TestConformanceNATSTLS is TestConformanceNATSLoopback over mutual TLS:
// the server requires a certificate signed by the test CA, and the client
// presents one and verifies the server's with that CA.
func TestConformanceNATSTLS(t *testing.T) {
	certs, err := tlstest.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	eventbustest.Run(t, func(t *testing.T) eventbus.Bus {
		srv, err := eventbus.StartNATS(context.Background(), eventbus.NATSConfig{
			ListenAddr: "127.0.0.1:0", MaxPayload: smallPayload, Logger: logger(),
			TLS: eventbus.TLSFiles{CertFile: certs.ServerCert, KeyFile: certs.ServerKey, CAFile: certs.CA},
		})
		if err != nil {
			t.Fatal(err)
		}
		if u := srv.ClientURL(); !strings.HasPrefix(u, "tls://") {
			srv.Close()
			t.Fatalf("ClientURL of a TLS server = %q, want tls://", u)
		}
		// A nats:// URL: TLS comes from WithTLS, not from the scheme.
		cli, err := eventbus.ConnectNATS(context.Background(), "nats://"+strings.TrimPrefix(srv.ClientURL(), "tls://"),
			eventbus.WithLogger(logger()),
			eventbus.WithTLS(eventbus.TLSFiles{CertFile: certs.ClientCert, KeyFile: certs.ClientKey, CAFile: certs.CA}))
		if err != nil {
			srv.Close()
			t.Fatal(err)
		}
		return split{pub: srv, sub: cli}
	})
}

// TestConformanceNATSCluster runs the suite over a three-server cluster,
// the shape of three consensus members: servers a, b and c are joined by
// routes (every one given the same route list, itself included, as the
// members' --nats-routes); the subscriber connects to c with b as the
// alternative, then c is killed, so it must fail over to b; revisions are
// published on a.
func TestConformanceNATSCluster(t *testing.T) { runClusterConformance(t, nil) }

// TestConformanceNATSClusterTLS is TestConformanceNATSCluster with mutual
// TLS on the routes and for the client, which must fail over to b over TLS.
func TestConformanceNATSClusterTLS(t *testing.T) {
	certs, err := tlstest.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	runClusterConformance(t, certs)
}

func runClusterConformance(t *testing.T, certs *tlstest.Files) {
	var srvTLS eventbus.TLSFiles
	cliOpts := []eventbus.ClientOption{eventbus.WithLogger(logger()), eventbus.WithNATSOptions(nats.DontRandomize())}
	if certs != nil {
		srvTLS = eventbus.TLSFiles{CertFile: certs.ServerCert, KeyFile: certs.ServerKey, CAFile: certs.CA}
		cliOpts = append(cliOpts, eventbus.WithTLS(eventbus.TLSFiles{CertFile: certs.ClientCert, KeyFile: certs.ClientKey, CAFile: certs.CA}))
	}
	eventbustest.Run(t, func(t *testing.T) eventbus.Bus {
		ctx := context.Background()
		// Every route listener takes a port of its own choosing (a port
		// picked here and freed could be taken by another process before
		// NATS binds it); b and c route to a and learn each other from it.
		srvs := make([]*eventbus.NATS, 3)
		var routes []string
		for i := range srvs {
			b, err := eventbus.StartNATS(ctx, eventbus.NATSConfig{
				ServerName: fmt.Sprint("abc"[i : i+1]), ListenAddr: "127.0.0.1:0", MaxPayload: smallPayload,
				ClusterAddr: "127.0.0.1:0", Routes: routes, Logger: logger(), TLS: srvTLS,
			})
			if err != nil {
				closeAll(srvs)
				t.Fatal(err)
			}
			srvs[i] = b
			if i == 0 {
				routes = []string{b.ClusterURL()}
			}
		}
		a, b, c := srvs[0], srvs[1], srvs[2]
		if u := a.ClusterURL(); !strings.HasPrefix(u, "nats://127.0.0.1:") || strings.HasSuffix(u, ":0") {
			closeAll(srvs)
			t.Fatalf("ClusterURL = %q, want the bound route listener", u)
		}
		cli, err := eventbus.ConnectNATS(ctx, c.ClientURL()+","+b.ClientURL(), cliOpts...)
		if err != nil {
			closeAll(srvs)
			t.Fatal(err)
		}
		c.Close()
		deadline := time.Now().Add(eventbustest.Timeout)
		for cli.ClientURL() != b.ClientURL() {
			if time.Now().After(deadline) {
				cli.Close()
				closeAll(srvs)
				t.Fatalf("the client did not fail over to b: connected to %q", cli.ClientURL())
			}
			time.Sleep(5 * time.Millisecond)
		}
		return split{pub: a, sub: cli, more: []*eventbus.NATS{b}}
	})
}

func closeAll(bs []*eventbus.NATS) {
	for _, b := range bs {
		if b != nil {
			b.Close()
		}
	}
}

// split publishes through one bus and subscribes through another; more
// are other servers of a cluster, closed with it. With a cluster, Subscribe
// returns once the publisher's server knows of the interest.
type split struct {
	pub, sub *eventbus.NATS
	more     []*eventbus.NATS
}

func (s split) Publish(ctx context.Context, revs []eventbus.Revision) error {
	return s.pub.Publish(ctx, revs)
}
func (s split) PublishProgress(ctx context.Context, rev int64) error {
	return s.pub.PublishProgress(ctx, rev)
}
func (s split) Subscribe(ctx context.Context, h func(eventbus.Message)) (func(), error) {
	unsub, err := s.sub.Subscribe(ctx, h)
	for err == nil && len(s.more) > 0 && eventbus.InterestForTest(s.pub) == 0 {
		if err = ctx.Err(); err != nil {
			unsub()
			break
		}
		time.Sleep(time.Millisecond)
	}
	return unsub, err
}
func (s split) Close() error {
	errs := []error{s.sub.Close(), s.pub.Close()}
	for _, b := range s.more {
		errs = append(errs, b.Close())
	}
	return errors.Join(errs...)
}
