package consensus

import (
	"errors"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/storage"
)

// Quota cost estimates, etcd's (server/storage/quota.go).
const (
	leaseOverhead = 64
	kvOverhead    = 256
)

func costPut(r *pb.PutRequest) int { return kvOverhead + len(r.GetKey()) + len(r.GetValue()) }

func costTxn(r *pb.TxnRequest) int {
	branch := func(ops []*pb.RequestOp) int {
		c := 0
		for _, op := range ops {
			if p := op.GetRequestPut(); p != nil {
				c += costPut(p)
			} else if t := op.GetRequestTxn(); t != nil {
				c += costTxn(t)
			}
		}
		return c
	}
	return max(branch(r.GetSuccess()), branch(r.GetFailure()))
}

// waiterResult is one command's result, delivered after its batch commits.
type waiterResult struct {
	id  uint64
	res result
	// deferred results (writes applied over quota) are delivered once the
	// NOSPACE alarm they raise is applied, as etcd does.
	deferred bool
}

// applyOutput collects what one apply step must do after its batch commits.
type applyOutput struct {
	results      []waiterResult
	alarmApplied bool // the loop's own NOSPACE alarm proposal was applied
	sizeKnown    bool
	size         int64                    // store size estimate for quota checks in this batch
	events       []storage.RevisionEvents // revisions the batch committed, for the event bus
	leaseAuth    *LeaseAuthority          // the lease authority record the batch set, if any
	auth         *auth.State              // the auth state the batch set, if any
	members      []member                 // the member table the batch set, if any
}

// applyEntries applies committed entries into b, in order, and records the
// applied index in the same batch. Entries the store already reflects (the
// ones between an installed snapshot's raft index and the index its data
// was taken at) change nothing but raft's configuration.
func (n *Node) applyEntries(b *storage.Batch, ents []*raftpb.Entry, out *applyOutput) error {
	storeApplied := n.applied.Load()
	for _, e := range ents {
		if e.GetIndex() <= storeApplied && e.GetType() == raftpb.EntryNormal {
			continue
		}
		switch e.GetType() {
		case raftpb.EntryNormal:
			if len(e.GetData()) == 0 {
				continue // a new leader's empty entry
			}
			if cmd, ok, err := decodeCommand(e.GetData()); ok {
				if err != nil {
					n.lg.Error("skipping undecodable raft command", "index", e.GetIndex(), "error", err)
					continue
				}
				res, err := n.applyCommand(b, e.GetIndex(), cmd, out)
				if err != nil {
					return fmt.Errorf("apply entry %d: %w", e.GetIndex(), err)
				}
				out.results = append(out.results, waiterResult{id: cmd.GetId(), res: res})
				continue
			}
			r := &pb.InternalRaftRequest{}
			if err := proto.Unmarshal(e.GetData(), r); err != nil {
				// Every member skips it the same way; nobody waits for it.
				n.lg.Error("skipping undecodable raft entry", "index", e.GetIndex(), "error", err)
				continue
			}
			id := requestID(r)
			res, deferred, err := n.applyRequest(b, r, out)
			if err != nil {
				return fmt.Errorf("apply entry %d: %w", e.GetIndex(), err)
			}
			if id != 0 && id == n.alarmReqID {
				out.alarmApplied = true
			}
			out.results = append(out.results, waiterResult{id: id, res: res, deferred: deferred})
		case raftpb.EntryConfChange:
			cc := &raftpb.ConfChange{}
			if err := proto.Unmarshal(e.GetData(), cc); err != nil {
				return fmt.Errorf("decode conf change %d: %w", e.GetIndex(), err)
			}
			var err error
			switch {
			case e.GetIndex() <= storeApplied:
				err = n.replayConfChange(b, e.GetIndex(), cc)
			case len(cc.GetContext()) == 0:
				// Not a membership change of ours: raft's configuration only.
				err = n.applyConfChange(b, cc)
			default:
				err = n.applyMembershipChange(b, e.GetIndex(), cc, out)
			}
			if err != nil {
				return err
			}
		case raftpb.EntryConfChangeV2:
			cc := &raftpb.ConfChangeV2{}
			if err := proto.Unmarshal(e.GetData(), cc); err != nil {
				return fmt.Errorf("decode conf change %d: %w", e.GetIndex(), err)
			}
			if err := n.applyConfChange(b, cc); err != nil {
				return err
			}
		}
	}
	last := ents[len(ents)-1]
	if last.GetIndex() > storeApplied {
		b.SetApplied(last.GetIndex(), last.GetTerm())
	}
	if storeApplied > n.raftApplied {
		// Catching up after a snapshot install: keep the persisted raft
		// applied index current, and drop it once raft caught up.
		return setRaftApplied(b.Pebble(), last.GetIndex(), storeApplied)
	}
	return nil
}

