package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/version"

	"github.com/concord-kv/concord/internal/logging"
	"github.com/concord-kv/concord/services"
	"github.com/concord-kv/concord/services/config"
)

// newSplitCommands returns the subcommands of the split topology: one per
// service, each its own process (deploy/Procfile, compose.yaml).
func newSplitCommands() []*cobra.Command {
	cons := &cobra.Command{
		Use:   "consensus",
		Short: "Run a consensus member with its embedded NATS event bus (split topology)",
		Long: `consensus runs one raft member and its storage, publishes committed revisions on
an embedded NATS server listening on --nats-listen-addr, and serves etcd's KV,
Maintenance and Cluster services plus concord's internal API on its client URLs.
It takes the same flags as the all-in-one server. With several members, give each
--nats-cluster-listen-addr and the same --nats-routes: their NATS servers then form
one cluster on which only the raft leader publishes, and a watch fan-out connected
to any of them receives every revision.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadConsensus(cmd.Flags())
			if err != nil {
				return err
			}
			return runRole(cmd, "consensus", cfg.Log, func(ctx context.Context, log *slog.Logger) error {
				logInertFlags(log, cfg.InertFlags)
				return services.RunConsensus(ctx, cfg, log)
			})
		},
	}
	config.ConsensusFlags(cons.Flags())
	return []*cobra.Command{
		cons,
		splitCommand(config.RoleWatchfanout, "Run a watch fan-out serving etcd's Watch service (split topology)",
			services.RunWatchfanout),
		splitCommand(config.RoleLeasesvc, "Run a lease service serving etcd's Lease service (split topology)",
			services.RunLeasesvc),
		splitCommand(config.RoleGateway, "Run a stateless gateway serving etcd's API in front of the other services (split topology)",
			services.RunGateway),
	}
}

func splitCommand(role config.Role, short string, run func(context.Context, config.Split, *slog.Logger) error) *cobra.Command {
	cmd := &cobra.Command{
		Use:           string(role),
		Short:         short,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadSplit(cmd.Flags(), role)
			if err != nil {
				return err
			}
			return runRole(cmd, string(role), logging.Config{Level: cfg.LogLevel}, func(ctx context.Context, log *slog.Logger) error {
				return run(ctx, cfg, log)
			})
		},
	}
	config.SplitFlags(cmd.Flags(), role)
	return cmd
}

func runRole(cmd *cobra.Command, role string, lc logging.Config, run func(context.Context, *slog.Logger) error) error {
	log, closeLog, err := logging.New(lc)
	if err != nil {
		return err
	}
	defer closeLog.Close()
	log = log.With("role", role)
	log.Info("starting concord", "version", Version, "etcd-api-version", version.Version, "go-version", runtime.Version())
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer tuneGC(ctx, log)()
	return run(ctx, log)
}
