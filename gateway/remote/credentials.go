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
//
// With proof set (WithInternalSecret), every request also presents the
// internal secret's proof, forwarded ones too: the internal API admits a
// process by it whoever the call is for, while etcd's services ignore it
// on a forwarded call, as they ignore this process's certificate.
type forwardToken struct {
	next  http.RoundTripper
	proof string
}

func (f forwardToken) RoundTrip(r *http.Request) (*http.Response, error) {
	c, ok := auth.CredentialsFrom(r.Context())
	if !ok && f.proof == "" {
		return f.next.RoundTrip(r)
	}
	// A RoundTripper must not modify the caller's request: only the header
	// map is copied, the body stays the same stream.
	fwd := *r
	fwd.Header = r.Header.Clone()
	if f.proof != "" {
		fwd.Header.Set(gateway.InternalSecretHeader, f.proof)
	}
	if ok {
		// Marked as a client's: the next hop must not take this process's
		// certificate, or its secret, for the client's identity
		// (gateway.ForwardedHeader).
		fwd.Header.Set(gateway.ForwardedHeader, "client")
		if c.Token != "" {
			fwd.Header.Set(rpctypes.TokenFieldNameGRPC, c.Token)
		}
	}
	return f.next.RoundTrip(&fwd)
}
