package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// streamTranscript reads one GetStream and describes it chunk by chunk:
// the keys of each chunk, and the header revision, More and Count of the
// chunk that carries them (the last one).
func streamTranscript(t *testing.T, c *clientv3.Client, key string, opts ...clientv3.OpOption) string {
	ch, err := c.GetStream(testCtx(t), key, opts...)
	if err != nil {
		return "error: " + err.Error()
	}
	var b strings.Builder
	for r := range ch {
		if err := r.Err(); err != nil {
			fmt.Fprintf(&b, "error: %v\n", err)
			continue
		}
		var keys []string
		for _, kv := range r.Kvs {
			keys = append(keys, string(kv.Key))
		}
		fmt.Fprintf(&b, "chunk of %d: %s..%s", len(keys), first(keys), last(keys))
		if r.Header != nil {
			fmt.Fprintf(&b, " header rev %d more %v count %d", r.Header.Revision, r.More, r.Count)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

// TestRangeStream compares etcd 3.7's streamed range (clientv3 GetStream,
// `etcdctl get --stream`) chunk by chunk: the chunk sizes (10, then
// doubling), the pinned revision, limits, count-only, a revision in the
// past, the refused orderings and filters.
func TestRangeStream(t *testing.T) {
	t.Parallel()
	transcripts := map[string][]string{}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			s := startServer(t, im, serverOptions{})
			c := newClient(t, s)
			ctx := testCtx(t)
			value := strings.Repeat("v", 2000)
			for i := range 400 {
				must(c.Put(ctx, fmt.Sprintf("k/%03d", i), value))(t)
			}
			must(c.Put(ctx, "k/000", "again"))(t)
			var out []string
			add := func(what, got string) { out = append(out, what+":\n"+got) }
			add("prefix", streamTranscript(t, c, "k/", clientv3.WithPrefix()))
			add("limit 55", streamTranscript(t, c, "k/", clientv3.WithPrefix(), clientv3.WithLimit(55)))
			add("keys only from k/390", streamTranscript(t, c, "k/390", clientv3.WithFromKey(), clientv3.WithKeysOnly()))
			add("count only", streamTranscript(t, c, "k/", clientv3.WithPrefix(), clientv3.WithCountOnly()))
			add("one key", streamTranscript(t, c, "k/007"))
			add("missing key", streamTranscript(t, c, "nothing"))
			add("serializable at rev 50", streamTranscript(t, c, "k/", clientv3.WithPrefix(), clientv3.WithRev(50), clientv3.WithSerializable()))
			add("sorted descending", streamTranscript(t, c, "k/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)))
			add("sorted ascending by key", streamTranscript(t, c, "k/00", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)))
			add("mod revision filter", streamTranscript(t, c, "k/", clientv3.WithPrefix(), clientv3.WithMinModRev(5)))
			add("future revision", streamTranscript(t, c, "k/", clientv3.WithPrefix(), clientv3.WithRev(10_000)))

			out = append(out, "etcdctl get --stream --prefix k/39 --keys-only:\n"+
				mustCtl(t, s.Endpoint(), "get", "--stream", "--prefix", "k/39", "--keys-only"))
			transcripts[im.name] = out
		})
	}
	want, got := transcripts["etcd"], transcripts["concord"]
	// 400 keys of 2 kB come in chunks of 10, 20, 40, ... : the comparison
	// covers the chunking only if there are several.
	if len(want) > 0 && strings.Count(want[0], "chunk of") < 4 {
		t.Errorf("etcd sent the prefix in fewer than 4 chunks:\n%s", want[0])
	}
	if len(want) == 0 || !slices.Equal(want, got) {
		t.Errorf("transcripts differ:\netcd:\n%s\nconcord:\n%s", strings.Join(want, "\n"), strings.Join(got, "\n"))
	}
}
