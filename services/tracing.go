package services

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/concord-kv/concord/internal/tracing"
)

// tracingFlushTimeout bounds sending the last spans at shutdown to a
// collector that does not answer.
const tracingFlushTimeout = 5 * time.Second

// startTracing starts the process's tracing (a nil Provider when c is off)
// and returns the function that sends the spans not sent yet and stops it.
func startTracing(ctx context.Context, c tracing.Config, log *slog.Logger) (*tracing.Provider, func(), error) {
	p, err := tracing.Start(ctx, c)
	if err != nil {
		return nil, nil, fmt.Errorf("starting distributed tracing: %w", err)
	}
	if p.On() {
		// The exporter reports a collector it cannot reach through
		// OpenTelemetry's process-wide handler, which would otherwise
		// print to stderr past the process's log settings.
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("distributed tracing", "err", err) }))
		log.Info("distributed tracing enabled", "address", c.Address, "service-name", c.ServiceName,
			"service-instance-id", c.InstanceID, "sampling-rate", c.SamplingRatePerMillion)
	}
	stop := func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tracingFlushTimeout)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			log.Warn("sending the last spans", "err", err)
		}
	}
	return p, stop, nil
}
