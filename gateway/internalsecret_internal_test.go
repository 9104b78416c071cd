package gateway

import (
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
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
			cs := newCallers(bc.secret, slog.New(slog.DiscardHandler))
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
