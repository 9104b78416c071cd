// Package proto holds concord's protobuf inputs and the code generated from them.
//
// proto/etcd contains etcd's service definitions (rpc.proto, v3lock.proto,
// v3election.proto and their imports) and raft's raft.proto (the messages
// of go.etcd.io/raft/v3/raftpb, which concord's peer transport carries),
// copied from the module versions in go.mod by proto/internal/etcdproto
// with the grpc-gateway/openapiv2 annotations stripped. Each file sits at
// the path under which etcd's (or raft's) Go package registers it, because
// the generated code references those descriptors
// (etcdserverpb.File_rpc_proto, ...).
//
// proto/concord holds concord's own messages and services (package
// concord.v1), such as the raft command envelope consensus uses for commands
// that etcd's InternalRaftRequest cannot carry (lease authority, fenced lease
// revokes), concord.v1.WatchService (watch.proto): one etcd watch over a
// server stream, for browsers, whose Connect-Web and gRPC-Web transports have
// no bidirectional streams (it reuses etcd's WatchCreateRequest and
// WatchResponse messages), and concord.v1.PeerService (peer.proto): the raft
// transport between consensus members, batches of raftpb.Message on one
// long-lived client stream per peer and store snapshots on another call.
// internal.proto holds the RPCs between concord's own processes in the split
// topology: concord.v1.InternalService (history, lease
// authority and fenced revokes, served by consensus members) and
// concord.v1.LeaseKeepAliveService (one keep-alive per unary call, served by
// lease services to gateways).
//
// proto/gen holds the generated code: connect-go (protoc-gen-connect-go,
// option simple) for etcd's services in etcdserverpbconnect,
// v3lockpbconnect and v3electionpbconnect and for concord's in
// proto/gen/concord/v1/concordv1connect, and protoc-gen-go message types and
// file descriptors for concord's own files only, in proto/gen/concord/v1
// (package concordv1). etcd's message types are never generated; they are
// etcd's own Go packages. proto/internal/gengo is the protoc-gen-go of go.mod
// restricted to files whose go_package is inside this module (a buf type
// filter would also generate the etcd files concord's services refer to).
// web/src/gen holds TypeScript for the web console (protoc-gen-es, run from
// web/node_modules at the version in web/package-lock.json, so `npm ci
// --prefix web` must come first): message types and service descriptors of
// the services the console calls, etcd's messages included.
//
// Regenerate everything (after changing go.mod's etcd or connect versions)
// with, from the repository root:
//
//	go generate ./proto/...
//
// which copies the .proto files again and then runs `go tool buf generate`
// at the repository root (buf.yaml, buf.gen.yaml). `go tool buf generate`
// alone regenerates proto/gen from the committed proto/etcd and
// proto/concord files. Both plugins come from go.mod (protoc-gen-connect-go
// as a tool, protoc-gen-go's generator through proto/internal/gengo).
package proto

//go:generate go run ./internal/etcdproto -out etcd -buf
