package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/concord-kv/concord/bench"
	"github.com/concord-kv/concord/bench/compare"
)

// newBenchCommand is `concord bench`: etcd benchmark's workloads against any
// etcd-compatible endpoint, and `concord bench compare` (etcd vs concord).
func newBenchCommand() *cobra.Command {
	var (
		cc     bench.ClientConfig
		user   string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmark an etcd-compatible endpoint (concord or etcd) with etcd benchmark's workloads",
		Long: `concord bench runs the workloads of etcd's benchmark tool (put, range, txn-put,
txn-mixed, watch, watch-latency, lease-keepalive) and a Kubernetes-like mix (k8s)
against any etcd v3 endpoint through the standard clientv3, and prints throughput
and latency percentiles (p50, p90, p99, p99.9) as a table or, with --json, as JSON.
A progress bar is drawn on stderr when stderr is a terminal.

--conns gRPC connections are shared round-robin by --clients concurrent clients,
each running one request at a time, as in etcd's tool.

concord bench compare runs the whole suite on a real etcd and on concord and
writes docs/benchmarks.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	pf := cmd.PersistentFlags()
	pf.StringSliceVar(&cc.Endpoints, "endpoints", []string{"127.0.0.1:2379"}, "gRPC endpoints")
	pf.IntVar(&cc.Conns, "conns", 1, "total number of gRPC connections")
	pf.IntVar(&cc.Clients, "clients", 1, "total number of concurrent clients")
	pf.DurationVar(&cc.DialTimeout, "dial-timeout", 5*time.Second, "dial timeout for client connections")
	pf.StringVar(&user, "user", "", "username[:password] for authentication")
	pf.BoolVar(&asJSON, "json", false, "print the result as JSON instead of a table")

	run := func(cmd *cobra.Command, w bench.Workload) error {
		cfg := cc
		if user != "" {
			name, pass, _ := strings.Cut(user, ":")
			cfg.Username, cfg.Password = name, pass
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		res, err := bench.Run(ctx, w, bench.Env{Client: cfg, Progress: bench.NewTerminalProgress(os.Stderr)})
		if err != nil {
			return err
		}
		if asJSON {
			return bench.WriteJSON(cmd.OutOrStdout(), res)
		}
		return bench.WriteTable(cmd.OutOrStdout(), res)
	}
	cmd.AddCommand(
		benchPutCommand(run), benchRangeCommand(run), benchTxnPutCommand(run), benchTxnMixedCommand(run),
		benchWatchCommand(run), benchWatchLatencyCommand(run), benchLeaseCommand(run), benchK8sCommand(run),
		benchCompareCommand(),
	)
	return cmd
}

type benchRunner func(*cobra.Command, bench.Workload) error

func benchPutCommand(run benchRunner) *cobra.Command {
	w := &bench.Put{}
	c := &cobra.Command{
		Use: "put", Short: "Benchmark put", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return run(cmd, w) },
	}
	f := c.Flags()
	f.IntVar(&w.KeySize, "key-size", 8, "key size of put request (after --key-prefix)")
	f.IntVar(&w.ValSize, "val-size", 8, "value size of put request")
	f.Int64Var(&w.Total, "total", 10000, "total number of put requests")
	f.Float64Var(&w.Rate, "rate", 0, "maximum puts per second (0 is no limit)")
	f.Int64Var(&w.KeySpaceSize, "key-space-size", 1, "maximum possible keys")
	f.BoolVar(&w.Sequential, "sequential-keys", false, "use sequential keys")
	f.StringVar(&w.KeyPrefix, "key-prefix", "", "prefix of every key")
	return c
}

func benchRangeCommand(run benchRunner) *cobra.Command {
	w := &bench.Range{}
	c := &cobra.Command{
		Use: "range key [end-range]", Short: "Benchmark range", Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			w.Key = args[0]
			if len(args) == 2 {
				w.End = args[1]
			}
			return run(cmd, w)
		},
	}
	f := c.Flags()
	f.Int64Var(&w.Total, "total", 10000, "total number of range requests")
	f.Float64Var(&w.Rate, "rate", 0, "maximum range requests per second (0 is no limit)")
	f.StringVar(&w.Consistency, "consistency", "l", "linearizable (l) or serializable (s)")
	f.BoolVar(&w.Prefix, "prefix", false, "range over every key with the key as prefix")
	f.Int64Var(&w.Limit, "limit", 0, "maximum keys per response (0 is no limit)")
	f.Int64Var(&w.Preload, "preload", 0, "first write this many keys under the key (1 with a single key: the key itself)")
	f.IntVar(&w.PreloadValSize, "preload-val-size", 256, "value size of preloaded keys")
	return c
}

func benchTxnPutCommand(run benchRunner) *cobra.Command {
	w := &bench.TxnPut{}
	c := &cobra.Command{
		Use: "txn-put", Short: "Benchmark txn-put", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return run(cmd, w) },
	}
	f := c.Flags()
	f.IntVar(&w.KeySize, "key-size", 8, "key size of txn put (after --key-prefix)")
	f.IntVar(&w.ValSize, "val-size", 8, "value size of txn put")
	f.IntVar(&w.TxnOps, "txn-ops", 1, "number of puts per txn")
	f.Int64Var(&w.Total, "total", 10000, "total number of txn requests")
	f.Float64Var(&w.Rate, "rate", 0, "maximum txns per second (0 is no limit)")
	f.Int64Var(&w.KeySpaceSize, "key-space-size", 1, "maximum possible keys")
	f.StringVar(&w.KeyPrefix, "key-prefix", "", "prefix of every key")
	return c
}

func benchTxnMixedCommand(run benchRunner) *cobra.Command {
	w := &bench.TxnMixed{}
	c := &cobra.Command{
		Use: "txn-mixed [key [end-range]]", Short: "Benchmark a mixed load of txn-put and txn-range", Args: cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				w.Key = args[0]
			}
			if len(args) > 1 {
				w.EndKey = args[1]
			}
			return run(cmd, w)
		},
	}
	f := c.Flags()
	f.IntVar(&w.KeySize, "key-size", 8, "key size of mixed txn (after --key-prefix)")
	f.IntVar(&w.ValSize, "val-size", 8, "value size of mixed txn")
	f.Float64Var(&w.Rate, "rate", 0, "maximum txns per second (0 is no limit)")
	f.Int64Var(&w.Total, "total", 10000, "total number of txn requests")
	f.StringVar(&w.EndKey, "end-key", "", "read range end key; by default the key's prefix")
	f.Int64Var(&w.Limit, "limit", 1000, "read operation range result limit")
	f.Int64Var(&w.KeySpaceSize, "key-space-size", 1, "maximum possible keys")
	f.StringVar(&w.Consistency, "consistency", "l", "linearizable (l) or serializable (s)")
	f.Float64Var(&w.RWRatio, "rw-ratio", 1, "read/write ops ratio")
	f.StringVar(&w.KeyPrefix, "key-prefix", "", "prefix of every written key")
	return c
}

func benchWatchCommand(run benchRunner) *cobra.Command {
	w := &bench.Watch{}
	c := &cobra.Command{
		Use: "watch", Short: "Benchmark watch: creation and event delivery", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return run(cmd, w) },
	}
	f := c.Flags()
	f.IntVar(&w.Streams, "streams", 10, "total watch streams")
	f.IntVar(&w.WatchPerStream, "watch-per-stream", 100, "total watchers per stream")
	f.IntVar(&w.WatchedKeyTotal, "watched-key-total", 1, "total number of keys to be watched")
	f.Float64Var(&w.PutRate, "put-rate", 0, "number of keys to put per second (0 is no limit)")
	f.Int64Var(&w.PutTotal, "put-total", 1000, "number of put requests")
	f.IntVar(&w.KeySize, "key-size", 32, "key size of watch request (after --key-prefix)")
	f.Int64Var(&w.KeySpaceSize, "key-space-size", 1, "maximum possible keys")
	f.BoolVar(&w.Sequential, "sequential-keys", false, "use sequential keys")
	f.StringVar(&w.KeyPrefix, "key-prefix", "", "prefix of every key")
	return c
}

func benchWatchLatencyCommand(run benchRunner) *cobra.Command {
	w := &bench.WatchLatency{}
	c := &cobra.Command{
		Use: "watch-latency", Short: "Benchmark watch latency: put to event delivery on many watchers of one key", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return run(cmd, w) },
	}
	f := c.Flags()
	f.IntVar(&w.Watchers, "watchers", 100, "watchers of the key")
	f.IntVar(&w.Streams, "streams", 10, "watch streams the watchers are spread over")
	f.Int64Var(&w.Total, "total", 10000, "total number of put requests")
	f.Float64Var(&w.PutRate, "put-rate", 100, "number of keys to put per second")
	f.IntVar(&w.KeySize, "key-size", 32, "key size of watch response (after --key-prefix)")
	f.IntVar(&w.ValSize, "val-size", 32, "value size of watch response (at least 8)")
	f.StringVar(&w.KeyPrefix, "key-prefix", "", "prefix of the key")
	return c
}

func benchLeaseCommand(run benchRunner) *cobra.Command {
	w := &bench.LeaseKeepalive{}
	c := &cobra.Command{
		Use: "lease-keepalive", Short: "Benchmark lease keepalive", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return run(cmd, w) },
	}
	f := c.Flags()
	f.Int64Var(&w.Total, "total", 10000, "total number of lease keepalive requests")
	f.Float64Var(&w.Rate, "rate", 0, "maximum keepalives per second (0 is no limit)")
	f.Int64Var(&w.TTL, "ttl", 100, "TTL of the leases, seconds")
	return c
}

func benchK8sCommand(run benchRunner) *cobra.Command {
	w := &bench.K8s{}
	c := &cobra.Command{
		Use:   "k8s",
		Short: "Benchmark a Kubernetes-like mix: gets, optimistic updates, creates, deletes, paginated lists, watches",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w.NoWatch = w.Watchers == 0
			return run(cmd, w)
		},
	}
	f := c.Flags()
	f.Int64Var(&w.Objects, "objects", 1000, "objects created before the run (the key space)")
	f.IntVar(&w.ValSize, "val-size", 1024, "object size")
	f.Int64Var(&w.PageSize, "page-size", 500, "keys per page of a list")
	f.IntVar(&w.Watchers, "watchers", 10, "watches on the whole prefix (0 for none)")
	f.Int64Var(&w.Total, "total", 10000, "total number of operations")
	f.Float64Var(&w.Rate, "rate", 0, "maximum operations per second (0 is no limit)")
	f.StringVar(&w.Mix, "mix", bench.DefaultK8sMix, "operation mix in percent: get, update, list, create, delete")
	f.StringVar(&w.Prefix, "prefix", "/registry/bench/", "key prefix of the objects (cleared first)")
	return c
}

func benchCompareCommand() *cobra.Command {
	var (
		cfg      compare.Config
		out, svg string
		jsonOut  string
		fromJSON string
	)
	c := &cobra.Command{
		Use:   "compare",
		Short: "Run every workload on a real etcd and on concord and write docs/benchmarks.md",
		Long: `compare builds etcd (go build go.etcd.io/etcd/server/v3, the version in go.mod) and
concord (./services/concord) unless --etcd-bin/--concord-bin are given, starts both
on free loopback ports with the same flags and data directories on the same disk,
runs every workload on etcd then concord, --rounds times, and writes the medians,
ratios concord/etcd and target checks to --out, with a latency chart in --svg.
Run it from the concord repository. It ignores --endpoints, --conns and --clients:
each workload has its own.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			cfg.Progress = bench.NewTerminalProgress(os.Stderr)
			if cfg.Topology == compare.TopologyCluster && !cmd.Flags().Changed("out") {
				out = "docs/benchmarks-cluster.md"
			}
			if svg == "" {
				svg = strings.TrimSuffix(out, filepath.Ext(out)) + "-latency.svg"
				if filepath.Base(out) == "benchmarks.md" {
					svg = filepath.Join(filepath.Dir(out), "benchmarks-latency.svg")
				}
			}
			var rep *compare.Report
			if fromJSON != "" {
				// Rewrite the documents from a saved report, e.g. after editing the notes.
				b, err := os.ReadFile(fromJSON)
				if err != nil {
					return err
				}
				rep = &compare.Report{}
				if err := json.Unmarshal(b, rep); err != nil {
					return fmt.Errorf("%s: %w", fromJSON, err)
				}
			} else {
				r, err := compare.Run(ctx, cfg)
				if err != nil {
					return err
				}
				rep = r
			}
			if jsonOut != "" {
				b, err := json.MarshalIndent(rep, "", "  ")
				if err != nil {
					return err
				}
				if err := os.WriteFile(jsonOut, b, 0o644); err != nil {
					return err
				}
			}
			if err := compare.WriteDocs(rep, out, svg); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s\n", out, svg)
			return nil
		},
	}
	f := c.Flags()
	f.IntVar(&cfg.Rounds, "rounds", 2, "runs of every workload on each server")
	f.StringVar(&cfg.Topology, "topology", compare.TopologySingle, "single: one etcd member vs all-in-one concord (docs/benchmarks.md); "+
		"cluster: a 3-member etcd vs concord's split topology of processes (docs/benchmarks-cluster.md)")
	f.StringVar(&out, "out", "docs/benchmarks.md", "markdown document to write")
	f.StringVar(&svg, "svg", "", "latency chart to write (default: benchmarks-latency.svg next to --out)")
	f.StringVar(&jsonOut, "json-out", "", "also write the raw report as JSON to this file")
	f.StringVar(&fromJSON, "from-json", "", "do not run: rewrite the documents from a report saved with --json-out")
	f.StringVar(&cfg.EtcdBin, "etcd-bin", "", "prebuilt etcd binary (default: build it)")
	f.StringVar(&cfg.ConcordBin, "concord-bin", "", "prebuilt concord binary (default: build it)")
	f.StringVar(&cfg.WorkDir, "work-dir", "", "directory for binaries, data and logs (default: a temporary one, removed)")
	f.BoolVar(&cfg.KeepWork, "keep-work-dir", false, "keep the temporary work directory")
	f.StringVar(&cfg.Only, "only", "", "regexp on the case IDs to run (e.g. 'put|range')")
	f.Int64Var(&cfg.RSSKeys, "rss-keys", 100000, "keys loaded before the loaded-RSS sample (negative to skip)")
	f.DurationVar(&cfg.RunTimeout, "run-timeout", 5*time.Minute, "bound on one run")
	return c
}
