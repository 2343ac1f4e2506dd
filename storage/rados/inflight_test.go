//go:build ceph

package rados

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The turns of calls in flight, without a cluster: a backend whose
// connection is never used.
func TestCallsInFlightAreBounded(t *testing.T) {
	b := &Backend{cfg: Config{Pool: "p", Timeout: time.Second}, slots: make(chan struct{}, 2), drained: make(chan struct{})}

	require.NoError(t, b.enter())
	require.NoError(t, b.enter())

	// A lock call (a renewal) takes no turn: it goes on while every turn
	// is taken.
	require.NoError(t, b.count())
	b.done()

	// A third data call waits for a turn the configured timeout, then
	// fails as a call the cluster did not answer in time.
	start := time.Now()
	err := b.enter()
	require.ErrorIs(t, err, ErrTimeout)
	require.GreaterOrEqual(t, time.Since(start), time.Second)
	require.Equal(t, int64(2), b.state.Load(), "the refused call is not counted")

	// One waiting gets the turn a call gives back.
	got := make(chan error, 1)
	go func() { got <- b.enter() }()
	time.Sleep(50 * time.Millisecond)
	b.leave()
	require.NoError(t, <-got)

	b.leave()
	b.leave()
	require.Zero(t, b.state.Load())
	require.Empty(t, b.slots)

	// Closed: refused at once, turn or not.
	b.state.Or(closedBit)
	require.ErrorContains(t, b.enter(), "closed")
	require.ErrorContains(t, b.count(), "closed")
}
