package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/concord-kv/concord/consensus"
)

// newSnapshotCommand returns `concord snapshot restore`, the counterpart of
// etcdutl snapshot restore for the backups `etcdctl snapshot save` takes
// from concord.
func newSnapshotCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Short: "Restore backups taken with etcdctl snapshot save"}
	var dataDir, walDir string
	var skipHashCheck bool
	restore := &cobra.Command{
		Use:   "restore <filename> --data-dir <dir>",
		Short: "Create a member's data directory from a backup",
		Long: `restore creates --data-dir (which must not exist) from a backup that
etcdctl snapshot save took from concord, after checking its SHA-256 digest.
Start concord on it with the flags of a new cluster (--name, --initial-cluster,
--initial-advertise-peer-urls, --initial-cluster-token): like etcd after
etcdutl snapshot restore, it forms a new cluster holding the backup's keys,
revisions and leases. Restore the same backup for every member.`,
		Args:          cobra.ExactArgs(1),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dataDir == "" {
				return fmt.Errorf("--data-dir is required")
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			// Only the store's warnings: the command prints its outcome.
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
			if err := consensus.RestoreBackup(cmd.Context(), f, fi.Size(), consensus.RestoreOptions{DataDir: dataDir, WALDir: walDir, SkipHashCheck: skipHashCheck, Logger: log}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %s into %s\n", args[0], dataDir)
			return nil
		},
	}
	restore.Flags().StringVar(&dataDir, "data-dir", "", "path to the data directory to create")
	restore.Flags().StringVar(&walDir, "wal-dir", "", "path to the WAL directory (as the server's --wal-dir; default: in --data-dir)")
	restore.Flags().BoolVar(&skipHashCheck, "skip-hash-check", false, "ignore the SHA-256 digest (a snapshot not taken by etcdctl snapshot save)")
	cmd.AddCommand(restore)
	return cmd
}
