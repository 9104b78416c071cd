package services

import (
	"log/slog"
	"os"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/services/config"
)

// readInternalSecret reads --internal-secret-file once for the process
// (config.ReadInternalSecret) and warns, as ssh does for private keys, when
// the file's permissions let users other than its owner read it: whoever
// reads it can act as any root-role user of the cluster.
func readInternalSecret(path string, log *slog.Logger) ([]byte, error) {
	return checkedSecret(path, log, config.ReadInternalSecret)
}

// acceptSecrets makes gcfg accept the process's internal secret and the
// one of --internal-secret-accept-file (read as readInternalSecret reads
// --internal-secret-file).
func acceptSecrets(gcfg *gateway.Config, secret []byte, acceptFile string, log *slog.Logger) error {
	gcfg.InternalSecret = secret
	accepted, err := checkedSecret(acceptFile, log, config.ReadAcceptedInternalSecret)
	if accepted != nil {
		gcfg.AcceptedInternalSecrets = [][]byte{accepted}
	}
	return err
}

// checkedSecret reads a secret file with read and warns when others may
// read it too.
func checkedSecret(path string, log *slog.Logger, read func(string) ([]byte, error)) ([]byte, error) {
	secret, err := read(path)
	if err != nil || secret == nil {
		return secret, err
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("the internal secret file is accessible to users other than its owner; restrict it (chmod 600)",
			"path", path, "mode", fi.Mode().Perm().String())
	}
	return secret, nil
}
