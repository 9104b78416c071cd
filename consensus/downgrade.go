package consensus

import (
	"context"
	"errors"
	"fmt"

	"github.com/coreos/go-semver/semver"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/version"
)

// Downgrade errors: etcd's (server/etcdserver/errors and version), except
// ErrDowngradeUnsupported, which etcd has no counterpart for.
var (
	ErrWrongDowngradeVersionFormat   = errors.New("etcdserver: wrong downgrade target version format")
	ErrInvalidDowngradeTargetVersion = errors.New("etcdserver: invalid downgrade target version")
	// ErrDowngradeUnsupported refuses to start a downgrade. etcd's downgrade
	// lowers the cluster version so that members can be restarted one by
	// one on the older etcd binary with the same data directory; concord's
	// data directory is not etcd's, so no older binary could take it over
	// and the downgrade could never finish.
	ErrDowngradeUnsupported = errors.New("etcdserver: concord cannot be downgraded in place; move the data to an etcd cluster with etcdctl snapshot save and etcdutl snapshot restore")
)

// clusterVersion is the cluster version concord runs at: the major.minor of
// the etcd API it implements. It never changes, since concord never enables
// a downgrade.
var clusterVersion = func() semver.Version {
	v, err := semver.NewVersion(version.Version)
	if err != nil {
		return semver.Version{}
	}
	return semver.Version{Major: v.Major, Minor: v.Minor}
}()

// Downgrade is etcd's Maintenance.Downgrade. VALIDATE answers as etcd does
// (the only valid target is one minor version below the cluster version, and
// no downgrade is ever in progress); ENABLE validates the same way and then
// refuses with ErrDowngradeUnsupported; CANCEL finds no downgrade in flight,
// which etcd logs and answers with success.
func (n *Node) Downgrade(ctx context.Context, r *pb.DowngradeRequest) (*pb.DowngradeResponse, error) {
	if err := n.adminGuard(ctx); err != nil {
		return nil, err
	}
	switch r.GetAction() {
	case pb.DowngradeRequest_VALIDATE, pb.DowngradeRequest_ENABLE:
		if err := validateDowngradeTarget(r.GetVersion()); err != nil {
			return nil, err
		}
		// etcd reads the downgrade state linearizably before it judges.
		if err := n.linearizableReadNotify(ctx); err != nil {
			return nil, err
		}
		if r.GetAction() == pb.DowngradeRequest_ENABLE {
			return nil, ErrDowngradeUnsupported
		}
	case pb.DowngradeRequest_CANCEL:
		if err := n.linearizableReadNotify(ctx); err != nil {
			return nil, err
		}
		n.lg.Warn("failed to cancel downgrade", "error", "etcdserver: no inflight downgrade job")
	default:
		return nil, ErrUnknownMethod
	}
	return &pb.DowngradeResponse{Header: n.header(nil), Version: version.Cluster(clusterVersion.String())}, nil
}

// validateDowngradeTarget is etcd's convertToClusterVersion followed by its
// allowedDowngradeVersion check: "major.minor" or a full semantic version,
// of which only major.minor counts, one minor below the cluster version.
func validateDowngradeTarget(v string) error {
	target, err := semver.NewVersion(v)
	if err != nil {
		if target, err = semver.NewVersion(v + ".0"); err != nil {
			return ErrWrongDowngradeVersionFormat
		}
	}
	allowed := semver.Version{Major: clusterVersion.Major, Minor: clusterVersion.Minor - 1}
	if target.Major != allowed.Major || target.Minor != allowed.Minor {
		return fmt.Errorf("%w: %d.%d (cluster version %s allows %d.%d)", ErrInvalidDowngradeTargetVersion,
			target.Major, target.Minor, version.Cluster(clusterVersion.String()), allowed.Major, allowed.Minor)
	}
	return nil
}
