package gateway

import (
	"context"
	"errors"

	"connectrpc.com/connect"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/leasesvc"
	"github.com/concord-kv/concord/storage"
	"github.com/concord-kv/concord/watchfanout"
)

// errorTable is THE translation from backend sentinels to the errors etcd
// sends for them (etcd's v3rpc togRPCError). It is the only place where
// backend errors meet wire errors; add new sentinels here.
var errorTable = []struct {
	from error // backend sentinel, matched with errors.Is
	to   error // rpctypes gRPC status error
}{
	{storage.ErrCompacted, rpctypes.ErrGRPCCompacted},
	{storage.ErrFutureRev, rpctypes.ErrGRPCFutureRev},
	{storage.ErrLeaseNotFound, rpctypes.ErrGRPCLeaseNotFound},
	{storage.ErrLeaseExists, rpctypes.ErrGRPCLeaseExist},
	{storage.ErrKeyNotFound, rpctypes.ErrGRPCKeyNotFound},
	{consensus.ErrNoSpace, rpctypes.ErrGRPCNoSpace},
	{consensus.ErrNoLeader, rpctypes.ErrGRPCNoLeader},
	// Before ErrTimeout, which it wraps.
	{consensus.ErrTimeoutConnectionLost, rpctypes.ErrGRPCTimeoutDueToConnectionLost},
	{consensus.ErrTimeout, rpctypes.ErrGRPCTimeout},
	{consensus.ErrStopped, rpctypes.ErrGRPCStopped},
	{consensus.ErrLeaseTTLTooLarge, rpctypes.ErrGRPCLeaseTTLTooLarge},
	// Membership changes (etcd's membership errors map as in its table:
	// a removed ID is "member not found").
	{consensus.ErrMemberNotFound, rpctypes.ErrGRPCMemberNotFound},
	{consensus.ErrMemberExists, rpctypes.ErrGRPCMemberExist},
	{consensus.ErrPeerURLExists, rpctypes.ErrGRPCPeerURLExist},
	{consensus.ErrMemberNotLearner, rpctypes.ErrGRPCMemberNotLearner},
	{consensus.ErrLearnerNotReady, rpctypes.ErrGRPCLearnerNotReady},
	{consensus.ErrTooManyLearners, rpctypes.ErrGRPCTooManyLearners},
	{consensus.ErrNotEnoughStartedMembers, rpctypes.ErrGRPCMemberNotEnoughStarted},
	{consensus.ErrUnhealthy, rpctypes.ErrGRPCUnhealthy},
	{consensus.ErrBadPeerURLs, rpctypes.ErrGRPCMemberBadURLs},
	{consensus.ErrNotLeader, rpctypes.ErrGRPCNotLeader},
	{consensus.ErrBadLeaderTransferee, rpctypes.ErrGRPCBadLeaderTransferee},
	{consensus.ErrNotSupportedForLearner, rpctypes.ErrGRPCNotSupportedForLearner},
	// Not in etcd's table either: Unknown with the server error's text.
	{consensus.ErrUnknownMethod, status.Error(codes.Unknown, consensus.ErrUnknownMethod.Error())},
	{consensus.ErrWrongDowngradeVersionFormat, rpctypes.ErrGRPCWrongDowngradeVersionFormat},
	{consensus.ErrInvalidDowngradeTargetVersion, rpctypes.ErrGRPCInvalidDowngradeTargetVersion},
	// etcd would start the downgrade; concord cannot finish one, so it
	// refuses before anything changes.
	{consensus.ErrDowngradeUnsupported, status.Error(codes.FailedPrecondition, consensus.ErrDowngradeUnsupported.Error())},
	// etcd has no rpctypes error for a leader transfer that took too long:
	// its togRPCError falls back to Unknown with the server error's text.
	{consensus.ErrTimeoutLeaderTransfer, status.Error(codes.Unknown, consensus.ErrTimeoutLeaderTransfer.Error())},
	// A removed member's requests fail as a stopped server's would.
	{consensus.ErrMemberRemoved, rpctypes.ErrGRPCStopped},
	// etcd's own table maps ErrTooManyRequests to a non-status error, which
	// gRPC turns into Unknown; the status error is what clientv3 expects.
	{consensus.ErrTooManyRequests, rpctypes.ErrGRPCRequestTooManyRequests},
	{consensus.ErrRequestTooLarge, rpctypes.ErrGRPCRequestTooLarge},
	// A store closed under a request means the member is going away.
	{storage.ErrClosed, rpctypes.ErrGRPCStopped},
	// No active lease authority (a standby, or one whose renewals fail):
	// Unavailable, so clientv3 retries keep-alives as it does while etcd
	// has no leader. A deposed authority is etcd's demoted lessor.
	{leasesvc.ErrNotActive, rpctypes.ErrGRPCNoLeader},
	{consensus.ErrStaleEpoch, rpctypes.ErrGRPCLeaderChanged},
	{leasesvc.ErrClosed, rpctypes.ErrGRPCStopped},
	{watchfanout.ErrClosed, rpctypes.ErrGRPCStopped},
	// Authentication and authorization (etcd's auth errors, as its
	// togRPCError maps them).
	{auth.ErrRootUserNotExist, rpctypes.ErrGRPCRootUserNotExist},
	{auth.ErrRootRoleNotExist, rpctypes.ErrGRPCRootRoleNotExist},
	{auth.ErrUserAlreadyExist, rpctypes.ErrGRPCUserAlreadyExist},
	{auth.ErrUserEmpty, rpctypes.ErrGRPCUserEmpty},
	{auth.ErrUserNotFound, rpctypes.ErrGRPCUserNotFound},
	{auth.ErrRoleAlreadyExist, rpctypes.ErrGRPCRoleAlreadyExist},
	{auth.ErrRoleNotFound, rpctypes.ErrGRPCRoleNotFound},
	{auth.ErrRoleEmpty, rpctypes.ErrGRPCRoleEmpty},
	{auth.ErrAuthFailed, rpctypes.ErrGRPCAuthFailed},
	{auth.ErrPermissionNotGiven, rpctypes.ErrGRPCPermissionNotGiven},
	{auth.ErrPermissionDenied, rpctypes.ErrGRPCPermissionDenied},
	{auth.ErrRoleNotGranted, rpctypes.ErrGRPCRoleNotGranted},
	{auth.ErrPermissionNotGranted, rpctypes.ErrGRPCPermissionNotGranted},
	{auth.ErrAuthNotEnabled, rpctypes.ErrGRPCAuthNotEnabled},
	{auth.ErrInvalidAuthToken, rpctypes.ErrGRPCInvalidAuthToken},
	{auth.ErrInvalidAuthMgmt, rpctypes.ErrGRPCInvalidAuthMgmt},
	{auth.ErrAuthOldRevision, rpctypes.ErrGRPCAuthOldRevision},
	// etcd's togRPCError has no entry for a password given to a no-password
	// user: it falls back to Unknown with the auth error's text.
	{auth.ErrNoPasswordUser, status.Error(codes.Unknown, auth.ErrNoPasswordUser.Error())},
	// The split topology refuses AuthEnable where its watch and lease
	// processes could not reach the internal API (consensus/auth.go).
	{consensus.ErrAuthEnableUnsupported, status.Error(codes.Unimplemented, consensus.ErrAuthEnableUnsupported.Error())},
}

