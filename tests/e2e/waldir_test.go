package e2e

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestWALDir runs concord with etcd's --wal-dir: the store's write-ahead
// log is written there, not under --data-dir, and an acknowledged write
// survives a kill -9 and a restart with the same flags.
func TestWALDir(t *testing.T) {
	t.Parallel()
	walDir := t.TempDir()
	s := startServer(t, concordImpl, serverOptions{extra: []string{"--wal-dir", walDir}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := newClient(t, s).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	if logs, _ := filepath.Glob(filepath.Join(walDir, "*.log")); len(logs) == 0 {
		t.Errorf("no write-ahead log in --wal-dir %s", walDir)
	}
	if logs, _ := filepath.Glob(filepath.Join(s.dataDir, "*.log")); len(logs) != 0 {
		t.Errorf("write-ahead logs in --data-dir: %v", logs)
	}
	s.Restart()
	resp, err := newClient(t, s).Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after kill -9 and restart: %v, want k=v", resp.Kvs)
	}
}
