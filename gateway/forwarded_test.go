package gateway_test

import (
	"context"
	"net/http"
	"sync"
	"testing"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// credentialsBackend records the credentials each Range ran with.
type credentialsBackend struct {
	*fakeBackend
	mu   sync.Mutex
	seen []auth.Credentials
}

func (b *credentialsBackend) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	c, _ := auth.CredentialsFrom(ctx)
	b.mu.Lock()
	b.seen = append(b.seen, c)
	b.mu.Unlock()
	return b.fakeBackend.Range(ctx, r)
}

// rangeCredentials runs one Range through kv and returns the credentials
// the backend saw for it.
func (b *credentialsBackend) rangeCredentials(t *testing.T, name string, kv etcdserverpbconnect.KVClient) []auth.Credentials {
	t.Helper()
	b.mu.Lock()
	b.seen = nil
	b.mu.Unlock()
	if _, err := kv.Range(t.Context(), &pb.RangeRequest{Key: []byte("k")}); err != nil {
		t.Fatalf("%s: Range: %v", name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seen
}

// A verified client certificate names the user of a request, unless the
// request says it is forwarded by a concord process for one of its
// clients: then the certificate is the process's, and only a token names
// the user.
func TestForwardedRequestsDropTheCertificateName(t *testing.T) {
	b, kv, setHeaders := credentialsGateway(t, gateway.Config{})

	for _, tc := range []struct {
		name    string
		headers map[string]string
		want    auth.Credentials
	}{
		{"direct", nil, auth.Credentials{CommonName: "concord test client"}},
		{"direct with a token", map[string]string{"token": "t1"}, auth.Credentials{Token: "t1", CommonName: "concord test client"}},
		{"forwarded", map[string]string{gateway.ForwardedHeader: "client"}, auth.Credentials{}},
		{"forwarded with a token", map[string]string{gateway.ForwardedHeader: "client", "token": "t2"}, auth.Credentials{Token: "t2"}},
	} {
		setHeaders(tc.headers)
		got := b.rangeCredentials(t, tc.name, kv)
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s: the backend saw %+v, want [%+v]", tc.name, got, tc.want)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// credentialsGateway serves a gateway with cfg over TLS (with the test
// server certificate, verifying client certificates) on a backend that
// records the credentials of each Range, and returns it with a gRPC KV
// client presenting the test client certificate and the headers last given
// to set.
func credentialsGateway(t *testing.T, cfg gateway.Config) (*credentialsBackend, etcdserverpbconnect.KVClient, func(map[string]string)) {
	t.Helper()
	certs := genCerts(t)
	scfg, err := certs.ServerConfig(true)
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLS = scfg
	b := &credentialsBackend{fakeBackend: newFake()}
	g, err := gateway.New(cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, g)
	ccfg, err := certs.ClientConfig(true)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: ccfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	client, set := headerClient(tr)
	return b, etcdserverpbconnect.NewKVClient(client, "https://"+addr, connect.WithGRPC()), set
}

// headerClient is a client over base whose requests also carry the headers
// last given to set.
func headerClient(base http.RoundTripper) (client *http.Client, set func(map[string]string)) {
	var extra map[string]string
	client = &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		r = r.Clone(r.Context())
		for k, v := range extra {
			r.Header.Set(k, v)
		}
		return base.RoundTrip(r)
	})}
	return client, func(h map[string]string) { extra = h }
}
