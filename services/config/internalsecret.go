package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/pflag"

	"github.com/concord-kv/concord/gateway"
)

// The split topology's internal secret (--internal-secret-file): a file,
// not a flag value, so that it is not in the process list. Every consensus
// member, gateway, watch fan-out and lease service of one deployment is
// given the same file; the processes present it (derived, see
// gateway.InternalSecretProof) on their calls to consensus, which then
// trusts their own calls as a root-role user's, which is what lets auth be
// enabled without client certificates.
//
// A process reads both files again whenever they change, so a deployment
// moves to a new secret without restarts, in three steps, each taken on
// every process before the next: the new secret is written to the accept
// file (each presents the old secret and accepts both), the two files'
// contents are swapped (each presents the new one and still accepts the
// old), the accept file is emptied or removed. At every step each process
// accepts what every other presents.

func internalSecretFlag(fs *pflag.FlagSet) {
	fs.String(fInternalSecretFile, "", fmt.Sprintf("path to a file holding a secret (at least %d bytes; trailing line breaks ignored) shared by the split topology's processes: consensus trusts calls presenting it as a root-role user's, so auth can be enabled without client certificates; give every consensus member, gateway, watch fan-out and lease service the same file; read again when it changes", gateway.MinInternalSecretBytes))
}

// internalSecretAcceptFlag declares --internal-secret-accept-file, for the
// processes that run: the launcher has no use for it.
func internalSecretAcceptFlag(fs *pflag.FlagSet) {
	fs.String(fInternalSecretAcceptFile, "", "path to a file holding one more internal secret that this process accepts but never presents, for moving a deployment to a new secret; it may be missing or empty (none), and both files are read again when they change")
}

// ReadInternalSecret reads the internal secret from path: the file's bytes
// without trailing line breaks (an editor's or `echo`'s newline is no part
// of it), at least gateway.MinInternalSecretBytes of them. "" gives nil,
// nil: no secret.
func ReadInternalSecret(path string) ([]byte, error) {
	return readSecretFile(fInternalSecretFile, path, false)
}

// ReadAcceptedInternalSecret reads --internal-secret-accept-file as
// ReadInternalSecret reads --internal-secret-file.
// The file may be missing or empty (no secret: nil, nil), as it is
// between rotations.
func ReadAcceptedInternalSecret(path string) ([]byte, error) {
	return readSecretFile(fInternalSecretAcceptFile, path, true)
}

// readSecretFile reads flag's file at path; with optional, a missing or
// empty file is no secret.
func readSecretFile(flag, path string, optional bool) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if optional && errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: --%s: %v", ErrInvalid, flag, err)
	}
	b = bytes.TrimRight(b, "\r\n")
	if optional && len(b) == 0 {
		return nil, nil
	}
	if len(b) < gateway.MinInternalSecretBytes {
		return nil, fmt.Errorf("%w: --%s %s holds %d bytes, at least %d are needed (e.g. openssl rand -hex 32 > %s)",
			ErrInvalid, flag, path, len(b), gateway.MinInternalSecretBytes, path)
	}
	return b, nil
}

// validateInternalSecretFiles reports an internal secret file that cannot
// be read or is too short, and an accepted secret without one to present.
func validateInternalSecretFiles(path, acceptPath string) error {
	if _, err := ReadInternalSecret(path); err != nil {
		return err
	}
	if acceptPath != "" && path == "" {
		return fmt.Errorf("%w: --%s needs --%s", ErrInvalid, fInternalSecretAcceptFile, fInternalSecretFile)
	}
	_, err := ReadAcceptedInternalSecret(acceptPath)
	return err
}
