// Package healthwait waits until a concord or etcd process started by a
// launcher, a benchmark or a test answers GET /health with 200 OK.
//
// The process may die before it is ready (a bad flag, a port taken), so the
// caller passes a channel closed when the process has exited, and the wait
// ends at once instead of at its deadline.
package healthwait

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"time"
)

// Sentinel errors of Wait.
var (
	ErrExited  = errors.New("the process exited before it was ready")
	ErrTimeout = errors.New("no 200 from /health in time")
)

// pollTimeout bounds one GET: a process that accepts but does not answer
// must not hold the wait past its deadline.
const pollTimeout = 2 * time.Second

// Wait polls baseURL+"/health" every interval until it answers 200 OK
// (nil), exited is closed (ErrExited) or ctx ends (ErrTimeout).
func Wait(ctx context.Context, baseURL string, exited <-chan struct{}, interval time.Duration) error {
	return WaitTLS(ctx, baseURL, nil, exited, interval)
}

// WaitTLS is Wait for an https:// baseURL, with tlsCfg's trusted CAs and
// client certificate (nil: the system's roots, no certificate).
func WaitTLS(ctx context.Context, baseURL string, tlsCfg *tls.Config, exited <-chan struct{}, interval time.Duration) error {
	client := &http.Client{Timeout: pollTimeout}
	if tlsCfg != nil {
		tr := &http.Transport{TLSClientConfig: tlsCfg.Clone()}
		defer tr.CloseIdleConnections()
		client.Transport = tr
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/health", nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return ErrExited
		case <-ctx.Done():
			return ErrTimeout
		case <-tick.C:
		}
	}
}
