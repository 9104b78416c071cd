package gateway

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

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
	{consensus.ErrCorrupt, rpctypes.ErrGRPCCorrupt},
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

// connect's and grpc-go's answers to a request message that the transport
// refuses. For one that does not decode (malformed protobuf, invalid UTF-8
// in a string field) connect answers InvalidArgument "unmarshal message:
// unmarshal into *T: <cause>"; etcd, being grpc-go, answers Internal with
// its own prefix, one for unary calls and one for stream receives. For one
// over the size limit both answer ResourceExhausted, in other words.
const (
	connectDecodePrefix      = "unmarshal message: unmarshal into *"
	grpcGoUnaryDecodePrefix  = "grpc: error unmarshalling request: "
	grpcGoStreamDecodePrefix = "grpc: failed to unmarshal the received message: "
	connectTooLargePrefix    = "message size "
	connectTooLargeMiddle    = " is larger than configured max "
)

// countingBody counts the bytes read from a request body.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

// grpcStatusKeys are where connect leaves a call's status once the handler
// has returned: as HTTP/2 trailers, or as headers in a gRPC-Web
// trailers-only response.
var grpcStatusKeys = [2][2]string{
	{http.TrailerPrefix + "Grpc-Status", http.TrailerPrefix + "Grpc-Message"},
	{"Grpc-Status", "Grpc-Message"},
}

// asGRPCGoReadError rewrites, in the headers of a finished gRPC call,
// connect's status for a request message it refused into grpc-go's, so
// clients see etcd's code and message. Only the gRPC protocols carry their
// status in these headers; the Connect protocol's error is in the body and
// keeps connect's wording. It looks up one header for any other call.
//
// compressed counts what was read of a compressed request's body (nil for
// one not compressed). connect words a message over the limit the same
// before decompression (its size on the wire) and after (the size it
// decompressed to); grpc-go's words differ, and only after decompression
// can the size exceed what was read.
func asGRPCGoReadError(h http.Header, unary bool, compressed *countingBody) {
	for _, k := range grpcStatusKeys {
		st := h[k[0]]
		if len(st) == 0 {
			continue
		}
		msg := h[k[1]]
		if len(st) != 1 || len(msg) != 1 {
			return
		}
		// connect has percent-encoded the message already, as grpc-go
		// would, and the parts matched here need no encoding.
		switch {
		case st[0] == "3" && strings.HasPrefix(msg[0], connectDecodePrefix):
			// The cause follows the message type's name ("pkg.T: cause").
			_, cause, ok := strings.Cut(msg[0][len(connectDecodePrefix):], ": ")
			if !ok {
				return
			}
			prefix := grpcGoStreamDecodePrefix
			if unary {
				prefix = grpcGoUnaryDecodePrefix
			}
			h[k[0]] = []string{"13"}
			h[k[1]] = []string{prefix + cause}
		case st[0] == "8" && strings.HasPrefix(msg[0], connectTooLargePrefix):
			size, limit, ok := strings.Cut(msg[0][len(connectTooLargePrefix):], connectTooLargeMiddle)
			if !ok {
				return
			}
			if n, err := strconv.ParseInt(size, 10, 64); err == nil && compressed != nil && compressed.n < n {
				h[k[1]] = []string{"grpc: received message after decompression larger than max " + limit}
				return
			}
			h[k[1]] = []string{"grpc: received message larger than max (" + size + " vs. " + limit + ")"}
		}
		return
	}
}
