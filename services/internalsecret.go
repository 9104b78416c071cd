package services

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/services/config"
)

// secretReloadInterval is how often a process looks at its internal
// secret files for a change.
const secretReloadInterval = 2 * time.Second

// secretFiles are a split process's --internal-secret-file and
// --internal-secret-accept-file, read at start and read again every
// secretReloadInterval into the secrets it presents and accepts, so that a
// deployment moves to a new secret without restarts (config's
// internalsecret.go has the steps). A change that cannot be used (a
// missing or short secret file, a short accepted one) is logged and the
// secrets in use are kept.
type secretFiles struct {
	presentPath, acceptPath string
	log                     *slog.Logger
	// secrets is nil when the process has no secret file.
	secrets *gateway.InternalSecrets

	// Owned by run: the contents in use, and the last refusal logged.
	present, accepted []byte
	refused           string
}

// loadSecretFiles reads the files (presentPath "": no secret).
func loadSecretFiles(presentPath, acceptPath string, log *slog.Logger) (*secretFiles, error) {
	f := &secretFiles{presentPath: presentPath, acceptPath: acceptPath, log: log}
	if presentPath == "" {
		return f, nil
	}
	present, accepted, err := f.read()
	if err != nil {
		return nil, err
	}
	if f.secrets, err = gateway.NewInternalSecrets(present, accepted); err != nil {
		return nil, err
	}
	f.present, f.accepted = present, accepted
	return f, nil
}

// read reads both files, warning about permissions that let others read
// one (as ssh does for private keys: whoever reads it can act as any
// root-role user of the cluster).
func (f *secretFiles) read() (present, accepted []byte, err error) {
	if present, err = config.ReadInternalSecret(f.presentPath); err != nil {
		return nil, nil, err
	}
	if accepted, err = config.ReadAcceptedInternalSecret(f.acceptPath); err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(present, f.present) {
		warnLoosePermissions(f.presentPath, f.log)
	}
	if accepted != nil && !bytes.Equal(accepted, f.accepted) {
		warnLoosePermissions(f.acceptPath, f.log)
	}
	return present, accepted, nil
}

// configured reports whether the process has a secret.
func (f *secretFiles) configured() bool { return f.secrets != nil }

// run reloads the files every interval until ctx ends.
func (f *secretFiles) run(ctx context.Context, interval time.Duration) error {
	if f.secrets == nil {
		return nil
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			f.reload()
		}
	}
}

// reload takes the files' contents if they changed and can be used.
func (f *secretFiles) reload() {
	present, accepted, err := f.read()
	if err == nil && bytes.Equal(present, f.present) && bytes.Equal(accepted, f.accepted) {
		f.refused = ""
		return
	}
	if err == nil {
		err = f.secrets.Set(present, accepted)
	}
	if err != nil {
		if msg := err.Error(); msg != f.refused {
			f.refused = msg
			f.log.Warn("internal secret files changed but cannot be used; keeping the secrets in use", "error", err)
		}
		return
	}
	f.log.Info("internal secret files read again",
		"presented-changed", !bytes.Equal(present, f.present), "accepting-another", accepted != nil)
	f.present, f.accepted, f.refused = present, accepted, ""
}

// warnLoosePermissions warns when users other than path's owner may read it.
func warnLoosePermissions(path string, log *slog.Logger) {
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("the internal secret file is accessible to users other than its owner; restrict it (chmod 600)",
			"path", path, "mode", fi.Mode().Perm().String())
	}
}
