package services

import (
	"log/slog"
	"testing"

	"github.com/concord-kv/concord/services/config"
)

// TestConsensusConfigCarriesEtcdFlags: the consensus member gets etcd's
// raft and membership flags.
func TestConsensusConfigCarriesEtcdFlags(t *testing.T) {
	c := consensusConfig(config.Server{MaxLearners: 3, PreVote: false, StrictReconfigCheck: false, UnsafeNoFsync: true, ForceNewCluster: true, SnapshotCatchUpEntries: 9, WarningApplyDuration: 7, MaxRequestBytes: 5, WALDir: "w"}, slog.Default())
	if !c.ForceNewCluster || c.WarningApplyDuration != 7 || c.MaxLearners != 3 || !c.DisablePreVote || !c.DisableStrictReconfigCheck || !c.UnsafeNoFsync || c.SnapshotCatchUpEntries != 9 || c.MaxRequestBytes != 5 || c.WALDir != "w" {
		t.Errorf("consensus.Config = %+v", c)
	}
	c = consensusConfig(config.Server{PreVote: true, StrictReconfigCheck: true}, slog.Default())
	if c.DisablePreVote || c.DisableStrictReconfigCheck || c.UnsafeNoFsync || c.ForceNewCluster {
		t.Errorf("etcd's defaults became %+v", c)
	}
}
