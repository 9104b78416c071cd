package config

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/concord-kv/concord/internal/netaddr"
)

// Discovery of the initial cluster, instead of --initial-cluster, in etcd's
// two ways: its v3 discovery (an existing etcd-compatible cluster holds the
// registry; Discovery, used by package services) and DNS SRV records
// (resolved here, into Server.InitialCluster).

const (
	fDiscoveryEndpoints        = "discovery-endpoints"
	fDiscoveryToken            = "discovery-token"
	fDiscoveryDialTimeout      = "discovery-dial-timeout"
	fDiscoveryRequestTimeout   = "discovery-request-timeout"
	fDiscoveryKeepAliveTime    = "discovery-keepalive-time"
	fDiscoveryKeepAliveTimeout = "discovery-keepalive-timeout"
	fDiscoveryInsecure         = "discovery-insecure-transport"
	fDiscoverySkipVerify       = "discovery-insecure-skip-tls-verify"
	fDiscoveryCert             = "discovery-cert"
	fDiscoveryKey              = "discovery-key"
	fDiscoveryCACert           = "discovery-cacert"
	fDiscoveryUser             = "discovery-user"
	fDiscoveryPassword         = "discovery-password"
	fDiscoverySRV              = "discovery-srv"
	fDiscoverySRVName          = "discovery-srv-name"
)

// discoveryFlags declares etcd's discovery flags with etcd's defaults.
func discoveryFlags(fs *pflag.FlagSet) {
	fs.String(fDiscoveryEndpoints, "", "v3 discovery: comma-separated gRPC endpoints of the etcd-compatible cluster that holds the discovery registry, instead of --initial-cluster")
	fs.String(fDiscoveryToken, "", "v3 discovery: discovery token of the cluster to bootstrap (its registry is /_etcd/registry/TOKEN; the expected size is at /_etcd/registry/TOKEN/_config/size)")
	fs.Duration(fDiscoveryDialTimeout, 2*time.Second, "v3 discovery: dial timeout for client connections")
	fs.Duration(fDiscoveryRequestTimeout, 5*time.Second, "v3 discovery: timeout for discovery requests (excluding dial timeout)")
	fs.Duration(fDiscoveryKeepAliveTime, 2*time.Second, "v3 discovery: keepalive time for client connections")
	fs.Duration(fDiscoveryKeepAliveTimeout, 6*time.Second, "v3 discovery: keepalive timeout for client connections")
	fs.Bool(fDiscoveryInsecure, true, "v3 discovery: disable transport security for client connections")
	fs.Bool(fDiscoverySkipVerify, false, "v3 discovery: skip server certificate verification (testing only)")
	fs.String(fDiscoveryCert, "", "v3 discovery: identify secure client using this TLS certificate file")
	fs.String(fDiscoveryKey, "", "v3 discovery: identify secure client using this TLS key file")
	fs.String(fDiscoveryCACert, "", "v3 discovery: verify certificates of TLS-enabled secure servers using this CA bundle")
	fs.String(fDiscoveryUser, "", "v3 discovery: username[:password] for authentication")
	fs.String(fDiscoveryPassword, "", "v3 discovery: password for authentication (then --discovery-user holds no password)")
	fs.String(fDiscoverySRV, "", "DNS domain used to bootstrap the initial cluster (SRV records _etcd-server-ssl._tcp and _etcd-server._tcp), instead of --initial-cluster")
	fs.String(fDiscoverySRVName, "", "service name to query when using DNS discovery (_etcd-server-ssl-NAME._tcp, _etcd-server-NAME._tcp)")
}

// Discovery is etcd's v3 discovery: a member that bootstraps a new cluster
// registers itself under /_etcd/registry/Token/members in the cluster at
// Endpoints, waits until as many members as the registry's size key says
// have registered, and starts with the first of them (by create revision)
// as its initial cluster. A member with data never asks. The zero value is
// off.
type Discovery struct {
	Endpoints []string
	Token     string

	DialTimeout, RequestTimeout     time.Duration
	KeepAliveTime, KeepAliveTimeout time.Duration
	// InsecureTransport (etcd's default) dials without TLS unless a
	// certificate or CA is given.
	InsecureTransport, InsecureSkipVerify bool
	CertFile, KeyFile, CAFile             string
	User, Password                        string
}

// Enabled reports whether the initial cluster comes from v3 discovery.
func (d Discovery) Enabled() bool { return len(d.Endpoints) > 0 }

