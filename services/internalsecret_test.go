package services

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadInternalSecretWarnsAboutLoosePermissions(t *testing.T) {
	secret := strings.Repeat("s", 32)
	for _, tc := range []struct {
		mode os.FileMode
		warn bool
	}{{0o600, false}, {0o400, false}, {0o640, true}, {0o644, true}, {0o604, true}} {
		path := filepath.Join(t.TempDir(), "secret")
		if err := os.WriteFile(path, []byte(secret+"\n"), tc.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, tc.mode); err != nil { // past the umask
			t.Fatal(err)
		}
		var logs bytes.Buffer
		got, err := readInternalSecret(path, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil || string(got) != secret {
			t.Fatalf("mode %v: read %q, %v", tc.mode, got, err)
		}
		if warned := strings.Contains(logs.String(), "level=WARN"); warned != tc.warn {
			t.Errorf("mode %v: warned %v, want %v; log: %s", tc.mode, warned, tc.warn, logs.String())
		}
	}
	// No file given: no secret, no warning.
	var logs bytes.Buffer
	if got, err := readInternalSecret("", slog.New(slog.NewTextHandler(&logs, nil))); got != nil || err != nil || logs.Len() != 0 {
		t.Fatalf("no file: %q, %v, log %q", got, err, logs.String())
	}
}
