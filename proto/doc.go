// Package proto holds concord's protobuf inputs and the code generated from them.
//
// proto/etcd contains etcd's service definitions (rpc.proto, v3lock.proto,
// v3election.proto and their imports), copied from the etcd module versions
// in go.mod by proto/internal/etcdproto with the grpc-gateway/openapiv2
// annotations stripped. Each file sits at the path under which etcd's Go
// package registers it, because the generated code references those
// descriptors (etcdserverpb.File_rpc_proto, ...).
//
// proto/gen holds the generated connect-go code (protoc-gen-connect-go,
// option simple): etcdserverpbconnect, v3lockpbconnect, v3electionpbconnect.
// Message types are not generated; they are etcd's own Go packages.
//
// Regenerate everything (after changing go.mod's etcd or connect versions)
// with, from the repository root:
//
//	go generate ./proto/...
//
// which copies the .proto files again and then runs `go tool buf generate`
// at the repository root (buf.yaml, buf.gen.yaml). `go tool buf generate`
// alone regenerates proto/gen from the committed proto/etcd files.
package proto

//go:generate go run ./internal/etcdproto -out etcd -buf
