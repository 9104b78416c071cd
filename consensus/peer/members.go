package peer

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
)

// MembersPath is where a member lists the cluster's members for HTTP
// clients on its peer URLs, as etcd's peer handler does.
const MembersPath = "/members"

// peerMember is etcd's membership.Member as JSON: the ID as a decimal
// number (types.ID has no JSON form of its own), the raft attributes, then
// the published ones, which a member that has not started yet lacks.
type peerMember struct {
	ID         uint64   `json:"id"`
	PeerURLs   []string `json:"peerURLs"`
	IsLearner  bool     `json:"isLearner,omitempty"`
	Name       string   `json:"name,omitempty"`
	ClientURLs []string `json:"clientURLs,omitempty"`
}

// MembersHandler returns MembersPath and the handler that answers a GET
// with the members sorted by ID and the cluster ID in X-Etcd-Cluster-ID,
// as etcd's peerMembersHandler does.
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
		out := make([]peerMember, 0, len(m.Members))
		for _, pm := range m.Members {
			out = append(out, peerMember{ID: pm.GetID(), PeerURLs: pm.GetPeerURLs(), IsLearner: pm.GetIsLearner(),
				Name: pm.GetName(), ClientURLs: pm.GetClientURLs()})
		}
		slices.SortFunc(out, func(a, b peerMember) int { return cmp.Compare(a.ID, b.ID) })
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(out); err != nil {
			t.lg.Warn("failed to encode membership members", "error", err)
		}
	})
}
