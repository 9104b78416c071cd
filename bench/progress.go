package bench

import (
	"io"
	"os"
	"time"

	"github.com/cheggaaa/pb/v3"
	"golang.org/x/term"
)

// Progress creates one progress indicator per phase of a workload. A nil
// Progress shows nothing.
type Progress interface {
	// Start begins a phase named name that will count total steps.
	Start(name string, total int64) Bar
}

// Bar is one phase's indicator; safe for concurrent use.
type Bar interface {
	Add(n int64)
	// Finish ends the phase; idempotent.
	Finish()
}

// NewTerminalProgress returns a Progress that draws bars on w when w is a
// terminal, and nil (no progress) otherwise, so logs and pipes stay clean.
func NewTerminalProgress(w *os.File) Progress {
	if w == nil || !term.IsTerminal(int(w.Fd())) {
		return nil
	}
	return pbProgress{w: w}
}

type pbProgress struct{ w io.Writer }

func (p pbProgress) Start(name string, total int64) Bar {
	b := pb.New64(total)
	b.SetWriter(p.w)
	b.SetTemplateString(`{{string . "prefix"}} {{counters . }} {{bar . }} {{percent . }} {{speed . "%s/s"}} {{etime . }}`)
	b.Set("prefix", name)
	b.SetRefreshRate(200 * time.Millisecond)
	b.Start()
	return &pbBar{b: b}
}

type pbBar struct{ b *pb.ProgressBar }

func (b *pbBar) Add(n int64) { b.b.Add64(n) }
func (b *pbBar) Finish() {
	if !b.b.IsFinished() {
		b.b.Finish()
	}
}

type noBar struct{}

func (noBar) Add(int64) {}
func (noBar) Finish()   {}

func startBar(p Progress, name string, total int64) Bar {
	if p == nil {
		return noBar{}
	}
	return p.Start(name, total)
}
