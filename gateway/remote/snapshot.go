package remote

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Snapshot implements gateway.Snapshotter: a consensus member's backup
// stream is relayed response by response. A member that cannot be reached
// is skipped for the next; a stream cut once it started fails, as it does
// for a client of etcd.
func (c *Consensus) Snapshot(ctx context.Context, send func(*pb.SnapshotResponse) error) error {
	var err error
	for _, m := range c.order() {
		var received bool
		if received, err = relaySnapshot(ctx, m, send); err == nil || received || ctx.Err() != nil {
			break
		}
		if _, transport := classify(err); !transport {
			break
		}
	}
	return fromWire(err)
}

func relaySnapshot(ctx context.Context, m *endpointClients, send func(*pb.SnapshotResponse) error) (received bool, err error) {
	stream, err := m.maint.Snapshot(ctx, &pb.SnapshotRequest{})
	if err != nil {
		return false, err
	}
	defer stream.Close()
	for stream.Receive() {
		received = true
		if err := send(stream.Msg()); err != nil {
			return true, err
		}
	}
	return received, stream.Err()
}