func loadDiscovery(v *viper.Viper) (Discovery, error) {
	d := Discovery{
		Token:              v.GetString(fDiscoveryToken),
		DialTimeout:        v.GetDuration(fDiscoveryDialTimeout),
		RequestTimeout:     v.GetDuration(fDiscoveryRequestTimeout),
		KeepAliveTime:      v.GetDuration(fDiscoveryKeepAliveTime),
		KeepAliveTimeout:   v.GetDuration(fDiscoveryKeepAliveTimeout),
		InsecureTransport:  v.GetBool(fDiscoveryInsecure),
		InsecureSkipVerify: v.GetBool(fDiscoverySkipVerify),
		CertFile:           v.GetString(fDiscoveryCert),
		KeyFile:            v.GetString(fDiscoveryKey),
		CAFile:             v.GetString(fDiscoveryCACert),
		User:               v.GetString(fDiscoveryUser),
		Password:           v.GetString(fDiscoveryPassword),
	}
	d.Endpoints = stringList(v, fDiscoveryEndpoints)
	// etcd's checks and messages.
	if raw, ok := v.Get(fDiscoveryEndpoints).(string); ok && raw != "" && slices.ContainsFunc(strings.Split(raw, ","), func(e string) bool { return strings.TrimSpace(e) == "" }) {
		return Discovery{}, fmt.Errorf("%w: --discovery-endpoints must not contain empty endpoints", ErrInvalid)
	}
	if (d.Token != "") != d.Enabled() {
		return Discovery{}, fmt.Errorf("%w: both --discovery-token and --discovery-endpoints must be set", ErrInvalid)
	}
	if d.Password == "" {
		d.User, d.Password, _ = strings.Cut(d.User, ":")
	}
	return d, nil
}

// DNS SRV discovery (--discovery-srv, --discovery-srv-name), as etcd's: the
// initial cluster is read from the SRV records of
// _etcd-server-ssl[-NAME]._tcp.DOMAIN (https peer URLs) and
// _etcd-server[-NAME]._tcp.DOMAIN (http), one member per record. The
// record whose target resolves to the address of one of this member's
// advertised peer URLs is this member; the others get the placeholder
// names 0, 1, ... until they publish their own, as in etcd (member IDs come
// from peer URLs and the cluster token, not from names). Like etcd, concord
// resolves the records at every start.

// SRVResolver is the part of *net.Resolver that DNS SRV discovery uses.
type SRVResolver interface {
	LookupSRV(ctx context.Context, service, proto, name string) (cname string, addrs []*net.SRV, err error)
	netaddr.Resolver
}

// discoveryTimeout bounds the DNS lookups of one start.
const discoveryTimeout = 30 * time.Second

// errConflictBootstrap is etcd's ErrConflictBootstrapFlags.
var errConflictBootstrap = errors.New(`multiple discovery or bootstrap flags are set. Choose one of "initial-cluster", "discovery-endpoints" or "discovery-srv"`)

// initialClusterFromSRV returns the initial cluster (name=URL,...) the SRV
// records of domain describe, for the member name advertising peerURLs.
func initialClusterFromSRV(ctx context.Context, r SRVResolver, domain, serviceName, name string, peerURLs []url.URL) (string, error) {
	own := make(map[string]url.URL, len(peerURLs))
	for _, u := range peerURLs {
		addr, err := netaddr.Resolve(ctx, r, u.Host)
		if err != nil {
			return "", fmt.Errorf("%w: --%s: resolving advertised peer URL %s: %v", ErrInvalid, fDiscoverySRV, u.String(), err)
		}
		own[addr] = u
	}
	suffix := ""
	if serviceName != "" {
		suffix = "-" + serviceName
	}
	var (
		members []string
		errs    []error // lookups that failed
		skipped []error // records skipped
		unnamed int
	)
	for _, s := range []struct{ scheme, service string }{{"https", "etcd-server-ssl" + suffix}, {"http", "etcd-server" + suffix}} {
		_, records, err := r.LookupSRV(ctx, s.service, "tcp", domain)
		if err != nil {
			errs = append(errs, fmt.Errorf("error querying DNS SRV records for _%s: %w", s.service, err))
			continue
		}
		for _, rec := range records {
			port := strconv.Itoa(int(rec.Port))
			// SRV targets end with a dot; URLs do not.
			host := net.JoinHostPort(strings.TrimSuffix(rec.Target, "."), port)
			addr, err := netaddr.Resolve(ctx, r, net.JoinHostPort(rec.Target, port))
			if err != nil {
				skipped = append(skipped, fmt.Errorf("_%s: %s: %w", s.service, host, err))
				continue
			}
			n := name
			mine, ok := own[addr]
			switch {
			case ok && mine.Scheme != s.scheme:
				skipped = append(skipped, fmt.Errorf("bootstrap at %s://%s from DNS for %s has scheme mismatch with expected peer %s", s.scheme, host, s.service, mine.String()))
				continue
			case !ok:
				n = strconv.Itoa(unnamed)
				unnamed++
			}
			members = append(members, n+"="+s.scheme+"://"+host)
		}
	}
	if len(members) == 0 {
		return "", fmt.Errorf("%w: --%s=%s: no members found: %w", ErrInvalid, fDiscoverySRV, domain, errors.Join(append(errs, skipped...)...))
	}
	found := false
	for _, m := range members {
		found = found || strings.HasPrefix(m, name+"=")
	}
	if !found {
		// etcd drops the errors of the records it skipped; they tell why.
		if len(skipped) > 0 {
			return "", fmt.Errorf("%w: cannot find local etcd member %q in SRV records (%w)", ErrInvalid, name, errors.Join(skipped...))
		}
		return "", fmt.Errorf("%w: cannot find local etcd member %q in SRV records", ErrInvalid, name)
	}
	return strings.Join(members, ","), nil
}
