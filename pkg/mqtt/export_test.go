package mqtt

import (
	"context"
	"fmt"
)

// ErrNotConnected lets the tests outside the package match Publish's error.
var ErrNotConnected = errNotConnected

// Connects is the number of connections that came up so far.
func (c *Client) Connects() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connects
}

// AwaitDown waits until the client has no connection up.
func (c *Client) AwaitDown(ctx context.Context) error {
	for {
		c.mu.Lock()
		up := c.conn != nil && c.conn.up && c.conn.ctx.Err() == nil
		changed := c.changed
		c.mu.Unlock()
		if !up {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("connection still up: %w", ctx.Err())
		}
	}
}
