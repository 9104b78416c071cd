package storage_test

import (
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/storage"
)

// Benchmarks run on the real disk (b.TempDir) with unsynced commits, so they
// measure the store rather than the device's fsync latency.

func benchStore(b *testing.B) *storage.Store {
	s, err := storage.Open(b.TempDir(), storage.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

func fill(b *testing.B, s *storage.Store, n int, val []byte) {
	batch := s.NewBatch()
	for i := range n {
		if _, err := batch.Put(&pb.PutRequest{Key: []byte(fmt.Sprintf("key/%06d", i)), Value: val}); err != nil {
			b.Fatal(err)
		}
	}
	if err := batch.Commit(false); err != nil {
		b.Fatal(err)
	}
}

// versionedStore holds 10k keys of 256 B, each written three times.
func versionedStore(b *testing.B) *storage.Store {
	s := benchStore(b)
	val := make([]byte, 256)
	for range 3 {
		fill(b, s, 10000, val)
	}
	return s
}

// BenchmarkPut: one Put per batch (one raft apply step), 10k hot keys.
func BenchmarkPut(b *testing.B) {
	s := benchStore(b)
	val := make([]byte, 256)
	keys := make([][]byte, 10000)
	for i := range keys {
		keys[i] = []byte(fmt.Sprintf("key/%06d", i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		batch := s.NewBatch()
		if _, err := batch.Put(&pb.PutRequest{Key: keys[i%len(keys)], Value: val}); err != nil {
			b.Fatal(err)
		}
		if err := batch.Commit(false); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRangeOneKey: point read of one key among 10k, each with a few versions.
func BenchmarkRangeOneKey(b *testing.B) {
	s := versionedStore(b)
	req := &pb.RangeRequest{Key: []byte("key/004242")}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := s.Range(req)
		if err != nil || len(resp.Kvs) != 1 {
			b.Fatal(err, resp)
		}
	}
}

// BenchmarkRange1000: a 1000-key range out of 10k keys, each with a few versions.
func BenchmarkRange1000(b *testing.B) {
	s := versionedStore(b)
	req := &pb.RangeRequest{Key: []byte("key/002000"), RangeEnd: []byte("key/003000")}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := s.Range(req)
		if err != nil || len(resp.Kvs) != 1000 {
			b.Fatal(err, len(resp.Kvs))
		}
	}
}

// BenchmarkPutBatch100: puts applied 100 to a batch, as the raft loop does
// under load, on a store holding 100k keys; "new" writes keys the store
// does not have (the key filter rules them out without a read), "update"
// overwrites existing ones.
func BenchmarkPutBatch100(b *testing.B) {
	val := make([]byte, 256)
	for _, mode := range []string{"new", "update"} {
		b.Run(mode, func(b *testing.B) {
			s := benchStore(b)
			fill(b, s, 100000, val)
			b.ReportAllocs()
			b.ResetTimer()
			var batch *storage.Batch
			for i := 0; b.Loop(); i++ {
				if i%100 == 0 {
					if batch != nil {
						if err := batch.Commit(false); err != nil {
							b.Fatal(err)
						}
					}
					batch = s.NewBatch()
				}
				k := fmt.Appendf(nil, "key/%06d", i%100000)
				if mode == "new" {
					k = fmt.Appendf(nil, "new/%09d", i)
				}
				if _, err := batch.Put(&pb.PutRequest{Key: k, Value: val}); err != nil {
					b.Fatal(err)
				}
			}
			if err := batch.Commit(false); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkRange10000Marshaled: a range of all of 10k keys (256 B values,
// each with a few versions) made ready for the wire, the server's work for
// the bench compare's 10,000-key range: "kvs" through Range and protobuf's
// encoder, "wire" through RangeWire, its buffer recycled after marshaling.
func BenchmarkRange10000Marshaled(b *testing.B) {
	s := versionedStore(b)
	req := &pb.RangeRequest{Key: []byte("key/"), RangeEnd: []byte("key0")}
	for _, path := range []struct {
		name string
		rng  func(*pb.RangeRequest) (*pb.RangeResponse, error)
	}{{"kvs", s.Range}, {"wire", s.RangeWire}} {
		b.Run(path.name, func(b *testing.B) {
			b.ReportAllocs()
			var buf []byte
			for b.Loop() {
				resp, err := path.rng(req)
				if err != nil || resp.Count != 10000 {
					b.Fatal(err, resp.GetCount())
				}
				if buf, err = (proto.MarshalOptions{}).MarshalAppend(buf[:0], resp); err != nil {
					b.Fatal(err)
				}
				storage.RecycleWire(resp) // as the gateway's codec does
				b.SetBytes(int64(len(buf)))
			}
		})
	}
}
