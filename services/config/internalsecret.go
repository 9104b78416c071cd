package config

import (
	"bytes"
	"fmt"
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

func internalSecretFlag(fs *pflag.FlagSet) {
	fs.String(fInternalSecretFile, "", fmt.Sprintf("path to a file holding a secret (at least %d bytes; trailing line breaks ignored) shared by the split topology's processes: consensus trusts calls presenting it as a root-role user's, so auth can be enabled without client certificates; give every consensus member, gateway, watch fan-out and lease service the same file", gateway.MinInternalSecretBytes))
}

// ReadInternalSecret reads the internal secret from path: the file's bytes
// without trailing line breaks (an editor's or `echo`'s newline is no part
// of it), at least gateway.MinInternalSecretBytes of them. "" gives nil,
// nil: no secret.
func ReadInternalSecret(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: --%s: %v", ErrInvalid, fInternalSecretFile, err)
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) < gateway.MinInternalSecretBytes {
		return nil, fmt.Errorf("%w: --%s %s holds %d bytes, at least %d are needed (e.g. openssl rand -hex 32 > %s)",
			ErrInvalid, fInternalSecretFile, path, len(b), gateway.MinInternalSecretBytes, path)
	}
	return b, nil
}

// validateInternalSecretFile reports an internal secret file that cannot be
// read or is too short.
func validateInternalSecretFile(path string) error {
	_, err := ReadInternalSecret(path)
	return err
}