// wireError is a precomputed code and message for a translated error.
type wireError struct {
	code connect.Code
	msg  string
}

// wireErrors holds the code/message of every table target, computed once so
// the error path does not go through status.Convert each time.
var wireErrors = func() []wireError {
	w := make([]wireError, len(errorTable))
	for i, e := range errorTable {
		w[i] = grpcWire(e.to)
	}
	return w
}()

// grpcWire extracts the code and message of a gRPC status error.
func grpcWire(err error) wireError {
	s := status.Convert(err)
	return wireError{code: connect.Code(s.Code()), msg: s.Message()}
}

func (w wireError) err() *connect.Error {
	return connect.NewError(w.code, errors.New(w.msg))
}

// rpcError converts one of rpctypes' ErrGRPC* values (a gRPC status error)
// into the connect error with the same code and message.
func rpcError(grpcErr error) *connect.Error {
	return grpcWire(grpcErr).err()
}

// TranslateError turns an error from the backend into the *connect.Error
// etcd would send for it: table sentinels become their rpctypes errors,
// context errors become Canceled/DeadlineExceeded, gRPC status errors (for
// example rpctypes values returned by the backend) keep their code and
// message, connect errors pass through, and anything else is Unknown with
// the error's text. nil stays nil.
func TranslateError(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	for i := range errorTable {
		if errors.Is(err, errorTable[i].from) {
			return wireErrors[i].err()
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	if s, ok := status.FromError(err); ok {
		return connect.NewError(connect.Code(s.Code()), errors.New(s.Message()))
	}
	return connect.NewError(connect.CodeUnknown, err)
}
