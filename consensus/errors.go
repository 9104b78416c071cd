package consensus

import (
	"errors"
	"fmt"
)

// Sentinel errors. Messages are etcd's (server/etcdserver/errors) so the
// gateway can map them to rpctypes errors one to one.
var (
	ErrStopped         = errors.New("etcdserver: server stopped")
	ErrNoLeader        = errors.New("etcdserver: no leader")
	ErrTimeout         = errors.New("etcdserver: request timed out")
	ErrNoSpace         = errors.New("etcdserver: no space")
	ErrTooManyRequests = errors.New("etcdserver: too many requests")
	ErrMemberNotFound  = errors.New("etcdserver: member not found")

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

	// errUnknownRequest marks a committed command this version cannot apply.
	errUnknownRequest = errors.New("etcdserver: unknown method")
)
