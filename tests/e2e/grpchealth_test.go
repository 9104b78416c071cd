package e2e

import (
	"fmt"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestGRPCHealth compares the standard gRPC health service (what Kubernetes' gRPC probes and
// grpc_health_probe call) on etcd and concord, with etcd's StopGRPCServiceOnDefrag gate on: the
// whole server is SERVING and the only one listed, a named service is unknown (NotFound for Check,
// SERVICE_UNKNOWN for Watch), a watch starts with SERVING, and a defragmentation leaves the server
// SERVING once it is done.
func TestGRPCHealth(t *testing.T) {
	opts := serverOptions{extra: []string{"--feature-gates=StopGRPCServiceOnDefrag=true"}}
	outcomes := map[string][]string{}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			s := startServer(t, im, opts)
			c := newClient(t, s)
			ctx := testCtx(t)
			hc := healthpb.NewHealthClient(c.ActiveConnection())
			describe := func(resp *healthpb.HealthCheckResponse, err error) string {
				if err != nil {
					st, _ := status.FromError(err)
					return fmt.Sprintf("error %v %q", st.Code(), st.Message())
				}
				return resp.GetStatus().String()
			}
			var got []string
			got = append(got, describe(hc.Check(ctx, &healthpb.HealthCheckRequest{})))
			got = append(got, describe(hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "etcdserverpb.KV"})))
			w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, describe(w.Recv()))
			unknown, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "etcdserverpb.KV"})
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, describe(unknown.Recv()))
			list, err := hc.List(ctx, &healthpb.HealthListRequest{})
			if err != nil {
				got = append(got, describe(nil, err))
			} else {
				got = append(got, fmt.Sprint(list.GetStatuses()))
			}
			if _, err := c.Defragment(ctx, s.Endpoint()); err != nil {
				t.Fatalf("defragment: %v", err)
			}
			got = append(got, describe(hc.Check(ctx, &healthpb.HealthCheckRequest{})))
			outcomes[im.name] = got
		})
	}
	want, got := outcomes[etcdImpl.name], outcomes[concordImpl.name]
	if len(want) == 0 || len(got) == 0 {
		t.Fatalf("missing outcomes: etcd %q, concord %q", want, got)
	}
	if fmt.Sprint(want) != fmt.Sprint(got) {
		t.Fatalf("gRPC health differs:\netcd:    %q\nconcord: %q", want, got)
	}
	t.Logf("both: %q", got)
}
