package e2e

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

var hashValue = regexp.MustCompile(`"hash":[0-9]+`)

// TestPeerHashKVMatchesEtcd sends etcd's peer HashKV request
// (GET /members/hashkv on the peer URL, a JSON HashKVRequest in the body),
// valid and not, to an etcd and a concord member that hold the same
// history, and requires the same status, content type and body: the hash
// at the current, a compacted-at and an older revision, the refusals of a
// compacted and a future revision, a body that is not JSON, another
// cluster's ID and another method. The hash values are concord's own (as
// for the HashKV RPC), so they are compared as placeholders numbered by
// first appearance, as the etcdctl transcripts do.
func TestPeerHashKVMatchesEtcd(t *testing.T) {
	t.Parallel()
	type request struct {
		name, method, body, clusterID string
	}
	requests := []request{
		{"current revision", http.MethodGet, `{}`, ""},
		{"revision 4", http.MethodGet, `{"revision":4}`, ""},
		{"the compaction's revision", http.MethodGet, `{"revision":3}`, ""},
		{"a compacted revision", http.MethodGet, `{"revision":2}`, ""},
		{"a future revision", http.MethodGet, `{"revision":100}`, ""},
		{"not JSON", http.MethodGet, `revision=4`, ""},
		{"another cluster", http.MethodGet, `{}`, "1234"},
		{"POST", http.MethodPost, `{}`, ""},
	}
	answers := func(im *impl) []string {
		s := startServer(t, im, serverOptions{})
		for _, kv := range [][2]string{{"a", "1"}, {"b", "1"}, {"a", "2"}, {"c", "1"}} {
			mustCtl(t, s.Endpoint(), "put", kv[0], kv[1])
		}
		mustCtl(t, s.Endpoint(), "compact", "3")
		var out []string
		hashes := map[string]string{}
		for _, rq := range requests {
			req, err := http.NewRequestWithContext(t.Context(), rq.method, s.peerURL()+"/members/hashkv", strings.NewReader(rq.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			if rq.clusterID != "" {
				req.Header.Set("X-Etcd-Cluster-ID", rq.clusterID)
			}
			resp, body := httpDo(t, req)
			b := hashValue.ReplaceAllStringFunc(body, func(h string) string {
				if _, ok := hashes[h]; !ok {
					hashes[h] = fmt.Sprintf(`"hash":<hash%d>`, len(hashes)+1)
				}
				return hashes[h]
			})
			out = append(out, fmt.Sprintf("%s: %d %s %s", rq.name, resp.StatusCode, resp.Header.Get("Content-Type"), strings.TrimSpace(b)))
		}
		return out
	}
	want, got := answers(etcdImpl), answers(concordImpl)
	for i := range requests {
		t.Logf("etcd: %s", want[i])
		if got[i] != want[i] {
			t.Errorf("concord: %s\n   etcd: %s", got[i], want[i])
		}
	}
	if !strings.Contains(want[0], `"hash":<hash1>`) {
		t.Errorf("etcd's answer to the current revision has no hash: %s", want[0])
	}
}
