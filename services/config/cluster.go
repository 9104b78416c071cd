package config

import (
	"fmt"

	"github.com/spf13/pflag"
)

const (
	fComposeFile    = "compose-file"
	fFreePorts      = "free-ports"
	fClusterDataDir = "data-dir"
)

// Cluster is the configuration of `concord cluster`: the local launcher of
// compose.yaml's topology (internal/launcher).
type Cluster struct {
	// ComposeFile is the topology to start.
	ComposeFile string
	// DataDir holds each service's data directory and log.
	DataDir string
	// FreePorts picks free ports for every service instead of the host
	// ports compose.yaml publishes (gateway-1 on 127.0.0.1:2379 ...).
	FreePorts bool
	// InternalSecretFile is given to every process (--internal-secret-file),
	// so that auth can be enabled without client certificates; "": none.
	InternalSecretFile string
}

// ClusterFlags declares the flags of `concord cluster`.
func ClusterFlags(fs *pflag.FlagSet) {
	fs.String(fComposeFile, "compose.yaml", "the compose file describing the topology")
	fs.String(fClusterDataDir, "cluster.concord", "directory for every service's data directory and log")
	fs.Bool(fFreePorts, false, "use free ports for the gateways too, instead of the ports compose.yaml publishes")
	internalSecretFlag(fs)
}

// LoadCluster reads the flags declared by ClusterFlags.
func LoadCluster(fs *pflag.FlagSet) (Cluster, error) {
	v, err := newViper(fs)
	if err != nil {
		return Cluster{}, err
	}
	c := Cluster{ComposeFile: v.GetString(fComposeFile), DataDir: v.GetString(fClusterDataDir), FreePorts: v.GetBool(fFreePorts),
		InternalSecretFile: v.GetString(fInternalSecretFile)}
	if err := validateInternalSecretFiles(c.InternalSecretFile, ""); err != nil {
		return Cluster{}, err
	}
	switch {
	case c.ComposeFile == "":
		return Cluster{}, fmt.Errorf("%w: --%s must not be empty", ErrInvalid, fComposeFile)
	case c.DataDir == "":
		return Cluster{}, fmt.Errorf("%w: --%s must not be empty", ErrInvalid, fClusterDataDir)
	}
	return c, nil
}
