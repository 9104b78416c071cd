package auth

// Users named by a client certificate through the split topology. A split
// gateway verifies its clients' certificates, but the next process only
// sees the gateway's: a client that presented no token is named to it by a
// claim (ForwardedUser) that only concord's own processes may make. Each
// process that passes a claim on adds what the connection it arrived on
// proved about the sender (a Hop), and consensus, the only process that
// knows which users have the root role, believes the claim only when every
// hop is concord's own (TrustedForwardedUser). A client that sends a claim
// itself is the first hop and cannot pass that check.

// Hop is what a concord process verified about the process that sent it a
// forwarded claim: the common name of its verified client certificate,
// and whether it presented the internal secret's proof.
type Hop struct {
	CommonName string
	Internal   bool
}

// ForwardedUser is the claim of a call forwarded for a client without a
// token: Name is the common name of the client's verified certificate, as
// the first process (the gateway the client reached) saw it; Via are the
// processes it went through, first to last.
type ForwardedUser struct {
	Name string
	Via  []Hop
}

// MaxForwardHops bounds Via: gateway, then watch fan-out or lease service,
// is the longest path of the topology; longer claims are not believed.
const MaxForwardHops = 3

// TrustedForwardedUser returns the user f names when every process in its
// Via is concord's own under s: one that presented the internal secret or
// whose verified certificate names a user with the root role, the rules by
// which consensus admits a process to its internal API. A claim without
// hops (no process vouched for it), with too many, or through any other
// caller is not believed: the call then runs without a user, as a client
// without credentials.
func (s *State) TrustedForwardedUser(f *ForwardedUser) (string, bool) {
	if f == nil || f.Name == "" || len(f.Via) == 0 || len(f.Via) > MaxForwardHops {
		return "", false
	}
	for _, h := range f.Via {
		if h.Internal {
			continue
		}
		if h.CommonName == "" {
			return "", false
		}
		u := s.users[h.CommonName]
		if u == nil || !hasRootRole(u) {
			return "", false
		}
	}
	return f.Name, true
}
