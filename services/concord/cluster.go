package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/concord-kv/concord/internal/launcher"
	"github.com/concord-kv/concord/services/config"
)

// newClusterCommand returns `concord cluster`: compose.yaml's topology as
// local processes of this very binary (task cluster).
func newClusterCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Run compose.yaml's split topology as local processes on loopback",
		Long: `cluster starts every service of compose.yaml (3 consensus members, 2 watch
fan-outs, 2 lease services, 2 gateways) as a concord process on 127.0.0.1: each
service's host:port becomes a loopback port (the gateways keep the host ports
compose.yaml publishes, 2379 and 2479, unless --free-ports), data and logs go
under --data-dir. It prints the gateway endpoints and runs until interrupted
(Ctrl-C), then stops every process.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadCluster(cmd.Flags())
			if err != nil {
				return err
			}
			return runCluster(cmd, cfg)
		},
	}
	config.ClusterFlags(cmd.Flags())
	return cmd
}

func runCluster(cmd *cobra.Command, cfg config.Cluster) error {
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the concord binary: %w", err)
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "starting %s as local processes (data and logs in %s)\n", cfg.ComposeFile, dir)
	env := launcher.DefaultEnv()
	if cfg.InternalSecretFile != "" {
		// Through the environment, which every role reads, so that the
		// compose file's commands stay as they are.
		secret, err := filepath.Abs(cfg.InternalSecretFile)
		if err != nil {
			return err
		}
		env = append(env, "CONCORD_INTERNAL_SECRET_FILE="+secret)
	}
	c, err := launcher.Start(ctx, launcher.Config{
		ComposeFile:    cfg.ComposeFile,
		Binary:         bin,
		Dir:            dir,
		PublishedPorts: !cfg.FreePorts,
		Env:            env,
		Logger:         log,
		Output:         func(string) io.Writer { return io.Discard },
	})
	if err != nil {
		return err
	}
	defer c.Stop()
	for _, s := range c.Services() {
		fmt.Fprintf(out, "  %-14s %-12s %s\n", s.Name, s.Role, s.ClientURL)
	}
	gws := c.Endpoints("gateway")
	fmt.Fprintf(out, "ready: etcdctl --endpoints %s put foo bar\n(Ctrl-C stops every process)\n", strings.Join(gws, ","))
	<-ctx.Done()
	fmt.Fprintln(out, "stopping")
	return nil
}
