package gateway_test

import (
	"context"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/gateway"
	concordv1 "github.com/concord-kv/concord/proto/gen/concord/v1"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// recordingInternal is an internal service whose Header records the
// credentials it ran with.
type recordingInternal struct {
	concordv1connect.UnimplementedInternalServiceHandler
	mu   *sync.Mutex
	seen *[]auth.Credentials
}

func (s recordingInternal) Header(ctx context.Context, _ *concordv1.HeaderRequest) (*concordv1.HeaderResponse, error) {
	c, _ := auth.CredentialsFrom(ctx)
	s.mu.Lock()
	*s.seen = append(*s.seen, c)
	s.mu.Unlock()
	return &concordv1.HeaderResponse{}, nil
}

// A forwarded request without a token carries the claim of the user its
// client's certificate named, with the processes it went through and its
// sender as the connection proved it (the internal secret's proof, else a
// verified certificate); nothing else the headers say is taken. A request
// that is not forwarded keeps its own certificate's name whatever claim it
// sends; a token takes precedence over a claim; a claim whose sender
// proved nothing, or that is malformed or too long, is dropped. On the
// internal services, ForwardedCredentials takes the same claim.
func TestForwardedUserClaim(t *testing.T) {
	secret := []byte(strings.Repeat("s", gateway.MinInternalSecretBytes))
	right := gateway.InternalSecretProof(secret)
	wrong := gateway.InternalSecretProof([]byte(strings.Repeat("t", gateway.MinInternalSecretBytes)))
	certs := genCerts(t)
	const cn = "concord test client"

	var (
		imu      sync.Mutex
		internal []auth.Credentials
	)
	start := func(tlsOn bool) (*credentialsBackend, string, http.RoundTripper) {
		b := &credentialsBackend{fakeBackend: newFake()}
		path, h := concordv1connect.NewInternalServiceHandler(recordingInternal{mu: &imu, seen: &internal},
			gateway.ForwardedCredentials(concordv1connect.InternalServiceHeaderProcedure))
		cfg := gateway.Config{InternalSecrets: secretsOf(t, secret)}
		if !tlsOn {
			g, err := gateway.New(cfg, b, gateway.WithHTTPHandler(path, gateway.WithClientCertName(h)))
			if err != nil {
				t.Fatal(err)
			}
			return b, serve(t, g), http.DefaultTransport
		}
		scfg, err := certs.ServerConfig(true)
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLS = scfg
		g, err := gateway.New(cfg, b, gateway.WithHTTPHandler(path, gateway.WithClientCertName(h)))
		if err != nil {
			t.Fatal(err)
		}
		ccfg, err := certs.ClientConfig(true)
		if err != nil {
			t.Fatal(err)
		}
		tr := &http.Transport{TLSClientConfig: ccfg, ForceAttemptHTTP2: true}
		t.Cleanup(tr.CloseIdleConnections)
		return b, "https://" + serveTLS(t, g), tr
	}
	tlsB, tlsURL, tlsTr := start(true)
	plainB, plainURL, plainTr := start(false)

	fwd := func(user string, via ...auth.Hop) *auth.ForwardedUser {
		return &auth.ForwardedUser{Name: user, Via: via}
	}
	certHop, secretHop := auth.Hop{CommonName: cn}, auth.Hop{Internal: true}
	const F, U, V = gateway.ForwardedHeader, gateway.ForwardedUserHeader, gateway.ForwardedViaHeader
	for _, tc := range []struct {
		name    string
		plain   bool // no TLS: the sender has no certificate
		headers map[string]string
		want    auth.Credentials
	}{
		{"not forwarded: the certificate's own name", false, map[string]string{U: "root"}, auth.Credentials{CommonName: cn}},
		{"claim from a certificate", false, map[string]string{F: "client", U: "alice"}, auth.Credentials{Forwarded: fwd("alice", certHop)}},
		{"token over a claim", false, map[string]string{F: "client", U: "alice", "token": "t1"}, auth.Credentials{Token: "t1"}},
		{"claim through earlier hops", false, map[string]string{F: "client", U: "alice", V: "internal,cn:gw+one"},
			auth.Credentials{Forwarded: fwd("alice", secretHop, auth.Hop{CommonName: "gw one"}, certHop)}},
		{"claim with the secret's proof", false, map[string]string{F: "client", U: "alice", gateway.InternalSecretHeader: right},
			auth.Credentials{Forwarded: fwd("alice", secretHop)}},
		{"claim with a wrong proof: the certificate", false, map[string]string{F: "client", U: "alice", gateway.InternalSecretHeader: wrong},
			auth.Credentials{Forwarded: fwd("alice", certHop)}},
		{"escaped name", false, map[string]string{F: "client", U: "a%2Cb+c%3A"}, auth.Credentials{Forwarded: fwd("a,b c:", certHop)}},
		{"bad escape", false, map[string]string{F: "client", U: "%zz"}, auth.Credentials{}},
		{"empty name", false, map[string]string{F: "client", U: ""}, auth.Credentials{}},
		{"unknown hop", false, map[string]string{F: "client", U: "alice", V: "root"}, auth.Credentials{}},
		{"empty hop name", false, map[string]string{F: "client", U: "alice", V: "cn:"}, auth.Credentials{}},
		{"too many hops", false, map[string]string{F: "client", U: "alice", V: "internal,internal,internal"}, auth.Credentials{}},
		{"sender proved nothing", true, map[string]string{F: "client", U: "alice", V: "internal"}, auth.Credentials{}},
		{"sender without a certificate, with the proof", true, map[string]string{F: "client", U: "alice", gateway.InternalSecretHeader: right},
			auth.Credentials{Forwarded: fwd("alice", secretHop)}},
		{"sender without a certificate, wrong proof", true, map[string]string{F: "client", U: "alice", gateway.InternalSecretHeader: wrong}, auth.Credentials{}},
	} {
		b, url, tr := tlsB, tlsURL, tlsTr
		if tc.plain {
			b, url, tr = plainB, plainURL, plainTr
		}
		client, setHeaders := headerClient(tr)
		setHeaders(tc.headers)
		var opts []connect.ClientOption
		if !tc.plain {
			opts = append(opts, connect.WithGRPC())
		}
		got := b.rangeCredentials(t, tc.name, etcdserverpbconnect.NewKVClient(client, url, opts...))
		if len(got) != 1 || !reflect.DeepEqual(got[0], tc.want) {
			t.Errorf("%s: the backend saw %+v (%+v), want %+v (%+v)", tc.name, got, forwardedOf(got), tc.want, tc.want.Forwarded)
		}

		// The internal services take the same claim, never the sender's
		// own identity.
		wantInternal := auth.Credentials{Token: tc.want.Token, Forwarded: tc.want.Forwarded}
		if tc.headers[F] == "" {
			wantInternal = auth.Credentials{}
		}
		imu.Lock()
		internal = nil
		imu.Unlock()
		if _, err := concordv1connect.NewInternalServiceClient(client, url).Header(t.Context(), &concordv1.HeaderRequest{}); err != nil {
			t.Fatalf("%s: internal Header: %v", tc.name, err)
		}
		imu.Lock()
		gotInternal := internal
		imu.Unlock()
		if len(gotInternal) != 1 || !reflect.DeepEqual(gotInternal[0], wantInternal) {
			t.Errorf("%s: the internal service saw %+v, want %+v", tc.name, gotInternal, wantInternal)
		}
	}
}

func forwardedOf(cs []auth.Credentials) []*auth.ForwardedUser {
	var out []*auth.ForwardedUser
	for _, c := range cs {
		out = append(out, c.Forwarded)
	}
	return out
}

// ForwardedUserHeaders escapes what it sends: names with the separators,
// spaces and non-ASCII.
func TestForwardedUserHeaders(t *testing.T) {
	f := &auth.ForwardedUser{Name: "ä, b:c", Via: []auth.Hop{{Internal: true}, {CommonName: "gw,1 cn:x"}}}
	user, via := gateway.ForwardedUserHeaders(f)
	if want := "%C3%A4%2C+b%3Ac"; user != want {
		t.Errorf("user %q, want %q", user, want)
	}
	if want := "internal,cn:gw%2C1+cn%3Ax"; via != want {
		t.Errorf("via %q, want %q", via, want)
	}
	if u, v := gateway.ForwardedUserHeaders(&auth.ForwardedUser{Name: "alice"}); u != "alice" || v != "" {
		t.Errorf("no hops: %q %q", u, v)
	}
}
