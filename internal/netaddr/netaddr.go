// Package netaddr resolves host:port pairs the way etcd compares peer URLs
// (netutil.URLStringsEqual, srv.GetCluster): a host name becomes one of its
// addresses, IPv4 first, as net.ResolveTCPAddr picks it; an address stays
// as it is. Two spellings of one member (a host name and its address) then
// compare equal.
package netaddr

import (
	"context"
	"fmt"
	"net"
)

// Resolver is the part of *net.Resolver that Resolve uses.
type Resolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

// Resolve returns hostPort with its host replaced by one of its addresses.
func Resolve(ctx context.Context, r Resolver, hostPort string) (string, error) {
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
		return "", fmt.Errorf("netaddr: no addresses for %s", host)
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
