package compare

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
	"time"

	"github.com/concord-kv/concord/bench"
)

// Chart geometry.
const (
	svgCols    = 3
	panelW     = 320
	panelH     = 220
	plotLeft   = 52
	plotRight  = 12
	plotTop    = 40
	plotBottom = 36
	legendH    = 34
)

var (
	chartPercentiles = []float64{50, 90, 99, 99.9}
	chartLabels      = []string{"p50", "p90", "p99", "p99.9"}
	implColors       = map[string]string{Etcd: "#4e79a7", Concord: "#f28e2b", Concord1FO: "#59a14f"}
)

// WriteSVG draws one panel per case: the median p50, p90, p99 and p99.9
// latency of its primary operation on etcd and concord, on a log scale.
func WriteSVG(w io.Writer, r *Report) error {
	type panel struct {
		title string
		vals  map[string][]float64 // ms per percentile; NaN = failed
	}
	var panels []panel
	for _, c := range r.Cases {
		p := panel{title: c.ID, vals: map[string][]float64{}}
		any := false
		for _, impl := range r.impls() {
			if len(c.Samples[impl]) == 0 && r.Topology == TopologyCluster {
				continue // the case does not run on this system
			}
			s := c.Summary(impl, "")
			for _, q := range chartPercentiles {
				v := math.NaN()
				if s.OK() {
					v = bench.Millis(s.Latency.Percentile(q))
					any = true
				}
				p.vals[impl] = append(p.vals[impl], v)
			}
		}
		if any {
			panels = append(panels, p)
		}
	}
	rows := max(1, (len(panels)+svgCols-1)/svgCols)
	width, height := svgCols*panelW, legendH+rows*panelH
	var b strings.Builder
	f := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	f(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n",
		width, height, width, height)
	f(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	f(`<text x="10" y="21" font-size="14" font-weight="bold">Latency percentiles (ms, log scale), medians of the rounds</text>` + "\n")
	impls := r.impls()
	lx := width - 100*len(impls) + 10
	for i, impl := range impls {
		f(`<rect x="%d" y="10" width="12" height="12" fill="%s"/><text x="%d" y="21">%s</text>`+"\n", lx+i*100, implColors[impl], lx+i*100+16, impl)
	}
	if len(panels) == 0 {
		f(`<text x="10" y="%d">no successful runs to chart</text>`+"\n", legendH+20)
	}
	for i, p := range panels {
		x0, y0 := (i%svgCols)*panelW, legendH+(i/svgCols)*panelH
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, vs := range p.vals {
			for _, v := range vs {
				if !math.IsNaN(v) && v > 0 {
					lo, hi = math.Min(lo, v), math.Max(hi, v)
				}
			}
		}
		if math.IsInf(lo, 1) {
			lo, hi = 0.1, 1
		}
		// Half a decade of room below the smallest bar keeps it visible.
		dlo, dhi := math.Floor(math.Log10(lo/3)), math.Ceil(math.Log10(hi))
		if dhi <= dlo {
			dhi = dlo + 1
		}
		px, py := x0+plotLeft, y0+plotTop
		pw, ph := panelW-plotLeft-plotRight, panelH-plotTop-plotBottom
		yOf := func(v float64) float64 {
			return float64(py+ph) - (math.Log10(v)-dlo)/(dhi-dlo)*float64(ph)
		}
		f(`<text x="%d" y="%d" font-size="12" font-weight="bold">%s</text>`+"\n", x0+10, y0+24, html.EscapeString(p.title))
		for d := dlo; d <= dhi; d++ {
			y := yOf(math.Pow(10, d))
			f(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", px, y, px+pw, y)
			f(`<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", px-4, y+4, tickLabel(math.Pow(10, d)))
		}
		f(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", px, py+ph, px+pw, py+ph)
		gw := float64(pw) / float64(len(chartPercentiles))
		bw := gw * 0.68 / float64(len(impls))
		for qi, label := range chartLabels {
			gx := float64(px) + gw*float64(qi)
			f(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", gx+gw/2, py+ph+14, label)
			for ii, impl := range impls {
				if len(p.vals[impl]) == 0 {
					continue
				}
				v := p.vals[impl][qi]
				if math.IsNaN(v) || v <= 0 {
					continue
				}
				bx := gx + gw*0.14 + float64(ii)*bw
				y := yOf(v)
				f(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s %s ms</title></rect>`+"\n",
					bx, y, bw-1, float64(py+ph)-y, implColors[impl], impl, label, bench.FormatMillis(time.Duration(v*float64(time.Millisecond))))
			}
		}
	}
	f("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func tickLabel(v float64) string {
	if v >= 1 {
		return fmt.Sprintf("%.0f", v)
	}
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.4f", v), "0"), ".")
}
