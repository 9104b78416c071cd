package recipes

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait of these tests.
const testTimeout = 10 * time.Second

func newService(t *testing.T, b *memBackend) *Service {
	t.Helper()
	s, err := New(Config{Logger: quietLogger()}, b, b, b.fan)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// result is the outcome of a call run in the background.
type result[T any] struct {
	v   T
	err error
}

// async runs fn in a goroutine; the test owns it through the returned
// channel and the ctx it passes to fn (cancelled at cleanup at the latest).
func async[T any](t *testing.T, fn func(ctx context.Context) (T, error)) (<-chan result[T], context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := make(chan result[T], 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		v, err := fn(ctx)
		c <- result[T]{v, err}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return c, cancel
}

// await returns the result of an async call, failing after testTimeout.
func await[T any](t *testing.T, c <-chan result[T]) result[T] {
	t.Helper()
	select {
	case r := <-c:
		return r
	case <-time.After(testTimeout):
		t.Fatalf("call did not return within %v", testTimeout)
		var zero result[T]
		return zero
	}
}

// pending fails the test if the async call has returned.
func pending[T any](t *testing.T, c <-chan result[T], what string) {
	t.Helper()
	select {
	case r := <-c:
		t.Fatalf("%s returned early: %v, %v", what, r.v, r.err)
	default:
	}
}

// eventually polls cond until it holds, failing after testTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitKeys waits until the prefix holds exactly want, in create order.
func waitKeys(t *testing.T, b *memBackend, pfx string, want ...string) {
	t.Helper()
	eventually(t, "keys "+pfx, func() bool { return slices.Equal(b.keys(pfx), want) })
}

// wantWireErr checks the code and message a client would see.
func wantWireErr(t *testing.T, err error, code connect.Code, msg string) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a *connect.Error", err, err)
	}
	if ce.Code() != code || ce.Message() != msg {
		t.Fatalf("error = code %v %q, want code %v %q", ce.Code(), ce.Message(), code, msg)
	}
}
