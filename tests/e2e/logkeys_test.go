package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// TestLogLinesNameEachKeyOnce reads every JSON log line of an all-in-one
// and of each split process, at debug level, after a few requests: each
// line names each key once. A "component" set by the caller and set again
// inside a package once came out twice, and JSON readers keep only one of
// the two.
func TestLogLinesNameEachKeyOnce(t *testing.T) {
	t.Parallel()
	s := startServer(t, concordImpl, serverOptions{extra: []string{"--log-level=debug"}})
	split := startSplitWith(t, nil, "--log-level=debug")
	for _, ep := range []string{s.Endpoint(), split.gateways[0].endpoint()} {
		mustCtl(t, ep, "put", "k", "v")
		mustCtl(t, ep, "put", "k", "w")
		mustCtl(t, ep, "lease", "grant", "5")
		mustCtl(t, ep, "compact", "2")
	}
	logs := map[string]string{"all-in-one": s.log.String()}
	for _, p := range []*proc{split.consensus, split.watchfanout, split.leasesvc, split.gateways[0]} {
		logs[p.name] = p.log.String()
	}
	for name, text := range logs {
		lines := 0
		for line := range strings.SplitSeq(text, "\n") {
			keys, err := jsonKeys(line)
			if err != nil {
				continue // the harness's own lines
			}
			lines++
			seen := map[string]bool{}
			for _, k := range keys {
				if seen[k] {
					t.Errorf("%s names %q twice: %s", name, k, line)
				}
				seen[k] = true
			}
		}
		if lines < 3 {
			t.Errorf("%s wrote %d JSON log lines, want more; log:\n%s", name, lines, text)
		}
	}
}

// jsonKeys returns the top-level keys of the JSON object line, in order.
func jsonKeys(line string) ([]string, error) {
	dec := json.NewDecoder(strings.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("not a JSON object: %q", line)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		keys = append(keys, tok.(string))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
	}
	return keys, nil
}
