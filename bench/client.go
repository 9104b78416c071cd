package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors.
var (
	// ErrInvalid wraps every configuration error found by a Validate method.
	ErrInvalid = errors.New("invalid benchmark configuration")
	// ErrUnsupported says the server answered Unimplemented to an RPC the
	// workload needs (e.g. Watch or LeaseKeepAlive on a server that lacks them).
	ErrUnsupported = errors.New("server does not implement an RPC this workload needs")
	// ErrDial says no connection to the endpoints could be made.
	ErrDial = errors.New("cannot connect to the endpoints")
)

// ClientConfig is how a workload reaches the server: etcd benchmark's global
// flags --endpoints, --conns, --clients and --dial-timeout.
type ClientConfig struct {
	Endpoints   []string      // default 127.0.0.1:2379
	Conns       int           // gRPC connections (clientv3.Client instances); default 1
	Clients     int           // concurrent clients sharing the connections round-robin; default 1
	DialTimeout time.Duration // default 5s
	Username    string        // optional, with Password
	Password    string
}

// SetDefaults fills zero fields with their defaults.
func (c *ClientConfig) SetDefaults() {
	if len(c.Endpoints) == 0 {
		c.Endpoints = []string{"127.0.0.1:2379"}
	}
	if c.Conns == 0 {
		c.Conns = 1
	}
	if c.Clients == 0 {
		c.Clients = 1
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 5 * time.Second
	}
}

// Validate checks the configuration after SetDefaults.
func (c ClientConfig) Validate() error {
	if len(c.Endpoints) == 0 {
		return fmt.Errorf("%w: no endpoints", ErrInvalid)
	}
	for _, e := range c.Endpoints {
		if strings.TrimSpace(e) == "" {
			return fmt.Errorf("%w: empty endpoint", ErrInvalid)
		}
	}
	if c.Conns < 1 {
		return fmt.Errorf("%w: --conns must be at least 1, got %d", ErrInvalid, c.Conns)
	}
	if c.Clients < 1 {
		return fmt.Errorf("%w: --clients must be at least 1, got %d", ErrInvalid, c.Clients)
	}
	if c.DialTimeout < 0 {
		return fmt.Errorf("%w: --dial-timeout must not be negative", ErrInvalid)
	}
	return nil
}

// pool is the set of connections of one run; clients[i] = conns[i%len(conns)]
// as in etcd's benchmark.
type pool struct {
	conns []*clientv3.Client
	cfg   ClientConfig
}

// dial opens cfg.Conns connections, each blocking until connected or
// DialTimeout passes.
func dial(ctx context.Context, cfg ClientConfig) (*pool, error) {
	p := &pool{cfg: cfg}
	for range cfg.Conns {
		c, err := newClient(ctx, cfg)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.conns = append(p.conns, c)
	}
	return p, nil
}

func newClient(ctx context.Context, cfg ClientConfig) (*clientv3.Client, error) {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		Username:    cfg.Username,
		Password:    cfg.Password,
		Context:     ctx,
		// clientv3 logs retries at warn level through zap; the benchmark
		// reports errors itself.
		Logger: zap.NewNop(),
		// Large ranges (10,000 keys) must not hit a client-side limit.
		MaxCallRecvMsgSize: 1 << 30,
	})
	if err != nil {
		return nil, fmt.Errorf("%w %v: %v", ErrDial, cfg.Endpoints, err)
	}
	return c, nil
}

// client returns the connection client i uses.
func (p *pool) client(i int) *clientv3.Client { return p.conns[i%len(p.conns)] }

// Close closes every connection; idempotent.
func (p *pool) Close() {
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// errorLog counts failures and keeps the first one.
type errorLog struct {
	mu    sync.Mutex
	n     int64
	first string
}

func (e *errorLog) add(err error) {
	e.mu.Lock()
	if e.n == 0 {
		e.first = err.Error()
	}
	e.n++
	e.mu.Unlock()
}

func (e *errorLog) get() (int64, string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n, e.first
}

// unsupported wraps err with ErrUnsupported when the server answered
// Unimplemented, naming the RPC; otherwise it returns nil.
func unsupported(rpc string, err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok && s.Code() == codes.Unimplemented {
		return fmt.Errorf("%w: %s: %v", ErrUnsupported, rpc, err)
	}
	// clientv3 wraps some stream errors in its own types; the message still
	// carries the gRPC code.
	if strings.Contains(err.Error(), "code = Unimplemented") {
		return fmt.Errorf("%w: %s: %v", ErrUnsupported, rpc, err)
	}
	return nil
}

// setupErr wraps a failure of untimed set-up: ErrUnsupported when the server
// lacks the RPC, otherwise what was being done.
func setupErr(rpc, doing string, err error) error {
	if u := unsupported(rpc, err); u != nil {
		return u
	}
	return fmt.Errorf("%s: %w", doing, err)
}
