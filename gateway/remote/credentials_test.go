package remote_test

import (
	"context"
	"net/http"
	"sync"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// rangeKV answers every Range with an empty response.
type rangeKV struct {
	etcdserverpbconnect.UnimplementedKVHandler
}

func (rangeKV) Range(context.Context, *pb.RangeRequest) (*pb.RangeResponse, error) {
	return &pb.RangeResponse{Header: hdr}, nil
}

// The gateway's client token reaches consensus as etcd's "token" metadata;
// a certificate's common name never travels, and neither does anything for
// a call that is no client's.
func TestClientTokenIsForwarded(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []string
	)
	path, h := etcdserverpbconnect.NewKVHandler(rangeKV{})
	url := h2cServer(t, path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("token"))
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	c, err := remote.NewConsensus(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	for _, tc := range []struct {
		name string
		ctx  context.Context
		want string
	}{
		{"token", auth.WithCredentials(context.Background(), auth.Credentials{Token: "tok.42"}), "tok.42"},
		{"token and common name", auth.WithCredentials(context.Background(), auth.Credentials{Token: "t2", CommonName: "alice"}), "t2"},
		{"common name only", auth.WithCredentials(context.Background(), auth.Credentials{CommonName: "alice"}), ""},
		{"no client", context.Background(), ""},
	} {
		mu.Lock()
		seen = nil
		mu.Unlock()
		if _, err := c.Range(tc.ctx, &pb.RangeRequest{Key: []byte("k")}); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		mu.Lock()
		got := seen
		mu.Unlock()
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s: consensus saw token %q, want [%q]", tc.name, got, tc.want)
		}
	}
}
