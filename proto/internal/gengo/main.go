// Command gengo is protoc-gen-go restricted to concord's own .proto files.
//
// buf generates from one workspace in which etcd's files (proto/etcd) are
// targets too, because the connect plugin needs them. Message types must be
// generated for concord's files only: etcd's messages are etcd's Go packages,
// and generating them again would register rpc.proto twice. A buf type filter
// cannot express that once a concord file refers to etcd's messages (the
// filter keeps the files holding those types as targets), so this plugin
// runs protoc-gen-go's generator on exactly the files whose Go import path is
// inside concord's module and skips the rest.
package main

import (
	"strings"

	gengo "google.golang.org/protobuf/cmd/protoc-gen-go/internal_gengo"
	"google.golang.org/protobuf/compiler/protogen"
)

// ownPrefix is the Go import path prefix of the files this plugin generates.
const ownPrefix = "github.com/concord-kv/concord/"

func main() {
	protogen.Options{}.Run(func(gen *protogen.Plugin) error {
		for _, f := range gen.Files {
			if f.Generate && strings.HasPrefix(string(f.GoImportPath), ownPrefix) {
				gengo.GenerateFile(gen, f)
			}
		}
		gen.SupportedFeatures = gengo.SupportedFeatures
		gen.SupportedEditionsMinimum = gengo.SupportedEditionsMinimum
		gen.SupportedEditionsMaximum = gengo.SupportedEditionsMaximum
		return nil
	})
}