// requestID is the ID a request's proposer waits on.
func requestID(r *pb.InternalRaftRequest) uint64 {
	if id := r.GetHeader().GetID(); id != 0 {
		return id
	}
	return r.GetID()
}

func (n *Node) applyConfChange(b *storage.Batch, cc raftpb.ConfChangeI) error {
	n.confState = n.rn.ApplyConfChange(cc)
	n.confChanged = true
	return setProto(b.Pebble(), keyConfState, n.confState)
}

// applyRequest executes one command. Request-level failures (compacted,
// lease not found, no space, ...) are results; only a closed store is fatal.
func (n *Node) applyRequest(b *storage.Batch, r *pb.InternalRaftRequest, out *applyOutput) (res result, deferred bool, fatal error) {
	var (
		resp proto.Message
		err  error
		fits = true
	)
	// A CORRUPT alarm refuses every write before anything else looks at
	// it, as etcd's corrupt applier wraps all its others.
	if n.corrupt() && refusedWhenCorrupt(r) {
		return result{err: ErrCorrupt}, false, nil
	}
	if err := n.checkApply(b, r); err != nil {
		return result{err: err}, false, nil
	}
	switch {
	case r.Put != nil:
		if n.capped() {
			return result{err: ErrNoSpace}, false, nil
		}
		fits = n.fitsQuota(out, costPut(r.Put))
		resp, err = nonNil(b.Put(r.Put))
	case r.DeleteRange != nil:
		resp, err = nonNil(b.DeleteRange(r.DeleteRange))
	case r.Txn != nil:
		cost := costTxn(r.Txn)
		if cost > 0 && n.capped() {
			return result{err: ErrNoSpace}, false, nil
		}
		fits = n.fitsQuota(out, cost)
		if id := requestID(r); id != 0 && n.wait.has(id) {
			resp, err = nonNil(b.Txn(r.Txn))
		} else {
			// Nobody here waits for the answer (another member took the
			// request): etcd skips such a txn's range ops, which shows in
			// etcd_mvcc_range_total.
			resp, err = nonNil(b.ReplicaTxn(r.Txn))
		}
	case r.Compaction != nil:
		resp, err = nonNil(b.Compact(r.Compaction.GetRevision()))
	case r.LeaseGrant != nil:
		if n.capped() {
			return result{err: ErrNoSpace}, false, nil
		}
		fits = n.fitsQuota(out, leaseOverhead)
		lg := r.LeaseGrant
		if err = b.LeaseGrant(lg.GetID(), lg.GetTTL()); err == nil {
			resp = &pb.LeaseGrantResponse{
				Header: &pb.ResponseHeader{Revision: n.batchRev(b)}, ID: lg.GetID(), TTL: lg.GetTTL(),
			}
		}
	case r.LeaseRevoke != nil:
		if err = b.LeaseRevoke(r.LeaseRevoke.GetID()); err == nil {
			resp = &pb.LeaseRevokeResponse{Header: &pb.ResponseHeader{Revision: n.batchRev(b)}}
		}
	case r.Alarm != nil:
		var ar *pb.AlarmResponse
		if ar, err = b.Alarm(r.Alarm); err == nil {
			n.trackAlarm(r.Alarm)
			if ar == nil {
				ar = &pb.AlarmResponse{}
			}
			if ar.Header == nil {
				ar.Header = &pb.ResponseHeader{}
			}
			if ar.Header.Revision == 0 {
				ar.Header.Revision = n.batchRev(b)
			}
			resp = ar
		}
	default:
		res, handled, fatal := n.applyAuth(b, r, out)
		if !handled {
			return result{err: ErrUnknownMethod}, false, nil
		}
		return res, false, fatal
	}
	if errors.Is(err, storage.ErrClosed) {
		return result{}, false, err
	}
	if err != nil {
		return result{err: err}, false, nil
	}
	if !fits {
		// Applied like everywhere else (the log is the same on every
		// member), but this member is over quota: answer ErrNoSpace once the
		// NOSPACE alarm is raised.
		return result{resp: resp, err: ErrNoSpace}, true, nil
	}
	return result{resp: resp}, false, nil
}

// nonNil turns a (typed nil, nil) storage answer into an error instead of a
// nil response that callers would dereference.
func nonNil[T proto.Message](resp T, err error) (proto.Message, error) {
	if err != nil {
		return nil, err
	}
	if !resp.ProtoReflect().IsValid() {
		return nil, fmt.Errorf("consensus: storage returned no %T", resp)
	}
	return resp, nil
}

// batchRev is the store revision including the batch's own writes so far.
func (n *Node) batchRev(b *storage.Batch) int64 {
	if evs := b.Events(); len(evs) > 0 {
		return evs[len(evs)-1].Revision
	}
	return n.store.Rev()
}

