package logging_test

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/concord-kv/concord/internal/logging"
)

func TestFileOutputsAndFormats(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log")
	log, c, err := logging.New(logging.Config{Level: slog.LevelWarn, Outputs: []string{a, b}})
	if err != nil {
		t.Fatal(err)
	}
	log.Info("dropped below the level")
	log.Warn("kept", "k", "v")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, f := range []string{a, b} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var rec map[string]any
		if err := json.Unmarshal(data, &rec); err != nil || rec["msg"] != "kept" || rec["k"] != "v" {
			t.Errorf("%s: %q is not one JSON record of the warning (%v)", f, data, err)
		}
	}

	log, c, err = logging.New(logging.Config{Format: logging.FormatConsole, Outputs: []string{a}})
	if err != nil {
		t.Fatal(err)
	}
	log.Info("console line", "k", "v")
	_ = c.Close()
	data, _ := os.ReadFile(a)
	if last := lastLine(string(data)); !strings.Contains(last, `msg="console line" k=v`) || strings.HasPrefix(last, "{") {
		t.Errorf("console format wrote %q", last)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestRotation: with rotation the file is cut at MaxSize megabytes and
// the old part kept beside it.
func TestRotation(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "concord.log")
	r, err := logging.ParseRotation(`{"maxsize": 1, "maxbackups": 2}`)
	if err != nil || r.MaxSize != 1 || r.MaxBackups != 2 {
		t.Fatalf("ParseRotation = %+v, %v", r, err)
	}
	log, c, err := logging.New(logging.Config{Outputs: []string{f}, Rotate: true, Rotation: r})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := strings.Repeat("x", 64<<10)
	for range 20 { // 1.25 MiB
		log.Info(big)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("files after 1.25 MiB with maxsize 1: %v, want the log and one rotated part", entries)
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  logging.Config
		want string
	}{
		{logging.Config{Format: "xml"}, "unknown log format: xml, supported values json, console"},
		{logging.Config{Outputs: []string{"default", "stdout"}}, `multi logoutput for "default" is not supported yet`},
		{logging.Config{Rotate: true, Outputs: []string{"stderr"}}, "exactly one file"},
		{logging.Config{Rotate: true, Outputs: []string{"/a", "/b"}}, "exactly one file"},
	} {
		if err := c.cfg.Validate(); !errors.Is(err, logging.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
	for _, bad := range []string{`{"maxsize": `, `{"maxsize": "big"}`} {
		if _, err := logging.ParseRotation(bad); !errors.Is(err, logging.ErrInvalid) {
			t.Errorf("ParseRotation(%q) = %v", bad, err)
		}
	}
	if r, err := logging.ParseRotation(logging.DefaultRotationJSON); err != nil || r.MaxSize != 100 {
		t.Errorf("etcd's default rotation: %+v, %v", r, err)
	}
	for _, ok := range []logging.Config{{}, {Outputs: []string{"stderr", "stdout"}}, {Outputs: []string{"systemd/journal"}}, {Rotate: true, Outputs: []string{"stderr", "/x.log"}}} {
		if err := ok.Validate(); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
}
