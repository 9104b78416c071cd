package config

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

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
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
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
		addr, err := resolveTCP(ctx, r, u.Host)
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
			addr, err := resolveTCP(ctx, r, net.JoinHostPort(rec.Target, port))
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

// resolveTCP is hostPort with its host resolved to one address, IPv4
// first, as net.ResolveTCPAddr picks it (etcd compares addresses so).
func resolveTCP(ctx context.Context, r SRVResolver, hostPort string) (string, error) {
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); ip != nil {
		return net.JoinHostPort(ip.String(), port), nil
	}
	ips, err := r.LookupIPAddr(ctx, host)
	if err != nil {
		return "", err
	}
	if len(ips) == 0 {
		return "", fmt.Errorf("no addresses for %s", host)
	}
	pick := ips[0].IP
	for _, ip := range ips {
		if ip.IP.To4() != nil {
			pick = ip.IP
			break
		}
	}
	return net.JoinHostPort(pick.String(), port), nil
}
