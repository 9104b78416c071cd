package eventbus_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/consensus/eventbus/eventbustest"
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

// split publishes through one bus and subscribes through another.
type split struct{ pub, sub *eventbus.NATS }

func (s split) Publish(ctx context.Context, revs []eventbus.Revision) error {
	return s.pub.Publish(ctx, revs)
}
func (s split) PublishProgress(ctx context.Context, rev int64) error {
	return s.pub.PublishProgress(ctx, rev)
}
func (s split) Subscribe(ctx context.Context, h func(eventbus.Message)) (func(), error) {
	return s.sub.Subscribe(ctx, h)
}
func (s split) Close() error { return errors.Join(s.sub.Close(), s.pub.Close()) }
