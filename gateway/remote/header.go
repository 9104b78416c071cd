package remote

import (
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// newestHeader is the header of the newest answer a process had. Answers
// arrive out of order (a status poll served before a write, read after the
// write's answer), and keep-alive and TimeToLive answers carry the header,
// so it never moves back to an older revision.
type newestHeader struct {
	p atomic.Pointer[pb.ResponseHeader]
}

// observe keeps h unless the header kept is of a later revision; a header
// without a cluster ID (no answer yet) is not kept.
func (n *newestHeader) observe(h *pb.ResponseHeader) {
	if h.GetClusterId() == 0 {
		return
	}
	for {
		cur := n.p.Load()
		if h.GetRevision() < cur.GetRevision() || n.p.CompareAndSwap(cur, h) {
			return
		}
	}
}

// load is the header kept, nil before any.
func (n *newestHeader) load() *pb.ResponseHeader { return n.p.Load() }
