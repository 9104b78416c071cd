package gateway

import (
	"net/http"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// Two per-call costs of serving RPCs on Go's HTTP/2 server, measured with
// `concord bench` and removed here (docs/benchmarks.md has the figures):
//
//   - Every HTTP/2 request runs on a new goroutine whose stack starts small.
//     connect's decoding and a Pebble iterator then grow it two or three
//     times, and each growth copies the stack and walks every frame on it.
//     growStack grows it once, while the stack is still shallow.
//   - connect flushes the response after writing a unary reply, which makes
//     the handler wait for the HEADERS and DATA frames to be written before
//     it writes the trailers. A unary response is complete when the handler
//     returns, and the server writes it then anyway; unaryWriter hides the
//     Flush so the whole response goes out in one pass.

// growStackBytes is the frame growStack puts on the stack: with what the
// HTTP/2 server and the router already use, it takes a fresh goroutine's
// stack to 16 KiB (the largest size the runtime caches per processor), which
// profiles show is enough for a KV call down to Pebble.
const growStackBytes = 12 << 10

// growStack makes the calling goroutine's stack at least growStackBytes
// larger than its current depth, so deeper calls do not grow it again.
// Only its frame's size matters: the buffer is declared in a branch that
// never runs, so the frame is reserved (and the stack grown by the
// function's prologue if it is too small) but never zeroed, which costs
// nothing on a goroutine whose stack is large already.
//
//go:noinline
func growStack() {
	if growStackNever {
		var buf [growStackBytes]byte
		touchStack(buf[:])
	}
}

// growStackNever is false; a variable, so the compiler keeps the branch.
var growStackNever = false

// touchStack keeps growStack's buffer from being optimized away.
//
//go:noinline
func touchStack(b []byte) { b[0] = 1 }

// unaryWriter is an http.ResponseWriter without Flush, for unary RPCs. It
// deliberately does not implement http.Flusher: a streaming RPC given one by
// mistake fails at once (connect refuses server streams without a Flusher)
// instead of silently buffering.
type unaryWriter struct{ http.ResponseWriter }

// Unwrap lets http.ResponseController reach the server's writer.
func (w unaryWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// procedures returns the paths ("/pkg.Service/Method") of the methods of
// the service served under prefix ("/pkg.Service/"), from the protobuf
// registry, each mapped to whether it is unary. A service missing from the
// registry yields nil, so its calls keep connect's flushing and its unknown
// methods connect's answer.
func procedures(prefix string) map[string]bool {
	name := strings.Trim(prefix, "/")
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
	if err != nil {
		return nil
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil
	}
	ms := sd.Methods()
	out := make(map[string]bool, ms.Len())
	for i := range ms.Len() {
		m := ms.Get(i)
		out[prefix+string(m.Name())] = !m.IsStreamingClient() && !m.IsStreamingServer()
	}
	return out
}
