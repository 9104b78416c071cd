package metrics_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"go.etcd.io/raft/v3"

	"github.com/concord-kv/concord/internal/metrics"
)

type raftSource struct {
	consensusStats
	err error
}

func (r raftSource) RaftStatus(context.Context) (raft.Status, error) {
	var st raft.Status
	st.ID, st.Lead, st.RaftState = 0xabc, 0xabc, raft.StateLeader
	return st, r.err
}

func debugVars(t *testing.T, src metrics.Sources) map[string]json.RawMessage {
	t.Helper()
	rec := httptest.NewRecorder()
	metrics.DebugVars(src).ServeHTTP(rec, httptest.NewRequest("GET", "/debug/vars", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json; charset=utf-8" {
		t.Fatalf("/debug/vars: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	body := rec.Body.String()
	if !strings.HasPrefix(body, "{\n\"cmdline\": ") || !strings.HasSuffix(body, "\n}\n") {
		t.Errorf("/debug/vars not in etcd's layout:\n%.200s", body)
	}
	var vars map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &vars); err != nil {
		t.Fatalf("/debug/vars: %v\n%s", err, body)
	}
	return vars
}

// TestDebugVars checks etcd's /debug/vars variables: Go's, the file
// descriptor limit and the raft status.
func TestDebugVars(t *testing.T) {
	vars := debugVars(t, metrics.Sources{Consensus: raftSource{}})
	var keys []string
	for k := range vars {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"cmdline", "file_descriptor_limit", "memstats", "raft.status"}; !slices.Equal(keys, want) {
		t.Errorf("keys %v, want %v", keys, want)
	}
	var st struct {
		ID        string `json:"id"`
		RaftState string `json:"raftState"`
	}
	if err := json.Unmarshal(vars["raft.status"], &st); err != nil || st.ID != "abc" || st.RaftState != "StateLeader" {
		t.Errorf("raft.status %s (%v)", vars["raft.status"], err)
	}
	if string(vars["file_descriptor_limit"]) == "0" {
		t.Errorf("file_descriptor_limit 0")
	}
	// Without a member, or one that does not answer, raft.status is null.
	for _, src := range []metrics.Sources{{}, {Consensus: raftSource{err: errors.New("stopped")}}} {
		if v := debugVars(t, src)["raft.status"]; string(v) != "null" {
			t.Errorf("raft.status without a member: %s", v)
		}
	}
	rec := httptest.NewRecorder()
	metrics.DebugVars(metrics.Sources{}).ServeHTTP(rec, httptest.NewRequest("POST", "/debug/vars", nil))
	if rec.Code != 405 || rec.Header().Get("Allow") != "GET" {
		t.Errorf("POST /debug/vars: %d, Allow %q; want 405, GET", rec.Code, rec.Header().Get("Allow"))
	}
}
