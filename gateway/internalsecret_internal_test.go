package gateway

import (
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/concord-kv/concord/auth"
)

// BenchmarkIdentify is the cost identify adds to each request a consensus
// member serves: none configured, a secret and no proof, the right proof
// on a process's own call, and on a call forwarded for a client to etcd's
// services (most of a gateway's calls), where it is not checked.
func BenchmarkIdentify(b *testing.B) {
	secret := []byte(strings.Repeat("s", MinInternalSecretBytes))
	proof := InternalSecretProof(secret)
	for _, bc := range []struct {
		name      string
		secret    []byte
		proof     string
		forwarded bool
	}{
		{"no-secret", nil, "", false},
		{"secret-no-proof", secret, "", false},
		{"secret-right-proof", secret, proof, false},
		{"secret-right-proof-forwarded", secret, proof, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cs := testCallers(b, bc.secret)
			r := httptest.NewRequest("POST", "/etcdserverpb.KV/Range", nil)
			if bc.forwarded {
				r.Header.Set(ForwardedHeader, "client")
			}
			proofHeader := []string{bc.proof}
			b.ReportAllocs()
			for b.Loop() {
				if bc.proof != "" {
					r.Header[internalSecretHeaderKey] = proofHeader
				}
				got := cs.identify(r, true)
				if want := bc.proof != "" && !bc.forwarded; callerOf(got.Context()).internal != want {
					b.Fatalf("internal %v, want %v", !want, want)
				}
			}
		})
	}
}

// BenchmarkForwardedCredentials is what a consensus member spends on the
// credentials of a call forwarded for a client (identify, then
// withCredentials): with a token, and with the claim of a certificate's
// user from a gateway with the secret, directly and through a fan-out.
func BenchmarkForwardedCredentials(b *testing.B) {
	secret := []byte(strings.Repeat("s", MinInternalSecretBytes))
	proof := []string{InternalSecretProof(secret)}
	cs := testCallers(b, secret)
	for _, bc := range []struct {
		name    string
		headers map[string]string
		claim   bool
	}{
		{"token", map[string]string{"Token": "t"}, false},
		{"claim", map[string]string{ForwardedUserHeader: "alice"}, true},
		{"claim-via-fanout", map[string]string{ForwardedUserHeader: "alice", ForwardedViaHeader: "cn:concord+gateway"}, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			r := httptest.NewRequest("POST", "/etcdserverpb.KV/Range", nil)
			r.Header.Set(ForwardedHeader, "client")
			for k, v := range bc.headers {
				r.Header.Set(k, v)
			}
			b.ReportAllocs()
			for b.Loop() {
				r.Header[internalSecretHeaderKey] = proof
				got := cs.identify(r, true)
				c, _ := auth.CredentialsFrom(withCredentials(got.Context(), got.Header))
				if (c.Forwarded != nil) != bc.claim {
					b.Fatalf("credentials %+v", c)
				}
			}
		})
	}
}

func testCallers(tb testing.TB, present []byte, accepted ...[]byte) *callers {
	tb.Helper()
	s, err := NewInternalSecrets(present, accepted...)
	if err != nil {
		tb.Fatal(err)
	}
	return &callers{secrets: s, log: slog.New(slog.DiscardHandler)}
}

// TestIdentifyAcceptedSecrets: while a deployment moves to a new secret, a
// process accepts the proofs of its own secret and of the accepted ones,
// and still no other; each Set (a file read again) replaces the whole set,
// and one that fails changes nothing.
func TestIdentifyAcceptedSecrets(t *testing.T) {
	current := []byte(strings.Repeat("c", MinInternalSecretBytes))
	next := []byte(strings.Repeat("n", MinInternalSecretBytes))
	other := []byte(strings.Repeat("o", MinInternalSecretBytes))
	cs := testCallers(t, current, next)
	check := func(step string, accepted map[byte]bool) {
		t.Helper()
		for _, secret := range [][]byte{current, next, other} {
			r := httptest.NewRequest("POST", "/etcdserverpb.KV/Range", nil)
			r.Header.Set(InternalSecretHeader, InternalSecretProof(secret))
			if got, want := callerOf(cs.identify(r, true).Context()).internal, accepted[secret[0]]; got != want {
				t.Errorf("%s: proof of %q...: internal %v, want %v", step, secret[:1], got, want)
			}
		}
	}
	check("current, next accepted", map[byte]bool{'c': true, 'n': true})
	if err := cs.secrets.Set(next, current); err != nil {
		t.Fatal(err)
	}
	check("next, current accepted", map[byte]bool{'c': true, 'n': true})
	if got, want := cs.secrets.Proof(), InternalSecretProof(next); got != want {
		t.Errorf("presented %q, want next's %q", got, want)
	}
	if err := cs.secrets.Set(next); err != nil {
		t.Fatal(err)
	}
	check("next alone", map[byte]bool{'n': true})
	if err := cs.secrets.Set(next, []byte("short")); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Set with a 5-byte accepted secret: %v, want ErrInvalidConfig", err)
	}
	check("after a refused Set", map[byte]bool{'n': true})
}
