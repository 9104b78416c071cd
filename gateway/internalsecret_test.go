package gateway_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/gateway"
	concordv1 "github.com/concord-kv/concord/proto/gen/concord/v1"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// headerInternal is an internal service whose Header records the
// credentials RequireInternalCaller checked it with.
type headerInternal struct {
	concordv1connect.UnimplementedInternalServiceHandler
}

func (headerInternal) Header(context.Context, *concordv1.HeaderRequest) (*concordv1.HeaderResponse, error) {
	return &concordv1.HeaderResponse{}, nil
}

// A request presenting the proof of the gateway's internal secret is a
// concord process calling for itself: its credentials say Internal, on
// etcd's services unless it is forwarded for a client, and always on the
// internal services. A wrong or missing proof proves nothing, and neither
// does any proof at a gateway without a secret.
func TestInternalSecretIdentifiesTheCaller(t *testing.T) {
	secret := []byte(strings.Repeat("s", gateway.MinInternalSecretBytes))
	right := gateway.InternalSecretProof(secret)
	wrong := gateway.InternalSecretProof([]byte(strings.Repeat("t", gateway.MinInternalSecretBytes)))
	if right == wrong || right == string(secret) {
		t.Fatalf("proofs: right %q wrong %q", right, wrong)
	}

	var (
		mu       sync.Mutex
		internal []auth.Credentials
	)
	authorize := func(ctx context.Context) error {
		c, _ := auth.CredentialsFrom(ctx)
		mu.Lock()
		internal = append(internal, c)
		mu.Unlock()
		if !c.Internal {
			return auth.ErrUserEmpty
		}
		return nil
	}
	start := func(secret []byte) (*credentialsBackend, string) {
		b := &credentialsBackend{fakeBackend: newFake()}
		path, h := concordv1connect.NewInternalServiceHandler(headerInternal{}, gateway.RequireInternalCaller(authorize))
		g, err := gateway.New(gateway.Config{InternalSecrets: secretsOf(t, secret)}, b, gateway.WithHTTPHandler(path, gateway.WithClientCertName(h)))
		if err != nil {
			t.Fatal(err)
		}
		return b, serve(t, g)
	}
	client, setHeaders := headerClient(http.DefaultTransport)

	for _, tc := range []struct {
		name      string
		noSecret  bool
		headers   map[string]string
		want      auth.Credentials
		wantAdmit bool
	}{
		{name: "no proof", want: auth.Credentials{}},
		{name: "right proof", headers: map[string]string{gateway.InternalSecretHeader: right},
			want: auth.Credentials{Internal: true}, wantAdmit: true},
		{name: "right proof and a token", headers: map[string]string{gateway.InternalSecretHeader: right, "token": "t1"},
			want: auth.Credentials{Token: "t1", Internal: true}, wantAdmit: true},
		{name: "wrong proof", headers: map[string]string{gateway.InternalSecretHeader: wrong}, want: auth.Credentials{}},
		{name: "the secret itself", headers: map[string]string{gateway.InternalSecretHeader: string(secret)}, want: auth.Credentials{}},
		{name: "empty proof", headers: map[string]string{gateway.InternalSecretHeader: ""}, want: auth.Credentials{}},
		// Forwarded for a client: the client's identity only on etcd's
		// services; the internal service admits the process by its own.
		{name: "right proof, forwarded", headers: map[string]string{gateway.InternalSecretHeader: right, gateway.ForwardedHeader: "client"},
			want: auth.Credentials{}, wantAdmit: true},
		{name: "right proof, forwarded with a token", headers: map[string]string{gateway.InternalSecretHeader: right, gateway.ForwardedHeader: "client", "token": "t2"},
			want: auth.Credentials{Token: "t2"}, wantAdmit: true},
		{name: "gateway without a secret", noSecret: true, headers: map[string]string{gateway.InternalSecretHeader: right}, want: auth.Credentials{}},
	} {
		s := secret
		if tc.noSecret {
			s = nil
		}
		b, url := start(s)
		setHeaders(tc.headers)
		kv := etcdserverpbconnect.NewKVClient(client, url)
		if _, err := kv.Range(t.Context(), &pb.RangeRequest{Key: []byte("k")}); err != nil {
			t.Fatalf("%s: Range: %v", tc.name, err)
		}
		b.mu.Lock()
		got := b.seen
		b.mu.Unlock()
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s: the backend saw %+v, want [%+v]", tc.name, got, tc.want)
		}

		mu.Lock()
		internal = nil
		mu.Unlock()
		_, err := concordv1connect.NewInternalServiceClient(client, url).Header(t.Context(), &concordv1.HeaderRequest{})
		if tc.wantAdmit != (err == nil) {
			t.Errorf("%s: internal Header: %v, want admitted %v", tc.name, err, tc.wantAdmit)
		}
		if err != nil && connect.CodeOf(err) != connect.CodeInvalidArgument {
			// etcd's "user name is empty" is InvalidArgument.
			t.Errorf("%s: internal Header refused with %v, want etcd's user name is empty", tc.name, err)
		}
		mu.Lock()
		gotInternal := internal
		mu.Unlock()
		if len(gotInternal) != 1 || gotInternal[0].Internal != tc.wantAdmit {
			t.Errorf("%s: the internal service was authorized with %+v", tc.name, gotInternal)
		}
	}
}

func TestShortInternalSecretsAreRefused(t *testing.T) {
	if _, err := gateway.NewInternalSecrets([]byte("short")); !errors.Is(err, gateway.ErrInvalidConfig) {
		t.Errorf("a 5-byte secret: %v, want ErrInvalidConfig", err)
	}
	long := []byte(strings.Repeat("s", gateway.MinInternalSecretBytes))
	if _, err := gateway.NewInternalSecrets(long, []byte("short")); !errors.Is(err, gateway.ErrInvalidConfig) {
		t.Errorf("a 5-byte accepted secret: %v, want ErrInvalidConfig", err)
	}
}

// secretsOf is the set of present and accepted; the test fails on a
// refused one.
func secretsOf(t testing.TB, present []byte, accepted ...[]byte) *gateway.InternalSecrets {
	t.Helper()
	s, err := gateway.NewInternalSecrets(present, accepted...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Certificates and the secret together: a process's own call carries both
// its certificate's name and Internal; a forwarded one neither.
func TestInternalSecretWithCertificates(t *testing.T) {
	secret := []byte(strings.Repeat("s", gateway.MinInternalSecretBytes))
	b, kv, setHeaders := credentialsGateway(t, gateway.Config{InternalSecrets: secretsOf(t, secret)})
	proof := gateway.InternalSecretProof(secret)
	for _, tc := range []struct {
		name    string
		headers map[string]string
		want    auth.Credentials
	}{
		{"certificate", nil, auth.Credentials{CommonName: "concord test client"}},
		{"certificate and secret", map[string]string{gateway.InternalSecretHeader: proof},
			auth.Credentials{CommonName: "concord test client", Internal: true}},
		{"forwarded", map[string]string{gateway.InternalSecretHeader: proof, gateway.ForwardedHeader: "client"}, auth.Credentials{}},
	} {
		setHeaders(tc.headers)
		got := b.rangeCredentials(t, tc.name, kv)
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s: the backend saw %+v, want [%+v]", tc.name, got, tc.want)
		}
	}
}
