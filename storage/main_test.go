package storage_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine pebble starts must be gone once the stores are closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
