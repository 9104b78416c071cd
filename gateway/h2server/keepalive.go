package h2server

import (
	"errors"
	"time"

	"golang.org/x/net/http2"
)

// KeepAlive is grpc-go's server keep-alive (keepalive.ServerParameters Time
// and Timeout) and ping policy (keepalive.EnforcementPolicy), with
// grpc-go's semantics, so that etcd's --grpc-keepalive-* flags mean the same
// here as in etcd.
type KeepAlive struct {
	// Time: a connection the server has read nothing from for Time is sent
	// a PING. 0: the server never pings.
	Time time.Duration
	// Timeout: with a PING sent and still nothing read Timeout later, the
	// connection is closed (without GOAWAY, as grpc-go does). Any frame
	// read counts, not only the PING's ack. 0 with Time set:
	// DefaultKeepAliveTimeout.
	Timeout time.Duration
	// MinTime: a peer's PING that comes less than MinTime after its
	// previous one is a strike; while the connection has no open stream
	// (and PermitWithoutStream is false) the bar is two hours instead. A
	// HEADERS or DATA frame sent by the server since the previous PING
	// clears the strikes. The third strike gets GOAWAY ENHANCE_YOUR_CALM
	// with debug data "too_many_pings" and the connection is closed. 0:
	// pings are not policed.
	MinTime time.Duration
	// PermitWithoutStream applies MinTime to pings on a connection with no
	// open stream too.
	PermitWithoutStream bool
}

// Clock is time as the keep-alive sees it.
type Clock interface {
	Now() time.Time
	// After sends the time on the returned channel once d has passed.
	After(d time.Duration) <-chan time.Time
}

const (
	// maxPingStrikes and pingWithoutStream are grpc-go's (maxPingStrikes,
	// defaultPingTimeout in internal/transport/http2_server.go).
	maxPingStrikes    = 2
	pingWithoutStream = 2 * time.Hour
)

var (
	errTooManyPings     = errors.New("h2server: got too many pings from the client")
	errKeepAliveTimeout = errors.New("h2server: keepalive ping not acknowledged within timeout")
	// tooManyPingsDebug is grpc-go's GOAWAY debug data, which grpc-go
	// clients look for to back off their keep-alive.
	tooManyPingsDebug = []byte("too_many_pings")
)

// sinceEpoch is the clock's time as nanoseconds since the connection
// started. With the real clock this is a monotonic clock read, the only
// cost the keep-alive adds to reading (once per read(2), not per frame).
func (c *conn) sinceEpoch() int64 {
	if c.cfg.Clock == nil {
		return int64(time.Since(c.epoch))
	}
	return int64(c.cfg.Clock.Now().Sub(c.epoch))
}

// readStamper is the reader's source when the server pings: it records
// when the socket last delivered bytes, which the keep-alive goroutine
// checks when its timer fires (the timer is never reset per read).
type readStamper struct{ c *conn }

func (r readStamper) Read(p []byte) (int, error) {
	n, err := r.c.nc.Read(p)
	if n > 0 {
		r.c.lastRead.Store(r.c.sinceEpoch())
	}
	return n, err
}

// keepAlive pings the peer after KeepAlive.Time without reading anything
// and closes the connection when nothing arrives KeepAlive.Timeout after
// the PING: grpc-go's http2Server.keepalive, with one timer per connection.
// It returns when the connection closes; serve waits for it.
func (c *conn) keepAlive() {
	defer close(c.kaDone)
	ka := c.cfg.KeepAlive
	var timer *time.Timer
	after := func(d time.Duration) <-chan time.Time {
		if c.cfg.Clock != nil {
			return c.cfg.Clock.After(d)
		}
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		return timer.C
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	prev := c.sinceEpoch()
	outstanding := false // a PING was sent and nothing was read since
	var left time.Duration
	wait := ka.Time
	for {
		select {
		case <-after(wait):
		case <-c.closing:
			return
		}
		if last := c.lastRead.Load(); last > prev {
			// Read activity since the last check: the next PING is due
			// Time after the last read.
			outstanding = false
			prev = last
			wait = time.Duration(last-c.sinceEpoch()) + ka.Time
			continue
		}
		if outstanding && left <= 0 {
			c.cfg.Logger.Debug("h2server: closing connection", "remote", c.remoteAddr, "err", errKeepAliveTimeout, "timeout", ka.Timeout)
			c.abort(errKeepAliveTimeout)
			// The flusher may be blocked writing to a peer that is gone:
			// closing the socket ends its write and the reader.
			c.nc.Close()
			return
		}
		if !outstanding {
			c.sendPing()
			left = ka.Timeout
			outstanding = true
		}
		// Wake after Time at the latest, so that a peer that reads but
		// does not answer (nor send anything) is pinged again on time.
		wait = min(ka.Time, left)
		left -= wait
	}
}

// sendPing queues the keep-alive PING (grpc-go's is all zeros too).
func (c *conn) sendPing() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil || c.flooded() {
		return
	}
	c.wbuf = appendFrameHeader(c.wbuf, 8, http2.FramePing, 0, 0)
	c.wbuf = append(c.wbuf, 0, 0, 0, 0, 0, 0, 0, 0)
	c.kickLocked()
}

// policePing applies KeepAlive.MinTime to a PING from the peer (grpc-go's
// handlePing); sent reports whether the server sent HEADERS or DATA since
// the previous PING. It runs on the reader and returns errTooManyPings on
// the third strike.
func (c *conn) policePing(sent bool) error {
	ka := c.cfg.KeepAlive
	now := c.sinceEpoch()
	last, pinged := c.lastPingAt, c.pinged
	c.lastPingAt, c.pinged = now, true
	if sent {
		c.pingStrikes = 0
		return nil
	}
	bar := ka.MinTime
	if !ka.PermitWithoutStream {
		c.smu.Lock()
		n := len(c.streams)
		c.smu.Unlock()
		if n == 0 {
			bar = pingWithoutStream
		}
	}
	if pinged && time.Duration(now-last) < bar {
		c.pingStrikes++
	}
	if c.pingStrikes > maxPingStrikes {
		return errTooManyPings
	}
	return nil
}