// fitsQuota reports whether cost more bytes stay under the quota, counting
// writes already applied in this batch.
func (n *Node) fitsQuota(out *applyOutput, cost int) bool {
	if cost == 0 || n.quota < 0 {
		return true
	}
	if !out.sizeKnown {
		out.size, out.sizeKnown = n.sizeFn(), true
	}
	ok := out.size+int64(cost) < n.quota
	out.size += int64(cost)
	return ok
}

// refusedWhenCorrupt lists what etcd's applierV3Corrupt refuses: every
// write and compaction, lease grants and revokes. Alarms (to clear it),
// auth and membership changes go on.
func refusedWhenCorrupt(r *pb.InternalRaftRequest) bool {
	return r.Put != nil || r.DeleteRange != nil || r.Txn != nil || r.Compaction != nil ||
		r.LeaseGrant != nil || r.LeaseRevoke != nil
}

// capped reports an active NOSPACE alarm as of the apply position (including
// alarms applied earlier in the same batch): writes that need space are
// rejected, like etcd's capped applier.
func (n *Node) capped() bool { return n.alarmed(pb.AlarmType_NOSPACE) }

// corrupt reports an active CORRUPT alarm, as capped does NOSPACE.
func (n *Node) corrupt() bool { return n.alarmed(pb.AlarmType_CORRUPT) }

// alarmed reports an active alarm of type a of any member as of the apply
// position.
func (n *Node) alarmed(a pb.AlarmType) bool {
	for k := range n.alarms {
		if k.alarm == a {
			return true
		}
	}
	return false
}

// trackAlarm mirrors an applied alarm request in the loop's alarm set.
func (n *Node) trackAlarm(ar *pb.AlarmRequest) {
	k := alarmKey{member: ar.GetMemberID(), alarm: ar.GetAlarm()}
	switch ar.GetAction() {
	case pb.AlarmRequest_ACTIVATE:
		if k.alarm != pb.AlarmType_NONE {
			n.alarms[k] = true
		}
	case pb.AlarmRequest_DEACTIVATE:
		delete(n.alarms, k)
	}
}

func (n *Node) publishAlarms() { n.noSpace.Store(n.capped()) }

// deliver answers the callers of a committed batch.
func (n *Node) deliver(out *applyOutput) {
	for _, r := range out.results {
		if r.deferred && !n.noSpace.Load() {
			n.noSpaceWaiters = append(n.noSpaceWaiters, r.id)
			continue
		}
		if r.id != 0 {
			n.wait.trigger(r.id, r.res)
		}
	}
	if out.alarmApplied {
		n.alarmReqID = 0
	}
	if out.alarmApplied || n.noSpace.Load() {
		n.releaseNoSpaceWaiters()
	}
}

func (n *Node) releaseNoSpaceWaiters() {
	for _, id := range n.noSpaceWaiters {
		n.wait.trigger(id, result{err: ErrNoSpace})
	}
	n.noSpaceWaiters = nil
}

// proposeNoSpaceAlarm raises NOSPACE through raft (so every member's alarm
// table agrees) when writes were applied over this member's quota.
func (n *Node) proposeNoSpaceAlarm() {
	if len(n.noSpaceWaiters) == 0 || n.alarmReqID != 0 {
		return
	}
	n.lg.Warn("write exceeded backend quota; raising NOSPACE alarm", "quota-bytes", n.quota)
	id := n.ids.next()
	data, err := proto.Marshal(&pb.InternalRaftRequest{
		Header: &pb.RequestHeader{ID: id},
		Alarm:  &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: n.memberID, Alarm: pb.AlarmType_NOSPACE},
	})
	if err != nil {
		n.lg.Error("encode NOSPACE alarm", "error", err)
		n.releaseNoSpaceWaiters()
		return
	}
	n.alarmReqID = id
	n.proposeOne(proposal{id: id, data: data, internal: true})
}

// applyTimed is applyEntries, with etcd's warning when applying took
// longer than Config.WarningApplyDuration (timed per Ready, not per entry:
// two clock reads per batch).
func (n *Node) applyTimed(b *storage.Batch, ents []*raftpb.Entry, out *applyOutput) error {
	start := time.Now()
	err := n.applyEntries(b, ents, out)
	if took := time.Since(start); took > n.cfg.WarningApplyDuration && len(ents) > 0 {
		n.slowApplies.Add(1)
		n.lg.Warn("apply request took too long", "took", took, "expected-duration", n.cfg.WarningApplyDuration,
			"entries", len(ents), "first-index", ents[0].GetIndex(), "last-index", ents[len(ents)-1].GetIndex())
	}
	return err
}
