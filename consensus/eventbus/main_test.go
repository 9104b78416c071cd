package eventbus

import (
	"log/slog"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// InterestForTest reports how many subscriptions to the bus subject the
// embedded server of n knows, its cluster's included: interest crosses
// routes asynchronously, so cluster tests wait for it.
func InterestForTest(n *NATS) int { return n.srv.GlobalAccount().Interest(Subject) }
