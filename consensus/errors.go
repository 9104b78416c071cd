package consensus

import (
	"errors"
	"fmt"
)

// Sentinel errors. Messages are etcd's (server/etcdserver/errors) so the
// gateway can map them to rpctypes errors one to one.
var (
	ErrStopped  = errors.New("etcdserver: server stopped")
	ErrNoLeader = errors.New("etcdserver: no leader")
	ErrTimeout  = errors.New("etcdserver: request timed out")
	ErrNoSpace  = errors.New("etcdserver: no space")
	// ErrCorrupt refuses every write while a CORRUPT alarm is active, as
	// etcd's corrupt applier: the data may differ between members.
	ErrCorrupt         = errors.New("etcdserver: corrupt cluster")
	ErrTooManyRequests = errors.New("etcdserver: too many requests")
	// ErrRequestTooLarge refuses a write whose raft request exceeds
	// Config.MaxRequestBytes.
	ErrRequestTooLarge = errors.New("etcdserver: request is too large")
	ErrMemberNotFound  = errors.New("etcdserver: member not found")

	// Membership changes (etcd's membership and etcdserver errors, worded
	// as the rpctypes errors etcd sends for them).
	ErrIDRemoved               = fmt.Errorf("%w: ID removed", ErrMemberNotFound)
	ErrMemberExists            = errors.New("etcdserver: member ID already exist")
	ErrPeerURLExists           = errors.New("etcdserver: Peer URLs already exists")
	ErrMemberNotLearner        = errors.New("etcdserver: can only promote a learner member")
	ErrLearnerNotReady         = errors.New("etcdserver: can only promote a learner member which is in sync with leader")
	ErrTooManyLearners         = errors.New("etcdserver: too many learner members in cluster")
	ErrNotEnoughStartedMembers = errors.New("etcdserver: re-configuration failed due to not enough started members")
	ErrUnhealthy               = errors.New("etcdserver: unhealthy cluster")
	ErrBadPeerURLs             = errors.New("etcdserver: given member URLs are invalid")
	ErrNotLeader               = errors.New("etcdserver: not leader")
	ErrBadLeaderTransferee     = errors.New("etcdserver: bad leader transferee")
	ErrTimeoutLeaderTransfer   = errors.New("etcdserver: request timed out, leader transfer took too long")
	// ErrNotSupportedForLearner answers what a learner cannot serve.
	ErrNotSupportedForLearner = errors.New("etcdserver: rpc not supported for learner")
	// ErrNoPeerTransport refuses to add a member to a member that runs
	// without a peer transport (a single member started without peers),
	// which the new member could never reach.
	ErrNoPeerTransport = errors.New("consensus: this member has no peer transport; restart it with --initial-cluster naming a peer to add members")
	// ErrMemberRemoved ends a member that was removed from the cluster
	// (etcd logs it and exits).
	ErrMemberRemoved = errors.New("the member has been permanently removed from the cluster")

	// ErrTimeoutLeaderFail is etcd's ErrTimeoutDueToLeaderFail; it wraps
	// ErrTimeout, so callers that map ErrTimeout keep working.
	ErrTimeoutLeaderFail = fmt.Errorf("%w, possibly due to previous leader failure", ErrTimeout)

	// ErrTimeoutConnectionLost is etcd's ErrTimeoutDueToConnectionLost:
	// the connection to the member carrying a request broke after the
	// request was sent, so whether it was applied is unknown (the split
	// topology's remote client; it wraps ErrTimeout too).
	ErrTimeoutConnectionLost = fmt.Errorf("%w, possibly due to connection lost", ErrTimeout)

	// ErrLeaseTTLTooLarge is etcd's lease.ErrLeaseTTLTooLarge (addition to
	// the team contract; gateway maps it to rpctypes.ErrGRPCLeaseTTLTooLarge).
	ErrLeaseTTLTooLarge = errors.New("lease: TTL is too large")

	// ErrUnknownMethod marks a request this version cannot serve: a
	// committed command it cannot apply, or an unknown downgrade action.
	ErrUnknownMethod = errors.New("etcdserver: unknown method")
)
