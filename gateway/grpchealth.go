package gateway

import (
	"context"
	"errors"
	"net/http"
	"sync"

	"connectrpc.com/connect"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// healthService is the standard gRPC health service (grpc.health.v1.Health)
// as etcd serves it with grpc-go's health server: only the whole server ("")
// is known, and it is SERVING from the moment the gateway serves, except
// while a defragmentation runs when etcd's StopGRPCServiceOnDefrag gate is
// on. Check of any other name is NotFound "unknown service"; Watch of one
// sends SERVICE_UNKNOWN and waits, as grpc-go's does. Kubernetes' gRPC
// probes and grpc_health_probe call Check; gRPC clients with health checking
// call Watch.
type healthService struct {
	stopOnDefrag bool

	mu sync.Mutex
	// defrags counts the defragmentations in progress; the server is
	// NOT_SERVING while it is above zero (only with stopOnDefrag).
	defrags int
	// changed is closed, and replaced, on every status change.
	changed chan struct{}
}

const healthServicePrefix = "/grpc.health.v1.Health/"

var errUnknownHealthService = errors.New("unknown service")

// handler serves the service's three methods with the gateway's options.
func (h *healthService) handler(opts ...connect.HandlerOption) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(healthServicePrefix+"Check", connect.NewUnaryHandlerSimple(healthServicePrefix+"Check", h.check, opts...))
	mux.Handle(healthServicePrefix+"List", connect.NewUnaryHandlerSimple(healthServicePrefix+"List", h.list, opts...))
	mux.Handle(healthServicePrefix+"Watch", connect.NewServerStreamHandlerSimple(healthServicePrefix+"Watch", h.watch, opts...))
	return mux
}

// status is the status of service and a channel closed at its next change.
func (h *healthService) status(service string) (healthpb.HealthCheckResponse_ServingStatus, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.changed == nil {
		h.changed = make(chan struct{})
	}
	switch {
	case service != "":
		return healthpb.HealthCheckResponse_SERVICE_UNKNOWN, h.changed
	case h.defrags > 0:
		return healthpb.HealthCheckResponse_NOT_SERVING, h.changed
	default:
		return healthpb.HealthCheckResponse_SERVING, h.changed
	}
}

func (h *healthService) check(_ context.Context, r *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	st, _ := h.status(r.GetService())
	if st == healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
		return nil, connect.NewError(connect.CodeNotFound, errUnknownHealthService)
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

func (h *healthService) list(context.Context, *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	st, _ := h.status("")
	return &healthpb.HealthListResponse{Statuses: map[string]*healthpb.HealthCheckResponse{"": {Status: st}}}, nil
}

// watch sends the current status, then every change, until the client
// goes away or the gateway closes the stream.
func (h *healthService) watch(ctx context.Context, r *healthpb.HealthCheckRequest, stream *connect.ServerStream[healthpb.HealthCheckResponse]) error {
	last := healthpb.HealthCheckResponse_ServingStatus(-1)
	for {
		st, changed := h.status(r.GetService())
		if st != last {
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			last = st
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// defragment runs defrag with the server NOT_SERVING meanwhile, when the
// gate asks for it.
func (h *healthService) defragment(defrag func() error) error {
	if !h.stopOnDefrag {
		return defrag()
	}
	h.changeDefrags(+1)
	defer h.changeDefrags(-1)
	return defrag()
}

func (h *healthService) changeDefrags(delta int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.defrags += delta
	if h.changed != nil {
		close(h.changed)
	}
	h.changed = make(chan struct{})
}
