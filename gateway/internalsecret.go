package gateway

// The split topology's internal secret (--internal-secret-file): the
// processes that call a consensus member for themselves (gateways, watch
// fan-outs, lease services) prove they are concord's own by a secret they
// share with it, where client certificates would otherwise name a
// root-role user for them. A request that presents it is trusted as such a
// certificate is (auth.Credentials.Internal): for the process's own calls
// on etcd's services, and on the internal API (RequireInternalCaller).
// Calls forwarded for a client (ForwardedHeader) still run as the client,
// whatever the connection proves; there the proof only vouches for the
// sender of a client certificate's user (ForwardedUserHeader), which is why
// watch fan-outs and lease services check it too.
//
// The header carries a proof derived from the secret, not the secret:
// printable whatever bytes the file holds, of one length, and the file's
// content itself never crosses the network. It is a bearer credential all
// the same: on http:// URLs anyone who can read the traffic can replay
// it, as they can read the passwords and tokens clients send.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"
)

// InternalSecretHeader is the request header in which a split process
// presents InternalSecretProof of the secret it shares with consensus.
const InternalSecretHeader = "Concord-Internal-Secret"

// MinInternalSecretBytes is the shortest internal secret accepted: 256
// bits, so it cannot be guessed.
const MinInternalSecretBytes = 32

// InternalSecretProof is what a process presents in InternalSecretHeader
// for secret: HMAC-SHA256 keyed by the secret over a fixed label, in hex.
func InternalSecretProof(secret []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("concord internal caller v1"))
	return hex.EncodeToString(m.Sum(nil))
}

// internalSecretHeaderKey is InternalSecretHeader in canonical form, for
// direct map lookups.
var (
	internalSecretHeaderKey = http.CanonicalHeaderKey(InternalSecretHeader)
	forwardedHeaderKey      = http.CanonicalHeaderKey(ForwardedHeader)
	forwardedUserHeaderKey  = http.CanonicalHeaderKey(ForwardedUserHeader)
	forwardedViaHeaderKey   = http.CanonicalHeaderKey(ForwardedViaHeader)
)

// wrongSecretLogInterval spaces the warnings about requests presenting a
// wrong proof: a misconfigured process sends one every few hundred
// milliseconds.
const wrongSecretLogInterval = 10 * time.Second

// InternalSecrets are the internal secret a process presents
// (--internal-secret-file) and the further ones it accepts
// (--internal-secret-accept-file, while a deployment moves to a new
// secret), held as their proofs. Set replaces them whole when the files
// change: every check and every request after it uses the new ones, so a
// secret is rotated without restarts. A nil *InternalSecrets holds none.
type InternalSecrets struct {
	cur atomic.Pointer[secretProofs]
}

type secretProofs struct {
	// present is InternalSecretProof of the presented secret; "": none.
	present string
	// accepted are the proofs a request may present: the presented
	// secret's and each accepted secret's. None: the header is ignored.
	accepted [][]byte
}

// NewInternalSecrets returns the set Set makes of present and accepted.
func NewInternalSecrets(present []byte, accepted ...[]byte) (*InternalSecrets, error) {
	s := &InternalSecrets{}
	if err := s.Set(present, accepted...); err != nil {
		return nil, err
	}
	return s, nil
}

// Set makes present the secret presented and accepted, and every
// non-empty secret of accepted accepted too; empty present: none is
// presented. Each secret must have at least MinInternalSecretBytes; on an
// error nothing changes.
func (s *InternalSecrets) Set(present []byte, accepted ...[]byte) error {
	p := &secretProofs{}
	if len(present) > 0 {
		if len(present) < MinInternalSecretBytes {
			return fmt.Errorf("%w: an internal secret of %d bytes, at least %d are needed", ErrInvalidConfig, len(present), MinInternalSecretBytes)
		}
		p.present = InternalSecretProof(present)
		p.accepted = append(p.accepted, []byte(p.present))
	}
	for _, a := range accepted {
		if len(a) == 0 {
			continue
		}
		if len(a) < MinInternalSecretBytes {
			return fmt.Errorf("%w: an accepted internal secret of %d bytes, at least %d are needed", ErrInvalidConfig, len(a), MinInternalSecretBytes)
		}
		p.accepted = append(p.accepted, []byte(InternalSecretProof(a)))
	}
	s.cur.Store(p)
	return nil
}

