package gateway_test

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/concord-kv/concord/gateway"
)

// TestGRPCHealth checks the standard gRPC health service as etcd serves it:
// "" is SERVING, other names are NotFound, and with StopServingOnDefrag (etcd's
// StopGRPCServiceOnDefrag gate) the server is NOT_SERVING for Check and Watch
// exactly while a defragmentation is in the backend.
func TestGRPCHealth(t *testing.T) {
	for _, stop := range []bool{false, true} {
		t.Run(fmt.Sprintf("StopServingOnDefrag=%v", stop), func(t *testing.T) {
			f, cli, addr := setup(t, gateway.Config{StopServingOnDefrag: stop})
			ctx := testCtx(t)
			hc := healthpb.NewHealthClient(cli.ActiveConnection())
			check := func() healthpb.HealthCheckResponse_ServingStatus {
				t.Helper()
				resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return resp.GetStatus()
			}
			if got := check(); got != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("Check = %v, want SERVING", got)
			}
			_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "etcdserverpb.KV"})
			if s, _ := status.FromError(err); s.Code() != codes.NotFound || s.Message() != "unknown service" {
				t.Fatalf("Check of a named service: %v, want NotFound unknown service", err)
			}
			list, err := hc.List(ctx, &healthpb.HealthListRequest{})
			if err != nil || len(list.GetStatuses()) != 1 || list.GetStatuses()[""].GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("List = %v, %v; want only \"\" SERVING", list, err)
			}
			watch, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			recv := func() healthpb.HealthCheckResponse_ServingStatus {
				t.Helper()
				resp, err := watch.Recv()
				if err != nil {
					t.Fatalf("Watch: %v", err)
				}
				return resp.GetStatus()
			}
			if got := recv(); got != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("first Watch status = %v, want SERVING", got)
			}

			// Hold the fake's lock so the defragmentation waits inside the
			// backend; its call count says when it got there.
			f.mu.Lock()
			before := f.calls.Load()
			done := make(chan error, 1)
			go func() {
				_, err := cli.Defragment(ctx, addr)
				done <- err
			}()
			for deadline := time.Now().Add(5 * time.Second); f.calls.Load() == before; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					f.mu.Unlock()
					t.Fatal("Defragment did not reach the backend")
				}
			}
			during := check()
			f.mu.Unlock()
			if err := <-done; err != nil {
				t.Fatalf("Defragment: %v", err)
			}
			if !stop {
				if during != healthpb.HealthCheckResponse_SERVING {
					t.Fatalf("Check during defrag without the gate = %v, want SERVING", during)
				}
				return
			}
			if during != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Fatalf("Check during defrag = %v, want NOT_SERVING", during)
			}
			if got := recv(); got != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Fatalf("Watch during defrag = %v, want NOT_SERVING", got)
			}
			if got := recv(); got != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("Watch after defrag = %v, want SERVING", got)
			}
			if got := check(); got != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("Check after defrag = %v, want SERVING", got)
			}
		})
	}
}
