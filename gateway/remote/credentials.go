package remote

import (
	"net/http"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/gateway"
)

// forwardToken is the transport of every endpoint: a call made for a
// client's request (its context carries auth.Credentials, set by the
// gateway that received it) presents the client's token to the next hop as
// etcd's gRPC metadata "token", so consensus, a watch fan-out or a lease
// service checks the same user the all-in-one would.
//
// Only the token travels. A client certificate's common name cannot: the
// next hop sees the certificate of this process, not the client's, and
// nothing a client sends may name a user it did not authenticate as (a
// header carrying a common name would let any client forge one). Calls
// for a client without a token therefore reach the next hop marked as
// forwarded and without credentials: etcd's "user name is empty" once auth
// is enabled.
type forwardToken struct{ next http.RoundTripper }

func (f forwardToken) RoundTrip(r *http.Request) (*http.Response, error) {
	c, ok := auth.CredentialsFrom(r.Context())
	if !ok {
		return f.next.RoundTrip(r)
	}
	// A RoundTripper must not modify the caller's request: only the header
	// map is copied, the body stays the same stream.
	fwd := *r
	fwd.Header = r.Header.Clone()
	// Marked as a client's: the next hop must not take this process's
	// certificate for the client's identity (gateway.ForwardedHeader).
	fwd.Header.Set(gateway.ForwardedHeader, "client")
	if c.Token != "" {
		fwd.Header.Set(rpctypes.TokenFieldNameGRPC, c.Token)
	}
	return f.next.RoundTrip(&fwd)
}
