// Command concord is a distributed, strongly consistent key-value store that
// speaks the etcd v3 API. With no subcommand it runs every service in one
// process; see `concord --help`.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/version"

	"github.com/concord-kv/concord/internal/gctune"
	"github.com/concord-kv/concord/internal/logging"
	"github.com/concord-kv/concord/services"
	"github.com/concord-kv/concord/services/config"
)

// Version is concord's own version; the etcd API version it implements is
// version.Version of go.etcd.io/etcd/api/v3.
var Version = "0.1.0-dev"

func main() {
	root := newRootCommand()
	root.SetArgs(etcdArgs(root, os.Args[1:]))
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "concord:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	var showVersion bool
	root := &cobra.Command{
		Use:   "concord",
		Short: "A distributed, strongly consistent key-value store that speaks the etcd v3 API",
		Long: `concord speaks the etcd v3 API on the wire. With no subcommand it runs every
service in one process (single-voter raft, clients on 127.0.0.1:2379, data in
./default.concord), so 'etcdctl put foo bar' works with no flags.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if showVersion {
				printVersion(cmd)
				return nil
			}
			cfg, err := config.LoadServer(cmd.Flags())
			if err != nil {
				return err
			}
			log, closeLog, err := logging.New(cfg.Log)
			if err != nil {
				return err
			}
			defer closeLog.Close()
			log.Info("starting concord", "version", Version, "etcd-api-version", version.Version, "go-version", runtime.Version())
			logInertFlags(log, cfg.InertFlags)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			defer tuneGC(ctx, log)()
			return services.RunAllInOne(ctx, cfg, log)
		},
	}
	root.Flags().BoolVar(&showVersion, "version", false, "print the version and exit")
	config.ServerFlags(root.Flags())
	root.AddCommand(newBenchCommand())
	root.AddCommand(newSplitCommands()...)
	root.AddCommand(newClusterCommand())
	root.AddCommand(newSnapshotCommand())
	root.SetContext(context.Background())
	return root
}

// tuneGC raises GOGC while the server is busy and its live heap is small
// (gctune), unless the GOGC environment variable sets it explicitly. The
// returned function stops the tuner and waits for it.
func tuneGC(ctx context.Context, log *slog.Logger) (stop func()) {
	if _, set := os.LookupEnv("GOGC"); set {
		log.Info("GOGC set in the environment; not tuning the garbage collector")
		return func() {}
	}
	t, err := gctune.New(gctune.Config{Logger: log.With("component", "gctune")})
	if err != nil {
		log.Warn("not tuning the garbage collector", "error", err)
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = t.Run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// etcdArgs accepts etcd's single-dash long flags (-name m1) for `concord`
// and `concord consensus`, which take etcd's flags; other subcommands'
// arguments are left alone.
func etcdArgs(root *cobra.Command, args []string) []string {
	root.InitDefaultHelpFlag() // so -help is etcd's --help too
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return config.EtcdArgs(args, root.Flags())
	}
	if sub, _, err := root.Find(args[:1]); err == nil && sub.Name() == "consensus" {
		return config.EtcdArgs(args, sub.Flags())
	}
	return args // another subcommand, or a stray argument
}

// logInertFlags notes the etcd flags that were given but mean nothing to
// concord.
func logInertFlags(log *slog.Logger, notes []string) {
	for _, n := range notes {
		log.Info(n)
	}
}

func printVersion(cmd *cobra.Command) {
	fmt.Fprintf(cmd.OutOrStdout(), "concord Version: %s\netcd API Version: %s\nGo Version: %s\nGo OS/Arch: %s/%s\n",
		Version, version.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
