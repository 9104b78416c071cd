package remote_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/crypto/bcrypt"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/consensus/internalapi"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/gateway/remote"
)

// With auth enabled, a consensus member served with an internal secret
// takes the calls of a process dialing it with the same secret as a
// root-role user's own (etcd's services and the internal API), and those
// with another secret, or none, as a client's without credentials. A call
// forwarded for a client is the client's whatever the secret.
func TestInternalSecretAgainstAMember(t *testing.T) {
	secret := []byte(strings.Repeat("k", gateway.MinInternalSecretBytes))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, url := startSecretMember(t, ctx, secret)

	// The member's own calls (no credentials) set up root and enable auth.
	if _, err := n.UserAdd(ctx, &pb.AuthUserAddRequest{Name: "root", Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.UserGrantRole(ctx, &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.AuthEnable(ctx, &pb.AuthEnableRequest{}); err != nil {
		t.Fatal(err)
	}

	dial := func(opts ...remote.DialOption) *remote.Consensus { return dialMember(t, url, opts...) }
	client := auth.WithCredentials(ctx, auth.Credentials{})
	for _, tc := range []struct {
		name string
		c    *remote.Consensus
		want error // for the process's own calls
	}{
		{"the secret", dial(remote.WithInternalSecret(secretsOf(t, secret))), nil},
		{"another secret", dial(remote.WithInternalSecret(secretsOf(t, []byte(strings.Repeat("x", gateway.MinInternalSecretBytes))))), auth.ErrUserEmpty},
		{"no secret", dial(), auth.ErrUserEmpty},
	} {
		check := func(what string, err, want error) {
			t.Helper()
			if !errors.Is(err, want) || (err == nil) != (want == nil) {
				t.Errorf("%s, %s: %v, want %v", tc.name, what, err, want)
			}
		}
		_, err := tc.c.Status(ctx, &pb.StatusRequest{})
		check("own Status", err, tc.want)
		_, err = tc.c.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")})
		check("own Put", err, tc.want)
		_, err = tc.c.LeaseAuthority(ctx)
		check("internal LeaseAuthority", err, tc.want)
		_, _, err = tc.c.CurrentRevision(ctx)
		check("internal CurrentRevision", err, tc.want)
		_, err = tc.c.Range(client, &pb.RangeRequest{Key: []byte("k")})
		check("Range forwarded for a client without a token", err, auth.ErrUserEmpty)
	}

	// A secret set again (its file rotated) is presented from the next call.
	rotating := secretsOf(t, []byte(strings.Repeat("x", gateway.MinInternalSecretBytes)))
	c := dial(remote.WithInternalSecret(rotating))
	if _, err := c.Status(ctx, &pb.StatusRequest{}); !errors.Is(err, auth.ErrUserEmpty) {
		t.Fatalf("own Status with another secret: %v, want ErrUserEmpty", err)
	}
	if err := rotating.Set(secret); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status(ctx, &pb.StatusRequest{}); err != nil {
		t.Errorf("own Status once the member's secret is set: %v", err)
	}
}

// startSecretMember starts a single consensus member served, with its
// internal API, by a gateway that knows secret; it returns the member and
// the gateway's h2c URL.
func startSecretMember(t *testing.T, ctx context.Context, secret []byte) (*consensus.Node, string) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	n, err := consensus.Start(ctx, consensus.Config{Name: "m1", DataDir: t.TempDir(), BcryptCost: bcrypt.MinCost,
		HeartbeatInterval: 10 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	path, h := internalapi.Handler(n)
	gw, err := gateway.New(gateway.Config{InternalSecrets: secretsOf(t, secret), Logger: log}, n, gateway.WithHTTPHandler(path, h))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gw.Close() })
	return n, serveH2C(t, gw.Handler())
}

// dialMember is a remote client of the member at url, closed at cleanup.
func dialMember(t *testing.T, url string, opts ...remote.DialOption) *remote.Consensus {
	t.Helper()
	c, err := remote.NewConsensus(url, slog.New(slog.DiscardHandler), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// secretsOf is the set presenting present; the test fails on a refused one.
func secretsOf(t testing.TB, present []byte) *gateway.InternalSecrets {
	t.Helper()
	s, err := gateway.NewInternalSecrets(present)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
