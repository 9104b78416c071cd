package peer

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"

	"github.com/concord-kv/concord/internal/etcddb"
)

// MembersPath is where a member lists the cluster's members for HTTP
// clients on its peer URLs, as etcd's peer handler does.
const MembersPath = "/members"

// MembersHandler returns MembersPath and the handler that answers a GET
// with the members sorted by ID and the cluster ID in X-Etcd-Cluster-ID,
// as etcd's etcddb.MemberJSONsHandler does.
func (t *Transport) MembersHandler() (string, http.Handler) {
	return MembersPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
			return
		}
		_, rf := t.receiver()
		if rf == nil {
			http.Error(w, ErrNotStarted.Error(), http.StatusServiceUnavailable)
			return
		}
		m := rf.Membership()
		w.Header().Set("X-Etcd-Cluster-ID", fmt.Sprintf("%x", m.ClusterID))
		if r.URL.Path != MembersPath {
			http.Error(w, "bad path", http.StatusBadRequest)
			return
		}
		out := make([]etcddb.MemberJSON, 0, len(m.Members))
		for _, pm := range m.Members {
			out = append(out, etcddb.MemberJSON{ID: pm.GetID(), PeerURLs: pm.GetPeerURLs(), IsLearner: pm.GetIsLearner(),
				Name: pm.GetName(), ClientURLs: pm.GetClientURLs()})
		}
		slices.SortFunc(out, func(a, b etcddb.MemberJSON) int { return cmp.Compare(a.ID, b.ID) })
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(out); err != nil {
			t.lg.Warn("failed to encode membership members", "error", err)
		}
	})
}
