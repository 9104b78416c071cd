package gateway_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/concord-kv/concord/gateway"
)

type msgSink struct {
	mu   sync.Mutex
	msgs map[string]int
}

func (s *msgSink) Enabled(context.Context, slog.Level) bool { return true }
func (s *msgSink) Handle(_ context.Context, r slog.Record) error {
	s.mu.Lock()
	s.msgs[r.Message]++
	s.mu.Unlock()
	return nil
}
func (s *msgSink) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s *msgSink) WithGroup(string) slog.Handler      { return s }
func (s *msgSink) count(m string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.msgs[m]
}

// TestWarningUnaryRequestDuration: unary RPCs slower than etcd's
// --warning-unary-request-duration are logged; faster ones are not.
func TestWarningUnaryRequestDuration(t *testing.T) {
	for _, c := range []struct {
		threshold time.Duration
		warns     bool
	}{{time.Nanosecond, true}, {time.Hour, false}} {
		sink := &msgSink{msgs: map[string]int{}}
		_, cli, _ := setup(t, gateway.Config{WarningUnaryRequestDuration: c.threshold, Logger: slog.New(sink)})
		if _, err := cli.Put(testCtx(t), "k", "v"); err != nil {
			t.Fatal(err)
		}
		if got := sink.count("request stats: request took too long"); (got > 0) != c.warns {
			t.Errorf("threshold %v: %d warnings", c.threshold, got)
		}
	}
}
