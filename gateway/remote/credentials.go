package remote

import (
	"net/http"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/internal/tracing"
)

// forwardToken is the transport of every endpoint: a call made for a
// client's request (its context carries auth.Credentials, set by the
// gateway that received it) presents that client's token to the next hop
// as etcd's gRPC metadata "token", so consensus, a watch fan-out or a lease
// service checks the same user the all-in-one would.
//
// A client certificate's common name cannot simply travel: the next hop
// sees the certificate of this process, not the client's, and a header
// anyone could send must not name a user. For a client without a token,
// the user its verified certificate names is sent as a claim
// (gateway.ForwardedUserHeader) with the processes it went through so far
// (gateway.ForwardedViaHeader); the next hop adds this process as its
// connection proves it, and consensus believes the claim only if every hop
// is one of concord's processes, by the internal secret or a certificate
// naming a root-role user (auth.State.TrustedForwardedUser). A client
// that sends the headers itself is the first hop, and is not one.
//
// With secrets set (WithInternalSecret), requests also present the internal
// secret's proof: every request to consensus, forwarded ones too (the
// internal API admits a process by it whoever the call is for, while
// etcd's services ignore it on a forwarded call, as they ignore this
// process's certificate, unless it vouches for a claim); with
// proofForClaimsOnly (WithClaimSecret, fan-outs and lease services) only
// the requests that carry a claim, the only ones where they check it.
//
// With tracing on (WithTracing), every request also carries the trace
// context of its caller's span (tracing.Provider.Inject), in the same copy
// of the headers.
type forwardToken struct {
	next               http.RoundTripper
	secrets            *gateway.InternalSecrets
	proofForClaimsOnly bool
	tracing            *tracing.Provider
}

func (f forwardToken) RoundTrip(r *http.Request) (*http.Response, error) {
	c, ok := auth.CredentialsFrom(r.Context())
	proof := f.secrets.Proof()
	if !ok && (proof == "" || f.proofForClaimsOnly) && !f.tracing.On() {
		return f.next.RoundTrip(r)
	}
	// A RoundTripper must not modify the caller's request: only the header
	// map is copied, the body stays the same stream.
	fwd := *r
	fwd.Header = r.Header.Clone()
	claim := false
	if ok {
		// Marked as a client's: the next hop must not take this process's
		// certificate, or its secret, for the client's identity
		// (gateway.ForwardedHeader).
		fwd.Header.Set(gateway.ForwardedHeader, "client")
		if c.Token != "" {
			fwd.Header.Set(rpctypes.TokenFieldNameGRPC, c.Token)
		} else if u := claimOf(c); u != nil {
			user, via := gateway.ForwardedUserHeaders(u)
			fwd.Header.Set(gateway.ForwardedUserHeader, user)
			if via != "" {
				fwd.Header.Set(gateway.ForwardedViaHeader, via)
			}
			claim = true
		}
	}
	if proof != "" && (claim || !f.proofForClaimsOnly) {
		fwd.Header.Set(gateway.InternalSecretHeader, proof)
	}
	f.tracing.Inject(r.Context(), fwd.Header)
	return f.next.RoundTrip(&fwd)
}

// claimOf is the certificate user c's call is forwarded as: the claim this
// process received (Forwarded, its sender already added to Via), or the
// common name of its own client's verified certificate, which starts one.
// nil: none (a process's own call, one with the secret included, names no
// client).
func claimOf(c auth.Credentials) *auth.ForwardedUser {
	if c.Forwarded != nil {
		return c.Forwarded
	}
	if c.CommonName != "" {
		return &auth.ForwardedUser{Name: c.CommonName}
	}
	return nil
}
