package services

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"sync"
	"time"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/consensus/peer"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/internal/memlock"
	"github.com/concord-kv/concord/services/config"
)

// peerShutdownTimeout bounds the graceful part of stopping the peer server;
// the consensus member has already stopped its transport by then.
const peerShutdownTimeout = 2 * time.Second

// peerServer serves the raft peer transport on --listen-peer-urls
// (HTTP/2, over TLS on https:// URLs with --peer-cert-file and the other
// peer TLS flags) from before consensus starts, so the other members can
// reach this one while it waits for an election. The returned stop shuts
// the listeners down and waits for the server goroutines; the transport
// itself belongs to the consensus member once passed in its Config.
// Besides raft, it serves extra (path to handler), e.g. peerLeases.
func peerServer(cfg config.Server, log *slog.Logger, extra map[string]http.Handler) (*peer.Transport, func(), error) {
	serverTLS, clientTLS, err := cfg.PeerTLS.PeerConfigs(cfg.ListenPeerURLs)
	if err != nil {
		return nil, nil, fmt.Errorf("peer TLS: %w", err)
	}
	tr, err := peer.New(peer.Config{Logger: log.With("component", "peer"), TLS: clientTLS})
	if err != nil {
		return nil, nil, err
	}
	lns, err := listenAll(cfg.ListenPeerURLs, cfg.Socket)
	if err != nil {
		tr.Stop()
		return nil, nil, err
	}
	for i, u := range cfg.ListenPeerURLs {
		if config.IsTLS(u) {
			lns[i] = tls.NewListener(lns[i], peerServerTLS(serverTLS))
		}
	}
	path, h := tr.Handler()
	mux := http.NewServeMux()
	mux.Handle(path, h)
	mux.Handle(tr.ProbeHandler())
	// etcd's peer handler also answers HTTP clients: the versions and
	// the member list.
	mux.Handle("/version", gateway.VersionHandler())
	mux.Handle(tr.MembersHandler())
	for p, h := range extra {
		mux.Handle(p, h)
	}
	// HTTP/2 for the members; HTTP/1.1 too for the HTTP clients of
	// /version and /members (curl), which etcd's peer URLs serve.
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	protocols.SetHTTP2(true)
	protocols.SetHTTP1(true)
	// Refused TLS handshakes (a peer without an acceptable certificate)
	// are logged as warnings, as etcd logs rejected peer connections.
	srv := &http.Server{Handler: mux, Protocols: &protocols, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.With("component", "peer").Handler(), slog.LevelWarn)}
	var wg sync.WaitGroup
	for i, ln := range lns {
		log.Info("serving peer traffic", "address", ln.Addr().String(), "tls", config.IsTLS(cfg.ListenPeerURLs[i]))
		wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("peer server failed", "address", ln.Addr().String(), "error", err)
			}
		})
	}
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), peerShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			_ = srv.Close()
		}
		wg.Wait()
	}
	return tr, stop, nil
}

// startMember serves the peer URLs (raft, the corruption checks' HashKV and
// extra, path to handler) and starts the consensus member of ccfg on them,
// with the initial corruption check of a restarted member. stop closes the
// member, then the peer server; the periodic checks are the caller's to
// run (checks.run).
func startMember(ctx context.Context, cfg config.Server, ccfg consensus.Config, log *slog.Logger, extra map[string]http.Handler) (node *consensus.Node, checks *corruptionChecks, stop func(), err error) {
	if cfg.MemoryMlock {
		if err := memlock.Lock(); err != nil {
			return nil, nil, nil, fmt.Errorf("--memory-mlock: %w", err)
		}
		log.Info("memory locked in RAM (--memory-mlock)")
	}
	checks, err = newCorruptionChecks(cfg, log)
	if err != nil {
		return nil, nil, nil, err
	}
	handlers := checks.peerHandlers()
	maps.Copy(handlers, extra)
	tr, stopPeerServer, err := peerServer(cfg, log, handlers)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("starting the peer transport: %w", err)
	}
	ccfg.Transport = tr
	node, err = consensus.Start(ctx, ccfg)
	if err != nil {
		stopPeerServer()
		return nil, nil, nil, fmt.Errorf("starting consensus: %w", err)
	}
	stop = func() {
		_ = node.Close()
		stopPeerServer()
	}
	if err := checks.start(ctx, node); err != nil {
		stop()
		return nil, nil, nil, err
	}
	return node, checks, stop, nil
}

// peerServerTLS is c offering HTTP/2 in ALPN, and HTTP/1.1 for HTTP
// clients of /version and /members, for the connections it returns per
// client too.
func peerServerTLS(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.NextProtos = []string{"h2", "http/1.1"}
	if get := c.GetConfigForClient; get != nil {
		c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			cc, err := get(hello)
			if cc != nil {
				cc.NextProtos = []string{"h2", "http/1.1"}
			}
			return cc, err
		}
	}
	return c
}
