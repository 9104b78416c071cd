package auth

import (
	"fmt"

	"go.etcd.io/etcd/api/v3/authpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// The stored form is one protobuf-compatible message, written with
// protowire so it needs no generated type:
//
//	1: enabled (varint)   2: revision (varint)
//	3: authpb.User (repeated)   4: authpb.Role (repeated)
//	5: token key (bytes)
//
// Auth data is small (tens of users and roles), so the whole state is
// stored as one blob, rewritten by each change, in the same batch as the
// raft entry that made it.
const (
	fieldEnabled  = 1
	fieldRevision = 2
	fieldUser     = 3
	fieldRole     = 4
	fieldTokenKey = 5
)

// Marshal encodes s for storage. Users and roles are written in name order
// so that every member stores the same bytes.
func (s *State) Marshal() ([]byte, error) {
	var b []byte
	if s.enabled {
		b = protowire.AppendTag(b, fieldEnabled, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	b = protowire.AppendTag(b, fieldRevision, protowire.VarintType)
	b = protowire.AppendVarint(b, s.revision)
	opts := proto.MarshalOptions{Deterministic: true}
	for _, name := range sortedKeys(s.users) {
		m, err := opts.Marshal(s.users[name])
		if err != nil {
			return nil, fmt.Errorf("auth: encode user %q: %w", name, err)
		}
		b = protowire.AppendTag(b, fieldUser, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	for _, name := range sortedKeys(s.roles) {
		m, err := opts.Marshal(s.roles[name])
		if err != nil {
			return nil, fmt.Errorf("auth: encode role %q: %w", name, err)
		}
		b = protowire.AppendTag(b, fieldRole, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	if len(s.tokenKey) > 0 {
		b = protowire.AppendTag(b, fieldTokenKey, protowire.BytesType)
		b = protowire.AppendBytes(b, s.tokenKey)
	}
	return b, nil
}

// Unmarshal decodes a stored state; nil or empty data is New().
func Unmarshal(data []byte) (*State, error) {
	s := New()
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return nil, fmt.Errorf("%w: %w", ErrCorrupt, protowire.ParseError(n))
		}
		data = data[n:]
		switch {
		case num == fieldEnabled && typ == protowire.VarintType,
			num == fieldRevision && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return nil, fmt.Errorf("%w: %w", ErrCorrupt, protowire.ParseError(n))
			}
			data = data[n:]
			if num == fieldEnabled {
				s.enabled = v != 0
			} else {
				s.revision = v
			}
		case num == fieldTokenKey && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return nil, fmt.Errorf("%w: %w", ErrCorrupt, protowire.ParseError(n))
			}
			data = data[n:]
			s.tokenKey = append([]byte(nil), v...)
		case (num == fieldUser || num == fieldRole) && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return nil, fmt.Errorf("%w: %w", ErrCorrupt, protowire.ParseError(n))
			}
			data = data[n:]
			if num == fieldUser {
				u := &authpb.User{}
				if err := proto.Unmarshal(v, u); err != nil {
					return nil, fmt.Errorf("%w: user: %w", ErrCorrupt, err)
				}
				s.users[string(u.Name)] = u
			} else {
				r := &authpb.Role{}
				if err := proto.Unmarshal(v, r); err != nil {
					return nil, fmt.Errorf("%w: role: %w", ErrCorrupt, err)
				}
				s.roles[string(r.Name)] = r
			}
		default:
			// Fields a later version added: skip them.
			n := protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return nil, fmt.Errorf("%w: %w", ErrCorrupt, protowire.ParseError(n))
			}
			data = data[n:]
		}
	}
	s.refreshPerms()
	return s, nil
}
