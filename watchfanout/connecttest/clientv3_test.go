// Package connecttest drives watchfanout with the real etcd Go client over
// gRPC, through the generated connect handler and gateway's Watch adapter
// (gateway/watch.go).
package connecttest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/watchfanout"
	"github.com/concord-kv/concord/watchfanout/watchtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type server struct {
	model *watchtest.Model
	f     *watchfanout.Fanout
	cli   *clientv3.Client
}

func start(t *testing.T, cfg watchfanout.Config) *server {
	t.Helper()
	bus := eventbus.NewMemory()
	s := &server{}
	s.model = watchtest.NewModel(func(r eventbus.Revision) { _ = bus.Publish(context.Background(), []eventbus.Revision{r}) })
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	f, err := watchfanout.New(cfg, bus, s.model)
	if err != nil {
		t.Fatal(err)
	}
	s.f = f
	mux := http.NewServeMux()
	mux.Handle(etcdserverpbconnect.NewWatchHandler(gateway.NewWatchService(f)))
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &protocols}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + ln.Addr().String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	s.cli = cli
	t.Cleanup(func() {
		_ = cli.Close()
		_ = f.Close() // ends the remaining watch streams
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
		_ = bus.Close()
	})
	return s
}

func recv(t *testing.T, ch clientv3.WatchChan) clientv3.WatchResponse {
	t.Helper()
	select {
	case r, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no watch response")
	}
	return clientv3.WatchResponse{}
}

func TestClientV3Watch(t *testing.T) {
	s := start(t, watchfanout.Config{ProgressNotifyInterval: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.model.Put("foo", "1")
	s.model.Put("foo/a", "1")

	// History from revision 1 with prev_kv, on a prefix.
	wch := s.cli.Watch(ctx, "foo", clientv3.WithPrefix(), clientv3.WithRev(1), clientv3.WithPrevKV())
	// Both past revisions come in one response, as etcd sends a watcher
	// that catches up, with the header at the last revision examined.
	r := recv(t, wch)
	if len(r.Events) != 2 || string(r.Events[0].Kv.Key) != "foo" || string(r.Events[1].Kv.Key) != "foo/a" || r.Header.Revision != 3 {
		t.Fatalf("first response %+v", r)
	}
	rev := s.model.Put("foo", "2")
	r = recv(t, wch)
	if ev := r.Events[0]; r.Header.Revision != rev || ev.Type != mvccpb.PUT || ev.PrevKv == nil || string(ev.PrevKv.Value) != "1" {
		t.Fatalf("live response %+v", r)
	}

	// Progress request (WatchId -1) through clientv3.RequestProgress.
	if err := s.cli.RequestProgress(ctx); err != nil {
		t.Fatal(err)
	}
	r = recv(t, wch)
	if !r.IsProgressNotify() || r.Header.Revision != rev {
		t.Fatalf("progress response %+v", r)
	}

	// Progress notifications.
	pch := s.cli.Watch(ctx, "quiet", clientv3.WithProgressNotify())
	r = recv(t, pch)
	if !r.IsProgressNotify() || r.Header.Revision != rev {
		t.Fatalf("progress notification %+v", r)
	}

	// Compaction: created, then canceled with ErrCompacted.
	s.model.Put("x", "1")
	if err := s.model.Compact(s.model.Rev()); err != nil {
		t.Fatal(err)
	}
	cch := s.cli.Watch(ctx, "foo", clientv3.WithRev(2))
	r = recv(t, cch)
	if !r.Canceled || r.CompactRevision != s.model.Rev() || !errors.Is(r.Err(), rpctypes.ErrCompacted) {
		t.Fatalf("compacted watch %+v (err %v)", r, r.Err())
	}

	// Canceling the context closes the watch channel.
	wctx, wcancel := context.WithCancel(ctx)
	ch := s.cli.Watch(wctx, "bar")
	wcancel()
	select {
	case _, ok := <-ch:
		for ok {
			_, ok = <-ch
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch channel not closed after cancel")
	}
}
