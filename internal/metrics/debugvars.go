package metrics

import (
	"context"
	"encoding/json"
	"expvar"
	"fmt"
	"net/http"
	"slices"
	"time"

	"go.etcd.io/raft/v3"
)

// RaftStatuser is a ConsensusSource that reports its raft status
// (consensus.Node).
type RaftStatuser interface {
	RaftStatus(ctx context.Context) (raft.Status, error)
}

// raftStatusTimeout bounds the wait for the raft loop: a member too busy to
// answer reports null, as etcd does before its raft node runs.
const raftStatusTimeout = time.Second

// DebugVars serves etcd's /debug/vars: Go's expvar variables (cmdline,
// memstats and any other the process published) and the two etcd adds,
// file_descriptor_limit (the soft RLIMIT_NOFILE) and raft.status (the raft
// node's status, null without a consensus member), in etcd's format: one
// "key": value per line, keys sorted. Only GET is allowed, as in etcd.
//
// etcd publishes its two variables in the process-wide expvar registry;
// they are added here per handler instead, since a process (a test) may run
// several members and expvar refuses a name published twice.
func DebugVars(src Sources) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
			return
		}
		vars := map[string]string{}
		expvar.Do(func(kv expvar.KeyValue) { vars[kv.Key] = kv.Value.String() })
		vars["file_descriptor_limit"] = fmt.Sprint(fdLimit())
		vars["raft.status"] = "null"
		if rs, ok := src.Consensus.(RaftStatuser); ok {
			ctx, cancel := context.WithTimeout(r.Context(), raftStatusTimeout)
			st, err := rs.RaftStatus(ctx)
			cancel()
			if err == nil {
				if b, err := json.Marshal(st); err == nil {
					vars["raft.status"] = string(b)
				}
			}
		}
		keys := make([]string, 0, len(vars))
		for k := range vars {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		fmt.Fprint(w, "{\n")
		for i, k := range keys {
			if i > 0 {
				fmt.Fprint(w, ",\n")
			}
			fmt.Fprintf(w, "%q: %s", k, vars[k])
		}
		fmt.Fprint(w, "\n}\n")
	})
}