// Proof is what the process presents in InternalSecretHeader; "": none.
func (s *InternalSecrets) Proof() string {
	if s == nil {
		return ""
	}
	return s.cur.Load().present
}

// Accepts reports whether proof is the proof of the presented secret or
// of an accepted one (each compared in constant time).
func (s *InternalSecrets) Accepts(proof string) bool {
	ok := 0
	for _, p := range s.proofs() {
		ok |= subtle.ConstantTimeCompare([]byte(proof), p)
	}
	return ok == 1
}

// proofs are the proofs a request may present; none: no secret.
func (s *InternalSecrets) proofs() [][]byte {
	if s == nil {
		return nil
	}
	return s.cur.Load().accepted
}

// callers identifies the callers of a gateway's requests: the common name
// of a verified client certificate and, with an internal secret
// configured, whether the request presented its proof.
type callers struct {
	secrets *InternalSecrets // Config.InternalSecrets
	log     *slog.Logger
	// lastWarn is when a wrong proof was last logged (UnixNano).
	lastWarn atomic.Int64
}

// proves reports whether header values v present the proof of one of the
// accepted secrets.
func (cs *callers) proves(v []string) bool {
	return len(v) == 1 && cs.secrets.Accepts(v[0])
}

// caller is what a request's connection and headers prove about its
// sender, recorded in its context by identify.
type caller struct {
	// certName is the common name of its verified client certificate.
	certName string
	// internal: it presented the internal secret's proof.
	internal bool
}

type callerKey struct{}

// callerOf is the caller identify recorded in ctx (zero: nothing proven).
func callerOf(ctx context.Context) caller {
	c, _ := ctx.Value(callerKey{}).(caller)
	return c
}

// identify records in r's context what r proves about its caller, once:
// a request identified already (by the gateway, before a handler that
// identifies again) is returned as it is. The proof header is removed, so
// no handler sees it and nothing can pass it on. With ownCallsOnly (etcd's
// services, where a call forwarded for a client is the client's whatever
// the connection proves: withCredentials), the proof of a forwarded call
// is dropped unchecked, which spares the check on nearly every call a
// gateway makes; unless the call forwards a client certificate's user
// (ForwardedUserHeader), whose sender the proof vouches for.
func (cs *callers) identify(r *http.Request, ownCallsOnly bool) *http.Request {
	if _, done := r.Context().Value(callerKey{}).(caller); done {
		return r
	}
	var c caller
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		c.certName = r.TLS.VerifiedChains[0][0].Subject.CommonName
	}
	if v, ok := r.Header[internalSecretHeaderKey]; ok {
		delete(r.Header, internalSecretHeaderKey)
		if ownCallsOnly && len(r.Header[forwardedHeaderKey]) > 0 && len(r.Header[forwardedUserHeaderKey]) == 0 {
			// Not needed: withCredentials ignores it.
		} else if cs != nil && len(cs.secrets.proofs()) > 0 {
			if cs.proves(v) {
				c.internal = true
			} else {
				cs.warnWrongProof(r)
			}
		}
	}
	if c == (caller{}) {
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), callerKey{}, c))
}

// warnWrongProof logs, at most once per wrongSecretLogInterval, that a
// request presented a proof of another secret: a process started with
// another --internal-secret-file, which is treated as an ordinary client.
func (cs *callers) warnWrongProof(r *http.Request) {
	now := time.Now().UnixNano()
	last := cs.lastWarn.Load()
	if now-last < int64(wrongSecretLogInterval) || !cs.lastWarn.CompareAndSwap(last, now) {
		return
	}
	cs.log.Warn("a request presented a wrong internal secret; it is treated as a client's (is --internal-secret-file the same file on every process?)",
		"remote-addr", r.RemoteAddr, "path", r.URL.Path)
}

// wrap serves h with each request identified, forwarded or not (for the
// internal services: RequireInternalCaller).
func (cs *callers) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, cs.identify(r, false))
	})
}
